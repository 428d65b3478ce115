//! The upstream catalog (SPEC §5): fetched with its detached signature, verified against the
//! keyring, refused if older than the one already accepted, kept in SQLite, and served from memory.
//! When upstream is down or sends something we refuse, the last good catalog stays and the reason
//! is kept for the dashboard's `error-message`.

pub mod model;
pub mod wire;

use crate::db::{Db, DbError};
use crate::fetch::{FetchError, Fetcher};
use crate::keyring::{Keyring, TrustError};
use crate::limits::{CATALOG_FETCH_TIMEOUT, MAX_CATALOG_BYTES, MAX_SIGNATURE_BYTES};
use model::{Catalog, CatalogFormatError, Image};
use reqwest::Url;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("its signature was refused: {0}")]
    Signature(#[from] TrustError),
    #[error("{0}")]
    Format(#[from] CatalogFormatError),
    #[error(
        "it is older ({offered}) than the catalog already accepted ({accepted}): refusing a rollback"
    )]
    Rollback { offered: String, accepted: String },
    #[error("{0}")]
    Db(#[from] DbError),
}

impl CatalogError {
    /// Counts a refused or unreachable catalog in `image_store_proxy_upstream_errors_total`.
    /// Fetch failures were counted where they happened (`fetch.rs`); a missing or unreadable
    /// keyring and our own database are not upstream's doing.
    fn record(&self) {
        let kind = match self {
            CatalogError::Signature(
                TrustError::KeyringMissing { .. }
                | TrustError::KeyringUnreadable { .. }
                | TrustError::KeyringEmpty { .. },
            )
            | CatalogError::Fetch(_)
            | CatalogError::Db(_) => return,
            CatalogError::Signature(_) => "catalog-signature",
            CatalogError::Format(_) => "catalog-format",
            CatalogError::Rollback { .. } => "catalog-rollback",
        };
        crate::metrics::global().upstream_error(kind);
    }
}

struct RefreshStatus {
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    last_error: Option<String>,
    /// `updated` of the accepted catalog, Unix seconds (0: none yet).
    accepted_updated: i64,
}

pub struct CatalogService {
    api_url: Url,
    keyring_path: PathBuf,
    fetcher: Fetcher,
    db: Db,
    current: RwLock<Arc<Catalog>>,
    status: Mutex<RefreshStatus>,
    /// One refresh at a time; others wait for its outcome instead of fetching again.
    refresh_gate: tokio::sync::Mutex<()>,
    max_age: Duration,
}

impl CatalogService {
    /// Starts from the last catalog accepted (verified when it was accepted).
    pub fn new(
        api_url: Url,
        keyring_path: PathBuf,
        fetcher: Fetcher,
        db: Db,
        max_age: Duration,
    ) -> Result<Self, CatalogError> {
        let mut catalog = Catalog::empty();
        let mut accepted_updated = 0;
        if let Some(stored) = db.load_catalog()? {
            match Catalog::parse(&stored.document, &api_url) {
                Ok((parsed, _)) => {
                    catalog = parsed;
                    accepted_updated = stored.updated_unix;
                }
                Err(e) => tracing::warn!("ignoring the stored catalog: {e}"),
            }
        }
        Ok(Self {
            api_url,
            keyring_path,
            fetcher,
            db,
            current: RwLock::new(Arc::new(catalog)),
            status: Mutex::new(RefreshStatus {
                last_attempt: None,
                last_success: None,
                last_error: None,
                accepted_updated,
            }),
            refresh_gate: tokio::sync::Mutex::new(()),
            max_age,
        })
    }

    pub fn current(&self) -> Arc<Catalog> {
        self.current.read().expect("catalog lock").clone()
    }

    /// Why the last refresh failed, as one line for the dashboard; `None` once a refresh succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.status
            .lock()
            .expect("catalog status lock")
            .last_error
            .clone()
    }

    /// Seconds since a catalog last fetched and verified in this process (`None`: not yet; the
    /// one served may come from the database, verified by an earlier run).
    pub fn verified_seconds_ago(&self) -> Option<u64> {
        self.status
            .lock()
            .expect("catalog status lock")
            .last_success
            .map(|at| at.elapsed().as_secs())
    }

    pub fn find_by_key(&self, key: &str) -> Option<Arc<Image>> {
        self.current().by_key(key).cloned()
    }

    /// How old the catalog may get before a dashboard request refreshes it.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Refreshes when the catalog is older than `max_age` (the dashboard calls this).
    pub async fn refresh_if_stale(&self) {
        let stale = |status: &RefreshStatus| {
            status
                .last_attempt
                .is_none_or(|at| at.elapsed() >= self.max_age)
        };
        if !stale(&self.status.lock().expect("catalog status lock")) {
            return;
        }
        let _gate = self.refresh_gate.lock().await;
        // Someone else may have refreshed while we waited for the gate.
        if stale(&self.status.lock().expect("catalog status lock")) {
            self.refresh_locked().await;
        }
    }

    /// Fetches, verifies and accepts the upstream catalog now. Returns the failure, if any.
    pub async fn refresh(&self) -> Option<String> {
        let _gate = self.refresh_gate.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Option<String> {
        let outcome = self.fetch_verified().await;
        let mut status = self.status.lock().expect("catalog status lock");
        status.last_attempt = Some(Instant::now());
        match outcome {
            Ok((catalog, updated_unix)) => {
                tracing::info!(
                    images = catalog.images.len(),
                    "accepted the catalog of {}",
                    self.api_url
                );
                status.accepted_updated = updated_unix;
                status.last_success = status.last_attempt;
                status.last_error = None;
                *self.current.write().expect("catalog lock") = Arc::new(catalog);
                None
            }
            Err(error) => {
                error.record();
                let line = self.failure_line(&error, status.accepted_updated);
                tracing::warn!("{line}");
                status.last_error = Some(line.clone());
                Some(line)
            }
        }
    }

    async fn fetch_verified(&self) -> Result<(Catalog, i64), CatalogError> {
        let keyring = Keyring::load(&self.keyring_path)?;
        let base = model::directory_url(&self.api_url);
        let document_url = base
            .join("dashboard")
            .expect("a fixed relative path")
            .to_string();
        let signature_url = format!("{document_url}.asc");
        let document = self
            .fetcher
            .get_small(&document_url, MAX_CATALOG_BYTES, CATALOG_FETCH_TIMEOUT)
            .await?;
        let signature = self
            .fetcher
            .get_small(&signature_url, MAX_SIGNATURE_BYTES, CATALOG_FETCH_TIMEOUT)
            .await?;
        keyring.verify_bytes(&document, &signature)?;
        let (catalog, dropped) = Catalog::parse(&document, &self.api_url)?;
        for reason in &dropped {
            tracing::warn!("catalog entry skipped: {reason}");
        }
        let updated_unix = catalog.updated.unix_timestamp();
        let accepted = self
            .status
            .lock()
            .expect("catalog status lock")
            .accepted_updated;
        if updated_unix < accepted {
            return Err(CatalogError::Rollback {
                offered: rfc3339(catalog.updated),
                accepted: rfc3339_unix(accepted),
            });
        }
        self.db.store_catalog(
            &document,
            &signature,
            &rfc3339(catalog.updated),
            updated_unix,
        )?;
        Ok((catalog, updated_unix))
    }

    fn failure_line(&self, error: &CatalogError, accepted_updated: i64) -> String {
        let kept = if accepted_updated > 0 {
            format!("showing the catalog of {}", rfc3339_unix(accepted_updated))
        } else {
            "no catalog has been accepted yet".to_string()
        };
        match error {
            CatalogError::Fetch(cause @ FetchError::Oversized { .. }) => format!(
                "Refused the image catalog from {}: {cause}; {kept}",
                self.api_url
            ),
            CatalogError::Fetch(cause) => format!("Image store unreachable: {cause}; {kept}"),
            CatalogError::Db(cause) => format!("Could not keep the image catalog: {cause}; {kept}"),
            cause => format!(
                "Refused the image catalog from {}: {cause}; {kept}",
                self.api_url
            ),
        }
    }
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_else(|_| time.to_string())
}

fn rfc3339_unix(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(rfc3339)
        .unwrap_or_else(|_| unix.to_string())
}

/// Search (SPEC §4.2) over the cached catalog: every word of `query` must appear, case-insensitively,
/// in the title, summary, version, product or a tag.
pub fn search<'a>(catalog: &'a Catalog, query: &str) -> Vec<&'a Arc<Image>> {
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    catalog
        .images
        .iter()
        .filter(|image| {
            let haystack = format!(
                "{}\n{}\n{}\n{}\n{}",
                image.title,
                image.summary,
                image.version,
                image.product,
                image.tags.join("\n")
            )
            .to_lowercase();
            words.iter().all(|word| haystack.contains(word.as_str()))
        })
        .collect()
}
