//! The in-memory mirror of every install, with live progress: what the UI's polls read. It is
//! written after each committed state change (`db`) and by workers as bytes flow, so answering
//! `states` never touches the disk or upstream.

use crate::catalog::model::Image;
use crate::db::{InstallRow, RegisteredIds};
use crate::install::state::InstallState;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone)]
pub struct InstallView {
    pub image: Arc<Image>,
    pub state: InstallState,
    pub detail: String,
    pub error: Option<String>,
    pub ids: RegisteredIds,
    /// Progress of the current phase (download, then install), in bytes.
    pub done: u64,
    pub total: u64,
}

impl InstallView {
    /// 0-100, for `progress-percentage`.
    pub fn percentage(&self) -> u8 {
        if self.total == 0 {
            return 0;
        }
        (self.done.min(self.total) as u128 * 100 / self.total as u128) as u8
    }
}

#[derive(Default)]
pub struct Board {
    views: RwLock<HashMap<String, InstallView>>,
}

impl Board {
    /// Takes a freshly committed row. Progress restarts when the phase changes.
    pub fn put(&self, row: &InstallRow) {
        let mut views = self.views.write().expect("board lock");
        let (done, total) = match views.get(&row.image.uri) {
            Some(old) if old.state.ui_status() == row.state.ui_status() => (old.done, old.total),
            _ => (0, 0),
        };
        views.insert(
            row.image.uri.clone(),
            InstallView {
                image: row.image.clone(),
                state: row.state,
                detail: row.status_detail.clone(),
                error: row.error.clone(),
                ids: row.ids.clone(),
                done,
                total,
            },
        );
    }

    pub fn progress(&self, uri: &str, done: u64, total: u64, detail: String) {
        if let Some(view) = self.views.write().expect("board lock").get_mut(uri) {
            view.done = done;
            view.total = total;
            view.detail = detail;
        }
    }

    pub fn remove(&self, uri: &str) {
        self.views.write().expect("board lock").remove(uri);
    }

    pub fn get(&self, uri: &str) -> Option<InstallView> {
        self.views.read().expect("board lock").get(uri).cloned()
    }

    pub fn detail(&self, uri: &str) -> Option<String> {
        self.views
            .read()
            .expect("board lock")
            .get(uri)
            .map(|view| view.detail.clone())
    }

    pub fn all(&self) -> Vec<InstallView> {
        self.views
            .read()
            .expect("board lock")
            .values()
            .cloned()
            .collect()
    }
}
