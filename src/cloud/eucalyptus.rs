//! A real cloud: Eucalyptus, or any EC2/S3-compatible one (SPEC §7). Each artifact is bundled under
//! `<data-dir>/bundles/<bucket>/<prefix>/`, its parts and manifest uploaded (parts the bucket
//! already holds with the same MD5 are skipped), and the manifest registered. Registration looks
//! first: `DescribeImages` finds an image registered from the same manifest (or, on clouds that do
//! not report locations, under the same name), so a retry after a lost reply never registers twice.

use super::aws::{self, Endpoint};
use super::bundle::{Bundle, Part};
use super::credentials::CloudCredentials;
use super::ec2::{Ec2, Registration};
use super::gzip::GzipSettings;
use super::keys::BundleKeys;
use super::s3::S3;
use super::{
    Artifact, Cloud, CloudError, Progress, PublishFuture, Published, RegisteredFuture,
    bundle_artifact,
};
use crate::fetch::RetryPolicy;
use crate::install::pause;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

pub struct EucalyptusCloud {
    id: String,
    s3: S3,
    ec2: Ec2,
    keys: BundleKeys,
    bundles: PathBuf,
    bucket: Option<String>,
    retry: RetryPolicy,
    gzip: GzipSettings,
}

impl EucalyptusCloud {
    pub fn new(
        credentials: CloudCredentials,
        data_dir: &Path,
        retry: RetryPolicy,
    ) -> Result<Self, CloudError> {
        let client = aws::http_client()?;
        let id = format!(
            "ec2:{}#{}",
            credentials.ec2_url, credentials.bundle_keys.user_id
        );
        Ok(Self {
            id,
            s3: S3::new(
                Endpoint {
                    client: client.clone(),
                    url: credentials.s3_url,
                    key: credentials.key.clone(),
                    signature: credentials.signature,
                    region: credentials.region.clone(),
                },
                retry,
            ),
            ec2: Ec2::new(Endpoint {
                client,
                url: credentials.ec2_url,
                key: credentials.key,
                signature: credentials.signature,
                region: credentials.region,
            }),
            keys: credentials.bundle_keys,
            bundles: data_dir.join("bundles"),
            bucket: credentials.bucket,
            retry,
            gzip: GzipSettings::default_for_this_machine(),
        })
    }

    /// How bundles are compressed (`--compression-level`).
    pub fn with_gzip(self, gzip: GzipSettings) -> Self {
        Self { gzip, ..self }
    }

    async fn publish_artifact(
        &self,
        artifact: &Artifact,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Published, CloudError> {
        let bucket = self.bucket.as_deref().unwrap_or(&artifact.bucket);
        let dir = self.bundles.join(bucket).join(&artifact.name);
        let location = format!("{bucket}/{}", manifest_name(&artifact.name));
        let bundle = match finished_bundle(&dir, &artifact.name) {
            Some(bundle) => bundle,
            None => {
                // No bundle on disk: none was made yet, or an earlier run uploaded, registered
                // and removed it, then stopped before the installer recorded the id. Only in the
                // second case is the manifest in the bucket: then look, so that such a run
                // neither bundles and uploads again nor registers twice. A cloud that cannot
                // answer is told so by the upload below, with its own status line.
                let manifest = manifest_name(&artifact.name);
                let uploaded_earlier = self
                    .s3
                    .has_object(bucket, &manifest)
                    .await
                    .inspect_err(|error| {
                        tracing::debug!("looking for an earlier upload of {manifest}: {error}")
                    })
                    .unwrap_or(false);
                if uploaded_earlier {
                    let earlier = aws::with_retries(&self.retry, cancel, || {
                        self.registered_earlier(&location, &artifact.name)
                    })
                    .await?;
                    if let Some(image_id) = earlier {
                        return Ok(Published { image_id, location });
                    }
                }
                let pausing = PauseWhileBundling {
                    progress,
                    quarter: artifact.source_size / 4,
                };
                tokio::task::block_in_place(|| {
                    bundle_artifact(artifact, &self.keys, &dir, self.gzip, &pausing, cancel)
                })?
            }
        };
        let noun = artifact.kind.noun();
        let size = artifact.source_size;
        let count = bundle.parts.len() as u64;
        progress.report(
            format!("Uploading {noun} bundle: checking the bucket"),
            size / 2,
        );
        self.s3.ensure_bucket(bucket, cancel).await?;
        for (index, part) in bundle.parts.iter().enumerate() {
            let number = index as u64 + 1;
            progress.report(
                format!("Uploading {noun} bundle: part {number} of {count}"),
                size / 2 + size / 2 * index as u64 / count.max(1),
            );
            let bytes = read(&part.path).await?;
            self.s3
                .put_unless_present(bucket, &part.file_name, bytes, cancel)
                .await?;
        }
        progress.report(format!("Uploading {noun} bundle: manifest"), size);
        let manifest = read(&bundle.manifest_path).await?;
        self.s3
            .put_unless_present(bucket, &bundle.manifest_name, manifest, cancel)
            .await?;

        progress.report(format!("Registering {noun}"), size);
        let registration = Registration {
            location: &location,
            name: &artifact.name,
            architecture: &artifact.arch,
            kernel_id: artifact.kernel_id.as_deref(),
            ramdisk_id: artifact.ramdisk_id.as_deref(),
        };
        let image_id = aws::with_retries(&self.retry, cancel, || async {
            match self.registered_earlier(&location, &artifact.name).await? {
                Some(id) => Ok(id),
                None => self.ec2.register(&registration).await,
            }
        })
        .await?;
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!("removing the uploaded bundle {}: {error}", dir.display());
        }
        pause::here("registered").await;
        Ok(Published { image_id, location })
    }
}

impl EucalyptusCloud {
    /// The id of an image of ours registered from `location` (or, on clouds that do not report
    /// locations, under `name`): a registration whose reply was lost, or whose id was never
    /// recorded because the proxy stopped first.
    async fn registered_earlier(
        &self,
        location: &str,
        name: &str,
    ) -> Result<Option<String>, aws::Failure> {
        let images = self.ec2.own_images().await?;
        let earlier = images.into_iter().find(|image| match &image.location {
            Some(found) => found == location,
            None => image.name.as_deref() == Some(name),
        });
        if let Some(image) = &earlier {
            tracing::info!(id = %image.id, %location, "already registered");
        }
        Ok(earlier.map(|image| image.id))
    }
}

/// Passes bundling progress on; with the test hook set (`install::pause`), stops the bundling
/// thread at the first report past a quarter of the publish (bundling is its first half), so the
/// bundle is part-way written.
struct PauseWhileBundling<'a> {
    progress: &'a dyn Progress,
    quarter: u64,
}

impl Progress for PauseWhileBundling<'_> {
    fn report(&self, detail: String, source_done: u64) {
        self.progress.report(detail, source_done);
        if source_done > 0 && source_done >= self.quarter {
            pause::here_blocking("bundling");
        }
    }
}

fn manifest_name(prefix: &str) -> String {
    format!("{prefix}.manifest.xml")
}

async fn read(path: &Path) -> Result<bytes::Bytes, CloudError> {
    tokio::fs::read(path)
        .await
        .map(bytes::Bytes::from)
        .map_err(|source| CloudError::Write {
            path: path.to_owned(),
            source,
        })
}

/// A bundle an earlier attempt finished: its manifest is written last, after every part, so a
/// manifest whose parts are all present describes a whole bundle (uploaded again only where the
/// bucket lacks a part).
fn finished_bundle(dir: &Path, prefix: &str) -> Option<Bundle> {
    let manifest_name = manifest_name(prefix);
    let manifest_path = dir.join(&manifest_name);
    let text = std::fs::read_to_string(&manifest_path).ok()?;
    let doc = roxmltree::Document::parse(&text).ok()?;
    let field = |name: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(str::to_string)
    };
    let mut parts = Vec::new();
    for part in doc.descendants().filter(|n| n.has_tag_name("part")) {
        let file_name = part
            .children()
            .find(|n| n.has_tag_name("filename"))?
            .text()?
            .to_string();
        let sha1 = part
            .children()
            .find(|n| n.has_tag_name("digest"))?
            .text()?
            .to_string();
        if file_name.contains('/') {
            return None;
        }
        let path = dir.join(&file_name);
        let size = std::fs::metadata(&path).ok()?.len();
        parts.push(Part {
            file_name,
            path,
            size,
            sha1,
        });
    }
    Some(Bundle {
        manifest_name,
        manifest_path,
        digest: field("digest")?,
        size: field("size")?.parse().ok()?,
        bundled_size: parts.iter().map(|p| p.size).sum(),
        parts,
    })
}

impl Cloud for EucalyptusCloud {
    fn id(&self) -> &str {
        &self.id
    }

    fn publish<'a>(
        &'a self,
        artifact: &'a Artifact,
        progress: &'a dyn Progress,
        cancel: &'a CancellationToken,
    ) -> PublishFuture<'a> {
        Box::pin(self.publish_artifact(artifact, progress, cancel))
    }

    fn registered(&self) -> RegisteredFuture<'_> {
        Box::pin(async move {
            let never = CancellationToken::new();
            let images = aws::with_retries(&self.retry, &never, || self.ec2.own_images()).await?;
            Ok(images.into_iter().map(|image| image.id).collect())
        })
    }
}
