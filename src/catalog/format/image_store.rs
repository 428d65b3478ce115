//! `image-store/1` (SPEC §5), the first catalog format: one JSON document, `dashboard` under the
//! API URL taken as a directory, signed by the detached signature `dashboard.asc` beside it. Only
//! this file knows its JSON and its names (file kinds, compressions, formats, architectures); it
//! translates them into `model` types and leaves the checks an install depends on to `model`.

use super::{
    Authentication, CatalogFormat, DocumentRequest, DocumentSummary, FormatError, Parsed,
    VerifiedDocument,
};
use crate::catalog::model::{
    self, CatalogBuilder, Compression, FileKind, FileRef, Image, ImageDraft, Packing, Provider,
    Section, StreamIdentity,
};
use reqwest::Url;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The `format` the document names, and the tag its stored copies carry.
pub const FORMAT: &str = "image-store/1";

/// The name of the one document (`<api-url>/dashboard`), and the key of its stored copy.
const DOCUMENT: &str = "dashboard";
/// A keyring published for a rollover, relative to the API URL as the catalog is.
const KEYRING: &str = "keyring.gpg";

/// Why an `image-store/1` document was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// The parser's error is printed in the message, so it is not also the `source`.
    #[error("the catalog is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("unsupported catalog format {found:?} (expected {expected:?})")]
    Format {
        found: String,
        expected: &'static str,
    },
    #[error("the catalog's \"updated\" time {0:?} is not RFC 3339")]
    Updated(String),
    #[error("no {DOCUMENT} document among the catalog's documents")]
    Missing,
}

/// The `image-store/1` format, as [`CatalogFormat`] drives it.
pub struct ImageStoreFormat;

impl CatalogFormat for ImageStoreFormat {
    fn name(&self) -> &'static str {
        FORMAT
    }

    /// Beside the catalog document: `<api-url>/keyring.gpg` next to `<api-url>/dashboard`.
    fn keyring_url(&self, upstream: &Url) -> Option<Url> {
        Some(model::document_url(upstream, KEYRING))
    }

    fn roots(&self, upstream: &Url) -> Vec<DocumentRequest> {
        let url = model::document_url(upstream, DOCUMENT);
        let signature_url =
            Url::parse(&format!("{url}.asc")).expect("a URL with a suffix is a URL");
        vec![DocumentRequest {
            name: DOCUMENT.to_string(),
            url,
            authentication: Authentication::Detached { signature_url },
        }]
    }

    fn read(&self, document: &VerifiedDocument) -> Result<DocumentSummary, FormatError> {
        let (_, updated) = read_wire(document.text())?;
        Ok(DocumentSummary {
            updated,
            next: Vec::new(),
        })
    }

    fn build(
        &self,
        upstream: &Url,
        documents: &[VerifiedDocument],
        _installed: &[StreamIdentity],
    ) -> Result<Parsed, FormatError> {
        let document = documents
            .iter()
            .find(|document| document.name == DOCUMENT)
            .ok_or(ImageStoreError::Missing)?;
        Ok(parse(document.text(), upstream)?)
    }
}

/// Parses and validates a (signature-checked) catalog document. File URLs are resolved against
/// `api_url` taken as a directory.
pub fn parse(document: &[u8], api_url: &Url) -> Result<Parsed, ImageStoreError> {
    let (wire, updated) = read_wire(document)?;
    let base = model::directory_url(api_url);
    let mut builder = CatalogBuilder::default();
    for entry in wire.images {
        let uri = entry.uri.clone();
        builder.offer(&uri, || validate_image(entry, &base));
    }
    let sections = wire
        .sections
        .into_iter()
        .map(|section| Section {
            title: section.title,
            summary: section.summary,
            image_uris: section.image_uris,
        })
        .collect();
    let (catalog, dropped) = builder.finish(updated, sections);
    Ok(Parsed { catalog, dropped })
}

/// The document as JSON, in this format, with its `updated` time.
fn read_wire(document: &[u8]) -> Result<(WireCatalog, OffsetDateTime), ImageStoreError> {
    let wire: WireCatalog = serde_json::from_slice(document).map_err(ImageStoreError::Json)?;
    if wire.format != FORMAT {
        return Err(ImageStoreError::Format {
            found: wire.format,
            expected: FORMAT,
        });
    }
    let updated = OffsetDateTime::parse(&wire.updated, &Rfc3339)
        .map_err(|_| ImageStoreError::Updated(wire.updated.clone()))?;
    Ok((wire, updated))
}

fn validate_image(entry: WireImage, base: &Url) -> Result<Image, String> {
    model::checked_image_uri(&entry.uri)?;
    let arch = match entry.arch.as_deref().unwrap_or("x86_64") {
        "x86_64" | "amd64" => "x86_64",
        "i386" | "i686" => "i386",
        other => return Err(format!("unknown architecture {other:?}")),
    };
    let mut files: Vec<FileRef> = Vec::new();
    for file in entry.files {
        model::add_file(&mut files, validate_file(file, base)?)?;
    }
    Image::from_draft(
        ImageDraft {
            uri: entry.uri,
            product: entry.product,
            title: entry.title,
            version: entry.version,
            summary: entry.summary,
            description_html: entry.description_html,
            icon_uri: entry.icon_uri,
            provider: entry.provider.map(|provider| Provider {
                title: provider.title,
                uri: provider.uri,
            }),
            tags: entry.tags,
            arch,
            files,
            // `image-store/1` lists a kernel and ramdisk beside each image.
            virtualization: model::Virtualization::Paravirtual,
            stream: None,
            fields: Default::default(),
        },
        base,
    )
}

fn validate_file(file: WireFile, base: &Url) -> Result<FileRef, String> {
    let kind = match file.kind.as_str() {
        "kernel" => FileKind::Kernel,
        "ramdisk" => FileKind::Ramdisk,
        "image" => FileKind::Image,
        other => return Err(format!("unknown file kind {other:?}")),
    };
    let sha256 = model::checked_sha256(kind, &file.sha256)?;
    let size = model::checked_size(kind, file.size)?;
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
        url: model::fetchable_url(base, &file.url)?,
        size,
        sha256,
        signature_url: file
            .signature_url
            .map(|url| model::fetchable_url(base, &url))
            .transpose()?,
        compression,
        packing,
        provides: Vec::new(),
    })
}

// The document as it travels. Never leaves this file.

#[derive(Debug, Deserialize)]
struct WireCatalog {
    format: String,
    updated: String,
    #[serde(default)]
    sections: Vec<WireSection>,
    #[serde(default)]
    images: Vec<WireImage>,
}

#[derive(Debug, Deserialize)]
struct WireSection {
    #[serde(default)]
    title: String,
    #[serde(default)]
    summary: String,
    #[serde(rename = "image-uris", default)]
    image_uris: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct WireImage {
    uri: String,
    #[serde(default)]
    product: Option<String>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    summary: String,
    #[serde(rename = "description-html", default)]
    description_html: String,
    #[serde(rename = "icon-uri", default)]
    icon_uri: Option<String>,
    #[serde(default)]
    provider: Option<WireProvider>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    files: Vec<WireFile>,
}

#[derive(Debug, Deserialize)]
struct WireProvider {
    #[serde(default)]
    title: String,
    #[serde(default)]
    uri: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireFile {
    kind: String,
    url: String,
    size: u64,
    sha256: String,
    #[serde(rename = "signature-url", default)]
    signature_url: Option<String>,
    #[serde(default)]
    compression: Option<String>,
    #[serde(default)]
    format: Option<String>,
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
        let Parsed { catalog, dropped } = parse(&document(GOOD), &api()).unwrap();
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
            let Parsed { catalog, dropped } =
                parse(&document(&format!("{GOOD},{entry}")), &api()).unwrap();
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
            parse(wrong, &api()),
            Err(ImageStoreError::Format { .. })
        ));
        let time = br#"{"format":"image-store/1","updated":"yesterday"}"#;
        assert!(matches!(
            parse(time, &api()),
            Err(ImageStoreError::Updated(_))
        ));
    }
}
