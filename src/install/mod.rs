//! Installs (SPEC §1, §6): requests from the UI become rows in `installs` (the job queue and the
//! state at once); worker tasks take queued rows, download and verify each file into the cache,
//! and publish kernel, ramdisk and machine image to the cloud. Every state change is committed
//! before it is announced; a restart requeues whatever was in flight.

pub mod board;
mod job;
mod keyed_lock;
pub mod state;
/// Kept under their old names until every caller uses `crate::status` and `crate::pause`.
use crate::cache::Cache;
use crate::cache::budget::{BudgetSettings, CacheBudget};
use crate::catalog::model::{Catalog, FileKind, Image};
use crate::cloud::CloudError;
use crate::db::installs::{Change, Origin};
use crate::db::{Db, DbError};
use crate::fetch::Fetcher;
use crate::fetch::verified::VerifiedDownloads;
use crate::publish::Publisher;
use crate::status;
use crate::trust::Trust;
use board::{Board, InstallView};
use state::InstallState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub struct Installer {
    db: Db,
    board: Board,
    cache: Cache,
    fetcher: Fetcher,
    trust: Arc<Trust>,
    publisher: Publisher,
    /// The installs a worker owns right now, with the token that cancels each.
    running: Mutex<HashMap<String, CancellationToken>>,
    wake: Notify,
    workers: usize,
    /// When the installed images were last reconciled with the cloud's list.
    reconciled: Mutex<Option<std::time::Instant>>,
    /// Downloads by SHA-256 and publishes by artifact identity: one install at a time each.
    exclusive: keyed_lock::KeyedLocks,
    /// Makes room in the cache before an install downloads.
    budget: CacheBudget,
    /// Told each time an install attempt ends: subscriptions look again then.
    settled: Notify,
}

/// Why a subscription's old install could not be retired (it stays installed, and the next
/// pass tries again).
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Cloud(#[from] CloudError),
}

impl Installer {
    pub fn new(
        db: Db,
        cache: Cache,
        fetcher: Fetcher,
        trust: Arc<Trust>,
        publisher: Publisher,
        workers: usize,
    ) -> Result<Arc<Self>, DbError> {
        let budget = CacheBudget::new(
            BudgetSettings::default(),
            &cache.data_dir(),
            db.clone(),
            crate::limits::DEFAULT_SUBSCRIPTION_KEEP,
        );
        Self::with_budget(db, cache, fetcher, trust, publisher, workers, budget)
    }

    /// As [`Installer::new`], with the cache held to `budget`.
    pub fn with_budget(
        db: Db,
        cache: Cache,
        fetcher: Fetcher,
        trust: Arc<Trust>,
        publisher: Publisher,
        workers: usize,
        budget: CacheBudget,
    ) -> Result<Arc<Self>, DbError> {
        let requeued = db.requeue_interrupted()?;
        if requeued > 0 {
            tracing::info!(requeued, "resuming installs interrupted by the last stop");
        }
        let board = Board::default();
        for row in db.installs()? {
            board.put(&row);
        }
        Ok(Arc::new(Self {
            db,
            board,
            cache,
            fetcher,
            trust,
            publisher,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            workers: workers.max(1),
            reconciled: Mutex::new(None),
            exclusive: keyed_lock::KeyedLocks::default(),
            budget,
            settled: Notify::new(),
        }))
    }

    pub fn budget(&self) -> &CacheBudget {
        &self.budget
    }

    /// Notified when an install attempt ends.
    pub fn settled(&self) -> &Notify {
        &self.settled
    }

    /// The road by which jobs bring files verified into the cache.
    fn downloads(&self) -> VerifiedDownloads<'_> {
        VerifiedDownloads {
            fetcher: &self.fetcher,
            cache: &self.cache,
            db: &self.db,
            trust: &self.trust,
        }
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The state database answers (`/healthz`).
    pub fn check_db(&self) -> Result<(), DbError> {
        self.db.ping()
    }

    /// `install`: queues an attempt, or returns the state of one already queued, running or done.
    pub fn request_install(&self, image: &Image) -> Result<InstallView, DbError> {
        self.request_install_as(image, Origin::Operator, &status::queued())
    }

    fn request_install_as(
        &self,
        image: &Image,
        origin: Origin,
        detail: &str,
    ) -> Result<InstallView, DbError> {
        let (row, queued) = self.db.request_install(image, detail, origin)?;
        self.board.put(&row);
        if queued {
            tracing::info!(uri = %image.uri, attempt = row.attempt, origin = origin.as_str(), "install queued");
            self.wake.notify_waiters();
        }
        Ok(self.board.get(&image.uri).expect("just put"))
    }

    /// `cancel`: a queued install is cancelled at once; a running one at its next step.
    pub fn cancel(&self, uri: &str) -> Result<Option<InstallView>, DbError> {
        let running = self.running.lock().expect("running lock");
        if let Some(token) = running.get(uri) {
            token.cancel();
        } else if self
            .board
            .get(uri)
            .is_some_and(|view| view.state == InstallState::Queued)
        {
            let row = self.db.transition(
                uri,
                Change {
                    to: InstallState::Cancelled,
                    detail: status::CANCELLED,
                    error: None,
                    ids: None,
                },
            )?;
            self.board.put(&row);
        }
        Ok(self.board.get(uri))
    }

    /// Reconciles in the background unless that was done less than `max_age` ago (the dashboard
    /// calls this, as it refreshes the catalog).
    pub fn reconcile_if_stale(self: &Arc<Self>, max_age: Duration) {
        {
            let mut last = self.reconciled.lock().expect("reconcile lock");
            if last.is_some_and(|at| at.elapsed() < max_age) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let installer = self.clone();
        tokio::spawn(async move { installer.reconcile().await });
    }

    /// SPEC §7: an installed image whose machine image, kernel or ramdisk the cloud no longer
    /// lists (an operator deregistered it) becomes `deregistered`, which the UI shows as
    /// uninstalled; and the registrations the cloud lost are forgotten, so that installing again
    /// registers anew instead of pointing at ids that are gone.
    pub async fn reconcile(&self) {
        let listed_at = crate::db::now_unix();
        let listed = match self.publisher.cloud().registered().await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!("cannot list the cloud's images to reconcile installs: {error}");
                return;
            }
        };
        match self
            .db
            .forget_cloud_objects(self.publisher.cloud().id(), &listed, listed_at)
        {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(forgotten, "registrations the cloud no longer has"),
            Err(error) => tracing::error!("cannot forget lost registrations: {error}"),
        }
        let installs = match self.db.installs() {
            Ok(installs) => installs,
            Err(error) => {
                tracing::error!("cannot read installs to reconcile them: {error}");
                return;
            }
        };
        // Rows changed since the listing began may hold ids the listing could not see yet.
        for row in installs
            .iter()
            .filter(|row| row.state == InstallState::Installed && row.updated_at < listed_at)
        {
            let missing: Vec<(FileKind, &str)> = [
                (FileKind::Image, &row.ids.emi),
                (FileKind::Kernel, &row.ids.eki),
                (FileKind::Ramdisk, &row.ids.eri),
            ]
            .into_iter()
            .filter_map(|(kind, id)| {
                id.as_deref()
                    .filter(|id| !listed.contains(*id))
                    .map(|id| (kind, id))
            })
            .collect();
            if missing.is_empty() {
                continue;
            }
            let detail = status::deregistered(&missing);
            let change = Change {
                to: InstallState::Deregistered,
                detail: &detail,
                error: None,
                ids: Some(&crate::db::RegisteredIds::default()),
            };
            match self.db.transition(&row.image.uri, change) {
                Ok(row) => {
                    tracing::info!(uri = %row.image.uri, "{detail}");
                    self.board.put(&row);
                }
                Err(error) => tracing::warn!(uri = %row.image.uri, "{error}"),
            }
        }
        tracing::debug!("reconciled the installs with the cloud's images");
    }

    /// One subscription pass ([`crate::subscribe::plan`] over `catalog`): queues what it would
    /// install, then, when no install is in flight (none can be reusing a registration about to
    /// go), retires the subscription's installs past `keep`.
    /// `stale` says why an image may not be installed now (its catalog is past
    /// `--max-catalog-age`): a subscription is held to it like the operator's Install button.
    pub async fn apply_subscriptions(
        &self,
        catalog: &Catalog,
        settings: &crate::subscribe::Settings,
        stale: &(dyn Fn(&str) -> Option<String> + Sync),
    ) {
        let installs = match self.db.installs() {
            Ok(installs) => installs,
            Err(error) => {
                tracing::error!("cannot read installs for the subscriptions: {error}");
                return;
            }
        };
        let plan = crate::subscribe::plan(catalog, &installs, settings);
        for planned in &plan.install {
            if let Some(reason) = stale(&planned.image.key) {
                tracing::warn!(uri = %planned.image.uri, "not installed for its subscription: {reason}");
                continue;
            }
            let detail = status::queued_by_subscription(&planned.subscription);
            if let Err(error) =
                self.request_install_as(&planned.image, Origin::Subscription, &detail)
            {
                tracing::error!(uri = %planned.image.uri, "cannot queue a subscription's install: {error}");
            }
        }
        if !plan.install.is_empty() || installs.iter().any(|row| row.state.is_active()) {
            return;
        }
        for retirement in &plan.retire {
            let uri = &retirement.row.image.uri;
            if let Err(error) = self.retire(uri, plan.keep).await {
                tracing::warn!(%uri, "cannot retire an old subscription install, trying again at the next refresh: {error}");
            }
        }
    }

    /// Retires a subscription's install of `uri`: deregisters its registrations no other
    /// install uses (machine image first, so none is left linked to a kernel that is gone),
    /// deletes their bundles from the bucket, forgets them, and marks it `deregistered`. An
    /// operator's install is never touched.
    pub async fn retire(&self, uri: &str, keep: usize) -> Result<(), RetireError> {
        let installs = self.db.installs()?;
        let Some(row) = installs.iter().find(|row| row.image.uri == uri) else {
            return Ok(());
        };
        if row.origin != Origin::Subscription || row.state != InstallState::Installed {
            return Ok(());
        }
        let cloud = self.publisher.cloud();
        let cloud_id = cloud.id().to_string();
        for id in crate::subscribe::registrations_to_drop(row, &installs) {
            cloud.deregister(id).await?;
            if let Some((artifact, location)) = self.db.cloud_object_by_id(&cloud_id, id)? {
                let deleted = cloud.delete_bundle(&location).await?;
                self.db.forget_cloud_object(&cloud_id, &artifact)?;
                tracing::info!(%uri, %id, %location, deleted, "deregistered, bundle deleted");
            } else {
                tracing::info!(%uri, %id, "deregistered");
            }
        }
        let detail = status::retired_by_subscription(keep);
        let row = self.db.transition(
            uri,
            Change {
                to: InstallState::Deregistered,
                detail: &detail,
                error: None,
                ids: Some(&crate::db::RegisteredIds::default()),
            },
        )?;
        tracing::info!(%uri, "{detail}");
        self.board.put(&row);
        Ok(())
    }

    /// `clear-error`: forgets a failed attempt's message.
    pub fn clear_error(&self, uri: &str) -> Result<(), DbError> {
        if self.db.clear_error(uri)? {
            self.board.remove(uri);
        }
        Ok(())
    }

    /// Runs the workers until `shutdown`; interrupted installs stay in flight in the database and
    /// resume at the next start.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let workers: Vec<_> = (0..self.workers)
            .map(|_| tokio::spawn(self.clone().work(shutdown.clone())))
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
    }

    async fn work(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            match self.claim_next(&shutdown) {
                Ok(Some((uri, token))) => {
                    job::run(&self, &uri, &token, &shutdown).await;
                    self.running.lock().expect("running lock").remove(&uri);
                    self.budget.measure();
                    self.settled.notify_one();
                    continue;
                }
                Ok(None) => {}
                Err(error) => tracing::error!("cannot read the install queue: {error}"),
            }
            tokio::select! {
                _ = &mut wake => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Takes the oldest queued install no worker owns.
    fn claim_next(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<(String, CancellationToken)>, DbError> {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let mut running = self.running.lock().expect("running lock");
        let next =
            self.db.installs()?.into_iter().find(|row| {
                row.state == InstallState::Queued && !running.contains_key(&row.image.uri)
            });
        Ok(next.map(|row| {
            let token = shutdown.child_token();
            running.insert(row.image.uri.clone(), token.clone());
            (row.image.uri.clone(), token)
        }))
    }
}
