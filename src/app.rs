//! Builds the parts from a [`Config`] and runs them until shutdown: the database, the catalog
//! service and its refresher, the cloud, the installer's workers, and the UI API server.

use crate::api::{self, AppState, nonce::NonceBook};
use crate::cache::Cache;
use crate::catalog::{CatalogError, CatalogService};
use crate::cloud::credentials::{self, CredentialsError};
use crate::cloud::eucalyptus::EucalyptusCloud;
use crate::cloud::{Cloud, CloudError, fake::FakeCloud};
use crate::config::{CloudMode, Config};
use crate::db::{Db, DbError};
use crate::fetch::{FetchError, Fetcher};
use crate::install::Installer;
use crate::publish::Publisher;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often the catalog is refreshed when nobody opens the dashboard.
const BACKGROUND_REFRESH: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("HTTP client: {0}")]
    Http(#[from] FetchError),
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    #[error("{0}")]
    Cloud(#[from] CloudError),
    #[error("serving the UI API: {0}")]
    Serve(std::io::Error),
}

/// Runs the proxy on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let (cloud, secret): (Arc<dyn Cloud>, String) = match &config.cloud {
        CloudMode::Fake { secret } => (Arc::new(FakeCloud::new(&config.data_dir)), secret.clone()),
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
    std::fs::create_dir_all(&config.data_dir).map_err(|source| AppError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    if !config.keyring.exists() {
        tracing::warn!(
            "keyring {} does not exist: no catalog can be verified until it does",
            config.keyring.display()
        );
    }
    let db = Db::open(&config.data_dir.join("state.sqlite"))?;
    let fetcher = Fetcher::new(config.retry)?;
    let catalog = Arc::new(CatalogService::new(
        config.api_url.clone(),
        config.keyring.clone(),
        fetcher.clone(),
        db.clone(),
        config.catalog_max_age,
    )?);
    let installer = Installer::new(
        db,
        Cache::new(&config.data_dir),
        fetcher,
        config.keyring.clone(),
        Publisher::new(cloud, &config.data_dir)
            .with_gzip(config.gzip)
            .with_retry(config.retry),
        config.workers,
    )?;
    let workers = tokio::spawn(installer.clone().run(shutdown.clone()));
    let refresher = tokio::spawn(refresh_periodically(
        catalog.clone(),
        installer.clone(),
        shutdown.clone(),
    ));
    let state = AppState {
        catalog,
        installer,
        secret: Arc::from(secret.into_bytes()),
        nonces: Arc::new(NonceBook::new(crate::limits::NONCE_CAPACITY)),
        dashboards: Arc::default(),
    };
    crate::notify::ready();
    let served = api::serve::serve(listener, api::router(state), shutdown.clone()).await;
    shutdown.cancel();
    let _ = workers.await;
    let _ = refresher.await;
    served.map_err(AppError::Serve)
}

/// The catalog, and the installs against the cloud's list of images, every so often.
async fn refresh_periodically(
    catalog: Arc<CatalogService>,
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
