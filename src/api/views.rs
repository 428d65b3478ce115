//! The JSON shapes the Store UI reads (SPEC §4.3): hyphenated keys, `images`/`states`/`sections`
//! envelopes, and the mapping from our install states onto its four statuses.

use crate::catalog::model::Image;
use crate::install::board::InstallView;
use crate::install::state::{InstallState, UiStatus};
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::BTreeMap;

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub uri: String,
    pub title: String,
    pub summary: String,
    pub description_html: String,
    pub version: String,
    pub size_in_mb: u64,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderInfo>,
}

#[derive(Serialize)]
pub struct ProviderInfo {
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

impl ImageInfo {
    pub fn of(image: &Image) -> Self {
        Self {
            uri: image.uri.clone(),
            title: image.title.clone(),
            summary: image.summary.clone(),
            description_html: image.description_html.clone(),
            version: image.version.clone(),
            size_in_mb: image.total_bytes().div_ceil(1 << 20),
            tags: image.tags.clone(),
            icon_uri: image.icon_uri.clone(),
            provider: image.provider.as_ref().map(|p| ProviderInfo {
                title: p.title.clone(),
                uri: p.uri.clone(),
            }),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageState {
    pub image_uri: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_percentage: Option<u8>,
    pub actions: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emi: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eki: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eri: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_upgrade: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    /// Our own state name (queued, verifying, failed...), finer than `status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install_state: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Section {
    pub title: String,
    pub summary: String,
    pub image_uris: Vec<String>,
}

/// The reply envelope: which keys are present matters to the UI (`sections` rebuilds the page).
#[derive(Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct Envelope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImageInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub states: Option<Vec<ImageState>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sections: Option<Vec<Section>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ImageState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// Builds absolute action URIs pointing back at the proxy as the UI reached it: explicit port
/// (the servlet signs `host:-1` otherwise), no query (a query would go unsigned).
pub struct ActionLinks {
    base: String,
}

impl ActionLinks {
    pub fn new(host_header: &str) -> Self {
        let host = host_header.trim();
        let has_port = match host.rfind(']') {
            Some(bracket) => host[bracket..].contains(':'),
            None => host.contains(':'),
        };
        let base = if has_port {
            format!("http://{host}")
        } else {
            format!("http://{host}:80")
        };
        Self { base }
    }

    pub fn action(&self, image: &Image, action: &str) -> String {
        format!("{}/api/images/{}/{action}", self.base, image.key)
    }
}

/// The state the UI sees for `image`, given its install (if any) and every install (for `is-upgrade`).
pub fn image_state(
    image: &Image,
    install: Option<&InstallView>,
    all: &[InstallView],
    links: &ActionLinks,
) -> ImageState {
    let state = install.map(|view| view.state);
    let status = state.map_or(UiStatus::Uninstalled, InstallState::ui_status);
    let mut actions = BTreeMap::new();
    match state {
        None | Some(InstallState::Cancelled | InstallState::Deregistered) => {
            actions.insert("install", links.action(image, "install"));
        }
        Some(InstallState::Failed) => {
            actions.insert("install", links.action(image, "install"));
            actions.insert("clear-error", links.action(image, "clear-error"));
        }
        Some(state) if state.is_active() => {
            actions.insert("cancel", links.action(image, "cancel"));
        }
        Some(_) => {}
    }
    let running = matches!(status, UiStatus::Downloading | UiStatus::Installing);
    let ids = install.map(|view| view.ids.clone()).unwrap_or_default();
    ImageState {
        image_uri: image.uri.clone(),
        status: status.as_str(),
        progress_percentage: running.then(|| install.map_or(0, InstallView::percentage)),
        actions,
        error_message: install.and_then(|view| view.error.clone()),
        emi: ids.emi,
        eki: ids.eki,
        eri: ids.eri,
        is_upgrade: status != UiStatus::Installed && is_upgrade(image, all),
        status_detail: install.map(|view| view.detail.clone()),
        install_state: state.map(InstallState::as_str),
    }
}

/// An older version of the same product is installed.
fn is_upgrade(image: &Image, all: &[InstallView]) -> bool {
    all.iter().any(|view| {
        view.state == InstallState::Installed
            && view.image.uri != image.uri
            && view.image.product == image.product
            && natural_cmp(&view.image.version, &image.version) == Ordering::Less
    })
}

pub use crate::catalog::model::natural_cmp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_naturally() {
        assert_eq!(natural_cmp("9.10", "10.04"), Ordering::Less);
        assert_eq!(natural_cmp("1.10", "1.2"), Ordering::Greater);
        assert_eq!(natural_cmp("10.04", "10.04"), Ordering::Equal);
        assert_eq!(natural_cmp("10.04", "10.04.1"), Ordering::Less);
        assert_eq!(natural_cmp("", "1"), Ordering::Less);
    }

    #[test]
    fn action_links_always_carry_a_port() {
        let image = crate::catalog::model::image_key("u");
        let links = ActionLinks::new("localhost");
        assert!(links.base.ends_with("localhost:80"));
        assert_eq!(
            ActionLinks::new("127.0.0.1:52780").base,
            "http://127.0.0.1:52780"
        );
        assert_eq!(ActionLinks::new("[::1]").base, "http://[::1]:80");
        assert_eq!(ActionLinks::new("[::1]:9").base, "http://[::1]:9");
        assert_eq!(image.len(), 16);
    }
}
