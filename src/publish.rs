//! Publishing one artifact into a cloud, the same way for every cloud (SPEC §7): bundle it under
//! `<data-dir>/bundles/<bucket>/<prefix>/` (`bundle/`), make sure the bucket exists, put each part
//! and the manifest unless the bucket already has it with the same MD5, register the manifest, and
//! remove the bundle. The cloud ([`Cloud`]) only carries; what to send, and when to look before
//! leaping, is decided here:
//! - registering looks first: an image registered from the same manifest (or, on clouds that
//!   report no locations, under the same name) is a registration whose reply was lost, and is
//!   taken instead of registering twice; 5xx and timeouts are retried with backoff;
//! - with no bundle on disk but its manifest in the bucket (a stop after registering and removing
//!   the bundle, before the installer recorded the id), it looks before bundling too, so nothing
//!   is bundled, sent or registered again;
//! - a bundle an earlier attempt finished is sent as it is, not made again.
//!
//! Progress goes out as typed [`Step`]s (`status.rs` words them): bundling is the first half of a
//! publish, the upload the second. The bundler tells of each part as it closes
//! ([`BundleSink::part_closed`]); today the parts are sent once the bundle is whole, and that is
//! the seam where an overlapped upload will start on a part while the next is written.

use crate::bundle::gzip::GzipSettings;
use crate::bundle::{self, Bundle, BundleSink, Part, SourceImage};
use crate::catalog::model::{Compression, FileKind, Packing, Virtualization};
use crate::cloud::{Cloud, CloudError, Registration, with_retries};
use crate::fetch::RetryPolicy;
use crate::limits;
use crate::pause;
use crate::status::Step;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One file to publish, as the installer hands it over.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub kind: FileKind,
    /// The verified cache file.
    pub source: PathBuf,
    pub source_size: u64,
    pub compression: Compression,
    pub packing: Packing,
    /// Bundle prefix and image name, e.g. `ubuntu-server-amd64-9.10-kernel`.
    pub name: String,
    /// `x86_64` or `i386`.
    pub arch: String,
    /// `image-store-<unix seconds>`: the install's bucket.
    pub bucket: String,
    /// For a machine image: the ids of its kernel and ramdisk.
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    /// How the machine image boots (a kernel or ramdisk is paravirtual).
    pub virtualization: Virtualization,
    /// Written on the registered image: its stream identity, if it has one.
    pub description: Option<String>,
    /// What makes two artifacts the same registration: kind, content and links.
    pub identity: String,
}

impl Artifact {
    /// What the bundler reads of it.
    fn source_image(&self) -> SourceImage<'_> {
        SourceImage {
            kind: self.kind,
            path: &self.source,
            size: self.source_size,
            compression: self.compression,
            packing: self.packing,
            prefix: &self.name,
            arch: &self.arch,
            kernel_id: self.kernel_id.as_deref(),
            ramdisk_id: self.ramdisk_id.as_deref(),
        }
    }
}

/// What a publish registered, for `cloud_objects`.
#[derive(Debug, Clone)]
pub struct Published {
    /// `eki-…`, `eri-…` or `emi-…`.
    pub image_id: String,
    /// `bucket/prefix.manifest.xml`.
    pub location: String,
}

/// Told how far publishing has got: the step, and how many bytes of the source that stands for.
pub trait Progress: Send + Sync {
    fn report(&self, step: Step, source_done: u64);
}

/// Bundles, uploads and registers artifacts into one cloud.
pub struct Publisher {
    cloud: Arc<dyn Cloud>,
    /// `<data-dir>/bundles`: bundles wait here until registered.
    bundles: PathBuf,
    gzip: GzipSettings,
    retry: RetryPolicy,
}

impl Publisher {
    /// Publishes into `cloud`, bundling under `data_dir`, with the default compression and
    /// retries.
    pub fn new(cloud: Arc<dyn Cloud>, data_dir: &Path) -> Self {
        Self {
            cloud,
            bundles: data_dir.join("bundles"),
            gzip: GzipSettings::default_for_this_machine(),
            retry: RetryPolicy::default(),
        }
    }

    /// How bundles are compressed (`--compression-level`).
    pub fn with_gzip(self, gzip: GzipSettings) -> Self {
        Self { gzip, ..self }
    }

    /// How often a cloud call that may pass is tried.
    pub fn with_retry(self, retry: RetryPolicy) -> Self {
        Self { retry, ..self }
    }

    /// The cloud published into: the installer names registrations by its id and reconciles
    /// with its list.
    pub fn cloud(&self) -> &dyn Cloud {
        &*self.cloud
    }

    /// Bundles, uploads and registers one artifact; returns its id.
    pub async fn publish(
        &self,
        artifact: &Artifact,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Published, CloudError> {
        let cloud = self.cloud();
        let bucket = cloud.bucket(&artifact.bucket);
        let dir = self.bundles.join(bucket).join(&artifact.name);
        let manifest = bundle::manifest_name(&artifact.name);
        let location = format!("{bucket}/{manifest}");
        let bundle = match bundle::finished_bundle(&dir, &artifact.name) {
            Some(bundle) => bundle,
            None => {
                // No bundle on disk: none was made yet, or an earlier run uploaded, registered
                // and removed it, then stopped before the installer recorded the id. Only in the
                // second case is the manifest in the bucket: then look, so that such a run
                // neither bundles and uploads again nor registers twice. A cloud that cannot
                // answer is told so by the upload below, with its own status line.
                let uploaded_earlier = cloud
                    .has_object(bucket, &manifest)
                    .await
                    .inspect_err(|error| {
                        tracing::debug!("looking for an earlier upload of {manifest}: {error}")
                    })
                    .unwrap_or(false);
                if uploaded_earlier {
                    let earlier = with_retries(&self.retry, cancel, || {
                        cloud.find_registration(&location, &artifact.name)
                    })
                    .await?;
                    if let Some(image_id) = earlier {
                        return Ok(Published { image_id, location });
                    }
                }
                self.bundle(artifact, &dir, progress, cancel)?
            }
        };
        self.upload(artifact, bucket, &bundle, progress, cancel)
            .await?;

        progress.report(
            Step::Registering {
                kind: artifact.kind,
            },
            artifact.source_size,
        );
        let registration = Registration {
            kind: artifact.kind,
            identity: &artifact.identity,
            location: &location,
            name: &artifact.name,
            architecture: &artifact.arch,
            kernel_id: artifact.kernel_id.as_deref(),
            ramdisk_id: artifact.ramdisk_id.as_deref(),
            virtualization: artifact.virtualization,
            description: artifact.description.as_deref().map(capped_description),
            bundle: &bundle,
        };
        let image_id = with_retries(&self.retry, cancel, || async {
            match cloud.find_registration(&location, &artifact.name).await? {
                Some(id) => Ok(id),
                None => cloud.register(&registration).await,
            }
        })
        .await?;
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!("removing the uploaded bundle {}: {error}", dir.display());
        }
        // The install's bucket directory goes with its last bundle (it fails while others stay).
        if let Some(bucket_dir) = dir.parent() {
            let _ = tokio::fs::remove_dir(bucket_dir).await;
        }
        pause::here("registered").await;
        Ok(Published { image_id, location })
    }

    /// Makes the bundle in `dir` (on this thread: the runtime is multi-threaded).
    fn bundle(
        &self,
        artifact: &Artifact,
        dir: &Path,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Bundle, CloudError> {
        tokio::task::block_in_place(|| {
            let keys = self.cloud.bundle_keys()?;
            let sink = BundlingHalf {
                progress,
                quarter: artifact.source_size / 4,
            };
            Ok(bundle::bundle_artifact(
                &artifact.source_image(),
                &keys,
                dir,
                self.gzip,
                &sink,
                cancel,
            )?)
        })
    }

    /// Sends every part, then the manifest (the cloud reads a manifest only once its parts are
    /// there).
    async fn upload(
        &self,
        artifact: &Artifact,
        bucket: &str,
        bundle: &Bundle,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<(), CloudError> {
        let cloud = self.cloud();
        let kind = artifact.kind;
        let size = artifact.source_size;
        let count = bundle.parts.len() as u64;
        progress.report(Step::CheckingBucket { kind }, size / 2);
        cloud.ensure_bucket(bucket, cancel).await?;
        for (index, part) in bundle.parts.iter().enumerate() {
            let number = index as u64 + 1;
            progress.report(
                Step::UploadingPart {
                    kind,
                    number,
                    count,
                },
                size / 2 + size / 2 * index as u64 / count.max(1),
            );
            cloud
                .put_object(bucket, &part.file_name, &part.path, cancel)
                .await?;
        }
        progress.report(Step::UploadingManifest { kind }, size);
        cloud
            .put_object(bucket, &bundle.manifest_name, &bundle.manifest_path, cancel)
            .await?;
        Ok(())
    }
}

/// `description` cut to what EC2 and Eucalyptus register ([`limits::MAX_IMAGE_DESCRIPTION_CHARS`]).
fn capped_description(description: &str) -> &str {
    match description
        .char_indices()
        .nth(limits::MAX_IMAGE_DESCRIPTION_CHARS)
    {
        Some((end, _)) => &description[..end],
        None => description,
    }
}

/// Bundling is the first half of a publish: passes its steps on at half their bytes. With the
/// test hook set (`pause`), stops the bundling thread at the first report past a quarter of the
/// publish, so the bundle is part-way written.
struct BundlingHalf<'a> {
    progress: &'a dyn Progress,
    quarter: u64,
}

impl BundleSink for BundlingHalf<'_> {
    fn step(&self, step: Step) {
        let source_done = match step {
            Step::Bundling { done, .. } => done / 2,
            _ => 0,
        };
        self.progress.report(step, source_done);
        if source_done > 0 && source_done >= self.quarter {
            pause::here_blocking("bundling");
        }
    }

    fn part_closed(&self, part: &Part) {
        tracing::debug!(part = %part.path.display(), size = part.size, "bundle part closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::fake::FakeCloud;
    use std::sync::Mutex;

    /// The status lines a publish reported, in order.
    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl Progress for Lines {
        fn report(&self, step: Step, _: u64) {
            let line = step.line();
            let mut lines = self.0.lock().unwrap();
            if lines.last() != Some(&line) {
                lines.push(line);
            }
        }
    }

    /// Into the fake cloud: bundled, each part and the manifest put, registered, the bundle
    /// removed; published again (the installer never recorded the id), the registration is found
    /// from the manifest in the bucket and nothing is bundled, sent or registered again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_whose_id_was_not_recorded_is_found_and_not_done_again() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path();
        let source = data_dir.join("kernel");
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&source, &image).unwrap();
        let publisher =
            Publisher::new(Arc::new(FakeCloud::new(data_dir)), data_dir).with_gzip(GzipSettings {
                level: 1,
                threads: 2,
            });
        let artifact = Artifact {
            kind: FileKind::Kernel,
            source,
            source_size: image.len() as u64,
            compression: Compression::None,
            packing: Packing::Raw,
            name: "test-1-kernel".into(),
            arch: "x86_64".into(),
            bucket: "image-store-1".into(),
            kernel_id: None,
            ramdisk_id: None,
            virtualization: Virtualization::Paravirtual,
            description: None,
            identity: "kernel:test".into(),
        };
        let cancel = CancellationToken::new();
        let lines = Lines::default();
        let first = publisher.publish(&artifact, &lines, &cancel).await.unwrap();
        assert_eq!(
            first.image_id,
            FakeCloud::image_id(FileKind::Kernel, "kernel:test")
        );
        assert_eq!(first.location, "image-store-1/test-1-kernel.manifest.xml");
        let lines = lines.0.into_inner().unwrap();
        assert!(lines[0].starts_with("Bundling kernel: "), "{lines:?}");
        assert_eq!(
            lines[lines.len() - 4..],
            [
                "Uploading kernel bundle: checking the bucket",
                "Uploading kernel bundle: part 1 of 1",
                "Uploading kernel bundle: manifest",
                "Registering kernel",
            ]
        );
        let bucket = data_dir.join("fake-cloud/image-store-1");
        let mut held: Vec<String> = std::fs::read_dir(&bucket)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        held.sort();
        assert_eq!(
            held,
            [
                "test-1-kernel.manifest.xml",
                "test-1-kernel.part.00",
                "test-1-kernel.registration.json",
            ]
        );
        assert!(
            !data_dir
                .join("bundles/image-store-1/test-1-kernel")
                .exists()
        );

        let manifest = bucket.join("test-1-kernel.manifest.xml");
        let sent = std::fs::metadata(&manifest).unwrap().modified().unwrap();
        let again = Lines::default();
        let second = publisher.publish(&artifact, &again, &cancel).await.unwrap();
        assert_eq!(second.image_id, first.image_id);
        assert!(again.0.into_inner().unwrap().is_empty(), "nothing done");
        assert_eq!(
            std::fs::metadata(&manifest).unwrap().modified().unwrap(),
            sent
        );
    }

    #[test]
    fn descriptions_are_cut_at_255_characters_not_bytes() {
        let short = "simplestreams com.ubuntu.cloud:released:download x 20240423 disk1.img";
        assert_eq!(capped_description(short), short);
        let long = "é".repeat(300);
        assert_eq!(capped_description(&long).chars().count(), 255);
        assert_eq!(capped_description(&long[..510]), &long[..510]);
    }
}
