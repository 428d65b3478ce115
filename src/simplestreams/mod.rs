//! The simplestreams vocabulary (SPEC §5.2, issue 14): Canonical's format for its cloud images,
//! read from already-verified JSON text into validated values. Pure: no HTTP, no OpenPGP, no
//! database; the catalog service fetches, verifies and keeps, and calls this to understand.
//!
//! - [`Index`] (`index.rs`): the entries to follow (image downloads of a configured content id)
//! - [`Products`] and [`ResolvedItem`] (`products.rs`): items with every field inherited
//! - [`ItemFilter`] (`filter.rs`): sstream-mirror's `key=val`, `!=`, `~`, `!~` filters
//! - [`Selection`] and [`Offer`] (`select.rs`): which versions, HVM or paravirtual
//! - [`ItemPath`] (`path.rs`): paths that stay under the mirror root
//! - `wire.rs`: the JSON, with the caps of [`crate::limits`]

mod filter;
mod index;
mod path;
mod products;
mod select;
mod wire;

#[cfg(test)]
mod tests;

pub use filter::{FilterError, ItemFilter, passes_all};
pub use index::{DEFAULT_CONTENT_ID, DownloadEntry, Index};
pub use path::{ItemPath, ItemPathError};
pub use products::{Checksum, ItemError, ItemIdentity, Products, ResolvedItem};
pub use select::{
    ChosenVersion, InstalledVersions, Offer, Offers, Selection, Virtualization, VirtualizationError,
};
pub use wire::AliasError;

use crate::limits::MAX_STREAM_DOCUMENT_BYTES;
use std::cmp::Ordering;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// Why an index or products document is refused as a whole. `document` names it ("index",
/// "products file com.ubuntu.cloud:released:download", "index entry …").
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("simplestreams {document} is {len} bytes, above the cap of {cap}")]
    TooLarge {
        document: &'static str,
        len: usize,
        cap: u64,
    },
    #[error("simplestreams {document} is not valid: {source}")]
    Json {
        document: String,
        source: serde_json::Error,
    },
    #[error("simplestreams {document} has format {found:?}, expected {expected:?}")]
    Format {
        document: String,
        /// Empty when the document has none.
        found: String,
        expected: &'static str,
    },
    #[error("simplestreams {document} has no {field:?}")]
    MissingField {
        document: String,
        field: &'static str,
    },
    #[error("simplestreams {document} has \"updated\" {value:?}, which is not an RFC 2822 time")]
    Updated {
        document: String,
        value: String,
        source: time::error::Parse,
    },
    #[error("simplestreams {document}: {source}")]
    Aliases {
        document: String,
        source: AliasError,
    },
    #[error("simplestreams {document}: {source}")]
    Path {
        document: String,
        source: ItemPathError,
    },
    #[error(
        "simplestreams products file {path} has content_id {found:?}, but its index entry names {expected:?}"
    )]
    ContentIdMismatch {
        path: String,
        expected: String,
        found: String,
    },
    #[error(
        "simplestreams {document} was updated {offered}, before the {accepted} of the one already accepted"
    )]
    Rollback {
        document: String,
        offered: String,
        accepted: String,
    },
}

/// Parses `data` at `level` and expands its `_aliases`.
fn parse_tree(
    document: &'static str,
    data: &[u8],
    level: wire::Level,
) -> Result<wire::WireNode, StreamError> {
    check_size(document, data)?;
    let mut tree = wire::parse(data, level).map_err(|source| StreamError::Json {
        document: document.into(),
        source,
    })?;
    let aliases = std::mem::take(&mut tree.aliases);
    let mut budget = crate::limits::MAX_STREAM_ALIAS_BYTES;
    wire::expand_aliases(&mut tree, &aliases, &mut budget).map_err(|source| {
        StreamError::Aliases {
            document: document.into(),
            source,
        }
    })?;
    Ok(tree)
}

fn check_size(document: &'static str, data: &[u8]) -> Result<(), StreamError> {
    if data.len() as u64 > MAX_STREAM_DOCUMENT_BYTES {
        return Err(StreamError::TooLarge {
            document,
            len: data.len(),
            cap: MAX_STREAM_DOCUMENT_BYTES,
        });
    }
    Ok(())
}

/// A document's `updated`, which simplestreams writes in RFC 2822 (`Fri, 04 Nov 2016 03:33:58
/// +0000`).
fn parse_updated(document: &str, text: Option<&String>) -> Result<OffsetDateTime, StreamError> {
    let text = text.ok_or_else(|| StreamError::MissingField {
        document: document.to_owned(),
        field: "updated",
    })?;
    OffsetDateTime::parse(text, &Rfc2822).map_err(|source| StreamError::Updated {
        document: document.to_owned(),
        value: text.clone(),
        source,
    })
}

/// Refuses a document whose `updated` is before that of the one already accepted (a rollback);
/// the same time is accepted (a mirror serves the same file again).
pub fn refuse_rollback(
    document: &str,
    accepted: OffsetDateTime,
    offered: OffsetDateTime,
) -> Result<(), StreamError> {
    if offered < accepted {
        let text = |t: OffsetDateTime| t.format(&Rfc2822).unwrap_or_else(|_| t.to_string());
        return Err(StreamError::Rollback {
            document: document.to_owned(),
            offered: text(offered),
            accepted: text(accepted),
        });
    }
    Ok(())
}

/// How version names (serials: `20260501`, `20260501.1`) order: as python-simplestreams'
/// `sorted()` orders strings, by code point, which for UTF-8 is byte order. So `20260501.1`
/// follows `20260501`, and a name that is a prefix of another comes first.
pub fn compare_serials(a: &str, b: &str) -> Ordering {
    a.as_bytes().cmp(b.as_bytes())
}

/// A name upstream chose, fit for a one-line message: control characters (a JSON `"\r"` in a
/// product name) escaped, the rest as it is.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// Fuzz harness (`fuzz/fuzz_targets/simplestreams.rs`): `data` as an index, then as a products
/// file, through everything a caller does next. Panics only on a bug: a refusal that is not one
/// line, a followed path or offered item that leaves the mirror root.
#[doc(hidden)]
pub fn fuzz_products(data: &[u8]) {
    fn one_line(what: &str, text: &str) {
        assert!(!text.trim().is_empty(), "{what}: empty message");
        assert!(!text.contains(['\n', '\r']), "{what}: {text:?}");
    }
    let root = reqwest::Url::parse("https://mirror.example/releases/").expect("a fixed URL");
    match Index::parse(data) {
        Ok(index) => match index.downloads(&[DEFAULT_CONTENT_ID.to_owned()]) {
            Ok(entries) => {
                for entry in entries {
                    let url = entry.path.join_onto(&root).expect("a checked path joins");
                    assert!(url.as_str().starts_with(root.as_str()), "{url}");
                }
            }
            Err(error) => one_line("index entry refusal", &error.to_string()),
        },
        Err(error) => one_line("index refusal", &error.to_string()),
    }
    let products = match Products::parse(data) {
        Ok(products) => products,
        Err(error) => return one_line("products refusal", &error.to_string()),
    };
    for item in products.items() {
        let fields = item.fields();
        for key in fields.keys() {
            assert_eq!(item.get(key), fields.get(key).copied(), "{key}");
        }
    }
    let mut installed = InstalledVersions::default();
    if let Some(item) = products.items().next() {
        installed.insert(item.product_name(), item.version_name());
    }
    for virtualization in [Virtualization::Hvm, Virtualization::Paravirtual] {
        let selection = Selection {
            filters: vec![
                ItemFilter::for_cloud_architecture("x86_64").expect("a fixed filter"),
                ItemFilter::parse("ftype!~squashfs").expect("a fixed filter"),
            ],
            max_versions: 2,
            virtualization,
        };
        let offers = selection.offers(&products, &installed);
        for line in &offers.passed_over {
            one_line("passed over", line);
        }
        for offer in offers.offers {
            let url = offer.path.join_onto(&root).expect("a checked path joins");
            assert!(url.as_str().starts_with(root.as_str()), "{url}");
            assert!(offer.size > 0);
            let _ = offer.is_upgrade(&installed);
        }
    }
}
