//! The bundled Store page (SPEC §4, beside the UI API): plain static files compiled into the
//! binary, served unsigned under `/store/`. The page signs each UI API call in the browser with a
//! secret the operator types in; the server never sends the secret, and nothing here reads it.

use super::error::ApiError;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

const INDEX_HTML: &str = include_str!("store_page/index.html");
const STORE_JS: &str = include_str!("store_page/store.js");
const SIGNING_JS: &str = include_str!("store_page/signing.js");
const STORE_CSS: &str = include_str!("store_page/store.css");

/// Scripts and styles only from the proxy, no inline code; images from anywhere (icons are the
/// upstream's URLs, SPEC §4.3); calls only to the proxy; no framing (the buttons install things).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src * data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "" | "index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "store.js" => Some(("text/javascript; charset=utf-8", STORE_JS)),
        "signing.js" => Some(("text/javascript; charset=utf-8", SIGNING_JS)),
        "store.css" => Some(("text/css; charset=utf-8", STORE_CSS)),
        _ => None,
    }
}

fn serve(name: &str) -> Result<Response, ApiError> {
    let (content_type, body) = asset(name).ok_or_else(|| ApiError::NotFound {
        method: "GET".into(),
        path: format!("/store/{name}"),
    })?;
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // The binary is the version: revalidate rather than run an old page against a new proxy.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

/// `/store` without the slash: the page's relative links need the directory form.
pub async fn redirect() -> Redirect {
    Redirect::permanent("/store/")
}

pub async fn index() -> Result<Response, ApiError> {
    serve("")
}

pub async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    serve(&name)
}

#[cfg(test)]
mod tests {
    use super::asset;

    #[test]
    fn the_page_references_only_bundled_files() {
        let (_, html) = asset("").unwrap();
        for referenced in ["store.css", "store.js"] {
            assert!(html.contains(&format!("\"{referenced}\"")), "{referenced}");
            assert!(asset(referenced).is_some(), "{referenced}");
        }
        let (_, js) = asset("store.js").unwrap();
        assert!(js.contains("from \"./signing.js\""));
        assert!(asset("../Cargo.toml").is_none());
        // No inline script or style: the CSP forbids them.
        assert!(!html.contains("<script>") && !html.contains("style=\""));
    }
}
