//! The last rendered dashboard, reused while nothing it shows has changed. The UI opens the page
//! far more often than the catalog or an install changes, and 200 images make a reply of about
//! 130 KB that takes longer to build than to send. Each request is still signed and its nonce
//! checked before it gets here; only the rendering is shared.
//!
//! A reply depends on: the catalog (by identity: a refresh builds a new `Arc`), the `Host` the UI
//! used (it is in every action URI), every install's view, and the last refresh error. The key
//! holds all of them, so a hit is exactly the reply a fresh rendering would give.

use crate::catalog::model::{Catalog, Image};
use crate::install::board::InstallView;
use crate::install::state::InstallState;
use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// Everything one dashboard reply is rendered from.
pub struct DashboardInputs {
    pub catalog: Arc<Catalog>,
    pub host: String,
    pub installs: Vec<InstallView>,
    pub last_error: Option<String>,
}

/// The part of an install's view that a reply shows, compared exactly (the image by identity).
struct ShownInstall {
    image: Arc<Image>,
    state: InstallState,
    percentage: u8,
    detail: String,
    error: Option<String>,
    ids: [Option<String>; 3],
}

impl ShownInstall {
    fn of(view: &InstallView) -> Self {
        Self {
            image: view.image.clone(),
            state: view.state,
            percentage: view.percentage(),
            detail: view.detail.clone(),
            error: view.error.clone(),
            ids: [
                view.ids.emi.clone(),
                view.ids.eki.clone(),
                view.ids.eri.clone(),
            ],
        }
    }

    fn same(&self, view: &InstallView) -> bool {
        Arc::ptr_eq(&self.image, &view.image)
            && self.state == view.state
            && self.percentage == view.percentage()
            && self.detail == view.detail
            && self.error == view.error
            && self.ids
                == [
                    view.ids.emi.clone(),
                    view.ids.eki.clone(),
                    view.ids.eri.clone(),
                ]
    }
}

struct Entry {
    catalog: Arc<Catalog>,
    host: String,
    installs: Vec<ShownInstall>,
    last_error: Option<String>,
    body: Bytes,
}

impl Entry {
    fn matches(&self, inputs: &DashboardInputs) -> bool {
        Arc::ptr_eq(&self.catalog, &inputs.catalog)
            && self.host == inputs.host
            && self.last_error == inputs.last_error
            && self.installs.len() == inputs.installs.len()
            && self
                .installs
                .iter()
                .zip(&inputs.installs)
                .all(|(shown, view)| shown.same(view))
    }
}

/// One entry: the proxy serves one UI, through one host name.
#[derive(Default)]
pub struct DashboardCache {
    last: Mutex<Option<Arc<Entry>>>,
}

impl DashboardCache {
    /// The body rendered earlier from exactly these inputs, if it is the last one rendered.
    pub fn get(&self, inputs: &DashboardInputs) -> Option<Bytes> {
        let entry = self.last.lock().expect("dashboard cache lock").clone()?;
        entry.matches(inputs).then(|| entry.body.clone())
    }

    pub fn put(&self, inputs: &DashboardInputs, body: Bytes) {
        let entry = Entry {
            catalog: inputs.catalog.clone(),
            host: inputs.host.clone(),
            installs: inputs.installs.iter().map(ShownInstall::of).collect(),
            last_error: inputs.last_error.clone(),
            body,
        };
        *self.last.lock().expect("dashboard cache lock") = Some(Arc::new(entry));
    }
}
