//! The cache budget (`--cache-max-bytes`, `--min-free-bytes`): before an install downloads, room
//! is made for the files it lacks by evicting verified files least recently used first, never
//! one pinned (a file of an install in flight, or of a version a subscription keeps). Bundles
//! waiting on disk count against the budget but are not evicted: they belong to installs in
//! flight. An install that cannot fit even with every unpinned file gone is refused at once,
//! with the numbers, and nothing is evicted for it.
//!
//! The database and the cache directory stay in agreement: an eviction forgets the `files` row
//! first, then removes the file, so a crash in between leaves a file nobody counts as verified,
//! which [`CacheBudget::sweep`] removes at the next start (as it forgets a row whose file is
//! gone).

use super::{Cache, Sha256Hex};
use crate::catalog::model::Image;
use crate::db::{Db, DbError, InstallRow, VerifiedFile};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The operator's bounds on the cache; `None`: no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetSettings {
    /// Verified files and bundles on disk together, in bytes.
    pub max_bytes: Option<u64>,
    /// Bytes that must stay free on the data directory's file system.
    pub min_free_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The install's line: what it needs against what the budget can give it.
    #[error(
        "the image does not fit in the cache: it needs {needed} bytes and {flag} {limit} allows {allowed} bytes ({held} bytes are held by files in use and bundles)"
    )]
    DoesNotFit {
        needed: u64,
        allowed: u64,
        flag: &'static str,
        limit: u64,
        held: u64,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Decides and performs evictions; one decision at a time.
pub struct CacheBudget {
    settings: BudgetSettings,
    cache: Cache,
    db: Db,
    data_dir: PathBuf,
    /// How many versions of a product a subscription keeps: their files are pinned.
    keep: usize,
    deciding: Mutex<()>,
}

impl CacheBudget {
    pub fn new(settings: BudgetSettings, data_dir: &Path, db: Db, keep: usize) -> Self {
        Self {
            settings,
            cache: Cache::new(data_dir),
            db,
            data_dir: data_dir.to_owned(),
            keep,
            deciding: Mutex::new(()),
        }
    }

    pub fn settings(&self) -> BudgetSettings {
        self.settings
    }

    /// Makes room for the files of `image` the cache lacks, evicting what it must; marks the
    /// files it has as used now. `installs` is every install row, `image`'s own (in flight)
    /// among them.
    pub fn make_room(&self, image: &Image, installs: &[InstallRow]) -> Result<(), BudgetError> {
        let _one_at_a_time = self.deciding.lock().unwrap_or_else(|p| p.into_inner());
        let files = self.db.verified_files()?;
        let verified: HashSet<&str> = files.iter().map(|f| f.sha256.as_str()).collect();
        for file in image
            .files
            .iter()
            .filter(|f| verified.contains(f.sha256.as_str()))
        {
            self.db.touch_file(file.sha256.as_str())?;
        }
        let mut needed_digests = HashSet::new();
        let needed: u64 = image
            .files
            .iter()
            .filter(|f| !verified.contains(f.sha256.as_str()))
            .filter(|f| needed_digests.insert(f.sha256.as_str()))
            .map(|f| f.size)
            .sum();
        let pinned = self.pinned(installs, image);
        // Files other installs in flight are still downloading: their room is taken.
        let mut reserved_digests = HashSet::new();
        let reserved: u64 = installs
            .iter()
            .filter(|row| row.state.is_active() && row.image.uri != image.uri)
            .flat_map(|row| row.image.files.iter())
            .filter(|f| !verified.contains(f.sha256.as_str()))
            .filter(|f| !needed_digests.contains(f.sha256.as_str()))
            .filter(|f| reserved_digests.insert(f.sha256.as_str()))
            .map(|f| f.size)
            .sum();
        let bundles = dir_bytes(&self.data_dir.join("bundles"));
        let total: u64 = files.iter().map(|f| f.size).sum();
        let held_files: u64 = files
            .iter()
            .filter(|f| pinned.contains(f.sha256.as_str()))
            .map(|f| f.size)
            .sum();
        let held = held_files + bundles + reserved;
        let evictable = total - held_files;
        let mut required = 0;
        if let Some(max) = self.settings.max_bytes {
            let allowed = max.saturating_sub(held);
            if needed > allowed {
                return Err(BudgetError::DoesNotFit {
                    needed,
                    allowed,
                    flag: "--cache-max-bytes",
                    limit: max,
                    held,
                });
            }
            required = (total + bundles + reserved + needed).saturating_sub(max);
        }
        if let Some(min_free) = self.settings.min_free_bytes {
            let free = self.free_bytes()?;
            let allowed = (free + evictable).saturating_sub(min_free + reserved);
            if needed > allowed {
                return Err(BudgetError::DoesNotFit {
                    needed,
                    allowed,
                    flag: "--min-free-bytes",
                    limit: min_free,
                    held,
                });
            }
            required = required.max((min_free + reserved + needed).saturating_sub(free));
        }
        for file in choose_evictions(&files, &pinned, required) {
            self.evict(file)?;
        }
        crate::metrics::global().set_cache_bytes(self.usage()?);
        Ok(())
    }

    /// Files no eviction may take: those of installs in flight (and `image`'s), and those of
    /// the versions subscriptions keep.
    fn pinned<'a>(&self, installs: &'a [InstallRow], image: &'a Image) -> HashSet<&'a str> {
        let kept = crate::subscribe::plan(
            &crate::catalog::model::Catalog::empty(),
            installs,
            &crate::subscribe::Settings {
                subscriptions: Vec::new(),
                keep: self.keep,
            },
        )
        .kept;
        let kept_uris: HashSet<&str> = kept.iter().map(|row| row.image.uri.as_str()).collect();
        installs
            .iter()
            .filter(|row| row.state.is_active() || kept_uris.contains(row.image.uri.as_str()))
            .flat_map(|row| row.image.files.iter())
            .chain(image.files.iter())
            .map(|f| f.sha256.as_str())
            .collect()
    }

    fn evict(&self, file: &VerifiedFile) -> Result<(), BudgetError> {
        let Some(sha256) = Sha256Hex::parse(&file.sha256) else {
            // Not a digest (a damaged row): forget it; there is no such cache file.
            return Ok(self.db.forget_file(&file.sha256)?);
        };
        self.db.forget_file(&file.sha256)?;
        crate::pause::here_blocking("evict");
        let path = self.cache.path(&sha256);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BudgetError::Io {
                    action: "evicting",
                    path,
                    source,
                });
            }
        }
        crate::metrics::global().evicted(file.size);
        tracing::info!(
            sha256 = sha256.short(),
            bytes = file.size,
            "evicted from the cache, least recently used"
        );
        Ok(())
    }

    /// Updates the cache gauge (`/metrics`) after an install changed the cache.
    pub fn measure(&self) {
        match self.usage() {
            Ok(bytes) => crate::metrics::global().set_cache_bytes(bytes),
            Err(error) => tracing::warn!("cannot measure the cache: {error}"),
        }
    }

    /// Bytes of verified files and bundles on disk.
    pub fn usage(&self) -> Result<u64, BudgetError> {
        let files: u64 = self.db.verified_files()?.iter().map(|f| f.size).sum();
        Ok(files + dir_bytes(&self.data_dir.join("bundles")))
    }

    fn free_bytes(&self) -> Result<u64, BudgetError> {
        let stat = rustix::fs::statvfs(&self.data_dir).map_err(|errno| BudgetError::Io {
            action: "measuring the free space of",
            path: self.data_dir.clone(),
            source: errno.into(),
        })?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// At start: a cache file with no `files` row (an eviction cut short by a crash) is
    /// removed, and a row whose file is gone is forgotten. Returns how many of each.
    pub fn sweep(&self) -> Result<(usize, usize), BudgetError> {
        let files = self.db.verified_files()?;
        let mut forgotten = 0;
        for file in &files {
            let present = Sha256Hex::parse(&file.sha256)
                .is_some_and(|sha256| self.cache.has_complete(&sha256, file.size));
            if !present {
                self.db.forget_file(&file.sha256)?;
                forgotten += 1;
            }
        }
        let recorded: HashSet<&str> = files.iter().map(|f| f.sha256.as_str()).collect();
        let mut removed = 0;
        for path in self.cache.final_files() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !recorded.contains(name) {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(source) => {
                        return Err(BudgetError::Io {
                            action: "removing",
                            path,
                            source,
                        });
                    }
                }
            }
        }
        crate::metrics::global().set_cache_bytes(self.usage()?);
        Ok((removed, forgotten))
    }
}

/// The files to evict, least recently used first, so that at least `required` bytes go; none
/// of `pinned`. Fewer when the unpinned ones do not add up (the caller checked they do).
pub fn choose_evictions<'a>(
    lru_first: &'a [VerifiedFile],
    pinned: &HashSet<&str>,
    required: u64,
) -> Vec<&'a VerifiedFile> {
    let mut freed = 0;
    lru_first
        .iter()
        .filter(|file| !pinned.contains(file.sha256.as_str()))
        .take_while(|file| {
            let more = freed < required;
            freed += file.size;
            more
        })
        .collect()
}

/// Bytes of the regular files under `dir`, however deep (0 when it does not exist).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// `--cache-max-bytes 20G`: a count of bytes with an optional K, M or G (powers of 1024; `KiB`,
/// `MB` and such read the same) — the one parser of sizes in flags.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits);
    let bad = || format!("{text:?} is not a size: give bytes, or a number with K, M or G");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: char, size: u64, last_used: i64) -> VerifiedFile {
        VerifiedFile {
            sha256: name.to_string().repeat(64),
            size,
            last_used,
        }
    }

    #[test]
    fn sizes_take_k_m_and_g() {
        assert_eq!(parse_bytes("1234"), Ok(1234));
        assert_eq!(parse_bytes("4K"), Ok(4096));
        assert_eq!(parse_bytes("3M"), Ok(3 << 20));
        assert_eq!(parse_bytes("20G"), Ok(20 << 30));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        assert!(parse_bytes("-1").unwrap_err().contains("is not a size"));
        assert!(parse_bytes("1.5G").unwrap_err().contains("is not a size"));
        assert!(parse_bytes("10X").unwrap_err().contains("is not a size"));
        assert!(parse_bytes("").unwrap_err().contains("is not a size"));
        assert!(
            parse_bytes("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn evictions_go_least_recently_used_first_and_spare_the_pinned() {
        // In the database's order: least recently used first.
        let files = [
            file('a', 100, 1),
            file('b', 100, 2),
            file('c', 100, 3),
            file('d', 100, 4),
        ];
        let b = "b".repeat(64);
        let pinned: HashSet<&str> = [b.as_str()].into();
        let names = |chosen: Vec<&VerifiedFile>| -> String {
            chosen.iter().map(|f| &f.sha256[..1]).collect()
        };
        assert_eq!(names(choose_evictions(&files, &pinned, 0)), "");
        assert_eq!(names(choose_evictions(&files, &pinned, 1)), "a");
        assert_eq!(names(choose_evictions(&files, &pinned, 100)), "a");
        assert_eq!(names(choose_evictions(&files, &pinned, 101)), "ac");
        assert_eq!(names(choose_evictions(&files, &pinned, 300)), "acd");
    }

    #[test]
    fn a_crash_between_forgetting_and_removing_is_swept_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.sqlite")).unwrap();
        let cache = Cache::new(dir.path());
        let write = |name: char, bytes: &[u8]| {
            let hex = Sha256Hex::parse(&name.to_string().repeat(64)).unwrap();
            cache.prepare_dir(&hex).unwrap();
            std::fs::write(cache.path(&hex), bytes).unwrap();
            hex
        };
        // a: verified and present; b: its row forgotten, the file left (the crash); c: a row
        // whose file is gone.
        let a = write('a', b"aaaa");
        db.mark_file_verified(a.as_str(), 4, "http://x/a").unwrap();
        let b = write('b', b"bb");
        db.mark_file_verified(&"c".repeat(64), 9, "http://x/c")
            .unwrap();
        let budget = CacheBudget::new(BudgetSettings::default(), dir.path(), db.clone(), 2);
        assert_eq!(budget.sweep().unwrap(), (1, 1));
        assert!(cache.path(&a).exists());
        assert!(!cache.path(&b).exists());
        let left: Vec<String> = db
            .verified_files()
            .unwrap()
            .into_iter()
            .map(|f| f.sha256)
            .collect();
        assert_eq!(left, [a.as_str()]);
        assert_eq!(budget.usage().unwrap(), 4);
        assert_eq!(budget.sweep().unwrap(), (0, 0));
    }

    #[test]
    fn files_of_installs_in_flight_and_of_kept_versions_are_pinned() {
        use crate::catalog::model::{Compression, FileKind, FileRef, Packing, Virtualization};
        use crate::db::installs::Origin;
        use crate::install::state::InstallState;
        use std::sync::Arc;
        let image = |set: &str, version: &str| {
            Arc::new(Image {
                uri: format!("http://store.example/api/images/{set}"),
                key: set.into(),
                product: "server".into(),
                title: "Server".into(),
                version: version.into(),
                summary: String::new(),
                description_html: String::new(),
                icon_uri: None,
                provider: None,
                tags: Vec::new(),
                arch: "x86_64".into(),
                files: vec![FileRef {
                    kind: FileKind::Image,
                    url: format!("http://store.example/api/files/{set}"),
                    size: 10,
                    sha256: Sha256Hex::from_digest(set.as_bytes()),
                    signature_url: None,
                    compression: Compression::None,
                    packing: Packing::Raw,
                    provides: Vec::new(),
                }],
                virtualization: Virtualization::Paravirtual,
                stream: None,
                fields: Default::default(),
            })
        };
        let row = |set: &str, version: &str, state: InstallState, origin: Origin| InstallRow {
            image: image(set, version),
            state,
            status_detail: String::new(),
            error: None,
            attempt: 1,
            bucket: "b".into(),
            ids: Default::default(),
            queued_at: 1,
            updated_at: 1,
            origin,
        };
        let installs = [
            row("operator", "0.9", InstallState::Installed, Origin::Operator),
            row("v1", "1.0", InstallState::Installed, Origin::Subscription),
            row("v2", "2.0", InstallState::Installed, Origin::Subscription),
            row("v3", "3.0", InstallState::Installed, Origin::Subscription),
            row("queued", "4.0", InstallState::Queued, Origin::Operator),
        ];
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.sqlite")).unwrap();
        let budget = CacheBudget::new(BudgetSettings::default(), dir.path(), db, 2);
        let new = image("new", "5.0");
        let pinned = budget.pinned(&installs, &new);
        let digest = |set: &str| Sha256Hex::from_digest(set.as_bytes()).to_string();
        for set in ["v2", "v3", "queued", "new"] {
            assert!(pinned.contains(digest(set).as_str()), "{set} is pinned");
        }
        for set in ["operator", "v1"] {
            assert!(
                !pinned.contains(digest(set).as_str()),
                "{set} may be evicted"
            );
        }
    }
}
