//! What a simplestreams upstream offers (SPEC §5.2, issue 14 §3–4): items pass the filters first;
//! of each product, the newest `max_versions` versions that kept an item, plus every version
//! that is installed; of each such version, one [`Offer`]: HVM from its `disk1.img` (a
//! compressed qcow2 whole disk) or paravirtual from its `tar.gz` (the UEC tarball with the
//! kernel and initrd members), as configured, falling back to the one the version has.
//!
//! As in python-simplestreams 0.1.0.post59's `sync_products` ("apply filters to items before
//! filtering versions"): a version left without an item is gone before `--max` counts, so
//! `--max 1 ftype=tar.gz` offers the newest version that has a `tar.gz`. (Older copies of the
//! library counted versions first; `tests/simplestreams_model.rs` checks against the PyPI one.)

use super::filter::{ItemFilter, passes_all};
use super::{
    Checksum, ItemError, ItemIdentity, ItemPath, Products, ResolvedItem, compare_serials, printable,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// How an offered image is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Virtualization {
    /// A whole disk (the `disk1.img` item), registered with `VirtualizationType=hvm`.
    Hvm,
    /// A root filesystem with its kernel and ramdisk (the `tar.gz` item, a UEC tarball).
    Paravirtual,
}

impl Virtualization {
    /// The `ftype` of the item this kind of image is made from.
    pub fn ftype(self) -> &'static str {
        match self {
            Virtualization::Hvm => "disk1.img",
            Virtualization::Paravirtual => "tar.gz",
        }
    }

    fn other(self) -> Self {
        match self {
            Virtualization::Hvm => Virtualization::Paravirtual,
            Virtualization::Paravirtual => Virtualization::Hvm,
        }
    }

    /// How the summary names the image.
    fn noun(self) -> &'static str {
        match self {
            Virtualization::Hvm => "HVM disk image",
            Virtualization::Paravirtual => "paravirtual UEC tarball",
        }
    }
}

impl fmt::Display for Virtualization {
    /// As `--virtualization` and EC2's `VirtualizationType` spell it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Virtualization::Hvm => "hvm",
            Virtualization::Paravirtual => "paravirtual",
        })
    }
}

/// A `--virtualization` value that is neither `hvm` nor `paravirtual`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("virtualization {0:?} is neither \"hvm\" nor \"paravirtual\"")]
pub struct VirtualizationError(pub String);

impl FromStr for Virtualization {
    type Err = VirtualizationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "hvm" => Ok(Virtualization::Hvm),
            "paravirtual" => Ok(Virtualization::Paravirtual),
            other => Err(VirtualizationError(other.to_owned())),
        }
    }
}

/// The versions installed from one products file, by product name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstalledVersions(BTreeMap<String, BTreeSet<String>>);

impl InstalledVersions {
    pub fn insert(&mut self, product_name: &str, version_name: &str) {
        self.0
            .entry(product_name.to_owned())
            .or_default()
            .insert(version_name.to_owned());
    }

    pub fn contains(&self, product_name: &str, version_name: &str) -> bool {
        self.0
            .get(product_name)
            .is_some_and(|versions| versions.contains(version_name))
    }

    /// The newest installed version of `product_name`.
    pub fn newest(&self, product_name: &str) -> Option<&str> {
        self.0
            .get(product_name)?
            .iter()
            .map(String::as_str)
            .max_by(|a, b| compare_serials(a, b))
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for InstalledVersions {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(pairs: I) -> Self {
        let mut installed = Self::default();
        for (product, version) in pairs {
            installed.insert(product, version);
        }
        installed
    }
}

/// An upstream's choice of what to offer: its filters, how many versions, which kind first.
#[derive(Debug, Clone)]
pub struct Selection {
    pub filters: Vec<ItemFilter>,
    /// Newest versions of each product offered besides the installed ones (`--max-versions`).
    pub max_versions: usize,
    /// Which kind of image to make when a version has both (`--virtualization`).
    pub virtualization: Virtualization,
}

impl Default for Selection {
    /// No filter, the newest version, HVM first.
    fn default() -> Self {
        Self {
            filters: Vec::new(),
            max_versions: 1,
            virtualization: Virtualization::Hvm,
        }
    }
}

/// One chosen version of one product, with its items that passed the filters.
#[derive(Debug, Clone)]
pub struct ChosenVersion<'a> {
    pub product_name: &'a str,
    pub version_name: &'a str,
    pub items: Vec<ResolvedItem<'a>>,
}

/// One image the Store tab offers: one (product, version), made from one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The item the image is made from.
    pub identity: ItemIdentity,
    /// The release and architecture: "Ubuntu 24.04 LTS (Noble Numbat) amd64".
    pub title: String,
    /// The version name: the serial (`20240725`).
    pub version: String,
    pub size: u64,
    pub checksum: Checksum,
    pub path: ItemPath,
    pub virtualization: Virtualization,
    /// The publication name and label: "ubuntu-noble-24.04-amd64-server-20240725 (release),
    /// HVM disk image".
    pub summary: String,
    pub arch: Option<String>,
    pub release: Option<String>,
    /// Every resolved field of the item, as filters see them (subscriptions judge these).
    pub fields: BTreeMap<String, String>,
}

impl Offer {
    /// A newer serial of a product that has a version installed.
    pub fn is_upgrade(&self, installed: &InstalledVersions) -> bool {
        installed
            .newest(&self.identity.product_name)
            .is_some_and(|newest| compare_serials(&self.identity.version_name, newest).is_gt())
    }
}

/// What [`Selection::offers`] found: the offers, and a line for each chosen version that gave
/// none (no `disk1.img` or `tar.gz` passed the filters, or its item lacks a size or checksum).
#[derive(Debug, Default)]
pub struct Offers {
    pub offers: Vec<Offer>,
    pub passed_over: Vec<String>,
}

impl Selection {
    /// The versions to offer, product by product, newest first: of the versions with an item
    /// that passes the filters, the newest `max_versions` and those installed. An installed
    /// version none of whose items passes the filters any more has nothing to offer and is left
    /// out (the caller still knows it as installed).
    pub fn choose<'a>(
        &self,
        products: &'a Products,
        installed: &InstalledVersions,
    ) -> Vec<ChosenVersion<'a>> {
        let mut kept: BTreeMap<(&str, &str), Vec<ResolvedItem<'a>>> = BTreeMap::new();
        for item in products.items() {
            if passes_all(&self.filters, &item) {
                kept.entry((item.product_name(), item.version_name()))
                    .or_default()
                    .push(item);
            }
        }
        let mut chosen = Vec::new();
        for (product_name, versions) in products.versions() {
            let mut newest = 0;
            for version_name in versions.into_iter().rev() {
                let Some(items) = kept.remove(&(product_name, version_name)) else {
                    continue;
                };
                let is_installed = installed.contains(product_name, version_name);
                if newest < self.max_versions || is_installed {
                    chosen.push(ChosenVersion {
                        product_name,
                        version_name,
                        items,
                    });
                }
                newest += 1;
            }
        }
        chosen
    }

    /// One offer per chosen version.
    pub fn offers(&self, products: &Products, installed: &InstalledVersions) -> Offers {
        let mut found = Offers::default();
        for version in self.choose(products, installed) {
            let pick = |kind: Virtualization| {
                let mut of_kind = version
                    .items
                    .iter()
                    .filter(|item| item.ftype() == Some(kind.ftype()));
                // An item named for its ftype first (`disk1.img`), then by name.
                let first = of_kind.clone().next();
                of_kind
                    .find(|item| item.item_name() == kind.ftype())
                    .or(first)
                    .map(|item| (kind, *item))
            };
            let preferred = self.virtualization;
            let Some((kind, item)) = pick(preferred).or_else(|| pick(preferred.other())) else {
                found.passed_over.push(format!(
                    "{}/{} {}: no disk1.img or tar.gz item passed the filters",
                    printable(&products.content_id),
                    printable(version.product_name),
                    printable(version.version_name)
                ));
                continue;
            };
            match offer(kind, &item) {
                Ok(offer) => found.offers.push(offer),
                Err(error) => found.passed_over.push(error.to_string()),
            }
        }
        found
    }
}

fn offer(virtualization: Virtualization, item: &ResolvedItem<'_>) -> Result<Offer, ItemError> {
    let identity = item.identity();
    let pubname = item.pubname().unwrap_or(item.product_name());
    let summary = match item.label() {
        Some(label) => format!("{pubname} ({label}), {}", virtualization.noun()),
        None => format!("{pubname}, {}", virtualization.noun()),
    };
    Ok(Offer {
        title: title(item),
        version: identity.version_name.clone(),
        size: item.size()?,
        checksum: item.checksum()?,
        path: item.path()?,
        virtualization,
        summary,
        arch: item.arch().map(str::to_owned),
        release: item.release().map(str::to_owned),
        fields: item
            .fields()
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect(),
        identity,
    })
}

/// "Ubuntu 24.04 LTS (Noble Numbat) amd64", from `os`, `release_title` (else `version`, else
/// `release`), `release_codename` and `arch`, leaving out what the item lacks.
fn title(item: &ResolvedItem<'_>) -> String {
    let mut words = Vec::new();
    if let Some(os) = item.os() {
        words.push(match os {
            "ubuntu" => "Ubuntu".to_owned(),
            other => capitalised(other),
        });
    }
    let release = item
        .release_title()
        .or(item.version())
        .or(item.release())
        .unwrap_or(item.product_name());
    words.push(release.to_owned());
    if let Some(codename) = item.release_codename().filter(|c| *c != release) {
        words.push(format!("({codename})"));
    }
    if let Some(arch) = item.arch() {
        words.push(arch.to_owned());
    }
    words.join(" ")
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
