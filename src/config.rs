//! The only place that reads flags, environment and config files (SPEC §3). Flags keep the
//! original proxy's names; each can also come from `--config FILE` (TOML, the same names as keys).
//! Upstreams come from `--api-url` (`image-store/1`) and `--simplestreams` (a mirror root), or
//! from the file's `[[upstream]]` tables; with none at all, Canonical's released cloud images.

use crate::bundle::gzip::GzipSettings;
use crate::fetch::retry::{RetryPolicy, StallRule};
use crate::limits;
use crate::simplestreams::{DEFAULT_CONTENT_ID, ItemFilter, Virtualization};
use reqwest::Url;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The upstream the original proxy used.
pub const DEFAULT_API_URL: &str = "https://imagestore.canonical.com/api";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/image-store-proxy";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:52780";
/// Canonical's released Ubuntu cloud images, and the key they are signed with (Debian package
/// `ubuntu-keyring`): the upstream when none is configured.
pub const DEFAULT_SIMPLESTREAMS_URL: &str = "https://cloud-images.ubuntu.com/releases/";
pub const DEFAULT_SIMPLESTREAMS_KEYRING: &str = "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg";
/// The cloud architecture the default filter keeps (`arch~(amd64|x86_64)`).
pub const DEFAULT_CLOUD_ARCHITECTURE: &str = "x86_64";

#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DaemonArgs {
    /// An `image-store/1` upstream's API base URL (fake-store's `http://HOST:PORT/api`)
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// A simplestreams mirror root (its index is streams/v1/index.sjson under it) [default, when
    /// no upstream is given: https://cloud-images.ubuntu.com/releases/]
    #[arg(long, value_name = "URL")]
    pub simplestreams: Option<String>,
    /// For --simplestreams: the keyring its clear-signed index and products files must verify
    /// with [default: /usr/share/keyrings/ubuntu-cloudimage-keyring.gpg, from ubuntu-keyring]
    #[arg(long, value_name = "FILE")]
    pub simplestreams_keyring: Option<PathBuf>,
    /// For --simplestreams: keep only items that pass EXPR (key=val, key!=val, key~regex,
    /// key!~regex; repeatable, all must pass) [default: the cloud's architecture]
    #[arg(long = "filter", value_name = "EXPR")]
    #[serde(default)]
    pub filters: Vec<String>,
    /// For --simplestreams: the newest N versions of each product are offered, besides every
    /// installed one [default: 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_versions: Option<u64>,
    /// For --simplestreams: which image to install where a version has both [default: hvm]
    #[arg(long, value_name = "hvm|paravirtual")]
    pub virtualization: Option<String>,
    /// For --simplestreams: follow these index entries [default: com.ubuntu.cloud:released:download]
    #[arg(long = "content-id", value_name = "ID")]
    #[serde(default)]
    pub content_ids: Vec<String>,
    /// For --simplestreams: accept an unsigned tree (streams/v1/index.json), with a warning on
    /// the dashboard. Its images are then only as trustworthy as the network to the mirror
    #[arg(long)]
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Upstreams listed in the config file (`[[upstream]]`), each with its own keyring and
    /// selection; used instead of --api-url and --simplestreams
    #[arg(skip)]
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamTable>,
    /// State, cache, bundles and keyring [default: /var/lib/image-store-proxy]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// OpenPGP public keyring (binary or armored) trusted for the --api-url catalog and files'
    /// detached signatures [default: <data-dir>/keyring.gpg]
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Install into a local fake cloud under the data dir; SECRET validates the UI's requests.
    /// Every local user can read it in the process list: for tests and demos only; a service
    /// uses --fake-eucalyptus-secret-file
    #[arg(
        long,
        value_name = "SECRET",
        conflicts_with = "fake_eucalyptus_secret_file"
    )]
    pub fake_eucalyptus: Option<String>,
    /// Install into a local fake cloud, the UI's secret read from FILE (its first line; the file
    /// must not be readable by others)
    #[arg(long, value_name = "FILE")]
    pub fake_eucalyptus_secret_file: Option<PathBuf>,
    /// Verbose logs
    #[arg(long)]
    #[serde(default)]
    pub debug: bool,
    /// Where the UI API listens [default: 127.0.0.1:52780]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Cloud endpoints and credentials (eucarc-style or TOML)
    #[arg(long, value_name = "FILE")]
    pub cloud_config: Option<PathBuf>,
    /// Refresh the catalog on a dashboard request when it is older than this [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub catalog_max_age: Option<u64>,
    /// Installs run at once [default: 2]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Pause before the first retry of a failed download, doubling after [default: 500]
    #[arg(long, value_name = "MILLISECONDS")]
    pub retry_delay_ms: Option<u64>,
    /// gzip level of the bundles, 0-9: 1 is about three times faster, 6 (gzip's default) uploads fewer bytes [default: 6]
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: Option<u32>,
    /// Threads that compress a bundle [default: one per core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub compression_threads: Option<u64>,
    /// Deflate every bundle anew, even a gzipped raw image whose own deflate data is otherwise
    /// spliced into the bundle (compression-level and compression-threads then apply to it too)
    #[arg(long)]
    #[serde(default)]
    pub recompress: bool,
    /// Bundle parts uploaded at once, 1-64 [default: 4]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::limits::MAX_UPLOAD_CONCURRENCY))]
    pub upload_concurrency: Option<u64>,
    /// Connections one large file (64 MiB and up) is downloaded over, 1-16, when the upstream
    /// answers Range [default: 4]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::limits::MAX_DOWNLOAD_CONNECTIONS))]
    pub download_connections: Option<u64>,
    /// A download slower than this on average over --stall-seconds has stalled: it is dropped and
    /// resumed (0: never) [default: 1024]
    #[arg(long, value_name = "BYTES")]
    pub stall_bytes_per_second: Option<u64>,
    /// The window over which --stall-bytes-per-second is judged [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub stall_seconds: Option<u64>,
    /// Install by itself the newest version of every product whose images pass FILTERS
    /// (simplestreams filter syntax, space-separated, all must pass: "release=noble arch=amd64");
    /// repeatable, an image passing any one is subscribed
    #[arg(long = "subscribe", value_name = "FILTERS")]
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Versions of each subscribed product kept installed; older ones a subscription installed
    /// are deregistered and their bundles deleted (never an operator's install) [default: 2]
    #[arg(long, value_name = "N")]
    pub keep: Option<u64>,
    /// Bound on the verified files and bundles on disk, in bytes (K, M, G suffixes): the least
    /// recently used unpinned files are evicted to make room [default: none]
    #[arg(long, value_name = "N")]
    pub cache_max_bytes: Option<String>,
    /// Bytes to leave free on the data directory's file system (K, M, G suffixes), evicting as
    /// for --cache-max-bytes [default: none]
    #[arg(long, value_name = "N")]
    pub min_free_bytes: Option<String>,
    /// Hold all downloads together (the single stream, every connection of a ranged download,
    /// catalogs and signatures) to RATE bytes a second: a number with K, M or G (powers of 1024;
    /// `40M`, `40MiB/s` and `40MB/s` are the same) [default: no cap]
    #[arg(long, value_name = "RATE")]
    pub max_download_rate: Option<ByteRate>,
    /// An image-store/1 catalog whose `updated` (a simplestreams upstream: its index's or a
    /// products file's, the oldest) is older than DAYS is shown but not installed from (0: no
    /// limit) [default: 30]
    #[arg(long, value_name = "DAYS")]
    pub max_catalog_age: Option<u64>,
    /// Also fetch image-store/1 files from HOST (a name or an address; repeatable; TOML
    /// `allow-host = [...]`). Files are otherwise fetched only from their catalog's host, and
    /// link-local and cloud metadata addresses are refused unless listed here
    #[arg(long = "allow-host", value_name = "HOST")]
    #[serde(default, rename = "allow-host")]
    pub allow_hosts: Vec<String>,
    /// Read these settings from a TOML file (keys as the flags: api-url = "...")
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// One `[[upstream]]` table of the config file: `api-url` or `simplestreams`, and its settings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UpstreamTable {
    pub api_url: Option<String>,
    pub simplestreams: Option<String>,
    pub keyring: Option<PathBuf>,
    #[serde(default)]
    pub filters: Vec<String>,
    pub max_versions: Option<u64>,
    pub virtualization: Option<String>,
    #[serde(default)]
    pub content_ids: Vec<String>,
    pub section_title: Option<String>,
    #[serde(default)]
    pub allow_unsigned: bool,
}

/// An upstream the catalog is read from: where, which keyring its documents must verify with,
/// and what it speaks.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub url: Url,
    pub keyring: PathBuf,
    pub format: UpstreamFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamFormat {
    ImageStore,
    Simplestreams(SimplestreamsSettings),
}

/// What a simplestreams upstream follows and offers. The default is Canonical's: released
/// images of the cloud's architecture, the newest version of each, HVM first, signed.
#[derive(Debug, Clone, PartialEq)]
pub struct SimplestreamsSettings {
    pub content_ids: Vec<String>,
    /// Checked at start; kept as written (they compare and print as the operator wrote them).
    pub filters: Vec<String>,
    pub max_versions: usize,
    pub virtualization: Virtualization,
    pub section_title: String,
    pub allow_unsigned: bool,
}

impl Default for SimplestreamsSettings {
    fn default() -> Self {
        Self {
            content_ids: vec![DEFAULT_CONTENT_ID.to_owned()],
            filters: vec![
                ItemFilter::for_cloud_architecture(DEFAULT_CLOUD_ARCHITECTURE)
                    .expect("a fixed architecture")
                    .to_string(),
            ],
            max_versions: 1,
            virtualization: Virtualization::Hvm,
            section_title: "Ubuntu cloud images".to_owned(),
            allow_unsigned: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudMode {
    Fake { secret: String },
    Eucalyptus { cloud_config: Option<PathBuf> },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// In the Store tab's order; never empty.
    pub upstreams: Vec<Upstream>,
    pub data_dir: PathBuf,
    /// Trusted for files' detached signatures (only `image-store/1` has them).
    pub keyring: PathBuf,
    pub listen: String,
    pub cloud: CloudMode,
    pub debug: bool,
    pub catalog_max_age: Duration,
    pub workers: usize,
    pub retry: RetryPolicy,
    pub gzip: GzipSettings,
    /// Bundle parts in the air at once.
    pub upload_concurrency: usize,
    /// Connections a large download is split over.
    pub download_connections: usize,
    /// What the proxy installs and retires by itself (`--subscribe`, `--keep`).
    pub subscriptions: crate::subscribe::Settings,
    /// `--cache-max-bytes`, `--min-free-bytes`.
    pub cache_budget: crate::cache::budget::BudgetSettings,
    /// Bytes a second all downloads share (`None`: no cap).
    pub max_download_rate: Option<u64>,
    /// How old a catalog may be for installs (`None`: no limit).
    pub max_catalog_age: Option<Duration>,
    /// Hosts files may come from besides their catalog's, lowercased.
    pub allowed_hosts: Vec<String>,
}

/// A `--max-download-rate`: bytes a second, from `40M`, `40MiB/s`, `40MB/s`, `512K` or `1000`
/// (K, M, G are powers of 1024 whichever way they are written; a link's rate is rarely given so
/// precisely that the difference matters, and one reading is easier to remember).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate(pub u64);

impl std::str::FromStr for ByteRate {
    type Err = String;

    /// A size as `--cache-max-bytes` takes it (`cache::budget::parse_bytes`), optionally "/s";
    /// zero is refused, since no cap is written by leaving the setting out.
    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let per_second = trimmed
            .strip_suffix("/s")
            .or_else(|| trimmed.strip_suffix("/S"))
            .unwrap_or(trimmed);
        match crate::cache::budget::parse_bytes(per_second) {
            Ok(0) => Err(format!(
                "download rate {text:?} is zero; leave max-download-rate out for no cap"
            )),
            Ok(rate) => Ok(ByteRate(rate)),
            Err(_) => Err(format!(
                "download rate {text:?} is not a number of bytes a second with K, M, G or T (e.g. 40M or 40MiB/s)"
            )),
        }
    }
}

/// The config file may give the rate as a string (`"40M"`) or a number of bytes.
impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        let text = match Written::deserialize(deserializer)? {
            Written::Number(n) => n.to_string(),
            Written::Text(text) => text,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Days a catalog may go without an update unless configured: Canonical's released streams are
/// updated every few days and the image store with each new image; a month without one is a
/// mirror that stopped syncing or someone holding an old catalog up (TUF's default for its
/// timestamp role is a day, for targets three months).
pub const DEFAULT_MAX_CATALOG_AGE_DAYS: u64 = 30;

/// Parts uploaded at once unless configured. Into moto on loopback 4 was no faster than 1 for a
/// 100 MiB bundle (medians 1.30 s and 1.32 s, `bench/transfers`): there the server, not one
/// connection, is the bottleneck. 4 is for links where one stream is slower than the pipe, as
/// the download measurement shows, at the price of up to 40 MiB of parts in memory.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;

/// Connections a large download uses unless configured. With each connection held to 16 MiB/s,
/// 256 MiB took 16.11 s over 1, 8.11 s over 2, 4.16 s over 4 and 2.19 s over 8 (medians,
/// `bench/transfers`): close to linear. 4 takes 3.9 times one stream's rate while asking a mirror
/// for few connections at once; more is the operator's choice.
pub const DEFAULT_DOWNLOAD_CONNECTIONS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {cause}")]
    File { path: PathBuf, cause: String },
    #[error("upstream URL {url:?}: {cause}")]
    UpstreamUrl { url: String, cause: String },
    #[error("an [[upstream]] table needs exactly one of api-url and simplestreams")]
    UpstreamKind,
    #[error("upstream {url}: {cause}")]
    Upstream { url: String, cause: String },
    #[error(
        "the image-store upstreams {first} and {second} name different keyrings; files' detached signatures are checked against one keyring, so they must share it"
    )]
    ImageStoreKeyrings { first: String, second: String },
    #[error("compression-level {0} is out of range: 0 (store) to 9 (smallest)")]
    CompressionLevel(u32),
    #[error("{setting} {value} is out of range: 1 to {max}")]
    OutOfRange {
        setting: &'static str,
        value: u64,
        max: u64,
    },
    #[error("compression-threads must be at least 1")]
    CompressionThreads,
    #[error(
        "give the fake cloud's secret once: --fake-eucalyptus or --fake-eucalyptus-secret-file"
    )]
    TwoSecrets,
    #[error("secret file {path}: {cause}")]
    SecretFile { path: PathBuf, cause: String },
    #[error(transparent)]
    Subscription(#[from] crate::subscribe::SubscriptionError),
    #[error("{setting}: {cause}")]
    Size {
        setting: &'static str,
        cause: String,
    },
}

impl DaemonArgs {
    /// Flags win over the config file; the file fills in what the flags leave out.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let merged = match self.config.clone() {
            Some(path) => self.merge(read_file(&path)?),
            None => self,
        };
        let data_dir = merged
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let keyring = merged
            .keyring
            .clone()
            .unwrap_or_else(|| data_dir.join("keyring.gpg"));
        let upstreams = upstreams(&merged, &keyring)?;
        let cloud = match (merged.fake_eucalyptus, merged.fake_eucalyptus_secret_file) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoSecrets),
            (Some(secret), None) => CloudMode::Fake { secret },
            (None, Some(file)) => CloudMode::Fake {
                secret: read_secret_file(&file)?,
            },
            (None, None) => CloudMode::Eucalyptus {
                cloud_config: merged.cloud_config,
            },
        };
        let retry = RetryPolicy {
            first_delay: Duration::from_millis(merged.retry_delay_ms.unwrap_or(500)),
            stall: StallRule {
                min_bytes_per_second: merged
                    .stall_bytes_per_second
                    .unwrap_or(StallRule::default().min_bytes_per_second),
                window: merged
                    .stall_seconds
                    .map_or(StallRule::default().window, Duration::from_secs),
            },
            ..RetryPolicy::default()
        };
        let machine = GzipSettings::default_for_this_machine();
        let gzip = GzipSettings {
            level: merged.compression_level.unwrap_or(machine.level),
            threads: merged
                .compression_threads
                .map_or(machine.threads, |n| n as usize),
            recompress: merged.recompress,
        };
        if gzip.level > 9 {
            return Err(ConfigError::CompressionLevel(gzip.level));
        }
        if gzip.threads == 0 {
            return Err(ConfigError::CompressionThreads);
        }
        let upload_concurrency = in_range(
            "upload-concurrency",
            merged.upload_concurrency,
            DEFAULT_UPLOAD_CONCURRENCY,
            limits::MAX_UPLOAD_CONCURRENCY,
        )?;
        let download_connections = in_range(
            "download-connections",
            merged.download_connections,
            DEFAULT_DOWNLOAD_CONNECTIONS,
            limits::MAX_DOWNLOAD_CONNECTIONS,
        )?;
        let subscriptions = crate::subscribe::Settings::parse(
            &merged.subscribe,
            merged
                .keep
                .map_or(limits::DEFAULT_SUBSCRIPTION_KEEP, |keep| keep as usize),
        )?;
        let size = |setting: &'static str, text: &Option<String>| {
            text.as_deref()
                .map(crate::cache::budget::parse_bytes)
                .transpose()
                .map_err(|cause| ConfigError::Size { setting, cause })
        };
        let cache_budget = crate::cache::budget::BudgetSettings {
            max_bytes: size("cache-max-bytes", &merged.cache_max_bytes)?,
            min_free_bytes: size("min-free-bytes", &merged.min_free_bytes)?,
        };
        Ok(Config {
            subscriptions,
            cache_budget,
            upstreams,
            data_dir,
            keyring,
            listen: merged.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            cloud,
            debug: merged.debug,
            catalog_max_age: Duration::from_secs(merged.catalog_max_age.unwrap_or(60)),
            workers: merged.workers.unwrap_or(2),
            retry,
            gzip,
            upload_concurrency,
            download_connections,
            max_download_rate: merged.max_download_rate.map(|rate| rate.0),
            max_catalog_age: match merged
                .max_catalog_age
                .unwrap_or(DEFAULT_MAX_CATALOG_AGE_DAYS)
            {
                0 => None,
                days => Some(Duration::from_secs(days.saturating_mul(24 * 60 * 60))),
            },
            allowed_hosts: merged
                .allow_hosts
                .iter()
                .map(|host| {
                    host.trim()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase()
                })
                .collect(),
        })
    }

    fn merge(self, file: DaemonArgs) -> DaemonArgs {
        DaemonArgs {
            api_url: self.api_url.or(file.api_url),
            simplestreams: self.simplestreams.or(file.simplestreams),
            simplestreams_keyring: self.simplestreams_keyring.or(file.simplestreams_keyring),
            filters: if self.filters.is_empty() {
                file.filters
            } else {
                self.filters
            },
            max_versions: self.max_versions.or(file.max_versions),
            virtualization: self.virtualization.or(file.virtualization),
            content_ids: if self.content_ids.is_empty() {
                file.content_ids
            } else {
                self.content_ids
            },
            allow_unsigned: self.allow_unsigned || file.allow_unsigned,
            upstreams: file.upstreams,
            data_dir: self.data_dir.or(file.data_dir),
            keyring: self.keyring.or(file.keyring),
            fake_eucalyptus: self.fake_eucalyptus.or(file.fake_eucalyptus),
            fake_eucalyptus_secret_file: self
                .fake_eucalyptus_secret_file
                .or(file.fake_eucalyptus_secret_file),
            debug: self.debug || file.debug,
            listen: self.listen.or(file.listen),
            cloud_config: self.cloud_config.or(file.cloud_config),
            catalog_max_age: self.catalog_max_age.or(file.catalog_max_age),
            workers: self.workers.or(file.workers),
            retry_delay_ms: self.retry_delay_ms.or(file.retry_delay_ms),
            compression_level: self.compression_level.or(file.compression_level),
            compression_threads: self.compression_threads.or(file.compression_threads),
            recompress: self.recompress || file.recompress,
            stall_bytes_per_second: self.stall_bytes_per_second.or(file.stall_bytes_per_second),
            stall_seconds: self.stall_seconds.or(file.stall_seconds),
            upload_concurrency: self.upload_concurrency.or(file.upload_concurrency),
            download_connections: self.download_connections.or(file.download_connections),
            subscribe: if self.subscribe.is_empty() {
                file.subscribe
            } else {
                self.subscribe
            },
            keep: self.keep.or(file.keep),
            cache_max_bytes: self.cache_max_bytes.or(file.cache_max_bytes),
            min_free_bytes: self.min_free_bytes.or(file.min_free_bytes),
            max_download_rate: self.max_download_rate.or(file.max_download_rate),
            max_catalog_age: self.max_catalog_age.or(file.max_catalog_age),
            allow_hosts: if self.allow_hosts.is_empty() {
                file.allow_hosts
            } else {
                self.allow_hosts
            },
            config: self.config,
        }
    }
}

/// `value` (or `default`) if it is 1 to `max`: clap checks the flag, this the config file's key.
fn in_range(
    setting: &'static str,
    value: Option<u64>,
    default: usize,
    max: u64,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) if (1..=max).contains(&value) => Ok(value as usize),
        Some(value) => Err(ConfigError::OutOfRange {
            setting,
            value,
            max,
        }),
    }
}

/// The upstreams, in order: the file's `[[upstream]]` tables; else `--api-url`, then
/// `--simplestreams`; else Canonical's released images.
fn upstreams(args: &DaemonArgs, keyring: &Path) -> Result<Vec<Upstream>, ConfigError> {
    let from_flags = || {
        let mut tables = Vec::new();
        if let Some(api_url) = &args.api_url {
            tables.push(UpstreamTable {
                api_url: Some(api_url.clone()),
                keyring: args.keyring.clone(),
                ..UpstreamTable::default()
            });
        }
        if args.simplestreams.is_some() || tables.is_empty() {
            tables.push(UpstreamTable {
                simplestreams: Some(
                    args.simplestreams
                        .clone()
                        .unwrap_or_else(|| DEFAULT_SIMPLESTREAMS_URL.to_owned()),
                ),
                keyring: args.simplestreams_keyring.clone(),
                filters: args.filters.clone(),
                max_versions: args.max_versions,
                virtualization: args.virtualization.clone(),
                content_ids: args.content_ids.clone(),
                section_title: None,
                allow_unsigned: args.allow_unsigned,
                ..UpstreamTable::default()
            });
        }
        tables
    };
    let tables = if args.upstreams.is_empty() {
        from_flags()
    } else {
        args.upstreams.clone()
    };
    let upstreams: Vec<Upstream> = tables
        .into_iter()
        .map(|table| upstream(table, keyring))
        .collect::<Result<_, _>>()?;
    let mut image_stores = upstreams
        .iter()
        .filter(|upstream| upstream.format == UpstreamFormat::ImageStore);
    if let Some(first) = image_stores.next()
        && let Some(second) = image_stores.find(|other| other.keyring != first.keyring)
    {
        return Err(ConfigError::ImageStoreKeyrings {
            first: first.url.to_string(),
            second: second.url.to_string(),
        });
    }
    Ok(upstreams)
}

fn upstream(table: UpstreamTable, keyring: &Path) -> Result<Upstream, ConfigError> {
    let (text, is_image_store) = match (&table.api_url, &table.simplestreams) {
        (Some(url), None) => (url.clone(), true),
        (None, Some(url)) => (url.clone(), false),
        _ => return Err(ConfigError::UpstreamKind),
    };
    let url = Url::parse(&text).map_err(|e| ConfigError::UpstreamUrl {
        url: text.clone(),
        cause: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::UpstreamUrl {
            url: text,
            cause: "only http and https are supported".into(),
        });
    }
    if is_image_store {
        return Ok(Upstream {
            url,
            keyring: table.keyring.unwrap_or_else(|| keyring.to_owned()),
            format: UpstreamFormat::ImageStore,
        });
    }
    let refused = |cause: String| ConfigError::Upstream {
        url: text.clone(),
        cause,
    };
    // A mirror root is a directory: `…/releases` and `…/releases/` are the same mirror.
    let url = crate::catalog::model::directory_url(&url);
    let defaults = SimplestreamsSettings::default();
    let filters = if table.filters.is_empty() {
        defaults.filters
    } else {
        table.filters
    };
    for filter in &filters {
        ItemFilter::parse(filter).map_err(|e| refused(e.to_string()))?;
    }
    let virtualization = match &table.virtualization {
        Some(text) => text
            .parse()
            .map_err(|e: crate::simplestreams::VirtualizationError| refused(e.to_string()))?,
        None => defaults.virtualization,
    };
    let max_versions = table.max_versions.unwrap_or(defaults.max_versions as u64);
    if max_versions == 0 || max_versions > crate::limits::MAX_STREAM_VERSIONS_OFFERED as u64 {
        return Err(refused(format!(
            "max-versions {max_versions} is out of range: 1 to {}",
            crate::limits::MAX_STREAM_VERSIONS_OFFERED
        )));
    }
    let content_ids = if table.content_ids.is_empty() {
        defaults.content_ids
    } else {
        table.content_ids
    };
    let section_title = table.section_title.unwrap_or_else(|| {
        if url.as_str() == DEFAULT_SIMPLESTREAMS_URL {
            defaults.section_title
        } else {
            format!(
                "Cloud images from {}",
                url.host_str().unwrap_or("the mirror")
            )
        }
    });
    Ok(Upstream {
        url,
        keyring: table
            .keyring
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SIMPLESTREAMS_KEYRING)),
        format: UpstreamFormat::Simplestreams(SimplestreamsSettings {
            content_ids,
            filters,
            max_versions: max_versions as usize,
            virtualization,
            section_title,
            allow_unsigned: table.allow_unsigned,
        }),
    })
}

fn read_file(path: &Path) -> Result<DaemonArgs, ConfigError> {
    let error = |cause: String| ConfigError::File {
        path: path.to_owned(),
        cause,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    toml::from_str(&text).map_err(|e| error(e.to_string()))
}

/// The first line of a secret file, refused when the file is readable by others (the secret
/// would be no safer there than on the command line) or holds no secret.
fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let error = |cause: String| ConfigError::SecretFile {
        path: path.to_owned(),
        cause,
    };
    let mode = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(error(format!(
            "readable by every user (mode {:04o}); chmod o-r it",
            mode & 0o7777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.is_empty() {
        return Err(error("it is empty".into()));
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_comes_from_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let args = |file: &Path| DaemonArgs {
            fake_eucalyptus_secret_file: Some(file.to_owned()),
            ..Default::default()
        };
        let config = args(&file).resolve().unwrap();
        assert!(matches!(config.cloud, CloudMode::Fake { ref secret } if secret == "s3cret"));

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = args(&file).resolve().unwrap_err().to_string();
        assert!(
            error.contains("readable by every user (mode 0644)"),
            "{error}"
        );

        std::fs::write(&file, "\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = args(&file).resolve().unwrap_err().to_string();
        assert!(error.ends_with("it is empty"), "{error}");

        let both = DaemonArgs {
            fake_eucalyptus: Some("x".into()),
            ..args(&file)
        };
        assert!(matches!(both.resolve(), Err(ConfigError::TwoSecrets)));
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(&file, "api-url = \"http://file.example/api\"\ndata-dir = \"/srv/isp\"\nfake-eucalyptus = \"s3cret\"\n").unwrap();
        let args = DaemonArgs {
            api_url: Some("http://flag.example/api".into()),
            config: Some(file),
            ..Default::default()
        };
        let config = args.resolve().unwrap();
        let [upstream] = config.upstreams.as_slice() else {
            panic!("one upstream: {:?}", config.upstreams);
        };
        assert_eq!(upstream.url.as_str(), "http://flag.example/api");
        assert_eq!(upstream.format, UpstreamFormat::ImageStore);
        assert_eq!(upstream.keyring, PathBuf::from("/srv/isp/keyring.gpg"));
        assert_eq!(config.data_dir, PathBuf::from("/srv/isp"));
        assert_eq!(config.keyring, PathBuf::from("/srv/isp/keyring.gpg"));
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert!(matches!(config.cloud, CloudMode::Fake { ref secret } if secret == "s3cret"));
    }

    #[test]
    fn unknown_keys_and_bad_urls_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "api_url = \"x\"\n").unwrap();
        let error = DaemonArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(error.to_string().contains("bad.toml"), "{error}");
        let error = DaemonArgs {
            api_url: Some("ftp://x/api".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(error.to_string().contains("only http and https"), "{error}");
    }

    #[test]
    fn with_no_upstream_canonical_s_released_images_are_the_one() {
        let config = DaemonArgs::default().resolve().unwrap();
        let [upstream] = config.upstreams.as_slice() else {
            panic!("one upstream: {:?}", config.upstreams);
        };
        assert_eq!(upstream.url.as_str(), DEFAULT_SIMPLESTREAMS_URL);
        assert_eq!(
            upstream.keyring,
            PathBuf::from(DEFAULT_SIMPLESTREAMS_KEYRING)
        );
        let UpstreamFormat::Simplestreams(settings) = &upstream.format else {
            panic!("{upstream:?}");
        };
        assert_eq!(settings.filters, ["arch~(amd64|x86_64)"]);
        assert_eq!(settings.content_ids, [DEFAULT_CONTENT_ID]);
        assert_eq!(settings.max_versions, 1);
        assert_eq!(settings.virtualization, Virtualization::Hvm);
        assert!(!settings.allow_unsigned);
    }

    #[test]
    fn flags_give_an_image_store_then_a_mirror_and_the_file_may_list_upstreams() {
        let config = DaemonArgs {
            api_url: Some("http://store.example/api".into()),
            simplestreams: Some("http://mirror.example/ubuntu".into()),
            filters: vec!["release=noble".into(), "arch~amd64".into()],
            max_versions: Some(3),
            virtualization: Some("paravirtual".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let urls: Vec<&str> = config.upstreams.iter().map(|u| u.url.as_str()).collect();
        assert_eq!(
            urls,
            ["http://store.example/api", "http://mirror.example/ubuntu/"]
        );
        let UpstreamFormat::Simplestreams(settings) = &config.upstreams[1].format else {
            panic!("{:?}", config.upstreams);
        };
        assert_eq!(settings.filters, ["release=noble", "arch~amd64"]);
        assert_eq!(settings.max_versions, 3);
        assert_eq!(settings.virtualization, Virtualization::Paravirtual);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(
            &file,
            r#"
[[upstream]]
simplestreams = "https://cloud-images.ubuntu.com/daily/"
keyring = "/etc/isp/ubuntu.gpg"
content-ids = ["com.ubuntu.cloud:daily:download"]
section-title = "Ubuntu daily builds"
max-versions = 2
filters = ["release~(jammy|noble)"]

[[upstream]]
simplestreams = "http://10.0.0.5/mirror/"
allow-unsigned = true
"#,
        )
        .unwrap();
        let config = DaemonArgs {
            config: Some(file.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let [daily, local] = config.upstreams.as_slice() else {
            panic!("{:?}", config.upstreams);
        };
        assert_eq!(daily.keyring, PathBuf::from("/etc/isp/ubuntu.gpg"));
        let UpstreamFormat::Simplestreams(daily) = &daily.format else {
            panic!("{daily:?}");
        };
        assert_eq!(daily.section_title, "Ubuntu daily builds");
        assert_eq!(daily.content_ids, ["com.ubuntu.cloud:daily:download"]);
        assert_eq!(daily.max_versions, 2);
        let UpstreamFormat::Simplestreams(local) = &local.format else {
            panic!("{local:?}");
        };
        assert!(local.allow_unsigned);
        assert_eq!(local.section_title, "Cloud images from 10.0.0.5");
        assert_eq!(local.filters, ["arch~(amd64|x86_64)"]);

        for (toml, says) in [
            ("[[upstream]]\n", "exactly one of api-url and simplestreams"),
            (
                "[[upstream]]\nsimplestreams = \"http://m/\"\nfilters = [\"arch\"]\n",
                "is not key=value",
            ),
            (
                "[[upstream]]\nsimplestreams = \"http://m/\"\nmax-versions = 0\n",
                "max-versions 0 is out of range",
            ),
            (
                "[[upstream]]\nsimplestreams = \"http://m/\"\nvirtualization = \"xen\"\n",
                "xen",
            ),
            (
                "[[upstream]]\napi-url = \"http://a/api\"\nkeyring = \"/a.gpg\"\n\
                 [[upstream]]\napi-url = \"http://b/api\"\nkeyring = \"/b.gpg\"\n",
                "must share it",
            ),
        ] {
            std::fs::write(&file, toml).unwrap();
            let error = DaemonArgs {
                config: Some(file.clone()),
                ..Default::default()
            }
            .resolve()
            .unwrap_err()
            .to_string();
            assert!(error.contains(says), "{toml}: {error}");
        }
    }

    #[test]
    fn the_compression_level_and_threads_come_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(
            &file,
            "compression-level = 1\ncompression-threads = 3\nrecompress = true\n",
        )
        .unwrap();
        let config = DaemonArgs {
            config: Some(file.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            config.gzip,
            GzipSettings {
                level: 1,
                threads: 3,
                recompress: true,
            }
        );
        let defaults = DaemonArgs::default().resolve().unwrap();
        assert_eq!(defaults.gzip.level, 6);
        assert!(defaults.gzip.threads >= 1);
        assert!(!defaults.gzip.recompress, "splicing unless asked not to");
        std::fs::write(&file, "compression-level = 12\n").unwrap();
        let error = DaemonArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            error.to_string().contains("compression-level 12"),
            "{error}"
        );
    }

    /// The transfer settings: flags win over the file, the defaults fill in, and a value out of
    /// range is refused from the file too (clap refuses the flag's).
    #[test]
    fn upload_concurrency_and_download_connections_come_from_flags_or_the_file() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            daemon: DaemonArgs,
        }
        use clap::Parser as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(&file, "upload-concurrency = 8\ndownload-connections = 2\n").unwrap();
        let from_file = DaemonArgs {
            config: Some(file.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (from_file.upload_concurrency, from_file.download_connections),
            (8, 2)
        );
        let flags = Cli::try_parse_from([
            "p",
            "--upload-concurrency=3",
            "--config",
            file.to_str().unwrap(),
        ])
        .unwrap()
        .daemon
        .resolve()
        .unwrap();
        assert_eq!(
            (flags.upload_concurrency, flags.download_connections),
            (3, 2)
        );
        let defaults = DaemonArgs::default().resolve().unwrap();
        assert_eq!(
            (defaults.upload_concurrency, defaults.download_connections),
            (DEFAULT_UPLOAD_CONCURRENCY, DEFAULT_DOWNLOAD_CONNECTIONS)
        );
        for flag in [
            "--upload-concurrency=0",
            "--upload-concurrency=65",
            "--download-connections=17",
        ] {
            assert!(Cli::try_parse_from(["p", flag]).is_err(), "{flag}");
        }
        std::fs::write(&file, "download-connections = 17\n").unwrap();
        let error = DaemonArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "download-connections 17 is out of range: 1 to 16"
        );
    }

    #[test]
    fn subscriptions_and_the_cache_budget_come_from_flags_or_the_file() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            daemon: DaemonArgs,
        }
        use clap::Parser as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(
            &file,
            "subscribe = [\"release=noble arch=amd64\", \"product=server\"]\nkeep = 3\n\
             cache-max-bytes = \"20G\"\nmin-free-bytes = \"512M\"\n",
        )
        .unwrap();
        let from_file = DaemonArgs {
            config: Some(file.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            from_file.subscriptions.texts(),
            ["release=noble arch=amd64", "product=server"]
        );
        assert_eq!(from_file.subscriptions.keep, 3);
        assert_eq!(from_file.cache_budget.max_bytes, Some(20 << 30));
        assert_eq!(from_file.cache_budget.min_free_bytes, Some(512 << 20));
        let flags = Cli::try_parse_from([
            "p",
            "--subscribe",
            "release=jammy",
            "--cache-max-bytes",
            "4096",
            "--config",
            file.to_str().unwrap(),
        ])
        .unwrap()
        .daemon
        .resolve()
        .unwrap();
        assert_eq!(flags.subscriptions.texts(), ["release=jammy"]);
        assert_eq!(flags.cache_budget.max_bytes, Some(4096));
        let defaults = DaemonArgs::default().resolve().unwrap();
        assert!(defaults.subscriptions.is_empty());
        assert_eq!(defaults.subscriptions.keep, 2);
        assert_eq!(
            defaults.cache_budget,
            crate::cache::budget::BudgetSettings::default()
        );
    }

    /// Issue 17's settings: the rate with its units, the catalog age (0 is off), the hosts.
    #[test]
    fn download_rate_catalog_age_and_allowed_hosts_come_from_flags_or_the_file() {
        for (text, rate) in [
            ("1000", 1000),
            ("512K", 512 << 10),
            ("40M", 40 << 20),
            ("40MiB/s", 40 << 20),
            ("40mb/s", 40 << 20),
            ("2G", 2 << 30),
        ] {
            assert_eq!(text.parse::<ByteRate>(), Ok(ByteRate(rate)), "{text}");
        }
        for bad in ["", "M", "40 X", "-1", "0", "40Mbit", "99999999999G"] {
            assert!(bad.parse::<ByteRate>().is_err(), "{bad}");
        }
        let defaults = DaemonArgs::default().resolve().unwrap();
        assert_eq!(defaults.max_download_rate, None);
        assert_eq!(
            defaults.max_catalog_age,
            Some(Duration::from_secs(DEFAULT_MAX_CATALOG_AGE_DAYS * 86_400))
        );
        assert!(defaults.allowed_hosts.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(
            &file,
            "max-download-rate = \"40MiB/s\"\nmax-catalog-age = 0\nallow-host = [\"Mirror.Example\", \"[fd00::1]\"]\n",
        )
        .unwrap();
        let config = DaemonArgs {
            config: Some(file.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(config.max_download_rate, Some(40 << 20));
        assert_eq!(config.max_catalog_age, None);
        assert_eq!(config.allowed_hosts, ["mirror.example", "fd00::1"]);
        std::fs::write(&file, "max-download-rate = 1048576\n").unwrap();
        let config = DaemonArgs {
            config: Some(file.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(config.max_download_rate, Some(1 << 20));
        std::fs::write(&file, "max-download-rate = \"fast\"\n").unwrap();
        let error = DaemonArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("download rate \"fast\" is not a number"),
            "{error}"
        );
    }
}
