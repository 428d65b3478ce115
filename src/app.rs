//! Builds the parts from a [`Config`] and runs them until shutdown: the database, the catalog
//! service and its refresher, the cloud, the installer's workers, and the UI API server.

use crate::api::{self, AppState, nonce::NonceBook};
use crate::cache::Cache;
use crate::cache::budget::CacheBudget;
use crate::catalog::format::CatalogFormat;
use crate::catalog::format::image_store::ImageStoreFormat;
use crate::catalog::format::simplestreams::SimplestreamsFormat;
use crate::catalog::upstreams::Catalogs;
use crate::catalog::{CatalogError, CatalogService};
use crate::cloud::credentials::{self, CredentialsError};
use crate::cloud::eucalyptus::EucalyptusCloud;
use crate::cloud::{Cloud, CloudError, fake::FakeCloud};
use crate::config::{CloudMode, Config, SimplestreamsSettings, Upstream, UpstreamFormat};
use crate::db::nonces::NonceStore;
use crate::db::{Db, DbError};
use crate::fetch::{FetchError, Fetcher, HostPolicy, RateLimit};
use crate::install::Installer;
use crate::publish::Publisher;
use crate::trust::Trust;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

/// How often the catalog is refreshed when nobody opens the dashboard.
const BACKGROUND_REFRESH: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("data directory {path}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A filter `config` let through but the format cannot compile (its line names it).
    #[error("upstream {url}: {cause}")]
    Filter {
        url: String,
        cause: Box<crate::simplestreams::FilterError>,
    },
    #[error("HTTP client")]
    Http(#[from] FetchError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("serving the UI API")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Budget(#[from] crate::cache::budget::BudgetError),
}

/// The parts, built and checked: what `run` serves. Building it is the start-up check (cloud
/// credentials, the data directory, the database), so the daemon announces that it listens only
/// once this exists.
pub struct App {
    catalog: Arc<Catalogs>,
    installer: Arc<Installer>,
    /// Every trust service, so that a reload reads each keyring again.
    trusts: Vec<Arc<Trust>>,
    secret: String,
    /// Accepted nonces, read back from `<data-dir>/nonces.sqlite`.
    nonces: Arc<NonceBook>,
    /// `--max-download-rate`'s bucket: a reload sets its rate.
    download_rate: Arc<RateLimit>,
    /// What the parts were built from: a reload is compared with it.
    config: Config,
}

impl App {
    /// Builds every part from `config`; any failure here stops the daemon before it serves.
    pub fn build(config: &Config) -> Result<Self, AppError> {
        keep_files_private();
        let (cloud, secret): (Arc<dyn Cloud>, String) = match &config.cloud {
            CloudMode::Fake { secret } => {
                (Arc::new(FakeCloud::new(&config.data_dir)), secret.clone())
            }
            CloudMode::Eucalyptus { cloud_config } => {
                // The Store servlet signs with the administrator's secret key (SPEC §4.1).
                let credentials = match cloud_config {
                    Some(file) => credentials::load(file)?,
                    None => credentials::from_euca_conf(&config.data_dir)?,
                };
                tracing::info!(
                    ec2 = %credentials.ec2_url,
                    s3 = %credentials.s3_url,
                    signature = ?credentials.signature,
                    "installing into the cloud of {}",
                    credentials.source.display()
                );
                let secret = credentials.key.secret.clone();
                let cloud = EucalyptusCloud::new(credentials, config.retry)?;
                (Arc::new(cloud), secret)
            }
        };
        prepare_data_dir(&config.data_dir)?;
        // The fake cloud makes its RSA keys on first use, a second's work: made now, beside the
        // start-up, the first install does not wait for them (a failure is the install's to say).
        let warming = cloud.clone();
        std::thread::spawn(move || {
            let _ = warming.bundle_keys();
        });
        let db = Db::open(&config.data_dir.join("state.sqlite"))?;
        // One trust service per keyring: the files' (detached signatures) and each upstream's
        // for its documents. Each warns now if its keyring is missing, and takes back the keys
        // rolled over to in-band before.
        let file_trust = trust_service(&db, &config.keyring)?;
        let mut trusts = vec![file_trust.clone()];
        let now = crate::db::now_unix();
        let nonces = NonceBook::on_disk(
            crate::limits::NONCE_CAPACITY,
            NonceStore::open(&config.data_dir.join("nonces.sqlite"), now)?,
            now,
        )?;
        let download_rate = Arc::new(RateLimit::new(config.max_download_rate));
        let fetcher = Fetcher::new(config.retry)?
            .with_connections(config.download_connections)
            .with_rate_limit(download_rate.clone())
            .with_hosts(HostPolicy::only(
                &config
                    .upstreams
                    .iter()
                    .map(|upstream| upstream.url.clone())
                    .collect::<Vec<_>>(),
                &config.allowed_hosts,
            ))?;
        let UpstreamServices {
            services,
            warnings,
            trusts: upstream_trusts,
        } = catalog_services(config, &db, &fetcher, &file_trust)?;
        trusts.extend(upstream_trusts);
        let catalog = Arc::new(Catalogs::new(services, warnings));
        let budget = CacheBudget::new(
            config.cache_budget,
            &config.data_dir,
            db.clone(),
            config.subscriptions.keep,
        );
        // The cache directory and the `files` table agree before anything counts on them.
        let (removed, forgotten) = budget.sweep()?;
        if removed + forgotten > 0 {
            tracing::info!(
                removed,
                forgotten,
                "cache files without a record removed, records without a file forgotten"
            );
        }
        let installer = Installer::with_budget(
            db,
            Cache::new(&config.data_dir),
            fetcher,
            file_trust,
            Publisher::new(cloud, &config.data_dir)
                .with_gzip(config.gzip)
                .with_retry(config.retry)
                .with_upload_concurrency(config.upload_concurrency),
            config.workers,
            budget,
        )?;
        Ok(Self {
            catalog,
            installer,
            trusts,
            secret,
            nonces: Arc::new(nonces),
            download_rate,
            config: config.clone(),
        })
    }

    /// Runs the workers, the catalog refresher and the UI API on `listener` until `shutdown` is
    /// cancelled, applying each configuration that arrives on `reloads` (`SIGHUP`).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        reloads: UnboundedReceiver<Config>,
    ) -> Result<(), AppError> {
        let workers = tokio::spawn(self.installer.clone().run(shutdown.clone()));
        let refresher = tokio::spawn(refresh_periodically(
            self.catalog.clone(),
            self.installer.clone(),
            shutdown.clone(),
        ));
        let subscriber = tokio::spawn(follow_subscriptions(
            self.catalog.clone(),
            self.installer.clone(),
            self.config.subscriptions.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(apply_reloads(
            self.config.clone(),
            self.catalog.clone(),
            self.trusts,
            self.download_rate.clone(),
            reloads,
        ));
        let state = AppState {
            catalog: self.catalog,
            installer: self.installer,
            secret: Arc::from(self.secret.into_bytes()),
            nonces: self.nonces,
            dashboards: Arc::default(),
        };
        crate::notify::ready();
        let served = api::serve::serve(listener, api::router(state), shutdown.clone()).await;
        shutdown.cancel();
        let _ = workers.await;
        let _ = refresher.await;
        let _ = subscriber.await;
        served.map_err(AppError::Serve)
    }
}

/// One catalog service per upstream, each with its keyring's trust (the files' trust where the
/// keyring is the same), the dashboard's standing warnings, and the trust services made here
/// (each reloaded on SIGHUP).
fn catalog_services(
    config: &Config,
    db: &Db,
    fetcher: &Fetcher,
    file_trust: &Arc<Trust>,
) -> Result<UpstreamServices, AppError> {
    let mut services = Vec::new();
    let mut warnings = Vec::new();
    let mut trusts = Vec::new();
    for upstream in &config.upstreams {
        let trust = if upstream.keyring == config.keyring {
            file_trust.clone()
        } else {
            let trust = trust_service(db, &upstream.keyring)?;
            trusts.push(trust.clone());
            trust
        };
        let format = catalog_format(upstream)?;
        if format.accepts_unsigned() {
            warnings.push(format!(
                    "Warning: the catalog of {} is taken unsigned (allow-unsigned): its images are only as trustworthy as the network to it",
                    upstream.url
                ));
        }
        tracing::info!(url = %upstream.url, format = format.name(), keyring = %upstream.keyring.display(), "upstream");
        services.push(
            CatalogService::new(
                upstream.url.clone(),
                format,
                trust,
                fetcher.clone(),
                db.clone(),
                config.catalog_max_age,
            )?
            .with_freshness(config.max_catalog_age),
        );
    }
    Ok(UpstreamServices {
        services,
        warnings,
        trusts,
    })
}

/// What `catalog_services` sets up for the upstreams.
struct UpstreamServices {
    services: Vec<CatalogService>,
    /// The dashboard's standing warnings (an upstream taken unsigned).
    warnings: Vec<String>,
    /// The trust services of keyrings other than the files' one.
    trusts: Vec<Arc<Trust>>,
}

/// `image-store-proxy plan`: what the next refresh would install and deregister, with sizes,
/// and the cache against its budget. The upstream catalogs are fetched and verified but not
/// stored; the database, the cloud and the cache are only read.
pub async fn plan(config: &Config) -> Result<String, AppError> {
    // A data directory with no state yet is planned from an empty one, without making it.
    let state = config.data_dir.join("state.sqlite");
    let db = Db::open(if state.exists() {
        &state
    } else {
        std::path::Path::new(":memory:")
    })?;
    let fetcher = Fetcher::new(config.retry)?;
    let file_trust = trust_service(&db, &config.keyring)?;
    let services = catalog_services(config, &db, &fetcher, &file_trust)?.services;
    let services: Vec<CatalogService> = services
        .into_iter()
        .map(CatalogService::read_only)
        .collect();
    let catalogs = Catalogs::new(services, Vec::new());
    let mut out = String::new();
    if let Some(failures) = catalogs.refresh().await {
        out.push_str(&format!(
            "Upstream not verified now, planning from the catalog last accepted: {failures}\n"
        ));
    }
    let settings = &config.subscriptions;
    if settings.is_empty() {
        out.push_str("No subscriptions (--subscribe): the proxy installs nothing by itself.\n");
    } else {
        for subscription in settings.texts() {
            out.push_str(&format!("Subscription \"{subscription}\"\n"));
        }
    }
    let installs = db.installs()?;
    let plan = crate::subscribe::plan(&catalogs.current(), &installs, settings);
    out.push_str(&plan.to_string());
    for planned in &plan.install {
        if let Some(stale) = catalogs.stale_for(&planned.image.key) {
            out.push_str(&format!(
                "Not installed at the next refresh, {}: {stale}\n",
                planned.image.title
            ));
        }
    }
    let budget = CacheBudget::new(config.cache_budget, &config.data_dir, db, settings.keep);
    out.push_str(&crate::subscribe::cache_line(
        budget.usage()?,
        config.cache_budget,
    ));
    Ok(out)
}

/// The trust service for the keyring file at `path`, with the keys the database says were rolled
/// over to in-band for it (a stored set that no longer reads is reported and left out).
fn trust_service(db: &Db, path: &std::path::Path) -> Result<Arc<Trust>, AppError> {
    let trust = Trust::new(path.to_owned());
    if let Some(certs) = db.load_rollover(&path.to_string_lossy())? {
        match trust.restore(&certs) {
            Ok(()) => tracing::info!(
                "keyring {}: trusting the keys rolled over to in-band too",
                path.display()
            ),
            Err(error) => tracing::warn!(
                "keyring {}: the keys rolled over to in-band are stored damaged and not trusted: {error}",
                path.display()
            ),
        }
    }
    Ok(Arc::new(trust))
}

/// The format an upstream speaks, set up as configured.
fn catalog_format(upstream: &Upstream) -> Result<Box<dyn CatalogFormat>, AppError> {
    match &upstream.format {
        UpstreamFormat::ImageStore => Ok(Box::new(ImageStoreFormat)),
        UpstreamFormat::Simplestreams(settings) => {
            Ok(Box::new(simplestreams_format(&upstream.url, settings)?))
        }
    }
}

fn simplestreams_format(
    url: &reqwest::Url,
    settings: &SimplestreamsSettings,
) -> Result<SimplestreamsFormat, AppError> {
    SimplestreamsFormat::from_settings(settings).map_err(|cause| AppError::Filter {
        url: url.to_string(),
        cause: Box::new(cause),
    })
}

/// What the proxy writes holds secrets (the database, the fake cloud's private keys, the cloud
/// credentials `euca_conf` hands over, bundles before they are encrypted): none of it is for other
/// users, whatever umask the proxy was started with. Directories come out 0750, files 0640.
fn keep_files_private() {
    use rustix::fs::Mode;
    rustix::process::umask(Mode::from_bits_truncate(0o027));
}

/// Creates the data directory 0750, or tightens an existing one that others may enter (a
/// stricter mode is kept).
fn prepare_data_dir(path: &std::path::Path) -> Result<(), AppError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |source| AppError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(failed)?;
    let mode = std::fs::metadata(path)
        .map_err(failed)?
        .permissions()
        .mode();
    if mode & 0o027 != 0 {
        let private = std::fs::Permissions::from_mode(mode & 0o7750);
        if let Err(error) = std::fs::set_permissions(path, private) {
            tracing::warn!(
                "data directory {} is mode {:04o}, open to other users, and cannot be tightened: {error}",
                path.display(),
                mode & 0o7777
            );
        }
    }
    Ok(())
}

/// Builds the proxy from `config` and runs it on `listener` until `shutdown` is cancelled, with
/// no reloads.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let (_no_reloads, reloads) = tokio::sync::mpsc::unbounded_channel();
    App::build(&config)?.run(listener, shutdown, reloads).await
}

/// Applies reloaded configurations (`SIGHUP`: the `--config` file read again, and the keyrings).
/// The keyring and the catalog are read anew at once; what the running parts were built with
/// (where it listens, the data directory, the upstream, the cloud, the workers, compression,
/// retries) is kept until the next restart, and a change to it is logged as such;
/// `max-download-rate` applies at once, to the downloads under way too.
async fn apply_reloads(
    mut running: Config,
    catalog: Arc<Catalogs>,
    trusts: Vec<Arc<Trust>>,
    download_rate: Arc<RateLimit>,
    mut reloads: UnboundedReceiver<Config>,
) {
    while let Some(config) = reloads.recv().await {
        for setting in settings_needing_a_restart(&running, &config) {
            tracing::warn!(
                "reload: {setting} changed; the change takes effect at the next restart"
            );
        }
        if config.max_download_rate != running.max_download_rate {
            download_rate.set_rate(config.max_download_rate);
            match config.max_download_rate {
                Some(rate) => tracing::info!("reload: downloads now share {rate} bytes/s"),
                None => tracing::info!("reload: downloads are no longer held to a rate"),
            }
        }
        running = config;
        tracing::info!("reloaded the configuration; reading the keyring and the catalog again");
        // Even a keyring whose size, time and inode look unchanged: the operator says it changed.
        for trust in &trusts {
            trust.forget();
        }
        // A refusal is logged by the catalog service itself, once.
        catalog.refresh().await;
    }
}

/// The settings that differ between `a` and `b` and that only a restart applies.
fn settings_needing_a_restart(a: &Config, b: &Config) -> Vec<&'static str> {
    [
        ("listen", a.listen != b.listen),
        ("data-dir", a.data_dir != b.data_dir),
        (
            "the upstreams (api-url, simplestreams, [[upstream]])",
            a.upstreams != b.upstreams,
        ),
        ("keyring", a.keyring != b.keyring),
        (
            "the cloud (fake-eucalyptus, cloud-config)",
            a.cloud != b.cloud,
        ),
        ("workers", a.workers != b.workers),
        ("catalog-max-age", a.catalog_max_age != b.catalog_max_age),
        ("max-catalog-age", a.max_catalog_age != b.max_catalog_age),
        ("allow-host", a.allowed_hosts != b.allowed_hosts),
        ("compression", a.gzip != b.gzip),
        ("retries and stalls", a.retry != b.retry),
        (
            "upload-concurrency",
            a.upload_concurrency != b.upload_concurrency,
        ),
        (
            "download-connections",
            a.download_connections != b.download_connections,
        ),
        (
            "subscribe, keep",
            a.subscriptions.texts() != b.subscriptions.texts()
                || a.subscriptions.keep != b.subscriptions.keep,
        ),
        (
            "cache-max-bytes, min-free-bytes",
            a.cache_budget != b.cache_budget,
        ),
    ]
    .into_iter()
    .filter_map(|(setting, changed)| changed.then_some(setting))
    .collect()
}

/// The catalog, and the installs against the cloud's list of images, every so often.
async fn refresh_periodically(
    catalog: Arc<Catalogs>,
    installer: Arc<Installer>,
    shutdown: CancellationToken,
) {
    loop {
        catalog.refresh().await;
        installer.reconcile_if_stale(BACKGROUND_REFRESH / 2);
        tokio::select! {
            _ = tokio::time::sleep(BACKGROUND_REFRESH) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Subscriptions: a pass after every catalog refresh and every install's end (so a version
/// past `keep` is retired once its successor is installed). Nothing runs without a
/// subscription: with none, nothing is installed or retired by the proxy itself.
async fn follow_subscriptions(
    catalog: Arc<Catalogs>,
    installer: Arc<Installer>,
    settings: crate::subscribe::Settings,
    shutdown: CancellationToken,
) {
    if settings.is_empty() {
        return;
    }
    tracing::info!(subscriptions = %settings.texts().join(" | "), keep = settings.keep, "subscribed");
    loop {
        let stale = |key: &str| catalog.stale_for(key).map(|stale| stale.to_string());
        installer
            .apply_subscriptions(&catalog.current(), &settings, &stale)
            .await;
        tokio::select! {
            _ = catalog.refreshed().notified() => {}
            _ = installer.settled().notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
