//! The validated catalog: what the rest of the proxy sees of upstream, whatever format upstream
//! speaks. A format (`format/`) translates its own vocabulary into these types and calls the checks
//! here, which hold every field an install depends on (a path-safe key, a size within
//! `limits::MAX_FILE_BYTES`, a SHA-256, http(s) URLs, one file of each kind with a machine image,
//! sanitised description HTML); an entry that fails them is dropped with a reason, so one bad
//! entry does not hide the others. Nothing here knows a format's names or JSON.

use crate::cache::Sha256Hex;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use time::OffsetDateTime;

/// The part of an image a file is: the three things a paravirtual EC2 image is registered from.
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

/// How the file is compressed on the wire: what `unpack` undoes while bundling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
}

/// Whether the (decompressed) file is the image or holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Packing {
    /// The file is the image itself.
    Raw,
    /// The file is a tarball holding the image (`*.img`), as UEC images were shipped; a file that
    /// [`FileRef::provides`] a kernel and ramdisk holds them too (`*vmlinuz*`, `*initrd*`).
    Tar,
    /// The file is a qcow2 whole disk: the image is the raw disk it describes.
    Qcow2,
}

/// How the cloud boots the machine image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Virtualization {
    /// Booted by the cloud's hypervisor with the image's own kernel and ramdisk, registered
    /// beside it.
    #[default]
    Paravirtual,
    /// A whole disk, booted by its own boot loader: no kernel or ramdisk registered.
    Hvm,
}

impl Virtualization {
    fn is_paravirtual(&self) -> bool {
        *self == Virtualization::Paravirtual
    }

    /// EC2's `VirtualizationType`, and the word the fake cloud records.
    pub fn ec2_name(self) -> &'static str {
        match self {
            Virtualization::Paravirtual => "paravirtual",
            Virtualization::Hvm => "hvm",
        }
    }
}

/// Where an image came from in a simplestreams mirror, kept with the install and written on every
/// image registered from it, so that a cloud's images can be matched to stream versions again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamIdentity {
    pub content_id: String,
    pub product: String,
    pub version: String,
    pub item: String,
}

impl StreamIdentity {
    /// The image's description in the cloud: `simplestreams <content id> <product> <version>
    /// <item>` (glance-simplestreams-sync keeps the same four in its image properties).
    pub fn description(&self) -> String {
        format!(
            "simplestreams {} {} {} {}",
            self.content_id, self.product, self.version, self.item
        )
    }
}

/// One file to download: where, and the signed size and SHA-256 it must match.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRef {
    pub kind: FileKind,
    pub url: String,
    pub size: u64,
    pub sha256: Sha256Hex,
    pub signature_url: Option<String>,
    pub compression: Compression,
    pub packing: Packing,
    /// What is registered from this one file, in install order, when it is more than its own
    /// kind: a UEC tarball's kernel, ramdisk and machine image. Empty: its `kind` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provides: Vec<FileKind>,
}

impl FileRef {
    /// The artifacts registered from this file, in install order.
    pub fn artifacts(&self) -> Vec<FileKind> {
        if self.provides.is_empty() {
            vec![self.kind]
        } else {
            self.provides.clone()
        }
    }
}

/// Who publishes the image, as the Store tab shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provider {
    pub title: String,
    pub uri: Option<String>,
}

/// One installable image. Install rows keep it as JSON (`db/installs.rs`, `IMAGE_SHAPE`): a change
/// of these types is a change of that stored shape.
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
    /// Left out when paravirtual, as `stream` and `provides` are when empty: an install row of
    /// an image-store/1 image keeps the stored shape 1 byte for byte.
    #[serde(default, skip_serializing_if = "Virtualization::is_paravirtual")]
    pub virtualization: Virtualization,
    /// Set for an image of a simplestreams mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamIdentity>,
    /// The upstream's own fields of the image (a simplestreams item's resolved fields:
    /// `release`, `arch`, `version_name` …), which subscriptions filter on. Not stored with an
    /// install: only the live catalog's images are matched.
    #[serde(skip)]
    pub fields: BTreeMap<String, String>,
}

impl Image {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }

    pub fn file(&self, kind: FileKind) -> Option<&FileRef> {
        self.files.iter().find(|file| file.kind == kind)
    }

    /// The value a subscription's filter on `key` judges: the upstream's own field of that name
    /// if it has one, else the image's: `product`, `version`, `arch` (EC2's name), `title`,
    /// `virtualization` (`hvm`, `paravirtual`), `uri`.
    pub fn field(&self, key: &str) -> Option<&str> {
        if let Some(value) = self.fields.get(key) {
            return Some(value);
        }
        match key {
            "product" => Some(&self.product),
            "version" => Some(&self.version),
            "arch" => Some(&self.arch),
            "title" => Some(&self.title),
            "virtualization" => Some(self.virtualization.ec2_name()),
            "uri" => Some(&self.uri),
            _ => None,
        }
    }
}

/// Compares versions piece by piece (the Store tab's upgrades and subscriptions alike), numbers as numbers: "9.10" < "10.04", "1.2" < "1.10".
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn pieces(text: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = text.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &text[start..i]));
                start = i;
            }
        }
        out
    }
    let (left, right) = (pieces(a), pieces(b));
    for ((left_digit, l), (right_digit, r)) in left.iter().zip(right.iter()) {
        let order = if *left_digit && *right_digit {
            let (l, r) = (l.trim_start_matches('0'), r.trim_start_matches('0'));
            l.len().cmp(&r.len()).then_with(|| l.cmp(r))
        } else {
            l.cmp(r)
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    left.len().cmp(&right.len())
}

/// The path-safe key of an image URI: the first 16 hex digits of its SHA-256.
pub fn image_key(uri: &str) -> String {
    hex::encode(&Sha256::digest(uri.as_bytes())[..8])
}

/// A heading of the Store tab and the images under it.
#[derive(Debug, Clone)]
pub struct Section {
    pub title: String,
    pub summary: String,
    pub image_uris: Vec<String>,
}

/// The accepted catalog, indexed by URI and by key for the API's lookups.
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

    /// Images alone, in no section (tests of what judges a catalog's images).
    pub fn from_images(images: Vec<Arc<Image>>) -> Self {
        Self::new(OffsetDateTime::UNIX_EPOCH, Vec::new(), images)
    }

    /// Several upstreams' catalogs as one: their sections in order, an image URI listed twice
    /// kept from the first, `updated` the newest of theirs.
    pub fn merged(parts: &[Arc<Catalog>]) -> Self {
        let mut images: Vec<Arc<Image>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for image in parts.iter().flat_map(|part| &part.images) {
            if seen.insert(image.uri.as_str()) {
                images.push(image.clone());
            }
        }
        let sections = parts
            .iter()
            .flat_map(|part| part.sections.iter().cloned())
            .collect();
        let updated = parts
            .iter()
            .map(|part| part.updated)
            .max()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self::new(updated, sections, images)
    }

    pub fn by_uri(&self, uri: &str) -> Option<&Arc<Image>> {
        self.by_uri.get(uri).map(|&i| &self.images[i])
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<Image>> {
        self.by_key.get(key).map(|&i| &self.images[i])
    }
}

/// Collects a format's image entries into a [`Catalog`]: refuses a URI listed twice, keeps the
/// reason of every entry dropped, and keeps in each section only the images that made it.
#[derive(Default)]
pub struct CatalogBuilder {
    images: Vec<Arc<Image>>,
    dropped: Vec<String>,
}

impl CatalogBuilder {
    /// Adds the entry `uri`, validated by `validate` (run only if the URI is new).
    pub fn offer(&mut self, uri: &str, validate: impl FnOnce() -> Result<Image, String>) {
        if self.images.iter().any(|known| known.uri == uri) {
            self.dropped.push(format!("image {uri:?}: listed twice"));
            return;
        }
        match validate() {
            Ok(image) => self.images.push(Arc::new(image)),
            Err(reason) => self.dropped.push(format!("image {uri:?}: {reason}")),
        }
    }

    /// The catalog, and one line per image entry dropped.
    pub fn finish(self, updated: OffsetDateTime, sections: Vec<Section>) -> (Catalog, Vec<String>) {
        let images = self.images;
        let sections = sections
            .into_iter()
            .map(|section| Section {
                image_uris: section
                    .image_uris
                    .into_iter()
                    .filter(|uri| images.iter().any(|image| &image.uri == uri))
                    .collect(),
                ..section
            })
            .collect();
        (Catalog::new(updated, sections, images), self.dropped)
    }
}

/// An image entry as a format read it, before the checks an install depends on.
pub struct ImageDraft {
    pub uri: String,
    /// The product it is a version of; `None`: the title.
    pub product: Option<String>,
    /// Empty: the URI is shown instead.
    pub title: String,
    pub version: String,
    pub summary: String,
    /// As upstream wrote it: sanitised here.
    pub description_html: String,
    /// A reference against the upstream directory; dropped (not the image) if it is no http(s) URL.
    pub icon_uri: Option<String>,
    pub provider: Option<Provider>,
    pub tags: Vec<String>,
    /// The EC2 architecture name, `x86_64` or `i386` (the format maps its own names onto these).
    pub arch: &'static str,
    /// Each already checked by [`checked_file`]; in any order.
    pub files: Vec<FileRef>,
    pub virtualization: Virtualization,
    pub stream: Option<StreamIdentity>,
    /// The upstream's own fields, for subscriptions ([`Image::field`]); empty for a format
    /// whose fields are the image's own.
    pub fields: BTreeMap<String, String>,
}

impl Image {
    /// Validates `draft` (its files checked one by one already), resolving references against
    /// `base`, the upstream directory.
    pub fn from_draft(draft: ImageDraft, base: &Url) -> Result<Image, String> {
        checked_image_uri(&draft.uri)?;
        if !matches!(draft.arch, "x86_64" | "i386") {
            return Err(format!("unknown architecture {:?}", draft.arch));
        }
        let mut files = draft.files;
        if !files.iter().any(|file| file.kind == FileKind::Image) {
            return Err("no machine image file".into());
        }
        if let Some(file) = files
            .iter()
            .find(|file| file.packing != Packing::Raw && file.kind != FileKind::Image)
        {
            return Err(format!(
                "a {} cannot be a tarball or a qcow2 disk",
                file.kind.noun()
            ));
        }
        if files
            .iter()
            .any(|file| file.packing == Packing::Qcow2 && file.compression != Compression::None)
        {
            return Err("a qcow2 disk is read in place: it cannot also be gzipped".into());
        }
        if draft.virtualization == Virtualization::Hvm
            && files
                .iter()
                .flat_map(FileRef::artifacts)
                .any(|kind| kind != FileKind::Image)
        {
            return Err("an HVM image boots its own kernel: it has no kernel or ramdisk".into());
        }
        files.sort_by_key(|file| file.kind as u8);
        let title = if draft.title.is_empty() {
            draft.uri.clone()
        } else {
            draft.title
        };
        Ok(Image {
            key: image_key(&draft.uri),
            product: draft.product.unwrap_or_else(|| title.clone()),
            title,
            version: draft.version,
            summary: draft.summary,
            description_html: ammonia::clean(&draft.description_html),
            icon_uri: draft
                .icon_uri
                .and_then(|icon| fetchable_url(base, &icon).ok()),
            provider: draft.provider,
            tags: draft.tags,
            arch: draft.arch.to_string(),
            files,
            virtualization: draft.virtualization,
            stream: draft.stream,
            fields: draft.fields,
            uri: draft.uri,
        })
    }
}

/// The image URI is the UI's key: non-empty printable ASCII.
pub fn checked_image_uri(uri: &str) -> Result<(), String> {
    if uri.is_empty() || !uri.is_ascii() || uri.chars().any(|c| c.is_ascii_control()) {
        return Err("the uri must be non-empty printable ASCII".into());
    }
    Ok(())
}

/// Adds `file` to an image's `files`, refusing a second file of the same kind.
pub fn add_file(files: &mut Vec<FileRef>, file: FileRef) -> Result<(), String> {
    if files.iter().any(|known| known.kind == file.kind) {
        return Err(format!("more than one {} file", file.kind.noun()));
    }
    files.push(file);
    Ok(())
}

/// The SHA-256 the file is checked against: 64 hex digits.
pub fn checked_sha256(kind: FileKind, sha256: &str) -> Result<Sha256Hex, String> {
    Sha256Hex::parse(sha256)
        .ok_or_else(|| format!("{} sha256 {sha256:?} is not 64 hex digits", kind.noun()))
}

/// The signed size: at least a byte, at most `limits::MAX_FILE_BYTES`.
pub fn checked_size(kind: FileKind, size: u64) -> Result<u64, String> {
    if size == 0 || size > crate::limits::MAX_FILE_BYTES {
        return Err(format!("{} size {size} is out of range", kind.noun()));
    }
    Ok(size)
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

/// A format's fixed document `path` (`dashboard`, `streams/v1/index.sjson`) under the upstream's
/// directory.
pub fn document_url(upstream: &Url, path: &str) -> Url {
    directory_url(upstream)
        .join(path)
        .expect("a fixed relative path")
}

/// `reference` resolved against `base`, if it is an http or https URL: nothing else is fetched.
pub fn fetchable_url(base: &Url, reference: &str) -> Result<String, String> {
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
