//! `--fake-eucalyptus`: a cloud on the local disk. Each artifact's image bytes land in
//! `<data-dir>/fake-cloud/<bucket>/<name>` beside a `<name>.registration.json` record, under an id
//! derived from what was registered (so the same artifact always gets the same id), in the form
//! Eucalyptus uses: `emi-` and 8 upper-case hex digits. Nothing leaves the machine.

use super::{Artifact, Cloud, CloudError, Progress, PublishFuture, Published, id_prefix};
use crate::install::detail;
use crate::unpack::{self, UnpackError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

pub struct FakeCloud {
    root: PathBuf,
    id: String,
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
    sha256: String,
}

impl FakeCloud {
    pub fn new(data_dir: &Path) -> Self {
        let root = data_dir.join("fake-cloud");
        Self {
            id: format!("fake:{}", root.display()),
            root,
        }
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

    fn publish_blocking(
        &self,
        artifact: &Artifact,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Published, CloudError> {
        let bucket = self.root.join(&artifact.bucket);
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| CloudError::Write { path, source }
        };
        std::fs::create_dir_all(&bucket).map_err(write_error(&bucket))?;
        let target = bucket.join(&artifact.name);
        let partial = bucket.join(format!("{}.part", artifact.name));
        let noun = artifact.kind.noun();
        let report = |done: u64| {
            progress.report(
                format!(
                    "Storing {noun} in the fake cloud: {}",
                    detail::amount(done, artifact.source_size)
                ),
                done,
            )
        };
        let (size, sha256) = unpack::with_image_bytes(
            &artifact.source,
            artifact.compression,
            artifact.packing,
            &report,
            |_, reader| {
                let file = File::create(&partial).map_err(write_error(&partial))?;
                let copied = copy_hashing(
                    reader,
                    BufWriter::with_capacity(1 << 20, file),
                    cancel,
                    &artifact.source,
                    &partial,
                );
                if copied.is_err() {
                    let _ = std::fs::remove_file(&partial);
                }
                copied
            },
        )?;
        std::fs::rename(&partial, &target).map_err(write_error(&target))?;
        progress.report(format!("Registering {noun}"), artifact.source_size);
        let image_id = Self::image_id(artifact);
        let location = format!("{}/{}", artifact.bucket, artifact.name);
        let record = Registration {
            image_id: &image_id,
            kind: noun,
            name: &artifact.name,
            location: &location,
            architecture: &artifact.arch,
            kernel_id: artifact.kernel_id.as_deref(),
            ramdisk_id: artifact.ramdisk_id.as_deref(),
            size,
            sha256,
        };
        let record_path = bucket.join(format!("{}.registration.json", artifact.name));
        let json = serde_json::to_vec_pretty(&record).expect("a registration serialises");
        std::fs::write(&record_path, json).map_err(write_error(&record_path))?;
        Ok(Published { image_id, location })
    }
}

fn copy_hashing(
    reader: &mut dyn Read,
    mut writer: BufWriter<File>,
    cancel: &CancellationToken,
    source_path: &Path,
    path: &Path,
) -> Result<(u64, String), CloudError> {
    let write_error = |source| CloudError::Write {
        path: path.to_owned(),
        source,
    };
    let read_error = |source| UnpackError::Read {
        path: source_path.to_owned(),
        source,
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(CloudError::Cancelled);
        }
        let n = reader.read(&mut buffer).map_err(read_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        writer.write_all(&buffer[..n]).map_err(write_error)?;
        crate::metrics::global().add_uploaded(n as u64);
        size += n as u64;
    }
    let file = writer
        .into_inner()
        .map_err(|e| write_error(e.into_error()))?;
    file.sync_all().map_err(write_error)?;
    Ok((size, hex::encode(hasher.finalize())))
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
}
