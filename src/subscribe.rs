//! Subscriptions (`--subscribe "FILTERS"`, `--keep N`): the policy of what the proxy installs
//! and retires by itself, as one pure function ([`plan`]) of the catalog, the installs and the
//! settings, so that `image-store-proxy plan` and the daemon's refresh decide alike.
//!
//! A subscription is sstream-mirror's filter syntax (`simplestreams::ItemFilter`), several
//! separated by spaces and all AND-ed, judged on [`Image::field`]: a simplestreams image's
//! resolved item fields (`release`, `arch` as Ubuntu names it, `version_name` …), and for any
//! image `product`, `version`, `arch` (EC2's name where the upstream has no `arch` of its own),
//! `title`, `virtualization` and `uri`. Rules:
//! - per product (a stream's content id and product, else the image's `product`), the newest
//!   matching version is installed unless the proxy has any row for it (installed, in flight,
//!   failed, cancelled or deregistered: what the operator did to it stands) or a newer version of
//!   the product is installed already;
//! - of the product's versions a subscription installed (origin `subscription`, state
//!   `installed`), the newest `keep` stay and the older ones are retired: deregistered, their
//!   bundles deleted. An operator's install is never retired, nor counted against `keep`.
//!
//! Versions order as the numbers in them do (`9.10` < `10.04`; serials `20240725` <
//! `20240725.1`), the rest of the text by bytes.

use crate::catalog::model::{Catalog, Image, natural_cmp};
use crate::db::installs::{InstallRow, Origin};
use crate::install::state::InstallState;
use crate::simplestreams::{FilterError, ItemFilter};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

pub use crate::limits::DEFAULT_SUBSCRIPTION_KEEP as DEFAULT_KEEP;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error(
        "subscription {text:?} has no filter: give key=value, key!=value, key~regex or key!~regex"
    )]
    Empty { text: String },
    /// The filter's own line names the expression; the subscription is said once around it.
    #[error("subscription {text:?}: {cause}")]
    Filter { text: String, cause: FilterError },
    #[error("keep must be at least 1")]
    Keep,
}

/// One `--subscribe` value: its filters, all of which an image must pass.
#[derive(Debug, Clone)]
pub struct Subscription {
    text: String,
    filters: Vec<ItemFilter>,
}

impl Subscription {
    /// `release=noble arch=amd64`: filters separated by whitespace.
    pub fn parse(text: &str) -> Result<Self, SubscriptionError> {
        let filters = text
            .split_whitespace()
            .map(|expression| {
                ItemFilter::parse(expression).map_err(|cause| SubscriptionError::Filter {
                    text: text.to_owned(),
                    cause,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if filters.is_empty() {
            return Err(SubscriptionError::Empty {
                text: text.to_owned(),
            });
        }
        Ok(Self {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            filters,
        })
    }

    pub fn matches(&self, image: &Image) -> bool {
        self.filters
            .iter()
            .all(|filter| filter.matches_value(image.field(filter.key())))
    }

    /// As the operator wrote it (spaces collapsed).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The subscriptions and how many versions of each product to keep.
#[derive(Debug, Clone)]
pub struct Settings {
    pub subscriptions: Vec<Subscription>,
    pub keep: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            subscriptions: Vec::new(),
            keep: DEFAULT_KEEP,
        }
    }
}

impl Settings {
    pub fn parse(texts: &[String], keep: usize) -> Result<Self, SubscriptionError> {
        if keep == 0 {
            return Err(SubscriptionError::Keep);
        }
        Ok(Self {
            subscriptions: texts
                .iter()
                .map(|text| Subscription::parse(text))
                .collect::<Result<_, _>>()?,
            keep,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    /// The texts, for comparing two configurations.
    pub fn texts(&self) -> Vec<&str> {
        self.subscriptions.iter().map(Subscription::text).collect()
    }
}

/// An image a subscription would install.
#[derive(Debug, Clone)]
pub struct PlannedInstall {
    pub image: Arc<Image>,
    /// The subscription that asked for it (the first that matches).
    pub subscription: String,
}

/// A subscription's install to retire, and the registrations that deregisters.
#[derive(Debug, Clone)]
pub struct Retirement {
    pub row: InstallRow,
    /// Its ids no other install uses ([`registrations_to_drop`]).
    pub deregister: Vec<String>,
}

/// The registrations retiring `row` deregisters: its machine image, kernel and ramdisk (in that
/// order, so no image is left linked to a kernel that is gone), less those another install,
/// installed or in flight, still uses (a kernel shared by versions).
pub fn registrations_to_drop<'a>(row: &'a InstallRow, installs: &'a [InstallRow]) -> Vec<&'a str> {
    let ids = |row: &'a InstallRow| {
        [&row.ids.emi, &row.ids.eki, &row.ids.eri]
            .into_iter()
            .flatten()
            .map(String::as_str)
    };
    let in_use: HashSet<&str> = installs
        .iter()
        .filter(|other| other.image.uri != row.image.uri)
        .filter(|other| other.state == InstallState::Installed || other.state.is_active())
        .flat_map(ids)
        .collect();
    ids(row).filter(|id| !in_use.contains(id)).collect()
}

/// What the next refresh does.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub install: Vec<PlannedInstall>,
    /// A subscription's installs past `keep`, oldest first.
    pub retire: Vec<Retirement>,
    /// A subscription's installs that stay (the newest `keep` of each product): their cache
    /// files are pinned against eviction.
    pub kept: Vec<InstallRow>,
    pub keep: usize,
}

/// Which product an image is a version of: a stream's content id and product, else the
/// catalog's `product`.
pub fn product_key(image: &Image) -> String {
    match &image.stream {
        Some(stream) => format!("{} {}", stream.content_id, stream.product),
        None => image.product.clone(),
    }
}

/// Version names in order: as the Store tab orders them ([`natural_cmp`]: runs of digits as
/// numbers), then by bytes, so that two names are equal only when they are the same.
pub fn version_order(a: &str, b: &str) -> Ordering {
    natural_cmp(a, b).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// What the next refresh installs and retires, and what it keeps.
pub fn plan(catalog: &Catalog, installs: &[InstallRow], settings: &Settings) -> Plan {
    let mut plan = Plan {
        keep: settings.keep,
        ..Plan::default()
    };
    let known: HashSet<&str> = installs.iter().map(|row| row.image.uri.as_str()).collect();
    // The newest version of each product installed or on its way, whoever asked.
    let mut newest_present: BTreeMap<String, &str> = BTreeMap::new();
    for row in installs
        .iter()
        .filter(|row| row.state == InstallState::Installed || row.state.is_active())
    {
        let entry = newest_present
            .entry(product_key(&row.image))
            .or_insert(&row.image.version);
        if version_order(&row.image.version, entry).is_gt() {
            *entry = &row.image.version;
        }
    }
    if !settings.is_empty() {
        let mut newest: BTreeMap<String, (&Arc<Image>, &Subscription)> = BTreeMap::new();
        for image in &catalog.images {
            let Some(subscription) = settings.subscriptions.iter().find(|s| s.matches(image))
            else {
                continue;
            };
            let entry = newest
                .entry(product_key(image))
                .or_insert((image, subscription));
            if version_order(&image.version, &entry.0.version).is_gt() {
                *entry = (image, subscription);
            }
        }
        for (product, (image, subscription)) in newest {
            let outdone = newest_present
                .get(&product)
                .is_some_and(|present| version_order(present, &image.version).is_ge());
            if !known.contains(image.uri.as_str()) && !outdone {
                plan.install.push(PlannedInstall {
                    image: image.clone(),
                    subscription: subscription.text().to_owned(),
                });
            }
        }
    }
    let mut theirs: BTreeMap<String, Vec<&InstallRow>> = BTreeMap::new();
    for row in installs
        .iter()
        .filter(|row| row.origin == Origin::Subscription && row.state == InstallState::Installed)
    {
        theirs.entry(product_key(&row.image)).or_default().push(row);
    }
    for rows in theirs.values_mut() {
        rows.sort_by(|a, b| version_order(&b.image.version, &a.image.version));
        for (rank, row) in rows.iter().enumerate() {
            if rank < settings.keep {
                plan.kept.push((*row).clone());
            } else {
                plan.retire.push(Retirement {
                    row: (*row).clone(),
                    deregister: registrations_to_drop(row, installs)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                });
            }
        }
    }
    plan.retire
        .sort_by(|a, b| version_order(&a.row.image.version, &b.row.image.version));
    plan
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.retire.is_empty()
    }

    /// Bytes the installs would download (every file; those already cached are not fetched
    /// again, but are counted, as the cache budget counts them).
    pub fn install_bytes(&self) -> u64 {
        self.install.iter().map(|p| p.image.total_bytes()).sum()
    }
}

/// `image-store-proxy plan`'s report: each install and retirement on its line, with sizes.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.install.is_empty() {
            writeln!(f, "Would install nothing.")?;
        } else {
            writeln!(
                f,
                "Would install {} image(s), {}:",
                self.install.len(),
                bytes(self.install_bytes())
            )?;
            for planned in &self.install {
                let image = &planned.image;
                writeln!(
                    f,
                    "  install {} ({}), {}, for subscription \"{}\"",
                    named(image),
                    image.uri,
                    bytes(image.total_bytes()),
                    planned.subscription
                )?;
            }
        }
        if self.retire.is_empty() {
            writeln!(f, "Would deregister nothing (keep {}).", self.keep)?;
        } else {
            writeln!(
                f,
                "Would deregister {} image(s), keeping the newest {} of each product:",
                self.retire.len(),
                self.keep
            )?;
            for retirement in &self.retire {
                let image = &retirement.row.image;
                writeln!(
                    f,
                    "  deregister {} ({}), {}: {} and the bundles",
                    named(image),
                    image.uri,
                    bytes(image.total_bytes()),
                    if retirement.deregister.is_empty() {
                        "no registration of its own".to_owned()
                    } else {
                        retirement.deregister.join(" ")
                    }
                )?;
            }
        }
        for row in &self.kept {
            writeln!(f, "  keep {} ({})", named(&row.image), row.image.uri)?;
        }
        Ok(())
    }
}

/// The plan's last line: the cache's bytes against its budget.
pub fn cache_line(used: u64, budget: crate::cache::budget::BudgetSettings) -> String {
    let mut line = format!("Cache: {} of verified files and bundles", bytes(used));
    match budget.max_bytes {
        Some(max) => line.push_str(&format!(", budget {} (--cache-max-bytes)", bytes(max))),
        None => line.push_str(", no budget (--cache-max-bytes)"),
    }
    if let Some(min_free) = budget.min_free_bytes {
        line.push_str(&format!(
            ", {} kept free (--min-free-bytes)",
            bytes(min_free)
        ));
    }
    line.push('\n');
    line
}

/// "12345 bytes (12.1 KiB)": exact, and readable.
pub fn bytes(count: u64) -> String {
    if count < 1024 {
        return format!("{count} bytes");
    }
    format!("{count} bytes ({})", crate::status::size(count))
}

/// The image's title, with its version unless the title says it already.
fn named(image: &Image) -> String {
    if image.title.contains(&image.version) {
        image.title.clone()
    } else {
        format!("{} {}", image.title, image.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Compression, FileKind, FileRef, Packing, Virtualization};
    use crate::db::RegisteredIds;

    fn image(set: &str, product: &str, version: &str) -> Arc<Image> {
        Arc::new(Image {
            uri: format!("http://store.example/api/images/{set}"),
            key: crate::catalog::model::image_key(set),
            product: product.into(),
            title: format!("Server {version}"),
            version: version.into(),
            summary: String::new(),
            description_html: String::new(),
            icon_uri: None,
            provider: None,
            tags: Vec::new(),
            arch: "x86_64".into(),
            files: vec![FileRef {
                kind: FileKind::Image,
                url: format!("http://store.example/api/files/{set}/image"),
                size: 1000,
                sha256: crate::cache::Sha256Hex::from_digest(set.as_bytes()),
                signature_url: None,
                compression: Compression::None,
                packing: Packing::Raw,
                provides: Vec::new(),
            }],
            virtualization: Virtualization::Paravirtual,
            stream: None,
            fields: Default::default(),
        })
    }

    fn row(image: &Arc<Image>, state: InstallState, origin: Origin) -> InstallRow {
        InstallRow {
            image: image.clone(),
            state,
            status_detail: String::new(),
            error: None,
            attempt: 1,
            bucket: "image-store-1".into(),
            ids: RegisteredIds {
                emi: Some(format!("emi-{}", image.version)),
                ..RegisteredIds::default()
            },
            queued_at: 1,
            updated_at: 1,
            origin,
        }
    }

    fn catalog(images: &[&Arc<Image>]) -> Catalog {
        Catalog::from_images(images.iter().map(|i| (*i).clone()).collect())
    }

    fn settings(texts: &[&str], keep: usize) -> Settings {
        Settings::parse(
            &texts.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            keep,
        )
        .unwrap()
    }

    #[test]
    fn versions_order_by_their_numbers() {
        assert!(version_order("9.10", "10.04").is_lt());
        assert!(version_order("20240725", "20240725.1").is_lt());
        assert!(version_order("20240725.1", "20240726").is_lt());
        assert!(version_order("1.0", "1.0").is_eq());
        assert!(version_order("1.0a", "1.0b").is_lt());
    }

    #[test]
    fn bad_subscriptions_are_refused_in_one_line() {
        let empty = Subscription::parse("  ").unwrap_err();
        assert!(empty.to_string().contains("has no filter"), "{empty}");
        let bad = Subscription::parse("release=noble arch").unwrap_err();
        assert_eq!(
            bad.to_string(),
            "subscription \"release=noble arch\": filter \"arch\" is not key=value, key!=value, key~regex or key!~regex"
        );
        assert_eq!(
            Settings::parse(&[], 0).unwrap_err(),
            SubscriptionError::Keep
        );
    }

    #[test]
    fn the_newest_matching_version_of_each_product_is_installed_once() {
        let (v1, v2, other) = (
            image("v1", "server", "1.0"),
            image("v2", "server", "2.0"),
            image("desk", "desktop", "2.0"),
        );
        let subscribed = settings(&["product=server arch=x86_64"], 2);
        let plan = plan(&catalog(&[&v1, &v2, &other]), &[], &subscribed);
        let uris: Vec<&str> = plan.install.iter().map(|p| p.image.uri.as_str()).collect();
        assert_eq!(uris, [v2.uri.as_str()]);
        assert_eq!(plan.install[0].subscription, "product=server arch=x86_64");
        // Queued, failed or cancelled by the operator: any row stands.
        for state in [
            InstallState::Queued,
            InstallState::Failed,
            InstallState::Cancelled,
        ] {
            let rows = [row(&v2, state, Origin::Subscription)];
            assert!(
                super::plan(&catalog(&[&v1, &v2]), &rows, &subscribed)
                    .install
                    .is_empty()
            );
        }
        // A newer version installed (by anyone) outdoes an older one still on offer.
        let v3 = image("v3", "server", "3.0");
        let rows = [row(&v3, InstallState::Installed, Origin::Operator)];
        assert!(
            super::plan(&catalog(&[&v1, &v2]), &rows, &subscribed)
                .install
                .is_empty()
        );
    }

    #[test]
    fn only_a_subscription_s_own_installs_past_keep_are_retired() {
        let versions: Vec<Arc<Image>> = (1..=4)
            .map(|n| image(&format!("v{n}"), "server", &format!("{n}.0")))
            .collect();
        let rows = vec![
            row(&versions[0], InstallState::Installed, Origin::Operator),
            row(&versions[1], InstallState::Installed, Origin::Subscription),
            row(&versions[2], InstallState::Installed, Origin::Subscription),
            row(&versions[3], InstallState::Installed, Origin::Subscription),
        ];
        let plan = plan(&catalog(&[]), &rows, &settings(&["product=server"], 2));
        let retired: Vec<&str> = plan
            .retire
            .iter()
            .map(|r| r.row.image.version.as_str())
            .collect();
        assert_eq!(retired, ["2.0"]);
        let kept: Vec<&str> = plan.kept.iter().map(|r| r.image.version.as_str()).collect();
        assert_eq!(kept, ["4.0", "3.0"]);
        let text = plan.to_string();
        assert!(text.contains("Would install nothing."), "{text}");
        assert!(
            text.contains("  deregister Server 2.0 (http://store.example/api/images/v2), 1000 bytes: emi-2.0 and the bundles"),
            "{text}"
        );
    }

    #[test]
    fn a_registration_another_install_uses_is_not_dropped() {
        let (old, new) = (image("v1", "server", "1.0"), image("v2", "server", "2.0"));
        let mut retiring = row(&old, InstallState::Installed, Origin::Subscription);
        retiring.ids.eki = Some("eki-SHARED".into());
        retiring.ids.eri = Some("eri-OWN".into());
        let mut keeping = row(&new, InstallState::Installed, Origin::Subscription);
        keeping.ids.eki = Some("eki-SHARED".into());
        let installs = [retiring.clone(), keeping];
        assert_eq!(
            registrations_to_drop(&retiring, &installs),
            ["emi-1.0", "eri-OWN"]
        );
    }

    #[test]
    fn a_simplestreams_image_is_judged_on_its_own_fields_first() {
        let mut disk = (*image("noble", "com.ubuntu.cloud:server:24.04:amd64", "20240725")).clone();
        disk.fields.insert("release".into(), "noble".into());
        disk.fields.insert("arch".into(), "amd64".into());
        assert!(
            Subscription::parse("release=noble arch=amd64")
                .unwrap()
                .matches(&disk)
        );
        assert!(!Subscription::parse("arch=x86_64").unwrap().matches(&disk));
        assert!(Subscription::parse("version~^2024").unwrap().matches(&disk));
        assert!(
            !Subscription::parse("release!=noble")
                .unwrap()
                .matches(&disk)
        );
    }
}
