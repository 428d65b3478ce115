//! A file's road into the cache (SPEC §6), as types rather than comments: a [`Partial`] (bytes in
//! `<sha256>.part`, trusted for nothing) becomes a [`Downloaded`] only when its size and SHA-256
//! match the signed catalog, a [`Verified`] only when its detached signature checks out, and only
//! a `Verified` file is recorded in the `files` table and promoted to its final name. A file
//! counts as verified when the table and the cache agree ([`VerifiedDownloads::has`]).
//!
//! The install owns its state machine and its wording: it hears each stage through
//! [`FileStages`] and this module never names an install state or a status line.

use super::{FetchError, Fetcher};
use crate::cache::{Cache, Sha256Hex};
use crate::db::{Db, DbError};
use crate::limits::{FILE_SIGNATURE_TIMEOUT, MAX_SIGNATURE_BYTES};
use crate::metrics;
use crate::trust::{Trust, TrustError};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What can stop a file on its road into the cache.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{what} {path}: {source}")]
    Disk {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl FileError {
    /// The download was cancelled (the partial file is kept for a resume).
    pub fn is_cancel(&self) -> bool {
        matches!(self, FileError::Fetch(FetchError::Cancelled))
    }
}

/// A file as the signed catalog describes it: where it is, how long it is, what it hashes to,
/// and where its detached signature is (a catalog may leave a file unsigned).
#[derive(Debug, Clone, Copy)]
pub struct SignedFile<'a> {
    pub url: &'a str,
    pub size: u64,
    pub sha256: &'a Sha256Hex,
    pub signature_url: Option<&'a str>,
}

/// What the install hears as a file moves along its road; each `Err` stops the file there.
pub trait FileStages: Sync {
    /// The file's turn has come: before its signature is fetched.
    fn downloading(&self) -> Result<(), DbError>;
    /// Its detached signature is being fetched.
    fn fetching_signature(&self);
    /// `bytes` of it are in the partial file (a resume starts above 0).
    fn received(&self, bytes: u64);
    /// Size and SHA-256 matched; the signature check (`signed`) or the promotion comes next.
    fn verifying(&self, signed: bool) -> impl Future<Output = Result<(), DbError>> + Send;
}

/// The parts a verified download needs: upstream, the cache, the `files` table, the trust service.
pub struct VerifiedDownloads<'a> {
    pub fetcher: &'a Fetcher,
    pub cache: &'a Cache,
    pub db: &'a Db,
    pub trust: &'a Arc<Trust>,
}

impl VerifiedDownloads<'_> {
    /// Whether `file` is verified already: recorded in the `files` table and complete in the cache.
    pub fn has(&self, file: &SignedFile<'_>) -> Result<bool, DbError> {
        Ok(self.db.file_is_verified(file.sha256.as_str(), file.size)?
            && self.cache.has_complete(file.sha256, file.size))
    }

    /// Brings `file` into the cache: signature fetched, download resumed and checked, signature
    /// verified, recorded, promoted. Returns the file's final path.
    pub async fn fetch(
        &self,
        file: SignedFile<'_>,
        stages: &impl FileStages,
        cancel: &CancellationToken,
    ) -> Result<PathBuf, FileError> {
        self.fetch_growing(file, stages, None, cancel).await
    }

    /// [`VerifiedDownloads::fetch`], with `growth` told how the partial file grows, that it is
    /// whole, or that it will not be (the download, its check or its signature failed, or it was
    /// cancelled): what an overlapped install's bundler reads follows it.
    pub async fn fetch_growing(
        &self,
        file: SignedFile<'_>,
        stages: &impl FileStages,
        growth: Option<&super::growing::Growth>,
        cancel: &CancellationToken,
    ) -> Result<PathBuf, FileError> {
        let fetched = self.fetch_into(file, stages, growth, cancel).await;
        if let (Err(error), Some(growth)) = (&fetched, growth) {
            growth.failed(&error.to_string());
        }
        fetched
    }

    async fn fetch_into(
        &self,
        file: SignedFile<'_>,
        stages: &impl FileStages,
        growth: Option<&super::growing::Growth>,
        cancel: &CancellationToken,
    ) -> Result<PathBuf, FileError> {
        stages.downloading()?;
        let signature = match file.signature_url {
            Some(url) => {
                stages.fetching_signature();
                let signature = self
                    .fetcher
                    .get_small_retrying(url, MAX_SIGNATURE_BYTES, FILE_SIGNATURE_TIMEOUT, cancel)
                    .await?;
                Some(signature)
            }
            None => None,
        };
        let partial = Partial::prepare(self.cache, file)?;
        // The signature is hashed beside the download, over the bytes as they land (issue 16),
        // not in a second pass after it: a reader follows the partial file on another thread.
        let own_growth = super::growing::Growth::new();
        let growth = growth.or(signature.as_ref().map(|_| &own_growth));
        let signature = signature.map(|signature| {
            let signature = PendingSignature::new(signature);
            match growth {
                Some(growth) => signature.hashed_beside(
                    self.trust,
                    growth.reader(
                        partial.path.clone(),
                        self.cache.path(file.sha256),
                        file.size,
                    ),
                ),
                None => signature,
            }
        });
        let received = |bytes| stages.received(bytes);
        let downloaded = partial
            .download(self.fetcher, &received, growth, cancel)
            .await;
        let downloaded = match downloaded {
            Ok(downloaded) => downloaded,
            Err(error) => {
                // The reader beside the download stops with it.
                own_growth.failed(&error.to_string());
                return Err(error);
            }
        };
        stages.verifying(signature.is_some()).await?;
        let verified = downloaded.verify(self.trust, signature).await?;
        verified.record_and_promote(self.db)
    }
}

/// A file's detached signature, and its check over the file's bytes as they were downloaded
/// when one ran beside the download.
pub struct PendingSignature {
    signature: Vec<u8>,
    beside: Option<tokio::task::JoinHandle<Result<(), FileError>>>,
}

impl PendingSignature {
    /// A signature to check over the file at rest.
    pub fn new(signature: Vec<u8>) -> Self {
        Self {
            signature,
            beside: None,
        }
    }

    /// Starts checking it over `data` (the partial file as it grows), on a blocking thread.
    fn hashed_beside(self, trust: &Arc<Trust>, data: super::growing::GrowingFile) -> Self {
        let trust = trust.clone();
        let signature = self.signature.clone();
        let beside = tokio::task::spawn_blocking(move || {
            let keyring = trust.reload_if_changed()?;
            let data = std::io::BufReader::with_capacity(1 << 20, data);
            Ok(keyring.verify_reader(data, &signature)?)
        });
        Self {
            beside: Some(beside),
            ..self
        }
    }

    /// The verdict on the file at `path`, whose size and SHA-256 have matched. A check beside
    /// the download that passed stands; one that failed, or stopped because the download
    /// started the file again, is made again over the file at rest, so that only the bytes
    /// that matched are ever judged.
    async fn outcome(self, trust: &Arc<Trust>, path: &Path) -> Result<(), FileError> {
        if let Some(beside) = self.beside {
            match beside.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => tracing::info!(
                    path = %path.display(),
                    "the signature check beside the download did not pass ({error}): checking the file at rest"
                ),
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    "the signature check beside the download stopped ({error}): checking the file at rest"
                ),
            }
        }
        check_signature(trust, path, self.signature).await
    }
}

/// Bytes of `file` in its `.part` file: nothing about them is trusted yet.
pub struct Partial<'a> {
    cache: &'a Cache,
    file: SignedFile<'a>,
    path: PathBuf,
}

/// A partial file whose size and SHA-256 match the signed catalog (only [`Partial::check`]
/// makes one); its signature is not checked yet.
pub struct Downloaded<'a>(Partial<'a>);

/// A downloaded file whose detached signature checked out (only [`Downloaded::verify`] makes
/// one): the only stage that may be recorded and promoted.
pub struct Verified<'a>(Partial<'a>);

impl<'a> Partial<'a> {
    /// The partial file's place in the cache, its directory made.
    pub fn prepare(cache: &'a Cache, file: SignedFile<'a>) -> Result<Self, FileError> {
        let path = cache.partial_path(file.sha256);
        cache
            .prepare_dir(file.sha256)
            .map_err(|source| FileError::Disk {
                what: "creating the cache directory for",
                path: path.clone(),
                source,
            })?;
        Ok(Self { cache, file, path })
    }

    /// Downloads (resuming) until the signed size is in, then checks the digest. A body past
    /// the signed size is thrown away.
    pub async fn download(
        self,
        fetcher: &Fetcher,
        progress: &(dyn Fn(u64) + Send + Sync),
        growth: Option<&super::growing::Growth>,
        cancel: &CancellationToken,
    ) -> Result<Downloaded<'a>, FileError> {
        let digest = fetcher
            .download_growing(
                self.file.url,
                &self.path,
                self.file.size,
                progress,
                growth,
                cancel,
            )
            .await;
        if let (Ok(_), Some(growth)) = (&digest, growth) {
            growth.whole();
        }
        match digest {
            Err(error @ FetchError::TooLarge { .. }) => {
                self.discard();
                Err(error.into())
            }
            Err(error) => Err(error.into()),
            Ok(digest) => self.check(digest),
        }
    }

    /// Compares the whole file's SHA-256 with the signed catalog's: a mismatch is counted and
    /// the bytes thrown away.
    pub fn check(self, digest: Sha256Hex) -> Result<Downloaded<'a>, FileError> {
        if digest != *self.file.sha256 {
            self.discard();
            let error = FetchError::Digest {
                url: self.file.url.to_string(),
                expected: self.file.sha256.to_string(),
                actual: digest.to_string(),
            };
            error.record();
            return Err(error.into());
        }
        Ok(Downloaded(self))
    }

    /// Throws away bytes that cannot be trusted.
    fn discard(&self) {
        self.cache.discard_partial(self.file.sha256);
    }
}

impl<'a> Downloaded<'a> {
    /// Checks the detached signature, if the catalog gives the file one. A signature upstream
    /// got wrong is counted and the bytes thrown away; trouble with our own keyring keeps them.
    pub async fn verify(
        self,
        trust: &Arc<Trust>,
        signature: Option<PendingSignature>,
    ) -> Result<Verified<'a>, FileError> {
        let partial = self.0;
        if let Some(signature) = signature {
            let checked = signature.outcome(trust, &partial.path).await;
            if let Err(error) = checked {
                if let FileError::Trust(refusal) = &error
                    && refusal.is_upstream_fault()
                {
                    metrics::global().upstream_error("file-signature");
                    partial.discard();
                }
                return Err(error);
            }
        }
        Ok(Verified(partial))
    }
}

impl Verified<'_> {
    /// Records the file in the `files` table, then renames it to its final name, durably.
    /// Recorded first, then renamed: a file is trusted only where both agree (`cache.rs`).
    pub fn record_and_promote(self, db: &Db) -> Result<PathBuf, FileError> {
        let Verified(partial) = self;
        let file = partial.file;
        db.mark_file_verified(file.sha256.as_str(), file.size, file.url)?;
        partial
            .cache
            .promote(file.sha256)
            .map_err(|source| FileError::Disk {
                what: "storing",
                path: partial.cache.path(file.sha256),
                source,
            })
    }
}

/// The one place a file's detached signature is checked, on a blocking thread (files can be
/// GiBs): the trust service's keyring over the bytes at `path`.
async fn check_signature(
    trust: &Arc<Trust>,
    path: &Path,
    signature: Vec<u8>,
) -> Result<(), FileError> {
    let trust = trust.clone();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        // The keyring first, as before: a missing keyring is reported as such.
        let keyring = trust.reload_if_changed()?;
        let data = std::fs::File::open(&path).map_err(|source| FileError::Disk {
            what: "reading",
            path: path.clone(),
            source,
        })?;
        Ok(keyring.verify_reader(std::io::BufReader::with_capacity(1 << 20, data), &signature)?)
    })
    .await
    .expect("verification does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    struct Setup {
        _dir: tempfile::TempDir,
        cache: Cache,
        db: Db,
        sha256: Sha256Hex,
    }

    const BYTES: &[u8] = b"a kernel, say";

    /// A cache with `BYTES` in the partial file of their own digest.
    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let db = Db::open(&dir.path().join("state.sqlite")).unwrap();
        let sha256 = Sha256Hex::from_digest(&Sha256::digest(BYTES));
        cache.prepare_dir(&sha256).unwrap();
        std::fs::write(cache.partial_path(&sha256), BYTES).unwrap();
        Setup {
            _dir: dir,
            cache,
            db,
            sha256,
        }
    }

    fn signed(sha256: &Sha256Hex) -> SignedFile<'_> {
        SignedFile {
            url: "http://store/files/kernel",
            size: BYTES.len() as u64,
            sha256,
            signature_url: None,
        }
    }

    fn test_keyring() -> Arc<Trust> {
        Arc::new(Trust::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("keyrings/test-keyring.gpg"),
        ))
    }

    /// A detached signature checked beside the download, over the partial file as it grows
    /// (here in two steps), stands: the file at rest is not read again (the path given for that
    /// does not exist). When the download started the file again part-way, the check beside it
    /// stops and the file at rest is judged instead; a bad signature fails both ways.
    #[tokio::test]
    async fn a_signature_is_judged_over_the_bytes_as_they_land_and_again_at_rest_only_when_that_failed()
     {
        use crate::fetch::growing::Growth;
        use crate::trust::tests::Gpg;
        let dir = tempfile::tempdir().unwrap();
        let gpg = Gpg::new("beside@example.org");
        let keyring = dir.path().join("keyring.gpg");
        std::fs::write(&keyring, gpg.export()).unwrap();
        let trust = Arc::new(Trust::new(keyring));
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 / 5) as u8).collect();
        let signature = gpg.detach_sign(&data);
        let partial = dir.path().join("file.part");
        let at_rest_gone = dir.path().join("not-there");

        let arrive = |growth: &Growth| {
            std::fs::write(&partial, &data[..1 << 20]).unwrap();
            growth.advance(1 << 20);
            std::fs::write(&partial, &data).unwrap();
            growth.advance(data.len() as u64);
        };
        let beside = |growth: &Growth, signature: &[u8]| {
            PendingSignature::new(signature.to_vec()).hashed_beside(
                &trust,
                growth.reader(partial.clone(), at_rest_gone.clone(), data.len() as u64),
            )
        };

        let growth = Growth::new();
        let pending = beside(&growth, &signature);
        arrive(&growth);
        growth.whole();
        pending.outcome(&trust, &at_rest_gone).await.unwrap();

        let growth = Growth::new();
        let pending = beside(&growth, &signature);
        std::fs::write(&partial, &data[..1 << 20]).unwrap();
        growth.advance(1 << 20);
        growth.advance(0);
        std::fs::write(&partial, &data).unwrap();
        let at_rest = pending.outcome(&trust, &at_rest_gone).await.unwrap_err();
        assert!(
            matches!(at_rest, FileError::Disk { ref path, .. } if *path == at_rest_gone),
            "judged at rest: {at_rest}"
        );

        let growth = Growth::new();
        let mut forged = data.clone();
        forged[5] ^= 1;
        let pending = beside(&growth, &gpg.detach_sign(&forged));
        arrive(&growth);
        growth.whole();
        let refused = pending.outcome(&trust, &partial).await.unwrap_err();
        assert!(
            matches!(&refused, FileError::Trust(trust) if trust.is_upstream_fault()),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_matching_unsigned_file_is_recorded_then_promoted() {
        let s = setup();
        let file = signed(&s.sha256);
        let downloads = VerifiedDownloads {
            fetcher: &Fetcher::new(Default::default()).unwrap(),
            cache: &s.cache,
            db: &s.db,
            trust: &Arc::new(Trust::new("/nonexistent".into())),
        };
        assert!(!downloads.has(&file).unwrap());
        let downloaded = Partial::prepare(&s.cache, file)
            .unwrap()
            .check(s.sha256.clone())
            .unwrap();
        let verified = downloaded.verify(&test_keyring(), None).await.unwrap();
        let path = verified.record_and_promote(&s.db).unwrap();
        assert_eq!(path, s.cache.path(&s.sha256));
        assert_eq!(std::fs::read(&path).unwrap(), BYTES);
        assert!(!s.cache.partial_path(&s.sha256).exists());
        assert!(
            downloads.has(&file).unwrap(),
            "the table and the cache agree"
        );
    }

    #[test]
    fn a_digest_mismatch_discards_the_bytes() {
        let s = setup();
        let other = Sha256Hex::parse(&"0".repeat(64)).unwrap();
        let error = Partial::prepare(&s.cache, signed(&s.sha256))
            .unwrap()
            .check(other.clone())
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            format!(
                "SHA-256 mismatch for http://store/files/kernel: the signed catalog says {}, the download is {other}",
                s.sha256
            )
        );
        assert!(!s.cache.partial_path(&s.sha256).exists());
    }

    #[tokio::test]
    async fn a_bad_signature_is_upstreams_fault_and_a_missing_keyring_is_ours() {
        let s = setup();
        let downloaded = || {
            Partial::prepare(&s.cache, signed(&s.sha256))
                .unwrap()
                .check(s.sha256.clone())
                .unwrap()
        };
        let missing = downloaded()
            .verify(
                &Arc::new(Trust::new("/nonexistent/keyring.gpg".into())),
                Some(PendingSignature::new(b"sig".to_vec())),
            )
            .await
            .err()
            .unwrap();
        assert!(
            matches!(missing, FileError::Trust(TrustError::KeyringMissing { .. })),
            "{missing}"
        );
        assert!(
            s.cache.partial_path(&s.sha256).exists(),
            "our keyring's trouble keeps the bytes"
        );
        let garbage = downloaded()
            .verify(
                &test_keyring(),
                Some(PendingSignature::new(b"not a signature".to_vec())),
            )
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&garbage, FileError::Trust(trust) if trust.is_upstream_fault()),
            "{garbage}"
        );
        assert!(!s.cache.partial_path(&s.sha256).exists(), "thrown away");
        assert!(
            !s.db
                .file_is_verified(s.sha256.as_str(), BYTES.len() as u64)
                .unwrap()
        );
    }
}
