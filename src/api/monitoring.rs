//! The unsigned endpoints for operators and their tools (SPEC §4, beside the UI API): `/healthz`
//! for a supervisor, `/metrics` for Prometheus, and the layer that counts and times every request.

use super::AppState;
use super::error::json_response;
use crate::install::state::InstallState;
use crate::metrics::{self, Snapshot};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Instant;

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Health {
    /// `ok`, or `unavailable` when the state database does not answer.
    status: &'static str,
    /// `ok`, or the database's error as one line.
    db: String,
    catalog_images: usize,
    /// The served catalog's own `updated` time; absent before any catalog was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    catalog_updated: Option<String>,
    /// Seconds since the catalog last fetched and verified in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    catalog_verified_seconds_ago: Option<u64>,
    /// Why the last refresh failed: the catalog served is stale, the proxy still works.
    #[serde(skip_serializing_if = "Option::is_none")]
    catalog_error: Option<String>,
}

/// 200 while the proxy can answer the UI and run installs: its database answers. An unreachable
/// upstream is not unhealthy (the last good catalog is served, and a restart would not help); it
/// shows in `catalog-error`. 503 when the database fails.
pub async fn healthz(State(app): State<AppState>) -> Response {
    let catalog = app.catalog.current();
    let db = app.installer.check_db();
    let health = Health {
        status: if db.is_ok() { "ok" } else { "unavailable" },
        db: db
            .as_ref()
            .map_or_else(ToString::to_string, |()| "ok".into()),
        catalog_images: catalog.images.len(),
        catalog_updated: (catalog.updated.unix_timestamp() > 0).then(|| {
            catalog
                .updated
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        }),
        catalog_verified_seconds_ago: app.catalog.verified_seconds_ago(),
        catalog_error: app.catalog.last_error(),
    };
    let status = if db.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &health)
}

/// The Prometheus text exposition: the process's counters plus gauges read now from the board and
/// the catalog (both in memory: a scrape costs no disk or upstream call).
pub async fn metrics(State(app): State<AppState>) -> Response {
    let installs = app.installer.board().all();
    let snapshot = Snapshot {
        installs_by_state: InstallState::ALL
            .iter()
            .map(|state| {
                let count = installs.iter().filter(|view| view.state == *state).count();
                (state.as_str(), count as u64)
            })
            .collect(),
        catalog_images: app.catalog.current().images.len() as u64,
        catalog_verified_seconds_ago: app.catalog.verified_seconds_ago(),
        catalog_stale: app.catalog.last_error().is_some(),
        cache_max_bytes: app.installer.budget().settings().max_bytes,
        min_free_bytes: app.installer.budget().settings().min_free_bytes,
    };
    let mut text = metrics::global().render(&snapshot);
    render_nonce_book(&mut text, app.nonces.len(), app.nonces.capacity());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// The replay guard's memory: how full it is, so a flood shows before requests get 503s.
fn render_nonce_book(out: &mut String, live: usize, capacity: usize) {
    use std::fmt::Write as _;
    for (name, help, value) in [
        (
            "image_store_proxy_nonces_remembered",
            "Request nonces remembered against replay (bounded by the capacity).",
            live,
        ),
        (
            "image_store_proxy_nonces_capacity",
            "The most nonces remembered; beyond it signed requests get 503 until some expire.",
            capacity,
        ),
    ] {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        );
    }
}

/// Counts and times every request by endpoint (the route, not the raw path: image keys and
/// unknown paths must not become labels).
pub async fn count_requests(request: Request, next: Next) -> Response {
    let endpoint = endpoint(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::global().api_request(endpoint, response.status().as_u16(), started.elapsed());
    response
}

fn endpoint(path: &str) -> &'static str {
    match path {
        "/api/dashboard" => "dashboard",
        "/api/search" => "search",
        "/api/states" => "states",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/store" => "store",
        _ if path.starts_with("/store/") => "store",
        _ => match path
            .strip_prefix("/api/images/")
            .map(|rest| rest.split('/'))
        {
            Some(mut parts) => match (parts.next(), parts.next(), parts.next()) {
                (Some(_), Some("install"), None) => "install",
                (Some(_), Some("cancel"), None) => "cancel",
                (Some(_), Some("clear-error"), None) => "clear-error",
                _ => "other",
            },
            None => "other",
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_are_routes_not_paths() {
        for (path, endpoint) in [
            ("/api/dashboard", "dashboard"),
            ("/api/states", "states"),
            ("/api/images/0123456789abcdef/install", "install"),
            ("/api/images/0123456789abcdef/clear-error", "clear-error"),
            ("/api/images/0123456789abcdef/explode", "other"),
            ("/api/images/x/install/more", "other"),
            ("/store/", "store"),
            ("/store/store.js", "store"),
            ("/metrics", "metrics"),
            ("/nothing", "other"),
        ] {
            assert_eq!(super::endpoint(path), endpoint, "{path}");
        }
    }
}
