//! `--fake-eucalyptus`: a cloud on the local disk. A bucket is the directory
//! `<data-dir>/fake-cloud/<bucket>/`; putting an object links (or copies) the bundle's file there,
//! and registering writes a `<prefix>.registration.json` record beside the manifest (what EC2
//! would be sent: links, `virtualization_type` `hvm` or `paravirtual`, the description), under an id
//! derived from what was registered (so the same artifact always gets the same id) in the form
//! Eucalyptus uses: `emi-` and 8 upper-case hex digits. The "user" and "cloud" keys are made once
//! in `<data-dir>/fake-cloud/keys/`, so the bundles can be decrypted with `openssl` as the cloud
//! would. Nothing leaves the machine.

use super::{
    AttemptFuture, Cloud, CloudError, CloudFuture, Failure, Registration, Sent, id_prefix,
};
use crate::bundle::keys::{self, BundleKeys};
use crate::catalog::model::FileKind;
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The cloud under `<data-dir>/fake-cloud/`.
pub struct FakeCloud {
    root: PathBuf,
    id: String,
    /// Made or loaded on the first install, not at start-up: key generation takes a moment.
    keys: Mutex<Option<BundleKeys>>,
}

/// What is read back from a registration record.
#[derive(Deserialize)]
struct RecordedId {
    image_id: String,
    #[serde(default)]
    location: String,
}

#[derive(Serialize)]
struct Record<'a> {
    image_id: &'a str,
    kind: &'a str,
    name: &'a str,
    location: &'a str,
    architecture: &'a str,
    kernel_id: Option<&'a str>,
    ramdisk_id: Option<&'a str>,
    /// `hvm` or `paravirtual`, as EC2's `VirtualizationType` says it.
    virtualization_type: &'a str,
    description: Option<&'a str>,
    size: u64,
    bundled_size: u64,
    parts: Vec<&'a str>,
    /// SHA-1 of the bundle's tar stream, as the manifest states it.
    digest: &'a str,
}

const RECORD_SUFFIX: &str = ".registration.json";

impl FakeCloud {
    /// Keeps its buckets and keys under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        let root = data_dir.join("fake-cloud");
        Self {
            id: format!("fake:{}", root.display()),
            root,
            keys: Mutex::new(None),
        }
    }

    /// Where the fake cloud's "user" and "cloud" private keys are kept.
    pub fn keys_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("fake-cloud").join("keys")
    }

    /// The id a registration gets: stable for the same artifact (its kind and identity),
    /// distinct for different ones.
    pub fn image_id(kind: FileKind, identity: &str) -> String {
        let digest = Sha256::digest(identity.as_bytes());
        format!("{}-{}", id_prefix(kind), hex::encode_upper(&digest[..4]))
    }

    fn keys(&self) -> Result<BundleKeys, CloudError> {
        let mut keys = self.keys.lock().expect("the key lock is never poisoned");
        if let Some(keys) = keys.as_ref() {
            return Ok(keys.clone());
        }
        let dir = self.root.join("keys");
        let made = keys::fake_cloud_keys(&dir).map_err(|source| CloudError::Keys {
            dir: dir.clone(),
            source,
        })?;
        *keys = Some(made.clone());
        Ok(made)
    }

    fn put_blocking(&self, bucket: &str, key: &str, path: &Path) -> Result<bool, CloudError> {
        let local = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| CloudError::Local {
                action,
                path,
                source,
            }
        };
        let dir = self.root.join(bucket);
        let target = dir.join(key);
        let sending = md5_of(path).map_err(local("reading", path))?;
        if md5_of(&target).is_ok_and(|there| there == sending) {
            return Ok(false);
        }
        // Linked (or, across file systems, copied) under a temporary name, then renamed: an
        // object is whole or absent.
        let incoming = dir.join(format!(".{key}.incoming"));
        let _ = std::fs::remove_file(&incoming);
        if std::fs::hard_link(path, &incoming).is_err() {
            std::fs::copy(path, &incoming).map_err(local("writing", &incoming))?;
        }
        std::fs::rename(&incoming, &target).map_err(local("writing", &target))?;
        // What a real cloud would have been sent.
        let size = std::fs::metadata(&target).map_or(0, |m| m.len());
        crate::metrics::global().add_uploaded(size);
        Ok(true)
    }

    fn register_blocking(&self, registration: &Registration<'_>) -> Result<String, CloudError> {
        let bundle = registration.bundle;
        let image_id = Self::image_id(registration.kind, registration.identity);
        let record = Record {
            image_id: &image_id,
            kind: registration.kind.noun(),
            name: registration.name,
            location: registration.location,
            architecture: registration.architecture,
            kernel_id: registration.kernel_id,
            ramdisk_id: registration.ramdisk_id,
            virtualization_type: registration.virtualization.ec2_name(),
            description: registration.description,
            size: bundle.size,
            bundled_size: bundle.bundled_size,
            parts: bundle.parts.iter().map(|p| p.file_name.as_str()).collect(),
            digest: &bundle.digest,
        };
        let bucket = registration
            .location
            .split_once('/')
            .map_or("", |(bucket, _)| bucket);
        let record_path = self
            .root
            .join(bucket)
            .join(format!("{}{RECORD_SUFFIX}", registration.name));
        let json = serde_json::to_vec_pretty(&record).expect("a registration serialises");
        std::fs::write(&record_path, json).map_err(|source| CloudError::Local {
            action: "writing",
            path: record_path.clone(),
            source,
        })?;
        Ok(image_id)
    }

    /// Removes the registration record of `image_id`, as `DescribeImages` would stop listing
    /// it; an id with no record is done already.
    fn deregister_blocking(&self, image_id: &str) -> Result<(), CloudError> {
        for (path, record) in self.records_with_paths()? {
            if record.image_id == image_id {
                std::fs::remove_file(&path).map_err(|source| CloudError::Local {
                    action: "removing",
                    path,
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Removes the manifest and parts of the bundle at `location` from its bucket directory.
    fn delete_bundle_blocking(&self, location: &str) -> Result<usize, CloudError> {
        let (bucket, prefix) = super::split_location(location);
        let dir = self.root.join(bucket);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(CloudError::Local {
                    action: "reading",
                    path: dir,
                    source,
                });
            }
        };
        let mut deleted = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if super::is_bundle_object(prefix, &name.to_string_lossy()) {
                std::fs::remove_file(entry.path()).map_err(|source| CloudError::Local {
                    action: "removing",
                    path: entry.path(),
                    source,
                })?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Every registration record under the fake cloud: deleting one deregisters its image.
    fn records(&self) -> Result<Vec<RecordedId>, CloudError> {
        Ok(self
            .records_with_paths()?
            .into_iter()
            .map(|(_, record)| record)
            .collect())
    }

    /// Every registration record, with the file that holds it.
    fn records_with_paths(&self) -> Result<Vec<(PathBuf, RecordedId)>, CloudError> {
        let mut records = Vec::new();
        let buckets = match std::fs::read_dir(&self.root) {
            Ok(buckets) => buckets,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(records),
            Err(source) => {
                return Err(CloudError::Local {
                    action: "reading",
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
                if !path.to_string_lossy().ends_with(RECORD_SUFFIX) {
                    continue;
                }
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                if let Ok(record) = serde_json::from_slice::<RecordedId>(&bytes) {
                    records.push((path, record));
                }
            }
        }
        Ok(records)
    }
}

/// As S3 compares objects: by MD5 (a part is at most 10 MiB).
fn md5_of(path: &Path) -> std::io::Result<Vec<u8>> {
    Ok(Md5::digest(std::fs::read(path)?).to_vec())
}

/// Disk work: off the async threads, but borrowing is simplest with `block_in_place` (the daemon
/// runs the multi-threaded runtime).
fn on_disk<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

impl Cloud for FakeCloud {
    fn id(&self) -> &str {
        &self.id
    }

    fn bundle_keys(&self) -> Result<BundleKeys, CloudError> {
        on_disk(|| self.keys())
    }

    fn ensure_bucket<'a>(
        &'a self,
        bucket: &'a str,
        _cancel: &'a CancellationToken,
    ) -> CloudFuture<'a, ()> {
        Box::pin(async move {
            let dir = self.root.join(bucket);
            on_disk(|| std::fs::create_dir_all(&dir)).map_err(|source| CloudError::Local {
                action: "writing",
                path: dir.clone(),
                source,
            })
        })
    }

    fn has_object<'a>(&'a self, bucket: &'a str, key: &'a str) -> CloudFuture<'a, bool> {
        Box::pin(async move { Ok(on_disk(|| self.root.join(bucket).join(key).exists())) })
    }

    fn put_object<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        path: &'a Path,
        _sent: Sent,
        _cancel: &'a CancellationToken,
    ) -> CloudFuture<'a, bool> {
        Box::pin(async move { on_disk(|| self.put_blocking(bucket, key, path)) })
    }

    fn delete_object<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        _cancel: &'a CancellationToken,
    ) -> CloudFuture<'a, ()> {
        Box::pin(async move {
            let path = self.root.join(bucket).join(key);
            match on_disk(|| std::fs::remove_file(&path)) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(CloudError::Local {
                    action: "removing",
                    path,
                    source,
                }),
            }
        })
    }

    fn find_registration<'a>(
        &'a self,
        location: &'a str,
        _name: &'a str,
    ) -> AttemptFuture<'a, Option<String>> {
        Box::pin(async move {
            let records = on_disk(|| self.records()).map_err(Failure::Permanent)?;
            Ok(records
                .into_iter()
                .find(|record| record.location == location)
                .map(|record| record.image_id))
        })
    }

    fn register<'a>(&'a self, registration: &'a Registration<'a>) -> AttemptFuture<'a, String> {
        Box::pin(async move {
            on_disk(|| self.register_blocking(registration)).map_err(Failure::Permanent)
        })
    }

    fn deregister<'a>(&'a self, image_id: &'a str) -> CloudFuture<'a, ()> {
        Box::pin(async move { on_disk(|| self.deregister_blocking(image_id)) })
    }

    fn delete_bundle<'a>(&'a self, location: &'a str) -> CloudFuture<'a, usize> {
        Box::pin(async move { on_disk(|| self.delete_bundle_blocking(location)) })
    }

    fn registered(&self) -> CloudFuture<'_, HashSet<String>> {
        Box::pin(async move {
            let records = on_disk(|| self.records())?;
            Ok(records.into_iter().map(|record| record.image_id).collect())
        })
    }
}
