//! The upstream catalog as it travels (SPEC §5). Only this file knows upstream JSON; `model.rs`
//! turns it into validated types.

use serde::Deserialize;

pub const FORMAT: &str = "image-store/1";

#[derive(Debug, Deserialize)]
pub struct WireCatalog {
    pub format: String,
    pub updated: String,
    #[serde(default)]
    pub sections: Vec<WireSection>,
    #[serde(default)]
    pub images: Vec<WireImage>,
}

#[derive(Debug, Deserialize)]
pub struct WireSection {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub summary: String,
    #[serde(rename = "image-uris", default)]
    pub image_uris: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireImage {
    pub uri: String,
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub summary: String,
    #[serde(rename = "description-html", default)]
    pub description_html: String,
    #[serde(rename = "icon-uri", default)]
    pub icon_uri: Option<String>,
    #[serde(default)]
    pub provider: Option<WireProvider>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub files: Vec<WireFile>,
}

#[derive(Debug, Deserialize)]
pub struct WireProvider {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub uri: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireFile {
    pub kind: String,
    pub url: String,
    pub size: u64,
    pub sha256: String,
    #[serde(rename = "signature-url", default)]
    pub signature_url: Option<String>,
    #[serde(default)]
    pub compression: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
}
