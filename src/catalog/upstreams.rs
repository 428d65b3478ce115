//! Every configured upstream's catalog as the one catalog the UI sees: each upstream keeps its own
//! [`CatalogService`] (its keyring, documents, rollback watermarks and last good catalog), and the
//! Store tab shows their sections one after another in the configured order. A refusal or an
//! outage of one upstream leaves the others' images where they are.

use super::model::{Catalog, Image};
use super::{CatalogService, StaleCatalog};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Catalogs {
    services: Vec<CatalogService>,
    /// Said on the dashboard whatever the refreshes do (an upstream taken unsigned).
    warnings: Vec<String>,
    merged: Mutex<Merged>,
    /// Told after each refresh: subscriptions look at the catalog again then.
    refreshed: tokio::sync::Notify,
}

/// The merged catalog and the upstream catalogs it was made from (rebuilt when one changes).
struct Merged {
    parts: Vec<Arc<Catalog>>,
    catalog: Arc<Catalog>,
}

impl Catalogs {
    /// `services` in the Store tab's order.
    pub fn new(services: Vec<CatalogService>, warnings: Vec<String>) -> Self {
        let parts: Vec<Arc<Catalog>> = services.iter().map(CatalogService::current).collect();
        let catalog = merge(&parts);
        Self {
            services,
            warnings,
            merged: Mutex::new(Merged { parts, catalog }),
            refreshed: tokio::sync::Notify::new(),
        }
    }

    /// Notified after each refresh (one waiter; a refresh while nobody waits is kept for it).
    pub fn refreshed(&self) -> &tokio::sync::Notify {
        &self.refreshed
    }

    /// One upstream's catalog: `new` with no warnings.
    pub fn single(service: CatalogService) -> Self {
        Self::new(vec![service], Vec::new())
    }

    /// The catalogs of every upstream as one. The same `Arc` until one of them changes, so the
    /// dashboard's cache can tell.
    pub fn current(&self) -> Arc<Catalog> {
        let parts: Vec<Arc<Catalog>> = self.services.iter().map(CatalogService::current).collect();
        let mut merged = self.merged.lock().expect("merged catalog lock");
        let unchanged = merged.parts.len() == parts.len()
            && merged
                .parts
                .iter()
                .zip(&parts)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !unchanged {
            merged.catalog = merge(&parts);
            merged.parts = parts;
        }
        merged.catalog.clone()
    }

    pub fn find_by_key(&self, key: &str) -> Option<Arc<Image>> {
        self.current().by_key(key).cloned()
    }

    /// Why refreshes failed, one line per failing upstream joined: `None` while all succeed.
    pub fn last_error(&self) -> Option<String> {
        join(self.services.iter().filter_map(CatalogService::last_error))
    }

    /// The dashboard's `error-message`: the refresh failures, the catalogs past
    /// `--max-catalog-age`, then the standing warnings.
    pub fn dashboard_message(&self) -> Option<String> {
        let now = crate::db::now_unix();
        join(
            self.services
                .iter()
                .filter_map(CatalogService::last_error)
                .chain(
                    self.services
                        .iter()
                        .filter_map(|service| service.stale(now))
                        .map(|stale| stale.to_string()),
                )
                .chain(self.warnings.iter().cloned()),
        )
    }

    /// Why `key` may not be installed now: the catalog that offers it (the first, as the merged
    /// catalog keeps it) is past `--max-catalog-age`.
    pub fn stale_for(&self, key: &str) -> Option<StaleCatalog> {
        self.services
            .iter()
            .find(|service| service.offers(key))?
            .stale(crate::db::now_unix())
    }

    /// Seconds since the least recently verified upstream last verified (`None`: one has not
    /// yet, in this process).
    pub fn verified_seconds_ago(&self) -> Option<u64> {
        self.services
            .iter()
            .map(CatalogService::verified_seconds_ago)
            .try_fold(0, |oldest, ago| ago.map(|ago| oldest.max(ago)))
    }

    /// How old a catalog may get before a dashboard request refreshes it (the same for all).
    pub fn max_age(&self) -> Duration {
        self.services
            .iter()
            .map(CatalogService::max_age)
            .min()
            .unwrap_or_default()
    }

    /// Refreshes every upstream whose catalog is older than `max_age`, side by side.
    pub async fn refresh_if_stale(&self) {
        futures_util::future::join_all(self.services.iter().map(|s| s.refresh_if_stale())).await;
        self.refreshed.notify_one();
    }

    /// Refreshes every upstream now, side by side; returns the failures, if any, as one line.
    pub async fn refresh(&self) -> Option<String> {
        let failures =
            futures_util::future::join_all(self.services.iter().map(|s| s.refresh())).await;
        self.refreshed.notify_one();
        join(failures.into_iter().flatten())
    }
}

fn join(lines: impl Iterator<Item = String>) -> Option<String> {
    let lines: Vec<String> = lines.collect();
    (!lines.is_empty()).then(|| lines.join(" | "))
}

/// One upstream's catalog is itself; several are their sections in order, an image listed by two
/// upstreams kept from the first.
fn merge(parts: &[Arc<Catalog>]) -> Arc<Catalog> {
    match parts {
        [one] => one.clone(),
        _ => Arc::new(Catalog::merged(parts)),
    }
}
