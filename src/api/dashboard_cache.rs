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
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

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
    /// The body gzipped, made on the first request that accepts it.
    gzipped: OnceLock<Bytes>,
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
    /// The reply for `inputs`: the last one rendered if it was rendered from exactly these
    /// inputs, else `render`'s, which is kept for the next request. Gzipped when `gzip` (the
    /// client accepts it: browsers do, the servlet's HTTP client does not).
    pub fn get_or_render(
        &self,
        inputs: &DashboardInputs,
        gzip: bool,
        render: impl FnOnce() -> Vec<u8>,
    ) -> Bytes {
        let last = self.last.lock().expect("dashboard cache lock").clone();
        let entry = match last {
            Some(entry) if entry.matches(inputs) => entry,
            _ => {
                let entry = Arc::new(Entry {
                    catalog: inputs.catalog.clone(),
                    host: inputs.host.clone(),
                    installs: inputs.installs.iter().map(ShownInstall::of).collect(),
                    last_error: inputs.last_error.clone(),
                    body: Bytes::from(render()),
                    gzipped: OnceLock::new(),
                });
                *self.last.lock().expect("dashboard cache lock") = Some(entry.clone());
                entry
            }
        };
        if gzip {
            entry.gzipped.get_or_init(|| compress(&entry.body)).clone()
        } else {
            entry.body.clone()
        }
    }
}

fn compress(body: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 8), Compression::default());
    encoder
        .write_all(body)
        .expect("writing to memory cannot fail");
    Bytes::from(encoder.finish().expect("writing to memory cannot fail"))
}

/// Whether an `Accept-Encoding` value accepts gzip (`gzip` or `*`, with a non-zero `q`).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let refused = parts.any(|param| {
            param
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_is_sent_only_to_who_accepts_it() {
        for yes in [
            "gzip",
            "gzip, deflate, br",
            "deflate, GZIP;q=0.5",
            "*",
            "br, *;q=1",
        ] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "deflate, br",
            "gzip;q=0",
            "gzip; q=0.0",
            "x-gzip2",
        ] {
            assert!(!accepts_gzip(no), "{no}");
        }
    }
}
