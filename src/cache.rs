//! The content-addressed file cache (SPEC §6): `<data-dir>/cache/sha256/<2 hex>/<hex>`, partial
//! downloads beside it as `<hex>.part`. A file reaches its final name only after it verified; the
//! database records which files did (`db::files`), and a file counts as verified only when both agree.
//! `budget.rs` evicts verified files to keep the cache within the operator's bounds.

pub mod budget;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// A SHA-256 digest as 64 lowercase hex digits: safe to use as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())).then_some(Self(text))
    }

    pub fn from_digest(digest: &[u8]) -> Self {
        Self(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `0123abcd…` for log lines and error messages.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| format!("{text:?} is not a SHA-256 hex digest"))
    }
}

impl From<Sha256Hex> for String {
    fn from(hex: Sha256Hex) -> String {
        hex.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("cache").join("sha256"),
        }
    }

    /// The data directory the cache is under.
    pub fn data_dir(&self) -> PathBuf {
        self.root
            .parent()
            .and_then(Path::parent)
            .map_or_else(|| self.root.clone(), Path::to_owned)
    }

    pub fn path(&self, sha256: &Sha256Hex) -> PathBuf {
        self.root.join(&sha256.as_str()[..2]).join(sha256.as_str())
    }

    pub fn partial_path(&self, sha256: &Sha256Hex) -> PathBuf {
        self.root
            .join(&sha256.as_str()[..2])
            .join(format!("{}.part", sha256.as_str()))
    }

    /// Whether the final file is there with exactly `size` bytes (its verification is the
    /// `files` table's record: `fetch::verified` asks both).
    pub fn has_complete(&self, sha256: &Sha256Hex, size: u64) -> bool {
        std::fs::metadata(self.path(sha256)).is_ok_and(|meta| meta.is_file() && meta.len() == size)
    }

    pub fn prepare_dir(&self, sha256: &Sha256Hex) -> io::Result<()> {
        std::fs::create_dir_all(self.root.join(&sha256.as_str()[..2]))
    }

    /// Moves a verified partial file to its final name, durably (fsync of file and directory).
    pub fn promote(&self, sha256: &Sha256Hex) -> io::Result<PathBuf> {
        let partial = self.partial_path(sha256);
        let final_path = self.path(sha256);
        File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, &final_path)?;
        if let Some(dir) = final_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(final_path)
    }

    /// Every file under its final name (not the `.part` files), in no order.
    pub fn final_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let Ok(prefixes) = std::fs::read_dir(&self.root) else {
            return found;
        };
        for prefix in prefixes.flatten() {
            let Ok(files) = std::fs::read_dir(prefix.path()) else {
                continue;
            };
            found.extend(files.flatten().map(|file| file.path()).filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| Sha256Hex::parse(n).is_some_and(|h| h.as_str() == n))
            }));
        }
        found
    }

    /// Throws away bytes that cannot be trusted (a mismatch, an oversize body), and the record
    /// of a parallel download's ranges beside them.
    pub fn discard_partial(&self, sha256: &Sha256Hex) {
        let partial = self.partial_path(sha256);
        let _ = std::fs::remove_file(ranges_record(&partial));
        let _ = std::fs::remove_file(partial);
    }
}

/// `<hex>.part.ranges`: which bytes of a partial file a parallel download has written (`fetch/`
/// reads and writes it); without it a partial file holds its bytes from the start, no holes.
pub fn ranges_record(partial: &Path) -> PathBuf {
    let mut name = partial.as_os_str().to_owned();
    name.push(".ranges");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated_and_laid_out_by_prefix() {
        assert!(Sha256Hex::parse("../../etc/passwd").is_none());
        assert!(Sha256Hex::parse(&"g".repeat(64)).is_none());
        let hex = Sha256Hex::parse(&"AB".repeat(32)).unwrap();
        assert_eq!(hex.as_str(), "ab".repeat(32));
        let cache = Cache::new(Path::new("/data"));
        assert_eq!(
            cache.path(&hex),
            PathBuf::from(format!("/data/cache/sha256/ab/{}", "ab".repeat(32)))
        );
        assert!(
            cache
                .partial_path(&hex)
                .to_string_lossy()
                .ends_with(".part")
        );
    }
}
