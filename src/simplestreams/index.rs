//! The index (`streams/v1/index.sjson`, format `index:1.0`): which products files a mirror has.
//! The proxy follows only entries of image downloads (`datatype: image-downloads`, `format:
//! products:1.0`) whose content id it is configured for, and ignores the rest (`image-ids` …);
//! every entry's path is still checked, as sstream-mirror's `check_tree_paths` does, since a
//! signed index naming a path outside the mirror is not to be trusted at all (SPEC §5.2).

use super::path::ItemPath;
use super::wire::{Level, WireNode};
use super::{StreamError, parse_updated, printable};
use time::OffsetDateTime;

/// The content id of Canonical's released cloud images, followed when none is configured.
pub const DEFAULT_CONTENT_ID: &str = "com.ubuntu.cloud:released:download";

const INDEX_FORMAT: &str = "index:1.0";
const PRODUCTS_FORMAT: &str = "products:1.0";
const IMAGE_DOWNLOADS: &str = "image-downloads";

/// A parsed, path-checked index.
#[derive(Debug)]
pub struct Index {
    /// The index's own `updated`, which must never go backwards.
    pub updated: OffsetDateTime,
    entries: WireNode,
}

/// An index entry the proxy follows: a products file of image downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadEntry {
    pub content_id: String,
    /// Where its products file is, under the mirror root.
    pub path: ItemPath,
    /// The entry's `updated`, when it has one.
    pub updated: Option<OffsetDateTime>,
    /// The product names the entry says its file holds.
    pub products: Vec<String>,
}

impl Index {
    /// Parses an index's (already verified) JSON text.
    pub fn parse(data: &[u8]) -> Result<Self, StreamError> {
        let document = "index";
        let top = super::parse_tree(document, data, Level::IndexTop)?;
        let format = top.fields.get("format");
        if format.map(String::as_str) != Some(INDEX_FORMAT) {
            return Err(StreamError::Format {
                document: document.into(),
                found: format.cloned().unwrap_or_default(),
                expected: INDEX_FORMAT,
            });
        }
        let updated = parse_updated(document, top.fields.get("updated"))?;
        for (content_id, entry) in &top.children {
            if let Some(path) = entry.fields.get("path") {
                ItemPath::parse(path).map_err(|source| StreamError::Path {
                    document: format!("index entry {}", printable(content_id)),
                    source,
                })?;
            }
        }
        Ok(Self {
            updated,
            entries: top,
        })
    }

    /// The entries to follow, in the order of `content_ids` (those the operator configured);
    /// a configured id the index lacks, or names with another datatype or format, is absent.
    pub fn downloads(&self, content_ids: &[String]) -> Result<Vec<DownloadEntry>, StreamError> {
        let mut found = Vec::new();
        for content_id in content_ids {
            let Some(entry) = self.entries.children.get(content_id) else {
                continue;
            };
            let field = |name: &str| entry.fields.get(name).map(String::as_str);
            if field("datatype") != Some(IMAGE_DOWNLOADS)
                || field("format") != Some(PRODUCTS_FORMAT)
            {
                continue;
            }
            let document = format!("index entry {}", printable(content_id));
            let path = field("path").ok_or_else(|| StreamError::MissingField {
                document: document.clone(),
                field: "path",
            })?;
            let path = ItemPath::parse(path).map_err(|source| StreamError::Path {
                document: document.clone(),
                source,
            })?;
            let updated = match entry.fields.get("updated") {
                Some(text) => Some(parse_updated(&document, Some(text))?),
                None => None,
            };
            found.push(DownloadEntry {
                content_id: content_id.clone(),
                path,
                updated,
                products: entry.names.clone(),
            });
        }
        Ok(found)
    }

    /// Every content id the index names, whatever its datatype: for a line saying which exist
    /// when a configured one is missing.
    pub fn content_ids(&self) -> impl Iterator<Item = &str> {
        self.entries.children.keys().map(String::as_str)
    }
}
