//! `--fake-eucalyptus`: a cloud on the local disk. Each artifact is bundled exactly as for a real
//! cloud (`bundle.rs`): parts and manifest land in `<data-dir>/fake-cloud/<bucket>/` beside a
//! `<prefix>.registration.json` record, under an id derived from what was registered (so the same
//! artifact always gets the same id) in the form Eucalyptus uses: `emi-` and 8 upper-case hex
//! digits. The "user" and "cloud" keys are made once in `<data-dir>/fake-cloud/keys/`, so the
//! bundles can be decrypted with `openssl` as the cloud would. Nothing leaves the machine.

use super::gzip::GzipSettings;
use super::keys::{self, BundleKeys};
use super::{
    Artifact, Cloud, CloudError, Progress, PublishFuture, Published, RegisteredFuture,
    bundle_artifact, id_prefix,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub struct FakeCloud {
    root: PathBuf,
    id: String,
    /// Made or loaded on the first install, not at start-up: key generation takes a moment.
    keys: Mutex<Option<BundleKeys>>,
    gzip: GzipSettings,
}

/// What `registered` reads back from a registration record.
#[derive(Deserialize)]
struct RecordedId {
    image_id: String,
}

#[derive(Serialize)]
struct Registration<'a> {
    image_id: &'a str,
    kind: &'a str,
    name: &'a str,
    location: &'a str,
    architecture: &'a str,
    kernel_id: Option<&'a str>,
    ramdisk_id: Option<&'a str>,
    size: u64,
    bundled_size: u64,
    parts: Vec<&'a str>,
    /// SHA-1 of the bundle's tar stream, as the manifest states it.
    digest: &'a str,
}

impl FakeCloud {
    pub fn new(data_dir: &Path) -> Self {
        let root = data_dir.join("fake-cloud");
        Self {
            id: format!("fake:{}", root.display()),
            root,
            keys: Mutex::new(None),
            gzip: GzipSettings::default_for_this_machine(),
        }
    }

    /// How bundles are compressed (`--compression-level`).
    pub fn with_gzip(self, gzip: GzipSettings) -> Self {
        Self { gzip, ..self }
    }

    /// Where the fake cloud's "user" and "cloud" private keys are kept.
    pub fn keys_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("fake-cloud").join("keys")
    }

    /// The id a registration gets: stable for the same artifact, distinct for different ones.
    pub fn image_id(artifact: &Artifact) -> String {
        let digest = Sha256::digest(artifact.identity.as_bytes());
        format!(
            "{}-{}",
            id_prefix(artifact.kind),
            hex::encode_upper(&digest[..4])
        )
    }

    fn keys(&self) -> Result<BundleKeys, CloudError> {
        let mut keys = self.keys.lock().expect("the key lock is never poisoned");
        if let Some(keys) = keys.as_ref() {
            return Ok(keys.clone());
        }
        let dir = self.root.join("keys");
        let made = keys::fake_cloud_keys(&dir).map_err(|e| CloudError::Write {
            path: dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        *keys = Some(made.clone());
        Ok(made)
    }

    fn publish_blocking(
        &self,
        artifact: &Artifact,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Published, CloudError> {
        let bucket = self.root.join(&artifact.bucket);
        let keys = self.keys()?;
        let bundle = bundle_artifact(artifact, &keys, &bucket, self.gzip, progress, cancel)?;
        // What a real cloud would have been sent: every part, and the manifest.
        let manifest_size = std::fs::metadata(&bundle.manifest_path).map_or(0, |m| m.len());
        crate::metrics::global().add_uploaded(bundle.bundled_size + manifest_size);
        let noun = artifact.kind.noun();
        progress.report(format!("Registering {noun}"), artifact.source_size);
        let image_id = Self::image_id(artifact);
        let location = format!("{}/{}", artifact.bucket, bundle.manifest_name);
        let record = Registration {
            image_id: &image_id,
            kind: noun,
            name: &artifact.name,
            location: &location,
            architecture: &artifact.arch,
            kernel_id: artifact.kernel_id.as_deref(),
            ramdisk_id: artifact.ramdisk_id.as_deref(),
            size: bundle.size,
            bundled_size: bundle.bundled_size,
            parts: bundle.parts.iter().map(|p| p.file_name.as_str()).collect(),
            digest: &bundle.digest,
        };
        let record_path = bucket.join(format!("{}.registration.json", artifact.name));
        let json = serde_json::to_vec_pretty(&record).expect("a registration serialises");
        std::fs::write(&record_path, json).map_err(|source| CloudError::Write {
            path: record_path.clone(),
            source,
        })?;
        Ok(Published { image_id, location })
    }

    /// Every `*.registration.json` under the fake cloud: deleting one deregisters its image.
    fn registered_ids(&self) -> Result<HashSet<String>, CloudError> {
        let mut ids = HashSet::new();
        let buckets = match std::fs::read_dir(&self.root) {
            Ok(buckets) => buckets,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(source) => {
                return Err(CloudError::Write {
                    path: self.root.clone(),
                    source,
                });
            }
        };
        for bucket in buckets.flatten() {
            let Ok(files) = std::fs::read_dir(bucket.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if !path.to_string_lossy().ends_with(".registration.json") {
                    continue;
                }
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                if let Ok(record) = serde_json::from_slice::<RecordedId>(&bytes) {
                    ids.insert(record.image_id);
                }
            }
        }
        Ok(ids)
    }
}

impl Cloud for FakeCloud {
    fn id(&self) -> &str {
        &self.id
    }

    fn publish<'a>(
        &'a self,
        artifact: &'a Artifact,
        progress: &'a dyn Progress,
        cancel: &'a CancellationToken,
    ) -> PublishFuture<'a> {
        // Disk and decompression work: off the async threads, but borrowing is simplest with
        // block_in_place (the daemon runs the multi-threaded runtime).
        Box::pin(async move {
            tokio::task::block_in_place(|| self.publish_blocking(artifact, progress, cancel))
        })
    }

    fn registered(&self) -> RegisteredFuture<'_> {
        Box::pin(async move { tokio::task::block_in_place(|| self.registered_ids()) })
    }
}
