//! The only place that reads flags, environment and config files (SPEC §3). Flags keep the
//! original proxy's names; each can also come from `--config FILE` (TOML, the same names as keys).

use crate::bundle::gzip::GzipSettings;
use crate::fetch::retry::{RetryPolicy, StallRule};
use reqwest::Url;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The upstream the original proxy used.
pub const DEFAULT_API_URL: &str = "https://imagestore.canonical.com/api";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/image-store-proxy";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:52780";

#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DaemonArgs {
    /// Upstream store API base URL [default: https://imagestore.canonical.com/api]
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// State, cache, bundles and keyring [default: /var/lib/image-store-proxy]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// OpenPGP public keyring (binary or armored) trusted for the catalog and files [default: <data-dir>/keyring.gpg]
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
    /// A download slower than this on average over --stall-seconds has stalled: it is dropped and
    /// resumed (0: never) [default: 1024]
    #[arg(long, value_name = "BYTES")]
    pub stall_bytes_per_second: Option<u64>,
    /// The window over which --stall-bytes-per-second is judged [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub stall_seconds: Option<u64>,
    /// Read these settings from a TOML file (keys as the flags: api-url = "...")
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudMode {
    Fake { secret: String },
    Eucalyptus { cloud_config: Option<PathBuf> },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub api_url: Url,
    pub data_dir: PathBuf,
    pub keyring: PathBuf,
    pub listen: String,
    pub cloud: CloudMode,
    pub debug: bool,
    pub catalog_max_age: Duration,
    pub workers: usize,
    pub retry: RetryPolicy,
    pub gzip: GzipSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {cause}")]
    File { path: PathBuf, cause: String },
    #[error("--api-url {url:?}: {cause}")]
    ApiUrl { url: String, cause: String },
    #[error("compression-level {0} is out of range: 0 (store) to 9 (smallest)")]
    CompressionLevel(u32),
    #[error("compression-threads must be at least 1")]
    CompressionThreads,
    #[error(
        "give the fake cloud's secret once: --fake-eucalyptus or --fake-eucalyptus-secret-file"
    )]
    TwoSecrets,
    #[error("secret file {path}: {cause}")]
    SecretFile { path: PathBuf, cause: String },
}

impl DaemonArgs {
    /// Flags win over the config file; the file fills in what the flags leave out.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let merged = match self.config.clone() {
            Some(path) => self.merge(read_file(&path)?),
            None => self,
        };
        let api_url_text = merged
            .api_url
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let api_url = Url::parse(&api_url_text).map_err(|e| ConfigError::ApiUrl {
            url: api_url_text.clone(),
            cause: e.to_string(),
        })?;
        if !matches!(api_url.scheme(), "http" | "https") {
            return Err(ConfigError::ApiUrl {
                url: api_url_text,
                cause: "only http and https are supported".into(),
            });
        }
        let data_dir = merged
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let keyring = merged
            .keyring
            .unwrap_or_else(|| data_dir.join("keyring.gpg"));
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
        };
        if gzip.level > 9 {
            return Err(ConfigError::CompressionLevel(gzip.level));
        }
        if gzip.threads == 0 {
            return Err(ConfigError::CompressionThreads);
        }
        Ok(Config {
            api_url,
            data_dir,
            keyring,
            listen: merged.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            cloud,
            debug: merged.debug,
            catalog_max_age: Duration::from_secs(merged.catalog_max_age.unwrap_or(60)),
            workers: merged.workers.unwrap_or(2),
            retry,
            gzip,
        })
    }

    fn merge(self, file: DaemonArgs) -> DaemonArgs {
        DaemonArgs {
            api_url: self.api_url.or(file.api_url),
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
            stall_bytes_per_second: self.stall_bytes_per_second.or(file.stall_bytes_per_second),
            stall_seconds: self.stall_seconds.or(file.stall_seconds),
            config: self.config,
        }
    }
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
        assert_eq!(config.api_url.as_str(), "http://flag.example/api");
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
    fn the_compression_level_and_threads_come_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(&file, "compression-level = 1\ncompression-threads = 3\n").unwrap();
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
                threads: 3
            }
        );
        let defaults = DaemonArgs::default().resolve().unwrap();
        assert_eq!(defaults.gzip.level, 6);
        assert!(defaults.gzip.threads >= 1);
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
}
