//! A products file (`products:1.0`): products → versions → items, where every field is inherited
//! downwards (SPEC §5.2). Producers hoist fields shared by all children as far up as they go
//! (python-simplestreams' `products_condense`), so `ftype`, `sha256` or `size` may sit on a
//! version or a product. A [`ResolvedItem`] answers each field as `util.products_exdata` flattens
//! it: the top's scalars, then the product's, then `product_name`, the version's, `version_name`,
//! the item's, `item_name`, a later one overriding an earlier one. Resolution is lazy (a lookup
//! walks the four levels) so that a field at the top is stored once, not once per item. A top's
//! `_aliases` are expanded first, as `util.expand_tree` does.

use super::path::ItemPath;
use super::wire::{Level, WireNode};
use super::{DownloadEntry, StreamError, parse_updated, printable};
use crate::cache::Sha256Hex;
use std::collections::BTreeMap;
use std::fmt;
use time::OffsetDateTime;

const PRODUCTS_FORMAT: &str = "products:1.0";

/// A parsed, path-checked products file.
#[derive(Debug)]
pub struct Products {
    pub content_id: String,
    /// The file's own `updated`, which must never go backwards.
    pub updated: OffsetDateTime,
    tree: WireNode,
}

/// What names one item everywhere (simplestreams' identity): kept with an installed image so a
/// rebuilt state can match images to versions, as glance-simplestreams-sync does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemIdentity {
    pub content_id: String,
    pub product_name: String,
    pub version_name: String,
    pub item_name: String,
}

impl fmt::Display for ItemIdentity {
    /// `content_id/product/version/item`, as sstream-mirror's reference counts name an item.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            printable(&self.content_id),
            printable(&self.product_name),
            printable(&self.version_name),
            printable(&self.item_name)
        )
    }
}

/// The checksum an item's bytes are verified against: SHA-256, or MD5 where the item has no
/// SHA-256 (old streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(Sha256Hex),
    /// 32 lowercase hex digits.
    Md5(String),
}

/// Why an item lacks something an install needs (the identity boxed: errors stay small).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("stream item {item} has no {field:?}")]
    Missing {
        item: Box<ItemIdentity>,
        field: &'static str,
    },
    #[error("stream item {item} has {field:?} {value:?}, which is not {expected}")]
    Invalid {
        item: Box<ItemIdentity>,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("stream item {item}: {source}")]
    Path {
        item: Box<ItemIdentity>,
        source: super::ItemPathError,
    },
}

impl Products {
    /// Parses a products file's (already verified) JSON text, and checks every item's path.
    pub fn parse(data: &[u8]) -> Result<Self, StreamError> {
        let document = "products file";
        let tree = super::parse_tree(document, data, Level::ProductsTop)?;
        let format = tree.fields.get("format");
        if format.map(String::as_str) != Some(PRODUCTS_FORMAT) {
            return Err(StreamError::Format {
                document: document.into(),
                found: format.cloned().unwrap_or_default(),
                expected: PRODUCTS_FORMAT,
            });
        }
        let content_id = match tree.fields.get("content_id") {
            Some(id) if !id.is_empty() => id.clone(),
            _ => {
                return Err(StreamError::MissingField {
                    document: document.into(),
                    field: "content_id",
                });
            }
        };
        let document = format!("products file {}", printable(&content_id));
        let updated = parse_updated(&document, tree.fields.get("updated"))?;
        let products = Self {
            content_id,
            updated,
            tree,
        };
        for item in products.items() {
            if let Some(path) = item.get("path") {
                ItemPath::parse(path).map_err(|source| StreamError::Path {
                    document: format!("products file item {}", item.identity()),
                    source,
                })?;
            }
        }
        Ok(products)
    }

    /// Refuses a products file whose `content_id` is not the one its index entry names.
    pub fn check_entry(&self, entry: &DownloadEntry) -> Result<(), StreamError> {
        if self.content_id != entry.content_id {
            return Err(StreamError::ContentIdMismatch {
                path: entry.path.to_string(),
                expected: entry.content_id.clone(),
                found: self.content_id.clone(),
            });
        }
        Ok(())
    }

    /// Every item, in product, version, item name order.
    pub fn items(&self) -> impl Iterator<Item = ResolvedItem<'_>> {
        self.products().flat_map(move |(product_name, product)| {
            product
                .children
                .iter()
                .flat_map(move |(version_name, version)| {
                    version
                        .children
                        .iter()
                        .map(move |(item_name, item)| ResolvedItem {
                            products: self,
                            product: (product_name, product),
                            version: (version_name, version),
                            item: (item_name, item),
                        })
                })
        })
    }

    /// Product names and their nodes.
    fn products(&self) -> impl Iterator<Item = (&str, &WireNode)> {
        self.tree.children.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// Product names with their version names, oldest first.
    pub(super) fn versions(&self) -> impl Iterator<Item = (&str, Vec<&str>)> {
        self.products().map(|(name, product)| {
            let mut versions: Vec<&str> = product.children.keys().map(String::as_str).collect();
            versions.sort_by(|a, b| super::compare_serials(a, b));
            (name, versions)
        })
    }
}

/// One item with every field it inherits: what filters judge and installs read.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedItem<'a> {
    products: &'a Products,
    product: (&'a str, &'a WireNode),
    version: (&'a str, &'a WireNode),
    item: (&'a str, &'a WireNode),
}

impl<'a> ResolvedItem<'a> {
    /// The resolved value of `key`, as `products_exdata` would have it.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        let field = |node: &'a WireNode| node.fields.get(key).map(String::as_str);
        if key == "item_name" {
            return Some(self.item.0);
        }
        if let Some(value) = field(self.item.1) {
            return Some(value);
        }
        if key == "version_name" {
            return Some(self.version.0);
        }
        if let Some(value) = field(self.version.1) {
            return Some(value);
        }
        if key == "product_name" {
            return Some(self.product.0);
        }
        field(self.product.1).or_else(|| field(&self.products.tree))
    }

    /// Every resolved field, with `product_name`, `version_name` and `item_name`: the flat
    /// item sstream-query prints (less its `item_url`).
    pub fn fields(&self) -> BTreeMap<&'a str, &'a str> {
        let levels = [
            (&self.products.tree, None),
            (self.product.1, Some(("product_name", self.product.0))),
            (self.version.1, Some(("version_name", self.version.0))),
            (self.item.1, Some(("item_name", self.item.0))),
        ];
        let mut flat = BTreeMap::new();
        for (node, name) in levels {
            for (key, value) in &node.fields {
                flat.insert(key.as_str(), value.as_str());
            }
            if let Some((key, value)) = name {
                flat.insert(key, value);
            }
        }
        flat
    }

    pub fn identity(&self) -> ItemIdentity {
        ItemIdentity {
            content_id: self.products.content_id.clone(),
            product_name: self.product.0.to_owned(),
            version_name: self.version.0.to_owned(),
            item_name: self.item.0.to_owned(),
        }
    }

    pub fn product_name(&self) -> &'a str {
        self.product.0
    }

    pub fn version_name(&self) -> &'a str {
        self.version.0
    }

    pub fn item_name(&self) -> &'a str {
        self.item.0
    }

    /// The file type (`disk1.img`, `tar.gz`, `squashfs` …).
    pub fn ftype(&self) -> Option<&'a str> {
        self.get("ftype")
    }
    pub fn arch(&self) -> Option<&'a str> {
        self.get("arch")
    }
    /// The release's short name (`noble`).
    pub fn release(&self) -> Option<&'a str> {
        self.get("release")
    }
    /// The release's number (`24.04`); not the version name, which is the serial.
    pub fn version(&self) -> Option<&'a str> {
        self.get("version")
    }
    /// `24.04 LTS`.
    pub fn release_title(&self) -> Option<&'a str> {
        self.get("release_title")
    }
    /// `Noble Numbat`.
    pub fn release_codename(&self) -> Option<&'a str> {
        self.get("release_codename")
    }
    /// `release`, `daily`, `beta1` …
    pub fn label(&self) -> Option<&'a str> {
        self.get("label")
    }
    /// `ubuntu-noble-24.04-amd64-server-20240725`.
    pub fn pubname(&self) -> Option<&'a str> {
        self.get("pubname")
    }
    pub fn os(&self) -> Option<&'a str> {
        self.get("os")
    }

    /// The item's path under the mirror root (checked when the file was parsed).
    pub fn path(&self) -> Result<ItemPath, ItemError> {
        let path = self.required("path")?;
        ItemPath::parse(path).map_err(|source| ItemError::Path {
            item: Box::new(self.identity()),
            source,
        })
    }

    /// The item's size in bytes: a positive whole number no larger than
    /// [`crate::limits::MAX_FILE_BYTES`].
    pub fn size(&self) -> Result<u64, ItemError> {
        let text = self.required("size")?;
        text.parse::<u64>()
            .ok()
            .filter(|size| (1..=crate::limits::MAX_FILE_BYTES).contains(size))
            .ok_or_else(|| ItemError::Invalid {
                item: Box::new(self.identity()),
                field: "size",
                value: text.to_owned(),
                expected: "a size in bytes within the file cap",
            })
    }

    /// The checksum to verify the item with: `sha256`, or `md5` where it has no `sha256`.
    pub fn checksum(&self) -> Result<Checksum, ItemError> {
        if let Some(text) = self.get("sha256") {
            return Sha256Hex::parse(text).map(Checksum::Sha256).ok_or_else(|| {
                ItemError::Invalid {
                    item: Box::new(self.identity()),
                    field: "sha256",
                    value: text.to_owned(),
                    expected: "64 hex digits",
                }
            });
        }
        let text = self.get("md5").ok_or_else(|| ItemError::Missing {
            item: Box::new(self.identity()),
            field: "sha256",
        })?;
        let md5 = text.to_ascii_lowercase();
        if md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Checksum::Md5(md5))
        } else {
            Err(ItemError::Invalid {
                item: Box::new(self.identity()),
                field: "md5",
                value: text.to_owned(),
                expected: "32 hex digits",
            })
        }
    }

    fn required(&self, field: &'static str) -> Result<&'a str, ItemError> {
        self.get(field).ok_or_else(|| ItemError::Missing {
            item: Box::new(self.identity()),
            field,
        })
    }
}
