//! The UI side (SPEC §4): the Store tab's calls, wire-compatible with the Eucalyptus servlet. Only
//! this module knows HTTP; `auth.rs` checks signatures, `views.rs` shapes JSON, `error.rs` maps
//! every failure to a JSON `error-message`.

pub mod auth;
mod dashboard_cache;
pub mod error;
mod monitoring;
pub mod nonce;
pub mod serve;
pub mod signature;
mod store_page;
mod views;

use crate::catalog::model::Image;
use crate::catalog::{self, upstreams::Catalogs};
use crate::install::Installer;
use crate::install::board::InstallView;
use auth::Signed;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use dashboard_cache::DashboardCache;
use dashboard_cache::DashboardInputs;
use error::{ApiError, json_response};
use nonce::NonceBook;
use std::collections::HashSet;
use std::sync::Arc;
use views::{ActionLinks, Envelope, ImageInfo, Section};

#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<Catalogs>,
    pub installer: Arc<Installer>,
    /// The key of the servlet's HMAC: the admin's secret key, or `--fake-eucalyptus`'s SECRET.
    pub secret: Arc<[u8]>,
    pub nonces: Arc<NonceBook>,
    /// The last dashboard rendered, reused while its inputs are unchanged.
    pub dashboards: Arc<DashboardCache>,
}

const DASHBOARD: &str = "/api/dashboard";
const SEARCH: &str = "/api/search";
const STATES: &str = "/api/states";
const ACTION: &str = "/api/images/{key}/{action}";
const HEALTHZ: &str = "/healthz";
const METRICS: &str = "/metrics";
const STORE: &str = "/store";
const STORE_INDEX: &str = "/store/";
const STORE_FILE: &str = "/store/{file}";

/// Every path the router serves, as `ui-api/openapi.yaml` names them: its conformance test checks
/// that the contract and the router agree both ways.
pub const PATHS: [&str; 9] = [
    DASHBOARD,
    SEARCH,
    STATES,
    ACTION,
    HEALTHZ,
    METRICS,
    STORE,
    STORE_INDEX,
    STORE_FILE,
];

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(DASHBOARD, get(dashboard).post(dashboard))
        .route(SEARCH, get(search).post(search))
        .route(STATES, post(states).get(states))
        .route(ACTION, post(action))
        .route(HEALTHZ, get(monitoring::healthz))
        .route(METRICS, get(monitoring::metrics))
        .route(STORE, get(store_page::redirect))
        .route(STORE_INDEX, get(store_page::index))
        .route(STORE_FILE, get(store_page::file))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(monitoring::count_requests))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// Collects images and their states for one reply; each image once.
struct Page {
    links: ActionLinks,
    installs: Vec<InstallView>,
    envelope: Envelope,
    seen: HashSet<String>,
}

impl Page {
    fn new(app: &AppState, host: &str) -> Self {
        Self::with_installs(host, app.installer.board().all())
    }

    fn with_installs(host: &str, installs: Vec<InstallView>) -> Self {
        Self {
            links: ActionLinks::new(host),
            installs,
            envelope: Envelope {
                images: Some(Vec::new()),
                states: Some(Vec::new()),
                ..Envelope::default()
            },
            seen: HashSet::new(),
        }
    }

    fn add(&mut self, image: &Image) {
        if !self.seen.insert(image.uri.clone()) {
            return;
        }
        let install = self
            .installs
            .iter()
            .find(|view| view.image.uri == image.uri);
        let state = views::image_state(image, install, &self.installs, &self.links);
        self.envelope
            .images
            .get_or_insert_default()
            .push(ImageInfo::of(image));
        self.envelope.states.get_or_insert_default().push(state);
    }

    /// Installs the UI must hear about even if it did not ask: running, failed, or (for the full
    /// page) installed images that left the catalog. Returns the URIs added.
    fn add_installs(&mut self, keep: impl Fn(&InstallView) -> bool) -> Vec<String> {
        let wanted: Vec<Arc<Image>> = self
            .installs
            .iter()
            .filter(|view| keep(view))
            .map(|view| view.image.clone())
            .collect();
        let mut added = Vec::new();
        for image in wanted {
            if !self.seen.contains(&image.uri) {
                self.add(&image);
                added.push(image.uri.clone());
            }
        }
        added
    }

    fn finish(self) -> Response {
        json_response(StatusCode::OK, &self.envelope)
    }
}

fn needs_attention(view: &InstallView) -> bool {
    view.state.is_active() || view.error.is_some()
}

/// The whole page: `images`, `states` and `sections` together (the UI draws a row only when it has
/// the image and its state as it reads `sections`). Rendered once per change of what it shows.
async fn dashboard(State(app): State<AppState>, headers: HeaderMap, signed: Signed) -> Response {
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(dashboard_cache::accepts_gzip);
    app.catalog.refresh_if_stale().await;
    app.installer.reconcile_if_stale(app.catalog.max_age());
    let inputs = DashboardInputs {
        catalog: app.catalog.current(),
        host: signed.host,
        installs: app.installer.board().all(),
        last_error: app.catalog.dashboard_message(),
    };
    let body = app
        .dashboards
        .get_or_render(&inputs, gzip, || render_dashboard(&inputs));
    let mut response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::VARY, "Accept-Encoding"),
        ],
        body,
    )
        .into_response();
    if gzip {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

fn render_dashboard(inputs: &DashboardInputs) -> Vec<u8> {
    let catalog = &inputs.catalog;
    let mut page = Page::with_installs(&inputs.host, inputs.installs.clone());
    let mut sections: Vec<Section> = Vec::new();
    for section in &catalog.sections {
        for uri in &section.image_uris {
            if let Some(image) = catalog.by_uri(uri) {
                page.add(image);
            }
        }
        sections.push(Section {
            title: section.title.clone(),
            summary: section.summary.clone(),
            image_uris: section.image_uris.clone(),
        });
    }
    let unsectioned: Vec<String> = catalog
        .images
        .iter()
        .filter(|image| !page.seen.contains(&image.uri))
        .map(|image| image.uri.clone())
        .collect();
    for uri in &unsectioned {
        page.add(catalog.by_uri(uri).expect("listed"));
    }
    if !unsectioned.is_empty() {
        sections.push(Section {
            title: "Other images".into(),
            summary: String::new(),
            image_uris: unsectioned,
        });
    }
    let gone = page.add_installs(|view| {
        view.state == crate::install::state::InstallState::Installed || needs_attention(view)
    });
    if !gone.is_empty() {
        sections.push(Section {
            title: "No longer in the store".into(),
            summary: "Installed or in progress here, but no longer offered by the image store."
                .into(),
            image_uris: gone,
        });
    }
    page.envelope.sections = Some(sections);
    page.envelope.error_message = inputs.last_error.clone();
    crate::json::to_ascii_json(&page.envelope)
}

/// Search over the cached catalog: works while upstream is down.
async fn search(State(app): State<AppState>, signed: Signed) -> Response {
    let query = signed.values("q").collect::<Vec<_>>().join(" ");
    let catalog = app.catalog.current();
    let mut page = Page::new(&app, &signed.host);
    let mut uris = Vec::new();
    for image in catalog::search(&catalog, &query) {
        page.add(image);
        uris.push(image.uri.clone());
    }
    page.envelope.sections = Some(vec![Section {
        title: "Search results".into(),
        summary: String::new(),
        image_uris: uris,
    }]);
    page.envelope.error_message = app.catalog.dashboard_message();
    page.finish()
}

/// The 5-second poll: states of the asked images plus every install under way or failed. Never
/// `sections` (that would rebuild the page), never a call upstream or to the disk.
async fn states(State(app): State<AppState>, signed: Signed) -> Response {
    let catalog = app.catalog.current();
    let mut page = Page::new(&app, &signed.host);
    for uri in signed.values("image-uri") {
        if let Some(image) = catalog.by_uri(uri) {
            page.add(image);
        } else if let Some(view) = page
            .installs
            .iter()
            .find(|view| view.image.uri == uri)
            .cloned()
        {
            page.add(&view.image);
        }
    }
    page.add_installs(needs_attention);
    page.finish()
}

/// `install`, `cancel`, `clear-error` on the action URIs we hand out; replies `{"state": {...}}`.
async fn action(
    State(app): State<AppState>,
    Path((key, action)): Path<(String, String)>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let image = app
        .catalog
        .find_by_key(&key)
        .or_else(|| {
            app.installer
                .board()
                .all()
                .into_iter()
                .find(|view| view.image.key == key)
                .map(|view| view.image)
        })
        .ok_or_else(|| ApiError::UnknownImage { key: key.clone() })?;
    match action.as_str() {
        "install" => {
            if let Some(stale) = app.catalog.stale_for(&key) {
                return Err(stale.into());
            }
            app.installer.request_install(&image)?;
        }
        "cancel" => {
            app.installer.cancel(&image.uri)?;
        }
        "clear-error" => app.installer.clear_error(&image.uri)?,
        _ => return Err(ApiError::UnknownAction { action }),
    }
    let links = ActionLinks::new(&signed.host);
    let installs = app.installer.board().all();
    let install = installs.iter().find(|view| view.image.uri == image.uri);
    let state = views::image_state(&image, install, &installs, &links);
    Ok(json_response(
        StatusCode::OK,
        &Envelope {
            state: Some(state),
            ..Envelope::default()
        },
    ))
}
