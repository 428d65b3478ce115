//! Applies the servlet's signature (`signature.rs`, SPEC §4.1) to incoming requests: an extractor
//! that yields the request's parameters only when the signature, its freshness and its nonce check out.

use super::AppState;
use super::error::ApiError;
use super::nonce::NonceVerdict;
use super::signature::{self, MAX_EXPIRES_AHEAD_SECS, SIGNATURE_METHOD, SIGNATURE_VERSION};
use crate::db::now_unix;
use crate::limits::{BODY_READ_TIMEOUT, MAX_BODY_BYTES};
use axum::extract::{FromRequest, Request};
use axum::http::{Method, header};
use percent_encoding::percent_decode;

/// A request whose signature verified, with its parameters (query and form body together).
pub struct Signed {
    pub params: Vec<(String, String)>,
    /// The `Host` header as sent: action URIs point back at the proxy the way the UI reached it.
    pub host: String,
}

impl Signed {
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl FromRequest<AppState> for Signed {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bad = |reason: &str| ApiError::BadSignature {
            reason: reason.to_string(),
        };
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .ok_or_else(|| bad("no Host header"))?;
        let mut params = parse_form(parts.uri.query().unwrap_or("").as_bytes());
        if parts.method == Method::POST {
            let bytes = tokio::time::timeout(
                BODY_READ_TIMEOUT,
                axum::body::to_bytes(body, MAX_BODY_BYTES),
            )
            .await
            .map_err(|_| ApiError::SlowBody {
                seconds: BODY_READ_TIMEOUT.as_secs(),
            })?
            .map_err(|_| ApiError::BodyTooLarge {
                limit: MAX_BODY_BYTES,
            })?;
            params.extend(parse_form(&bytes));
        }
        verify(
            state,
            parts.method.as_str(),
            &host,
            parts.uri.path(),
            &params,
        )?;
        params.retain(|(name, _)| !is_signing_parameter(name));
        Ok(Signed { params, host })
    }
}

fn is_signing_parameter(name: &str) -> bool {
    matches!(
        name,
        "Signature"
            | "SignatureMethod"
            | "SignatureVersion"
            | "Version"
            | "ClientId"
            | "Expires"
            | "Nonce"
    )
}

fn single<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, ApiError> {
    let mut values = params
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str());
    match (values.next(), values.next()) {
        (Some(value), None) => Ok(value),
        (None, _) => Err(ApiError::BadSignature {
            reason: format!("no {name}"),
        }),
        (Some(_), Some(_)) => Err(ApiError::BadSignature {
            reason: format!("{name} given twice"),
        }),
    }
}

pub fn verify(
    state: &AppState,
    method: &str,
    host: &str,
    path: &str,
    params: &[(String, String)],
) -> Result<(), ApiError> {
    let bad = |reason: String| ApiError::BadSignature { reason };
    let signature_text = single(params, "Signature")?;
    if single(params, "SignatureMethod")? != SIGNATURE_METHOD
        || single(params, "SignatureVersion")? != SIGNATURE_VERSION
    {
        return Err(bad("unsupported SignatureMethod or SignatureVersion".into()));
    }
    let expires: i64 = single(params, "Expires")?
        .parse()
        .map_err(|_| bad("Expires is not a number".into()))?;
    let nonce = single(params, "Nonce")?;
    let client_id = params
        .iter()
        .find(|(n, _)| n == "ClientId")
        .map_or("", |(_, v)| v.as_str());
    let string_to_sign = signature::string_to_sign(
        method,
        &signature::signing_host_from_header(host),
        path,
        params,
    );
    if !signature::signature_matches(&state.secret, &string_to_sign, signature_text) {
        return Err(bad(format!(
            "signature mismatch (ClientId {client_id:?}, string to sign {string_to_sign:?})"
        )));
    }
    let now = now_unix();
    if expires < now {
        return Err(bad(format!(
            "expired {}s ago (ClientId {client_id:?})",
            now.abs_diff(expires)
        )));
    }
    if expires > now + MAX_EXPIRES_AHEAD_SECS {
        return Err(bad(format!(
            "Expires is {}s ahead, more than {MAX_EXPIRES_AHEAD_SECS}s",
            expires - now
        )));
    }
    match state.nonces.check_and_remember(nonce, expires, now) {
        NonceVerdict::Fresh => Ok(()),
        NonceVerdict::Replayed => Err(bad(format!(
            "nonce {nonce} replayed (ClientId {client_id:?})"
        ))),
        NonceVerdict::Full => Err(ApiError::TooManyLiveNonces),
    }
}

/// `application/x-www-form-urlencoded`, decoded as UTF-8, or as ISO-8859-1 when it is not UTF-8
/// (the servlet's httpclient 3.1 encodes POST bodies in ISO-8859-1 by default).
pub fn parse_form(bytes: &[u8]) -> Vec<(String, String)> {
    let decode = |raw: &[u8]| -> String {
        let plus_as_space: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let bytes: Vec<u8> = percent_decode(&plus_as_space).collect();
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => error.into_bytes().iter().map(|&b| b as char).collect(),
        }
    };
    bytes
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (decode(&pair[..eq]), decode(&pair[eq + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_form;

    #[test]
    fn forms_decode_utf8_latin1_plus_and_bare_names() {
        let pairs = parse_form(b"q=caf%C3%A9+%7Ex&image-uri=a&image-uri=b&flag&&x=%E9t%E9");
        let expect = [
            ("q", "café ~x"),
            ("image-uri", "a"),
            ("image-uri", "b"),
            ("flag", ""),
            ("x", "été"),
        ];
        assert_eq!(pairs.len(), expect.len());
        for ((name, value), (en, ev)) in pairs.iter().zip(expect) {
            assert_eq!((name.as_str(), value.as_str()), (en, ev));
        }
    }
}
