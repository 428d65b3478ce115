//! Serves the store API: the catalog and its signature, files with Range support and their
//! signatures, icons; records every request and applies the test faults.

use crate::faults::{self, ByteStream, Fault};
use crate::signing::SigningKey;
use crate::{Inner, RequestRecord, range};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::{StreamExt, TryStreamExt};
use std::io::SeekFrom;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

pub fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/api/dashboard", get(dashboard))
        .route("/api/dashboard.asc", get(dashboard_signature))
        .route("/api/keyring.gpg", get(published_keyring))
        .route("/api/keyring.gpg.asc", get(published_keyring_signature))
        .route("/api/files/{set}/{name}", get(file))
        .route("/api/icons/{name}", get(icon))
        .route("/simplestreams/{*path}", get(simplestreams))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such thing\n") })
        .layer(middleware::from_fn_with_state(
            inner.clone(),
            record_and_fault,
        ))
        .with_state(inner)
}

async fn record_and_fault(
    State(inner): State<Arc<Inner>>,
    mut request: Request,
    next: Next,
) -> Response {
    let at = std::time::Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (path_fault, forced) = {
        let mut faults = inner.faults.lock().expect("faults lock");
        let api_path = path
            .strip_prefix("/api/")
            .or_else(|| path.strip_prefix('/'))
            .unwrap_or(&path);
        (faults::take(&mut faults.paths, api_path), faults.status)
    };
    let forced = match path_fault {
        Some(Fault::Status(status)) => Some(status),
        Some(fault) => {
            request.extensions_mut().insert(fault);
            forced
        }
        None => forced,
    };
    let response = match forced {
        Some(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, format!("fault injected: {status}\n")).into_response()
        }
        None => next.run(request).await,
    };
    let status = response.status().as_u16();
    inner
        .requests
        .lock()
        .expect("requests lock")
        .push(RequestRecord {
            method,
            path,
            range,
            status,
            at,
        });
    response
}

fn json(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn armored(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/pgp-signature")], bytes).into_response()
}

/// The catalog document served now: the current one, or a replayed one.
fn served_catalog(inner: &Inner) -> Vec<u8> {
    let replayed = inner
        .faults
        .lock()
        .expect("faults lock")
        .replay_catalog
        .clone();
    match replayed {
        Some(old) => old.document,
        None => inner.state.read().expect("state lock").catalog.clone(),
    }
}

async fn dashboard(State(inner): State<Arc<Inner>>, fault: Option<Extension<Fault>>) -> Response {
    let mut bytes = served_catalog(&inner);
    if inner.faults.lock().expect("faults lock").tamper_catalog {
        tamper(&mut bytes);
    }
    let Some(Extension(fault)) = fault else {
        return json(bytes);
    };
    let count = bytes.len() as u64;
    let body: ByteStream =
        futures_util::stream::once(async move { Ok(axum::body::Bytes::from(bytes)) }).boxed();
    let shaped = faults::shape_body(Some(fault), body, 0, count);
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(length) = shaped.content_length {
        response = response.header(header::CONTENT_LENGTH, length);
    }
    response
        .body(Body::from_stream(shaped.body))
        .expect("a valid response")
}

/// Changes one letter of the first title: still valid JSON, no longer what was signed.
fn tamper(bytes: &mut [u8]) {
    let needle = b"\"title\": \"";
    if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
        let letter = &mut bytes[at + needle.len()];
        *letter = if letter.is_ascii_uppercase() {
            letter.to_ascii_lowercase()
        } else {
            b'X'
        };
    }
}

async fn dashboard_signature(State(inner): State<Arc<Inner>>) -> Response {
    let (replayed, other_key) = {
        let faults = inner.faults.lock().expect("faults lock");
        (
            faults.replay_catalog.clone(),
            faults.catalog_signed_by.clone(),
        )
    };
    if let Some(armored_key) = other_key {
        let signed = SigningKey::from_armored(&armored_key).and_then(|key| {
            key.sign(&served_catalog(&inner)[..])
                .map_err(|e| e.to_string())
        });
        return match signed {
            Ok(signature) => armored(signature),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        };
    }
    match replayed {
        Some(old) => armored(old.signature),
        None => armored(
            inner
                .state
                .read()
                .expect("state lock")
                .catalog_signature
                .clone(),
        ),
    }
}

/// The keyring published beside the catalog (`Faults::published_keyring`), or 404.
async fn published_keyring(State(inner): State<Arc<Inner>>) -> Response {
    published(&inner, false)
}

async fn published_keyring_signature(State(inner): State<Arc<Inner>>) -> Response {
    published(&inner, true)
}

fn published(inner: &Inner, signature: bool) -> Response {
    let published = inner
        .faults
        .lock()
        .expect("faults lock")
        .published_keyring
        .clone();
    match published {
        Some(published) if signature => armored(published.signature),
        Some(published) => (
            [(header::CONTENT_TYPE, "application/pgp-keys")],
            published.keyring,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no keyring published\n").into_response(),
    }
}

async fn icon(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Response {
    let Some(set) = name.strip_suffix(".svg") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !inner
        .state
        .read()
        .expect("state lock")
        .sets
        .iter()
        .any(|s| s.name == set)
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let initial = set.chars().next().unwrap_or('?').to_ascii_uppercase();
    let hue = set
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 360;
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\" viewBox=\"0 0 64 64\">\
         <rect width=\"64\" height=\"64\" rx=\"10\" fill=\"hsl({hue},55%,45%)\"/>\
         <text x=\"32\" y=\"43\" font-family=\"sans-serif\" font-size=\"32\" fill=\"#fff\" text-anchor=\"middle\">{initial}</text></svg>"
    );
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}

async fn file(
    State(inner): State<Arc<Inner>>,
    Path((set, name)): Path<(String, String)>,
    fault: Option<Extension<Fault>>,
    headers: HeaderMap,
) -> Response {
    let (data_name, is_signature) = match name.strip_suffix(".asc") {
        Some(base) => (base.to_string(), true),
        None => (name.clone(), false),
    };
    // Only names in the catalog are served: nothing else of the disk is reachable.
    let found = {
        let state = inner.state.read().expect("state lock");
        state
            .sets
            .iter()
            .find(|s| s.name == set)
            .and_then(|s| s.files.iter().find(|f| f.name == data_name))
            .map(|f| (f.path.clone(), state.file_signatures.get(&f.path).cloned()))
    };
    let Some((path, generated_signature)) = found else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    if is_signature {
        let on_disk = path.with_file_name(format!("{data_name}.asc"));
        return match tokio::fs::read(&on_disk).await {
            Ok(bytes) => armored(bytes),
            Err(_) => armored(generated_signature.unwrap_or_default()),
        };
    }
    serve_file(
        &inner,
        &path,
        headers.get(header::RANGE),
        fault.map(|Extension(fault)| fault),
    )
    .await
}

/// A simplestreams document or item (`path` under the mirror root), with Range and the faults.
async fn simplestreams(
    State(inner): State<Arc<Inner>>,
    Path(path): Path<String>,
    fault: Option<Extension<Fault>>,
    headers: HeaderMap,
) -> Response {
    match path.as_str() {
        "streams/v1/keyring.gpg" => return published(&inner, false),
        "streams/v1/keyring.gpg.asc" => return published(&inner, true),
        _ => {}
    }
    let lookup = {
        let inner = inner.clone();
        let path = path.clone();
        // The first request builds the items: compression, off the async threads.
        tokio::task::spawn_blocking(move || inner.stream_file(&path)).await
    };
    let bytes = match lookup {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => return (StatusCode::NOT_FOUND, "no such file\n").into_response(),
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let is_document = path.starts_with("streams/");
    let content_type = match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json",
        Some("sjson") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    let len = bytes.len() as u64;
    let mut response = serve_body(
        &inner,
        std::io::Cursor::new(bytes),
        len,
        headers.get(header::RANGE),
        fault.map(|Extension(fault)| fault),
        !is_document,
    )
    .await;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn serve_file(
    inner: &Inner,
    path: &std::path::Path,
    range_header: Option<&HeaderValue>,
    fault: Option<Fault>,
) -> Response {
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}: {e}\n", path.display()),
            )
                .into_response();
        }
    };
    let len = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    serve_body(inner, file, len, range_header, fault, true).await
}

/// Serves `len` bytes of `body` with Range support and `fault`; `is_file` also applies the
/// store-wide file switches (`drop_file_after`, `bytes_per_second`).
async fn serve_body<B>(
    inner: &Inner,
    mut body: B,
    len: u64,
    range_header: Option<&HeaderValue>,
    fault: Option<Fault>,
    is_file: bool,
) -> Response
where
    B: tokio::io::AsyncRead + tokio::io::AsyncSeek + Unpin + Send + 'static,
{
    let range_header = range_header
        .filter(|_| !(is_file && inner.faults.lock().expect("faults lock").ignore_range));
    let (status, start, end) = match range::parse(range_header.and_then(|v| v.to_str().ok()), len) {
        Ok(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Ok(None) => (StatusCode::OK, 0, len.saturating_sub(1)),
        Err(()) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    if body.seek(SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let drop_after = match fault {
        Some(Fault::DropAfter(cut)) => Some(cut).filter(|cut| *cut < count),
        _ if !is_file => None,
        _ => {
            let mut faults = inner.faults.lock().expect("faults lock");
            match faults.drop_file_after {
                Some(cut) if cut < count => faults.drop_file_after.take(),
                _ => None,
            }
        }
    };
    let sent = drop_after.unwrap_or(count);
    let (rate, link) = match is_file {
        true => {
            let faults = inner.faults.lock().expect("faults lock");
            (faults.bytes_per_second, faults.link.clone())
        }
        false => (None, None),
    };
    let stream: ByteStream = ReaderStream::with_capacity(body.take(sent), 64 << 10).boxed();
    let shaped = faults::shape_body(fault, stream, start, count);
    let stream = match rate {
        Some(rate) if rate > 0 => faults::throttle(shaped.body, rate),
        _ => shaped.body,
    };
    let stream = match link {
        Some(link) => faults::over_link(stream, link),
        None => stream,
    };
    let stream: ByteStream = if is_file {
        let counter = inner.file_bytes_sent.clone();
        stream
            .inspect_ok(move |bytes| {
                counter.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            })
            .boxed()
    } else {
        stream
    };
    let body = if drop_after.is_some() {
        // Promise `count` bytes, send `sent`, then fail the body: the connection is cut mid-file.
        // The pause makes hyper flush what it buffered, so the client really gets the `sent` bytes.
        let cut = futures_util::stream::once(async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Err(std::io::Error::other("fault: connection dropped"))
        });
        Body::from_stream(stream.chain(cut))
    } else {
        Body::from_stream(stream)
    };
    let mut response = Response::builder().status(status);
    if let Some(length) = shaped.content_length {
        response = response.header(header::CONTENT_LENGTH, length);
    }
    let mut response = response
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    response.body(body).expect("a valid response")
}
