//! The upstream catalog (SPEC §5): fetched document by document as its format asks
//! (`format/`), each verified through the trust service, refused if older than the one already
//! accepted, kept in SQLite tagged by format, and served from memory. When upstream is down or
//! sends something we refuse, the last good catalog stays and the reason is kept for the
//! dashboard's `error-message`. Nothing here knows a format's documents or vocabulary.

pub mod format;
pub mod model;
pub mod upstreams;

use crate::db::{Db, DbError, StoredCatalog, StoredDocument};
use crate::fetch::{FetchError, Fetcher};
use crate::limits::{
    CATALOG_FETCH_TIMEOUT, MAX_CATALOG_BYTES, MAX_OFFERED_KEYRING_BYTES, MAX_SIGNATURE_BYTES,
};
use crate::trust::{self, Keyring, Trust, TrustError};
use format::{
    Authentication, CatalogFormat, DocumentRequest, FormatError, Parsed, Proof, VerifiedDocument,
};
use model::{Catalog, Image, StreamIdentity};
use reqwest::Url;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a refresh did not accept a catalog; `failure_line` makes it the dashboard's line.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Upstream has no such document, and the format knows why that may be.
    #[error("{fetch}; {advice}")]
    Missing {
        fetch: FetchError,
        advice: &'static str,
    },
    /// The trust service's refusal, printed in the message (so it is not also the `source`).
    #[error("its signature was refused: {0}")]
    Signature(TrustError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(
        "it is older ({offered}) than the catalog already accepted ({accepted}): refusing a rollback"
    )]
    Rollback { offered: String, accepted: String },
    /// A keyring offered for a rollover whose signature (or content) was refused: nothing of it
    /// is trusted, and the catalog is not read.
    #[error("the keyring offered at {url} was refused, nothing of it is trusted: {cause}")]
    Rollover { url: String, cause: TrustError },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A catalog past `--max-catalog-age` (TUF's freeze attack: someone in the middle, or a mirror
/// that stopped syncing, serving an old, genuinely signed catalog forever). Its images stay on the
/// dashboard, this line above them, and an install from it is refused with it. Its age is that
/// of its oldest document (`updated` of the image-store/1 catalog; of the simplestreams index and
/// of each products file followed, RFC 2822): a frozen products file behind a fresh index counts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "The image catalog of {upstream} was last updated {updated}, {age_days} days ago (max-catalog-age is {limit_days}): its images are shown but not installed until the upstream publishes a newer one"
)]
pub struct StaleCatalog {
    pub upstream: String,
    /// RFC 3339.
    pub updated: String,
    pub age_days: u64,
    pub limit_days: u64,
}

impl From<TrustError> for CatalogError {
    fn from(error: TrustError) -> Self {
        CatalogError::Signature(error)
    }
}

impl CatalogError {
    /// Counts a refused or unreachable catalog in `image_store_proxy_upstream_errors_total`.
    /// Fetch failures were counted where they happened (`fetch.rs`); a trust failure that is
    /// not upstream's (our keyring) and our own database are not upstream's doing.
    fn record(&self) {
        let kind = match self {
            CatalogError::Signature(refusal) | CatalogError::Rollover { cause: refusal, .. }
                if !refusal.is_upstream_fault() =>
            {
                return;
            }
            CatalogError::Fetch(_) | CatalogError::Missing { .. } | CatalogError::Db(_) => return,
            CatalogError::Signature(_) => "catalog-signature",
            CatalogError::Format(_) => "catalog-format",
            CatalogError::Rollback { .. } => "catalog-rollback",
            CatalogError::Rollover { .. } => "keyring-rollover",
        };
        crate::metrics::global().upstream_error(kind);
    }
}

/// `updated` of what was accepted last, Unix seconds: the rollback watermarks.
#[derive(Debug, Clone, Default)]
struct Accepted {
    /// The catalog's (0: none accepted yet).
    catalog: i64,
    /// Each document's, by name.
    documents: HashMap<String, i64>,
}

struct RefreshStatus {
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    last_error: Option<String>,
    accepted: Accepted,
}

/// The one upstream's catalog: refreshed through its format, served from memory, the last good
/// one kept when a refresh fails.
pub struct CatalogService {
    upstream: Url,
    format: Box<dyn CatalogFormat>,
    trust: Arc<Trust>,
    fetcher: Fetcher,
    db: Db,
    current: RwLock<Arc<Catalog>>,
    status: Mutex<RefreshStatus>,
    /// One refresh at a time; others wait for its outcome instead of fetching again.
    refresh_gate: tokio::sync::Mutex<()>,
    max_age: Duration,
    /// `image-store-proxy plan`: a refresh verifies and serves, but stores nothing.
    read_only: bool,
    /// `--max-catalog-age`: how old its oldest document may be for installs (`None`: no limit).
    freshness: Option<Duration>,
}

impl CatalogService {
    /// A service whose refreshes change nothing on disk (`image-store-proxy plan`): what it
    /// verifies is served from memory only, and the next daemon refresh judges it afresh.
    pub fn read_only(self) -> Self {
        Self {
            read_only: true,
            ..self
        }
    }

    /// Starts from the last catalog accepted (verified when it was accepted), read back through
    /// `format`; a stored catalog of another format, or one the format now refuses, is ignored.
    pub fn new(
        upstream: Url,
        format: Box<dyn CatalogFormat>,
        trust: Arc<Trust>,
        fetcher: Fetcher,
        db: Db,
        max_age: Duration,
    ) -> Result<Self, CatalogError> {
        let mut catalog = Catalog::empty();
        let mut accepted = Accepted::default();
        if let Some(stored) = db.load_catalog(upstream.as_str())? {
            let installed = installed_streams(&db)?;
            match Self::read_stored(format.as_ref(), &trust, &upstream, stored, &installed) {
                Ok((parsed, stored_accepted)) => {
                    catalog = parsed;
                    accepted = stored_accepted;
                }
                Err(e) => tracing::warn!("ignoring the stored catalog: {e}"),
            }
        }
        Ok(Self {
            upstream,
            format,
            trust,
            fetcher,
            db,
            current: RwLock::new(Arc::new(catalog)),
            status: Mutex::new(RefreshStatus {
                last_attempt: None,
                last_success: None,
                last_error: None,
                accepted,
            }),
            refresh_gate: tokio::sync::Mutex::new(()),
            max_age,
            read_only: false,
            freshness: None,
        })
    }

    /// Refuses installs from a catalog whose oldest document is older than `limit` (`None`:
    /// never).
    pub fn with_freshness(self, limit: Option<Duration>) -> Self {
        Self {
            freshness: limit,
            ..self
        }
    }

    /// The accepted catalog, if it is past the freshness limit at `now` (Unix seconds).
    pub fn stale(&self, now: i64) -> Option<StaleCatalog> {
        let limit = self.freshness?;
        let status = self.status.lock().expect("catalog status lock");
        let accepted = &status.accepted;
        if accepted.catalog == 0 {
            return None;
        }
        let oldest = accepted
            .documents
            .values()
            .copied()
            .min()
            .unwrap_or(accepted.catalog)
            .min(accepted.catalog);
        let age = now.saturating_sub(oldest).max(0) as u64;
        (age > limit.as_secs()).then(|| StaleCatalog {
            upstream: self.upstream.to_string(),
            updated: rfc3339_unix(oldest),
            age_days: age / DAY_SECONDS,
            limit_days: limit.as_secs() / DAY_SECONDS,
        })
    }

    /// Whether `key` is an image of this upstream's catalog.
    pub fn offers(&self, key: &str) -> bool {
        self.current().by_key(key).is_some()
    }

    /// A stored catalog through its format. Detached signatures verified when the documents
    /// were accepted; an inline-signed document is verified again to get at its text.
    fn read_stored(
        format: &dyn CatalogFormat,
        trust: &Trust,
        upstream: &Url,
        stored: StoredCatalog,
        installed: &[StreamIdentity],
    ) -> Result<(Catalog, Accepted), CatalogError> {
        if stored.format != format.name() {
            return Err(CatalogError::Format(FormatError::Stored {
                found: stored.format,
                expected: format.name(),
            }));
        }
        let mut accepted = Accepted {
            catalog: stored.updated_unix,
            documents: HashMap::new(),
        };
        let mut documents = Vec::new();
        for stored in stored.documents {
            let proof = match stored.signature {
                Some(signature) => Proof::Detached { signature },
                None if format.accepts_unsigned() && !trust::is_clear_signed(&stored.document) => {
                    Proof::Unsigned
                }
                None => Proof::Inline {
                    text: trust.verify_inline(&stored.document)?,
                },
            };
            accepted
                .documents
                .insert(stored.name.clone(), stored.updated_unix);
            documents.push(VerifiedDocument {
                name: stored.name,
                url: stored.url,
                document: stored.document,
                proof,
            });
        }
        let Parsed { catalog, .. } = format.build(upstream, &documents, installed)?;
        Ok((catalog, accepted))
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
            Ok((catalog, accepted)) => {
                tracing::info!(
                    images = catalog.images.len(),
                    "accepted the catalog of {}",
                    self.upstream
                );
                status.accepted = accepted;
                status.last_success = status.last_attempt;
                status.last_error = None;
                *self.current.write().expect("catalog lock") = Arc::new(catalog);
                None
            }
            Err(error) => {
                error.record();
                let line = self.failure_line(&error, status.accepted.catalog);
                tracing::warn!("{line}");
                status.last_error = Some(line.clone());
                Some(line)
            }
        }
    }

    /// Fetches and verifies every document the format asks for, refuses a rollback of any of
    /// them, builds the catalog and stores it; returns it with its rollback watermarks.
    async fn fetch_verified(&self) -> Result<(Catalog, Accepted), CatalogError> {
        // The keyring first: without it nothing fetched could be trusted. One keyring for all
        // the documents of this refresh; none for an upstream taken unsigned.
        let keyring = if self.format.accepts_unsigned() {
            None
        } else {
            self.take_rollover().await?;
            Some(self.trust.reload_if_changed()?)
        };
        let watermarks = self
            .status
            .lock()
            .expect("catalog status lock")
            .accepted
            .documents
            .clone();
        let mut pending: VecDeque<DocumentRequest> = self.format.roots(&self.upstream).into();
        let mut documents: Vec<(VerifiedDocument, OffsetDateTime)> = Vec::new();
        while let Some(request) = pending.pop_front() {
            if documents
                .iter()
                .any(|(known, _)| known.name == request.name)
            {
                continue;
            }
            let document = self.fetch_document(keyring.as_ref(), request).await?;
            let summary = self.format.read(&document)?;
            if let Some(&accepted) = watermarks.get(&document.name)
                && summary.updated.unix_timestamp() < accepted
            {
                return Err(CatalogError::Rollback {
                    offered: rfc3339(summary.updated),
                    accepted: rfc3339_unix(accepted),
                });
            }
            pending.extend(summary.next);
            documents.push((document, summary.updated));
        }
        let (documents, updated): (Vec<VerifiedDocument>, Vec<OffsetDateTime>) =
            documents.into_iter().unzip();
        let installed = installed_streams(&self.db)?;
        let Parsed { catalog, dropped } =
            self.format.build(&self.upstream, &documents, &installed)?;
        for reason in &dropped {
            tracing::warn!("catalog entry skipped: {reason}");
        }
        let accepted = Accepted {
            catalog: catalog.updated.unix_timestamp(),
            documents: documents
                .iter()
                .zip(&updated)
                .map(|(document, updated)| (document.name.clone(), updated.unix_timestamp()))
                .collect(),
        };
        if self.read_only {
            return Ok((catalog, accepted));
        }
        self.db.store_catalog(
            self.upstream.as_str(),
            &StoredCatalog {
                format: self.format.name().to_string(),
                updated: rfc3339(catalog.updated),
                updated_unix: accepted.catalog,
                accepted_at: crate::db::now_unix(),
                documents: documents
                    .into_iter()
                    .zip(updated)
                    .map(|(document, updated)| StoredDocument {
                        signature: document.signature().map(<[u8]>::to_vec),
                        name: document.name,
                        url: document.url,
                        document: document.document,
                        updated: rfc3339(updated),
                        updated_unix: updated.unix_timestamp(),
                    })
                    .collect(),
            },
        )?;
        Ok((catalog, accepted))
    }

    /// An in-band key rollover: the keyring upstream publishes beside its catalog, if it does,
    /// signed by a key trusted now, adds its keys (and their revocations) before the catalog is
    /// verified, persisted first so a restart keeps them. A refused one changes nothing and
    /// fails the refresh.
    async fn take_rollover(&self) -> Result<(), CatalogError> {
        let Some(url) = self.format.keyring_url(&self.upstream) else {
            return Ok(());
        };
        let Some(keyring) = self
            .fetcher
            .get_small_if_published(
                url.as_str(),
                MAX_OFFERED_KEYRING_BYTES,
                CATALOG_FETCH_TIMEOUT,
            )
            .await?
        else {
            return Ok(());
        };
        let signature = self
            .fetcher
            .get_small(
                &format!("{url}.asc"),
                MAX_SIGNATURE_BYTES,
                CATALOG_FETCH_TIMEOUT,
            )
            .await?;
        let offer = self
            .trust
            .check_rollover(&keyring, &signature)
            .map_err(|cause| CatalogError::Rollover {
                url: url.to_string(),
                cause,
            })?;
        if offer.is_empty() {
            return Ok(());
        }
        let anchor = self.trust.keyring_path().to_string_lossy().into_owned();
        let keys = self.trust.adopt(offer, |certs| {
            self.db
                .store_rollover(&anchor, certs, self.upstream.as_str())
        })?;
        tracing::info!(
            "accepted the keyring offered at {url}: trusting {} beside {anchor}",
            keys.join(", ")
        );
        Ok(())
    }

    /// One document, fetched with the caps and verified as its request says.
    async fn fetch_document(
        &self,
        keyring: Option<&Arc<Keyring>>,
        request: DocumentRequest,
    ) -> Result<VerifiedDocument, CatalogError> {
        // An unsigned upstream's document that is signed after all is still verified.
        let keyring = || match keyring {
            Some(keyring) => Ok(keyring.clone()),
            None => self.trust.reload_if_changed(),
        };
        let document = self
            .fetcher
            .get_small(
                request.url.as_str(),
                MAX_CATALOG_BYTES,
                CATALOG_FETCH_TIMEOUT,
            )
            .await
            .map_err(
                |fetch| match (&fetch, self.format.missing_document_advice(&request)) {
                    (FetchError::Status { status: 404, .. }, Some(advice)) => {
                        CatalogError::Missing { fetch, advice }
                    }
                    _ => CatalogError::Fetch(fetch),
                },
            )?;
        let proof = match &request.authentication {
            Authentication::Detached { signature_url } => {
                let signature = self
                    .fetcher
                    .get_small(
                        signature_url.as_str(),
                        MAX_SIGNATURE_BYTES,
                        CATALOG_FETCH_TIMEOUT,
                    )
                    .await?;
                keyring()?.verify_bytes(&document, &signature)?;
                Proof::Detached { signature }
            }
            Authentication::Inline => Proof::Inline {
                text: keyring()?.verify_inline(&document)?,
            },
            Authentication::Unsigned => Proof::Unsigned,
        };
        Ok(VerifiedDocument {
            name: request.name,
            url: request.url.to_string(),
            document,
            proof,
        })
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
                self.upstream
            ),
            CatalogError::Fetch(cause) => format!("Image store unreachable: {cause}; {kept}"),
            CatalogError::Db(cause) => format!("Could not keep the image catalog: {cause}; {kept}"),
            cause => format!(
                "Refused the image catalog from {}: {cause}; {kept}",
                self.upstream
            ),
        }
    }
}

const DAY_SECONDS: u64 = 24 * 60 * 60;

/// The stream versions of every install that is done or under way: they stay on offer.
fn installed_streams(db: &Db) -> Result<Vec<StreamIdentity>, DbError> {
    use crate::install::state::InstallState;
    Ok(db
        .installs()?
        .into_iter()
        .filter(|row| row.state == InstallState::Installed || row.state.is_active())
        .filter_map(|row| row.image.stream.clone())
        .collect())
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

#[cfg(test)]
pub(crate) mod tests {
    //! The service with a format shaped as simplestreams is: a clear-signed index that names a
    //! products document (with a detached signature here, to drive both kinds of proof).
    use super::*;
    use crate::catalog::model::{
        CatalogBuilder, Compression, FileKind, FileRef, ImageDraft, Packing,
    };
    use crate::fetch::RetryPolicy;
    use crate::trust::tests::Gpg;
    use format::DocumentSummary;

    struct TwoLevel;

    #[derive(serde::Deserialize)]
    struct Document {
        updated: i64,
        #[serde(default)]
        next: Vec<String>,
        #[serde(default)]
        images: Vec<String>,
    }

    fn read(document: &VerifiedDocument) -> Document {
        serde_json::from_slice(document.text()).expect("the test's documents are JSON")
    }

    impl CatalogFormat for TwoLevel {
        fn name(&self) -> &'static str {
            "two-level/1"
        }

        fn keyring_url(&self, _upstream: &Url) -> Option<Url> {
            None
        }

        fn roots(&self, upstream: &Url) -> Vec<DocumentRequest> {
            vec![DocumentRequest {
                name: "index".into(),
                url: upstream.join("index.sjson").unwrap(),
                authentication: Authentication::Inline,
            }]
        }

        fn read(&self, document: &VerifiedDocument) -> Result<DocumentSummary, FormatError> {
            let here = Url::parse(&document.url).unwrap();
            let parsed = read(document);
            Ok(DocumentSummary {
                updated: OffsetDateTime::from_unix_timestamp(parsed.updated).unwrap(),
                next: parsed
                    .next
                    .iter()
                    .map(|name| DocumentRequest {
                        name: name.clone(),
                        url: here.join(&format!("{name}.json")).unwrap(),
                        authentication: Authentication::Detached {
                            signature_url: here.join(&format!("{name}.json.asc")).unwrap(),
                        },
                    })
                    .collect(),
            })
        }

        fn build(
            &self,
            upstream: &Url,
            documents: &[VerifiedDocument],
            _installed: &[model::StreamIdentity],
        ) -> Result<Parsed, FormatError> {
            let mut builder = CatalogBuilder::default();
            let mut updated = OffsetDateTime::UNIX_EPOCH;
            for document in documents {
                let parsed = read(document);
                if document.name == "index" {
                    updated = OffsetDateTime::from_unix_timestamp(parsed.updated).unwrap();
                }
                for uri in parsed.images {
                    builder.offer(&uri, || {
                        Image::from_draft(
                            ImageDraft {
                                uri: uri.clone(),
                                product: None,
                                title: String::new(),
                                version: "1".into(),
                                summary: String::new(),
                                description_html: String::new(),
                                icon_uri: None,
                                provider: None,
                                tags: Vec::new(),
                                arch: "x86_64",
                                files: vec![FileRef {
                                    kind: FileKind::Image,
                                    url: upstream.join("disk1.img").unwrap().to_string(),
                                    size: 1,
                                    sha256: model::checked_sha256(FileKind::Image, &"a".repeat(64))
                                        .unwrap(),
                                    signature_url: None,
                                    compression: Compression::None,
                                    packing: Packing::Raw,
                                    provides: Vec::new(),
                                }],
                                virtualization: model::Virtualization::Hvm,
                                stream: None,
                                fields: Default::default(),
                            },
                            upstream,
                        )
                    });
                }
            }
            let (catalog, dropped) = builder.finish(updated, Vec::new());
            Ok(Parsed { catalog, dropped })
        }
    }

    /// What a test mirror serves: path -> bytes.
    pub(crate) type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

    /// A static mirror on loopback, serving `files` by path (other formats' tests use it too).
    pub(crate) async fn mirror(files: Files) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let found = files.lock().unwrap().get(uri.path()).cloned();
            async move {
                match found {
                    Some(bytes) => (axum::http::StatusCode::OK, bytes),
                    None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Url::parse(&format!("http://{address}/mirror/")).unwrap()
    }

    /// What a format's service test starts from: a signing key, its keyring as the trust
    /// service, a loopback mirror, a database and a fetcher.
    pub(crate) struct Upstream {
        pub(crate) _dir: tempfile::TempDir,
        pub(crate) gpg: Gpg,
        pub(crate) trust: Arc<Trust>,
        pub(crate) files: Files,
        pub(crate) upstream: Url,
        pub(crate) db: Db,
        pub(crate) fetcher: Fetcher,
    }

    /// A catalog service of `format` over `upstream`, refreshed only when a test says so.
    pub(crate) fn service(
        upstream: &Url,
        format: Box<dyn CatalogFormat>,
        trust: &Arc<Trust>,
        fetcher: &Fetcher,
        db: &Db,
    ) -> CatalogService {
        let max_age = Duration::from_secs(3600);
        let service = CatalogService::new(
            upstream.clone(),
            format,
            trust.clone(),
            fetcher.clone(),
            db.clone(),
            max_age,
        );
        service.unwrap()
    }

    /// An [`Upstream`] whose key is named `uid`.
    pub(crate) async fn upstream(uid: &str) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let gpg = Gpg::new(uid);
        let keyring = dir.path().join("keyring.gpg");
        std::fs::write(&keyring, gpg.export()).unwrap();
        let files = Files::default();
        Upstream {
            trust: Arc::new(Trust::new(keyring)),
            upstream: mirror(files.clone()).await,
            files,
            db: Db::open(&dir.path().join("state.sqlite")).unwrap(),
            fetcher: Fetcher::new(RetryPolicy::default()).unwrap(),
            gpg,
            _dir: dir,
        }
    }

    /// Publishes a clear-signed index of time `index` naming `products` of time `products`.
    fn publish(gpg: &Gpg, files: &Files, index: i64, products: i64, images: &[&str]) {
        let index = format!(r#"{{"updated": {index}, "next": ["products"]}}"#);
        let products = serde_json::json!({"updated": products, "images": images}).to_string();
        let mut files = files.lock().unwrap();
        files.insert(
            "/mirror/index.sjson".into(),
            gpg.clearsign(index.as_bytes()),
        );
        files.insert(
            "/mirror/products.json.asc".into(),
            gpg.detach_sign(products.as_bytes()),
        );
        files.insert("/mirror/products.json".into(), products.into_bytes());
    }

    fn uris(service: &CatalogService) -> Vec<String> {
        let catalog = service.current();
        catalog
            .images
            .iter()
            .map(|image| image.uri.clone())
            .collect()
    }

    #[tokio::test]
    async fn a_format_of_several_documents_is_fetched_verified_kept_and_read_back() {
        let Upstream {
            _dir,
            gpg,
            trust,
            files,
            upstream,
            db,
            fetcher,
        } = upstream("Mirror <mirror@example.invalid>").await;
        let start = || service(&upstream, Box::new(TwoLevel), &trust, &fetcher, &db);
        let service = start();

        publish(&gpg, &files, 100, 100, &["u1"]);
        assert_eq!(service.refresh().await, None);
        assert_eq!(uris(&service), ["u1"]);

        // The products document goes back in time under a newer index: refused, u1 kept.
        publish(&gpg, &files, 200, 50, &["u2"]);
        let line = service.refresh().await.unwrap();
        assert!(
            line.contains("it is older (1970-01-01T00:00:50Z) than the catalog already accepted (1970-01-01T00:01:40Z): refusing a rollback")
                && line.ends_with("showing the catalog of 1970-01-01T00:01:40Z"),
            "{line}"
        );
        assert_eq!(uris(&service), ["u1"]);

        publish(&gpg, &files, 300, 300, &["u1", "u2"]);
        assert_eq!(service.refresh().await, None);
        assert_eq!(uris(&service), ["u1", "u2"]);

        // A restart reads the stored documents back through the format (the index verified
        // again for its text) and remembers each document's time.
        let service = start();
        assert_eq!(uris(&service), ["u1", "u2"]);
        publish(&gpg, &files, 400, 250, &["u3"]);
        let line = service.refresh().await.unwrap();
        assert!(line.contains("refusing a rollback"), "{line}");
        assert_eq!(uris(&service), ["u1", "u2"]);

        // A tampered clear-signed index is refused by the trust service.
        publish(&gpg, &files, 500, 500, &["u4"]);
        {
            let mut files = files.lock().unwrap();
            let index = files.get_mut("/mirror/index.sjson").unwrap();
            let text = String::from_utf8(index.clone())
                .unwrap()
                .replace("\"updated\": 500", "\"updated\": 600");
            *index = text.into_bytes();
        }
        let line = service.refresh().await.unwrap();
        assert!(
            line.contains("its signature was refused: bad signature"),
            "{line}"
        );
        assert_eq!(uris(&service), ["u1", "u2"]);
    }

    /// Freshness is the oldest document's: a products document frozen behind a fresh index makes
    /// the catalog stale; no limit, or no catalog yet, is never stale.
    #[tokio::test]
    async fn a_catalog_is_as_old_as_its_oldest_document() {
        let Upstream {
            _dir,
            gpg,
            trust,
            files,
            upstream,
            db,
            fetcher,
        } = upstream("Mirror <mirror@example.invalid>").await;
        let day = DAY_SECONDS as i64;
        let service = service(&upstream, Box::new(TwoLevel), &trust, &fetcher, &db)
            .with_freshness(Some(Duration::from_secs(30 * DAY_SECONDS)));
        let now = 100 * day;
        assert_eq!(service.stale(now), None, "nothing accepted yet");
        publish(&gpg, &files, 99 * day, 60 * day, &["u1"]);
        assert_eq!(service.refresh().await, None);
        let stale = service
            .stale(now)
            .expect("the products document is 40 days old");
        assert_eq!(
            (stale.age_days, stale.limit_days, stale.updated.as_str()),
            (40, 30, "1970-03-02T00:00:00Z")
        );
        assert_eq!(
            service.stale(90 * day),
            None,
            "30 days old is not yet stale"
        );
        let unlimited = service.with_freshness(None);
        assert_eq!(unlimited.stale(now), None);
    }
}
