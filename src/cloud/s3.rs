//! The S3 calls a bundle upload needs, as `euca-upload-bundle` makes them (SPEC §7): check the
//! bucket (`GET ?max-keys=0`) and create it when missing, then `PUT` each part and the manifest with
//! `x-amz-acl: aws-exec-read` (the cloud reads manifests as that system account), with an explicit
//! Content-Length and Content-MD5. A part already there with the same MD5 is not sent again.
//! Path-style addressing under the endpoint's own path (Walrus lives at `/services/Walrus`).

use super::aws::{self, Endpoint, Failure};
use super::sign::{self, SignatureVersion};
use super::{CloudError, Sent};
use crate::fetch::RetryPolicy;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest, Md5};
use reqwest::{Method, StatusCode, Url};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use tokio_util::sync::CancellationToken;

/// The canned ACL that lets the cloud's image service read the bundle.
pub const BUNDLE_ACL: &str = "aws-exec-read";

pub struct S3 {
    endpoint: Endpoint,
    retry: RetryPolicy,
}

/// One request before signing.
struct Call<'a> {
    method: Method,
    /// `/bucket` or `/bucket/key`, under the endpoint's path.
    resource: String,
    query: &'a str,
    headers: Vec<(&'static str, String)>,
    body: Payload,
}

/// A request's body: small ones in memory, a bundle part streamed from its file on disk, so an
/// upload holds no part in memory (issue 16: peak RSS under 64 MiB with parts in the air).
#[derive(Clone)]
enum Payload {
    Bytes(bytes::Bytes),
    /// A file of `len` bytes, read afresh for each attempt; its SHA-256 (hex, for SigV4) was
    /// taken by reading it once before the first attempt.
    File {
        path: PathBuf,
        len: u64,
        sha256: String,
    },
}

impl Payload {
    fn empty() -> Self {
        Payload::Bytes(bytes::Bytes::new())
    }

    fn len(&self) -> u64 {
        match self {
            Payload::Bytes(bytes) => bytes.len() as u64,
            Payload::File { len, .. } => *len,
        }
    }

    fn sha256_hex(&self) -> String {
        match self {
            Payload::Bytes(bytes) => sign::sha256_hex(bytes),
            Payload::File { sha256, .. } => sha256.clone(),
        }
    }

    /// The body for one attempt: a file is opened again and streamed in
    /// [`crate::limits::UPLOAD_READ_BUFFER`] chunks.
    async fn body(&self) -> std::io::Result<reqwest::Body> {
        match self {
            Payload::Bytes(bytes) => Ok(reqwest::Body::from(bytes.clone())),
            Payload::File { path, len, .. } => {
                let file = tokio::fs::File::open(path).await?;
                Ok(reqwest::Body::wrap_stream(file_chunks(file, *len)))
            }
        }
    }
}

/// `file`'s first `len` bytes as a stream of chunks; a file shorter than `len` is an error (the
/// Content-Length promised more).
fn file_chunks(
    file: tokio::fs::File,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures_util::stream::try_unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = left.min(crate::limits::UPLOAD_READ_BUFFER as u64) as usize;
        let mut chunk = bytes::BytesMut::zeroed(want);
        let mut filled = 0;
        while filled < want {
            match file.read(&mut chunk[filled..]).await? {
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file is shorter than when it was hashed",
                    ));
                }
                n => filled += n,
            }
        }
        Ok(Some((chunk.freeze(), (file, left - want as u64))))
    })
}

/// A file's length, MD5 and (when `sha256` is asked, for SigV4) SHA-256, read through once in
/// [`crate::limits::UPLOAD_READ_BUFFER`] chunks rather than held.
fn digest_file(path: &Path, sha256: bool) -> std::io::Result<(u64, [u8; 16], Option<String>)> {
    use sha2::Sha256;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut md5 = Md5::new();
    let mut sha = sha256.then(Sha256::new);
    let mut buffer = vec![0u8; crate::limits::UPLOAD_READ_BUFFER];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        md5.update(&buffer[..n]);
        if let Some(sha) = &mut sha {
            sha.update(&buffer[..n]);
        }
        len += n as u64;
    }
    Ok((
        len,
        md5.finalize().into(),
        sha.map(|sha| hex::encode(sha.finalize())),
    ))
}

impl S3 {
    pub fn new(endpoint: Endpoint, retry: RetryPolicy) -> Self {
        Self { endpoint, retry }
    }

    /// `/services/Walrus/bucket/key`: the endpoint's path, then the object's.
    fn path(&self, bucket: &str, key: Option<&str>) -> String {
        let base = self.endpoint.url.path().trim_end_matches('/');
        match key {
            Some(key) => format!("{base}/{bucket}/{}", sign::encode_path(key)),
            None => format!("{base}/{bucket}"),
        }
    }

    fn url(&self, path: &str, query: &str) -> Url {
        let mut url = self.endpoint.url.clone();
        url.set_path(path);
        url.set_query((!query.is_empty()).then_some(query));
        url
    }

    /// Sends `call` signed as configured. The body is cloned per attempt (cheap: `Bytes`).
    async fn send(
        &self,
        action: &'static str,
        call: &Call<'_>,
    ) -> Result<reqwest::Response, Failure> {
        let url = self.url(&call.resource, call.query);
        let now = OffsetDateTime::now_utc();
        let mut headers = call.headers.clone();
        let content_md5 = headers
            .iter()
            .find(|(n, _)| *n == "content-md5")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        match self.endpoint.signature {
            SignatureVersion::V2 => {
                let date = now.format(&Rfc2822).expect("a date formats");
                let amz: Vec<(&str, &str)> = headers
                    .iter()
                    .filter(|(n, _)| n.starts_with("x-amz-"))
                    .map(|(n, v)| (*n, v.as_str()))
                    .collect();
                // Only sub-resources are signed; `max-keys` is a plain parameter.
                let string_to_sign = sign::s3_v2_string_to_sign(
                    call.method.as_str(),
                    &content_md5,
                    "",
                    &date,
                    &amz,
                    &call.resource,
                );
                headers.push(("date", date));
                headers.push((
                    "authorization",
                    sign::s3_v2_authorization(&self.endpoint.key, &string_to_sign),
                ));
            }
            SignatureVersion::V4 => {
                let amz_date = sign::amz_date(now);
                let payload = call.body.sha256_hex();
                headers.push(("x-amz-date", amz_date.clone()));
                headers.push(("x-amz-content-sha256", payload.clone()));
                let mut signed: Vec<(String, String)> = headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.clone()))
                    .collect();
                signed.push(("host".into(), aws::host_header(&url)));
                let query: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(n, v)| (n.into_owned(), v.into_owned()))
                    .collect();
                let authorization = sign::v4_authorization(
                    &self.endpoint.key,
                    &self.endpoint.scope("s3"),
                    &amz_date,
                    &sign::V4Request {
                        method: call.method.as_str(),
                        path: url.path(),
                        query: &query,
                        headers: &signed,
                        payload_sha256: &payload,
                    },
                );
                headers.push(("authorization", authorization));
            }
        }
        let body = call.body.body().await.map_err(|source| {
            Failure::Permanent(CloudError::Local {
                action: "reading",
                path: match &call.body {
                    Payload::File { path, .. } => path.clone(),
                    Payload::Bytes(_) => PathBuf::new(),
                },
                source,
            })
        })?;
        let mut request = self
            .endpoint
            .client
            .request(call.method.clone(), url.clone())
            .timeout(crate::limits::cloud_exchange_timeout(call.body.len()))
            .header("content-length", call.body.len())
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request
            .send()
            .await
            .map_err(|e| aws::unreachable(action, &url, &e))
    }

    /// Creates `bucket` unless it exists (and is ours).
    pub async fn ensure_bucket(
        &self,
        bucket: &str,
        cancel: &CancellationToken,
    ) -> Result<(), CloudError> {
        aws::with_retries(&self.retry, cancel, || async {
            let check = Call {
                method: Method::GET,
                resource: self.path(bucket, None),
                query: "max-keys=0",
                headers: Vec::new(),
                body: Payload::empty(),
            };
            let response = self.send("checking the bucket", &check).await?;
            match response.status() {
                status if status.is_success() => return Ok(()),
                StatusCode::NOT_FOUND => {}
                _ => return Err(aws::refused("checking the bucket", response).await),
            }
            let endpoint = &self.endpoint;
            let body = if endpoint.signature == SignatureVersion::V4 && endpoint.region != "us-east-1" {
                format!(
                    "<CreateBucketConfiguration><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                    endpoint.region
                )
            } else {
                String::new()
            };
            let create = Call {
                method: Method::PUT,
                resource: self.path(bucket, None),
                query: "",
                headers: Vec::new(),
                body: Payload::Bytes(body.into()),
            };
            let response = self.send("CreateBucket", &create).await?;
            if response.status().is_success() {
                return Ok(());
            }
            let failure = aws::refused("CreateBucket", response).await;
            match &failure {
                // Created by a retry of ours that the network hid from us.
                Failure::Permanent(CloudError::Refused { reason, .. })
                    if reason.starts_with("BucketAlreadyOwnedByYou") =>
                {
                    Ok(())
                }
                _ => Err(failure),
            }
        })
        .await
    }

    /// The object's MD5 (hex) as its ETag gives it (empty without an ETag), or `None` when it is
    /// not there.
    async fn stored_md5(&self, bucket: &str, key: &str) -> Result<Option<String>, Failure> {
        let call = Call {
            method: Method::HEAD,
            resource: self.path(bucket, Some(key)),
            query: "",
            headers: Vec::new(),
            body: Payload::empty(),
        };
        let response = self.send("checking an uploaded part", &call).await?;
        match response.status() {
            status if status.is_success() => Ok(response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_matches('"').to_ascii_lowercase())
                .or_else(|| Some(String::new()))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(aws::refused("checking an uploaded part", response).await),
        }
    }

    /// Whether `bucket/key` exists (a missing bucket holds nothing); one try, no retries.
    pub async fn has_object(&self, bucket: &str, key: &str) -> Result<bool, CloudError> {
        match self.stored_md5(bucket, key).await {
            Ok(md5) => Ok(md5.is_some()),
            Err(Failure::Permanent(error) | Failure::Transient(error)) => Err(error),
        }
    }

    /// PUTs the file at `path` as `bucket/key` readable by the cloud, unless an object with the
    /// same MD5 is already there; the body streams from the file (read once before for its MD5
    /// and SHA-256), never held in memory. Returns whether bytes were sent.
    pub async fn put_file_unless_present(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        sent: Sent,
        cancel: &CancellationToken,
    ) -> Result<bool, CloudError> {
        let v4 = self.endpoint.signature == SignatureVersion::V4;
        let owned = path.to_owned();
        let (len, md5, sha256) = tokio::task::spawn_blocking(move || digest_file(&owned, v4))
            .await
            .expect("hashing a part does not panic")
            .map_err(|source| CloudError::Local {
                action: "reading",
                path: path.to_owned(),
                source,
            })?;
        let body = Payload::File {
            path: path.to_owned(),
            len,
            sha256: sha256.unwrap_or_default(),
        };
        self.put_unless_present(bucket, key, body, md5, sent, cancel)
            .await
    }

    /// PUTs `body` (whose MD5 is `md5`) as `bucket/key` readable by the cloud, unless an object
    /// with the same MD5 is already there (asked before each try, but the first of a
    /// [`Sent::Never`]). Returns whether bytes were sent.
    async fn put_unless_present(
        &self,
        bucket: &str,
        key: &str,
        body: Payload,
        md5: [u8; 16],
        sent: Sent,
        cancel: &CancellationToken,
    ) -> Result<bool, CloudError> {
        let md5_hex = hex::encode(md5);
        let md5_base64 = BASE64.encode(md5);
        let may_be_there = std::sync::atomic::AtomicBool::new(sent == Sent::Maybe);
        aws::with_retries(&self.retry, cancel, || async {
            let look = may_be_there.swap(true, std::sync::atomic::Ordering::Relaxed);
            if look && self.stored_md5(bucket, key).await?.as_deref() == Some(md5_hex.as_str()) {
                return Ok(false);
            }
            let call = Call {
                method: Method::PUT,
                resource: self.path(bucket, Some(key)),
                query: "",
                headers: vec![
                    ("content-md5", md5_base64.clone()),
                    ("x-amz-acl", BUNDLE_ACL.to_string()),
                ],
                body: body.clone(),
            };
            let response = self.send("PutObject", &call).await?;
            if !response.status().is_success() {
                return Err(aws::refused("PutObject", response).await);
            }
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_matches('"').to_ascii_lowercase());
            match etag {
                Some(etag) if etag != md5_hex => Err(Failure::Transient(CloudError::Refused {
                    action: "PutObject",
                    reason: format!("{key} arrived damaged: ETag {etag}, MD5 sent {md5_hex}"),
                })),
                _ => {
                    crate::metrics::global().add_uploaded(body.len());
                    Ok(true)
                }
            }
        })
        .await
    }

    /// Deletes `bucket/key` (gone already counts as deleted): parts uploaded from a file that
    /// then failed its verification are taken back.
    pub async fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<(), CloudError> {
        aws::with_retries(&self.retry, cancel, || async {
            let call = Call {
                method: Method::DELETE,
                resource: self.path(bucket, Some(key)),
                query: "",
                headers: Vec::new(),
                body: Payload::empty(),
            };
            let response = self.send("DeleteObject", &call).await?;
            match response.status() {
                status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
                _ => Err(aws::refused("DeleteObject", response).await),
            }
        })
        .await
    }
}

impl S3 {
    /// The keys of `bucket` that start with `prefix`, every page of `ListObjects` read.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, CloudError> {
        let never = CancellationToken::new();
        let mut keys: Vec<String> = Vec::new();
        loop {
            let marker = keys.last().cloned().unwrap_or_default();
            let query = format!(
                "marker={}&prefix={}",
                crate::rfc3986::encode(&marker),
                crate::rfc3986::encode(prefix)
            );
            let (page, truncated) = aws::with_retries(&self.retry, &never, || async {
                let call = Call {
                    method: Method::GET,
                    resource: self.path(bucket, None),
                    query: &query,
                    headers: Vec::new(),
                    body: Payload::empty(),
                };
                let response = self.send("ListObjects", &call).await?;
                match response.status() {
                    status if status.is_success() => {}
                    StatusCode::NOT_FOUND => return Ok((Vec::new(), false)),
                    _ => return Err(aws::refused("ListObjects", response).await),
                }
                let body = response.text().await.map_err(|e| {
                    aws::unreachable("ListObjects", &self.url(&call.resource, ""), &e)
                })?;
                parse_listing(&body).map_err(|reason| {
                    Failure::Permanent(CloudError::Refused {
                        action: "ListObjects",
                        reason,
                    })
                })
            })
            .await?;
            let empty = page.is_empty();
            keys.extend(page);
            if !truncated || empty {
                return Ok(keys);
            }
        }
    }
}

/// A `ListBucketResult`'s keys and whether more pages follow, whatever its namespace.
fn parse_listing(body: &str) -> Result<(Vec<String>, bool), String> {
    let doc = roxmltree::Document::parse(body).map_err(|e| format!("unreadable reply: {e}"))?;
    let keys = doc
        .descendants()
        .filter(|n| n.has_tag_name("Contents"))
        .filter_map(|contents| {
            contents
                .children()
                .find(|n| n.has_tag_name("Key"))
                .and_then(|n| n.text())
                .map(str::to_owned)
        })
        .collect();
    let truncated = doc
        .descendants()
        .find(|n| n.has_tag_name("IsTruncated"))
        .and_then(|n| n.text())
        .is_some_and(|text| text.trim() == "true");
    Ok((keys, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn s3(endpoint: &str) -> S3 {
        S3::new(
            Endpoint {
                client: aws::http_client().unwrap(),
                url: Url::parse(endpoint).unwrap(),
                key: crate::cloud::sign::AccessKey {
                    id: "a".into(),
                    secret: "b".into(),
                },
                signature: SignatureVersion::V2,
                region: "us-east-1".into(),
            },
            RetryPolicy::default(),
        )
    }

    /// A cloud that takes a PUT and never answers: the exchange is given up at its deadline and
    /// tried again on a new connection, which lands the part (the CI run of 033b0db waited on one
    /// such exchange until the test gave up). A part this run made is not looked for before its
    /// first PUT; the retry looks first, as the cloud may have kept the first.
    #[tokio::test]
    async fn a_put_the_cloud_never_answers_is_tried_again_at_its_deadline_looking_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = bytes::Bytes::from_static(b"part bytes");
        let etag = hex::encode(Md5::digest(&body));
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("k.part.00");
        std::fs::write(&part, &body).unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            let mut puts = 0;
            let mut heads = 0;
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 64 << 10];
                let n = socket.read(&mut request).await.unwrap();
                let head = String::from_utf8_lossy(&request[..n]).to_string();
                if head.starts_with("HEAD") {
                    heads += 1;
                    let reply =
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    socket.write_all(reply.as_bytes()).await.unwrap();
                    continue;
                }
                puts += 1;
                if puts == 1 {
                    held.push(socket);
                    continue;
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\netag: \"{etag}\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                socket.write_all(reply.as_bytes()).await.unwrap();
                return (puts, heads);
            }
        });
        let started = std::time::Instant::now();
        let sent = s3(&format!("http://{addr}/"))
            .put_file_unless_present(
                "b",
                "k.part.00",
                &part,
                Sent::Never,
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert!(sent);
        assert_eq!(
            server.await.unwrap(),
            (2, 1),
            "one PUT held, one answered; one HEAD, before the second"
        );
        let waited = started.elapsed();
        let deadline = crate::limits::cloud_exchange_timeout(10);
        assert!(
            waited >= deadline && waited < deadline * 2,
            "{waited:?} for a deadline of {deadline:?}"
        );
    }

    #[test]
    fn a_listing_is_read_whatever_its_namespace() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
              <Name>b</Name><Prefix>k.</Prefix><IsTruncated>true</IsTruncated>
              <Contents><Key>k.manifest.xml</Key><Size>3</Size></Contents>
              <Contents><Key>k.part.00</Key><Size>9</Size></Contents>
            </ListBucketResult>"#;
        assert_eq!(
            parse_listing(body).unwrap(),
            (
                vec!["k.manifest.xml".to_string(), "k.part.00".to_string()],
                true
            )
        );
        assert_eq!(
            parse_listing("<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
                .unwrap(),
            (Vec::new(), false)
        );
        assert!(parse_listing("not xml").is_err());
    }

    #[test]
    fn objects_live_under_the_endpoint_s_own_path() {
        let walrus = s3("http://clc:8773/services/Walrus/");
        assert_eq!(
            walrus.path("image-store-1", Some("k.part.00")),
            "/services/Walrus/image-store-1/k.part.00"
        );
        assert_eq!(
            walrus.path("image-store-1", None),
            "/services/Walrus/image-store-1"
        );
        let root = s3("http://127.0.0.1:9000");
        assert_eq!(root.path("b", Some("a b")), "/b/a%20b");
        assert_eq!(
            root.url("/b", "max-keys=0").as_str(),
            "http://127.0.0.1:9000/b?max-keys=0"
        );
    }
}
