//! The validated catalog: what the rest of the proxy sees of upstream. Built from `wire.rs` types by
//! [`Catalog::from_wire`], which checks every field an install depends on and drops (with a reason)
//! any image entry it cannot trust, so one bad entry does not hide the others.

use super::wire::{self, WireCatalog, WireFile, WireImage};
use crate::cache::Sha256Hex;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, thiserror::Error)]
pub enum CatalogFormatError {
    #[error("the catalog is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported catalog format {found:?} (expected {expected:?})")]
    Format {
        found: String,
        expected: &'static str,
    },
    #[error("the catalog's \"updated\" time {0:?} is not RFC 3339")]
    Updated(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Kernel,
    Ramdisk,
    Image,
}

impl FileKind {
    /// How an operator names it in a status line.
    pub fn noun(self) -> &'static str {
        match self {
            FileKind::Kernel => "kernel",
            FileKind::Ramdisk => "ramdisk",
            FileKind::Image => "machine image",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Packing {
    /// The file is the image itself.
    Raw,
    /// The file is a tarball holding the image (`*.img`), as UEC images were shipped.
    Tar,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRef {
    pub kind: FileKind,
    pub url: String,
    pub size: u64,
    pub sha256: Sha256Hex,
    pub signature_url: Option<String>,
    pub compression: Compression,
    pub packing: Packing,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provider {
    pub title: String,
    pub uri: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    /// The upstream URI: the UI's key for the image (`image-uri`).
    pub uri: String,
    /// A short, path-safe name for the image in our own action URIs.
    pub key: String,
    pub product: String,
    pub title: String,
    pub version: String,
    pub summary: String,
    /// Already sanitised: the admin UI inserts it as raw HTML.
    pub description_html: String,
    pub icon_uri: Option<String>,
    pub provider: Option<Provider>,
    pub tags: Vec<String>,
    /// EC2 architecture name: `x86_64` or `i386`.
    pub arch: String,
    /// Kernel, ramdisk, image, in that order (the order they are installed in).
    pub files: Vec<FileRef>,
}

impl Image {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }

    pub fn file(&self, kind: FileKind) -> Option<&FileRef> {
        self.files.iter().find(|file| file.kind == kind)
    }
}

/// The path-safe key of an image URI: the first 16 hex digits of its SHA-256.
pub fn image_key(uri: &str) -> String {
    hex::encode(&Sha256::digest(uri.as_bytes())[..8])
}

#[derive(Debug, Clone)]
pub struct Section {
    pub title: String,
    pub summary: String,
    pub image_uris: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub updated: OffsetDateTime,
    pub sections: Vec<Section>,
    pub images: Vec<Arc<Image>>,
    by_uri: HashMap<String, usize>,
    by_key: HashMap<String, usize>,
}

impl Catalog {
    pub fn empty() -> Self {
        Self::new(OffsetDateTime::UNIX_EPOCH, Vec::new(), Vec::new())
    }

    fn new(updated: OffsetDateTime, sections: Vec<Section>, images: Vec<Arc<Image>>) -> Self {
        let by_uri = images
            .iter()
            .enumerate()
            .map(|(i, image)| (image.uri.clone(), i))
            .collect();
        let by_key = images
            .iter()
            .enumerate()
            .map(|(i, image)| (image.key.clone(), i))
            .collect();
        Self {
            updated,
            sections,
            images,
            by_uri,
            by_key,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn by_uri(&self, uri: &str) -> Option<&Arc<Image>> {
        self.by_uri.get(uri).map(|&i| &self.images[i])
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<Image>> {
        self.by_key.get(key).map(|&i| &self.images[i])
    }

    /// Parses and validates a (signature-checked) catalog document. File URLs are resolved against
    /// `api_url` taken as a directory. Returns the catalog and one line per image entry dropped.
    pub fn parse(
        document: &[u8],
        api_url: &Url,
    ) -> Result<(Catalog, Vec<String>), CatalogFormatError> {
        let wire: WireCatalog = serde_json::from_slice(document)?;
        Self::from_wire(wire, api_url)
    }

    fn from_wire(
        wire: WireCatalog,
        api_url: &Url,
    ) -> Result<(Catalog, Vec<String>), CatalogFormatError> {
        if wire.format != wire::FORMAT {
            return Err(CatalogFormatError::Format {
                found: wire.format,
                expected: wire::FORMAT,
            });
        }
        let updated = OffsetDateTime::parse(&wire.updated, &Rfc3339)
            .map_err(|_| CatalogFormatError::Updated(wire.updated.clone()))?;
        let base = directory_url(api_url);
        let mut dropped = Vec::new();
        let mut images: Vec<Arc<Image>> = Vec::new();
        for entry in wire.images {
            let uri = entry.uri.clone();
            if images.iter().any(|known| known.uri == uri) {
                dropped.push(format!("image {uri:?}: listed twice"));
                continue;
            }
            match validate_image(entry, &base) {
                Ok(image) => images.push(Arc::new(image)),
                Err(reason) => dropped.push(format!("image {uri:?}: {reason}")),
            }
        }
        let sections = wire
            .sections
            .into_iter()
            .map(|section| Section {
                title: section.title,
                summary: section.summary,
                image_uris: section
                    .image_uris
                    .into_iter()
                    .filter(|uri| images.iter().any(|image| &image.uri == uri))
                    .collect(),
            })
            .collect();
        Ok((Catalog::new(updated, sections, images), dropped))
    }
}

/// `http://host/api` -> `http://host/api/`, so that `files/x` resolves to `http://host/api/files/x`.
pub fn directory_url(api_url: &Url) -> Url {
    let mut base = api_url.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base
}

fn resolve(base: &Url, reference: &str) -> Result<String, String> {
    let url = base
        .join(reference)
        .map_err(|e| format!("bad URL {reference:?}: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url.to_string()),
        other => Err(format!(
            "URL {url} has scheme {other:?}; only http and https are fetched"
        )),
    }
}

fn validate_image(entry: WireImage, base: &Url) -> Result<Image, String> {
    if entry.uri.is_empty()
        || !entry.uri.is_ascii()
        || entry.uri.chars().any(|c| c.is_ascii_control())
    {
        return Err("the uri must be non-empty printable ASCII".into());
    }
    let arch = match entry.arch.as_deref().unwrap_or("x86_64") {
        "x86_64" | "amd64" => "x86_64",
        "i386" | "i686" => "i386",
        other => return Err(format!("unknown architecture {other:?}")),
    };
    let mut files: Vec<FileRef> = Vec::new();
    for file in entry.files {
        let file = validate_file(file, base)?;
        if files.iter().any(|known| known.kind == file.kind) {
            return Err(format!("more than one {} file", file.kind.noun()));
        }
        files.push(file);
    }
    if !files.iter().any(|file| file.kind == FileKind::Image) {
        return Err("no machine image file".into());
    }
    files.sort_by_key(|file| file.kind as u8);
    let title = if entry.title.is_empty() {
        entry.uri.clone()
    } else {
        entry.title
    };
    Ok(Image {
        key: image_key(&entry.uri),
        product: entry.product.unwrap_or_else(|| title.clone()),
        title,
        version: entry.version,
        summary: entry.summary,
        description_html: ammonia::clean(&entry.description_html),
        icon_uri: entry.icon_uri.and_then(|icon| resolve(base, &icon).ok()),
        provider: entry.provider.map(|provider| Provider {
            title: provider.title,
            uri: provider.uri,
        }),
        tags: entry.tags,
        arch: arch.to_string(),
        files,
        uri: entry.uri,
    })
}

fn validate_file(file: WireFile, base: &Url) -> Result<FileRef, String> {
    let kind = match file.kind.as_str() {
        "kernel" => FileKind::Kernel,
        "ramdisk" => FileKind::Ramdisk,
        "image" => FileKind::Image,
        other => return Err(format!("unknown file kind {other:?}")),
    };
    let sha256 = Sha256Hex::parse(&file.sha256).ok_or_else(|| {
        format!(
            "{} sha256 {:?} is not 64 hex digits",
            kind.noun(),
            file.sha256
        )
    })?;
    if file.size == 0 || file.size > crate::limits::MAX_FILE_BYTES {
        return Err(format!(
            "{} size {} is out of range",
            kind.noun(),
            file.size
        ));
    }
    let compression = match file.compression.as_deref().unwrap_or("none") {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        other => {
            return Err(format!(
                "{} compression {other:?} is not supported",
                kind.noun()
            ));
        }
    };
    let packing = match file.format.as_deref().unwrap_or("raw") {
        "raw" => Packing::Raw,
        "tar" if kind == FileKind::Image => Packing::Tar,
        other => return Err(format!("{} format {other:?} is not supported", kind.noun())),
    };
    Ok(FileRef {
        kind,
        url: resolve(base, &file.url)?,
        size: file.size,
        sha256,
        signature_url: file
            .signature_url
            .map(|url| resolve(base, &url))
            .transpose()?,
        compression,
        packing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Url {
        Url::parse("http://store.example:52781/api").unwrap()
    }

    fn document(images: &str) -> Vec<u8> {
        format!(
            r#"{{"format":"image-store/1","updated":"2026-11-21T10:00:00Z",
                "sections":[{{"title":"S","summary":"","image-uris":["u1","gone"]}}],"images":[{images}]}}"#
        )
        .into_bytes()
    }

    const GOOD: &str = r#"{"uri":"u1","title":"One","arch":"x86_64","description-html":"<p onclick='x()'>hi<script>bad()</script></p>",
        "files":[{"kind":"image","url":"files/one/image.gz","size":10,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","compression":"gzip","signature-url":"files/one/image.gz.asc"},
                 {"kind":"kernel","url":"http://cdn.example/k","size":5,"sha256":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}]}"#;

    #[test]
    fn resolves_relative_urls_against_the_api_directory_and_sorts_files() {
        let (catalog, dropped) = Catalog::parse(&document(GOOD), &api()).unwrap();
        assert!(dropped.is_empty(), "{dropped:?}");
        let image = catalog.by_uri("u1").unwrap();
        assert_eq!(image.files[0].kind, FileKind::Kernel);
        assert_eq!(image.files[0].url, "http://cdn.example/k");
        assert_eq!(
            image.files[1].url,
            "http://store.example:52781/api/files/one/image.gz"
        );
        assert_eq!(
            image.files[1].signature_url.as_deref(),
            Some("http://store.example:52781/api/files/one/image.gz.asc")
        );
        assert_eq!(image.description_html, "<p>hi</p>");
        assert_eq!(catalog.by_key(&image.key).unwrap().uri, "u1");
        assert_eq!(catalog.sections[0].image_uris, vec!["u1".to_string()]);
    }

    #[test]
    fn drops_bad_entries_with_a_reason_and_keeps_the_rest() {
        let bad = [
            (r#"{"uri":"b1","files":[]}"#, "no machine image"),
            (
                r#"{"uri":"b2","files":[{"kind":"image","url":"x","size":1,"sha256":"zz"}]}"#,
                "not 64 hex",
            ),
            (
                r#"{"uri":"b3","files":[{"kind":"image","url":"file:///etc/passwd","size":1,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}]}"#,
                "scheme",
            ),
            (r#"{"uri":"b4","arch":"sparc","files":[]}"#, "architecture"),
            (
                r#"{"uri":"b5","files":[{"kind":"image","url":"x","size":0,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}]}"#,
                "out of range",
            ),
        ];
        for (entry, reason) in bad {
            let (catalog, dropped) =
                Catalog::parse(&document(&format!("{GOOD},{entry}")), &api()).unwrap();
            assert_eq!(catalog.images.len(), 1, "{entry}");
            assert!(
                dropped[0].contains(reason),
                "{dropped:?} should mention {reason}"
            );
        }
    }

    #[test]
    fn refuses_unknown_formats_and_bad_times() {
        let wrong = br#"{"format":"other/2","updated":"2026-11-21T10:00:00Z"}"#;
        assert!(matches!(
            Catalog::parse(wrong, &api()),
            Err(CatalogFormatError::Format { .. })
        ));
        let time = br#"{"format":"image-store/1","updated":"yesterday"}"#;
        assert!(matches!(
            Catalog::parse(time, &api()),
            Err(CatalogFormatError::Updated(_))
        ));
    }
}
