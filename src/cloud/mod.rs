//! Where installed images go (SPEC §7). One small trait, [`Cloud`]: publish one artifact (a kernel,
//! a ramdisk, or a machine image linked to them) and return the id the cloud registered it under.
//! The installer decides what to publish and remembers what was (`db::cloud_objects`); a cloud only
//! bundles, moves bytes and registers. Both clouds make the same EC2 image bundle
//! ([`bundle_artifact`], `bundle.rs`): `eucalyptus.rs` uploads it to S3 (`s3.rs`) and registers it
//! through EC2 (`ec2.rs`), signing as `sign.rs` says with `credentials.rs`' keys; `fake.rs`
//! (`--fake-eucalyptus`) keeps it on the local disk.

pub mod aws;
pub mod bundle;
pub mod credentials;
pub mod ec2;
pub mod eucalyptus;
pub mod fake;
pub mod keys;
pub mod s3;
pub mod sign;

use crate::catalog::model::{Compression, FileKind, Packing};
use crate::install::detail;
use crate::unpack::{self, UnpackError};
use bundle::{Bundle, BundleError, BundleSpec};
use keys::BundleKeys;
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio_util::sync::CancellationToken;

/// gzip level of the bundles: `gzip`'s and euca2ools' default.
pub const COMPRESSION_LEVEL: u32 = 6;

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
    /// What makes two artifacts the same registration: kind, content and links.
    pub identity: String,
}

#[derive(Debug, Clone)]
pub struct Published {
    /// `eki-…`, `eri-…` or `emi-…`.
    pub image_id: String,
    /// `bucket/prefix.manifest.xml` or wherever the cloud keeps it.
    pub location: String,
}

/// Told how far publishing has got: one status line, and bytes of the source consumed.
pub trait Progress: Send + Sync {
    fn report(&self, detail: String, source_done: u64);
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{0}")]
    Unpack(#[from] UnpackError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Bundle(#[from] BundleError),
    #[error("the cloud refused {action}: {reason}")]
    Refused {
        action: &'static str,
        reason: String,
    },
    #[error("cannot reach the cloud for {action} at {url}: {cause}")]
    Unreachable {
        action: &'static str,
        url: String,
        cause: String,
    },
    #[error("cancelled")]
    Cancelled,
}

pub type PublishFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Published, CloudError>> + Send + 'a>>;
pub type RegisteredFuture<'a> =
    Pin<Box<dyn Future<Output = Result<HashSet<String>, CloudError>> + Send + 'a>>;

pub trait Cloud: Send + Sync {
    /// Names this cloud in `cloud_objects`, so a registration is reused only in the cloud that has it.
    fn id(&self) -> &str;

    /// Bundles, uploads and registers one artifact.
    fn publish<'a>(
        &'a self,
        artifact: &'a Artifact,
        progress: &'a dyn Progress,
        cancel: &'a CancellationToken,
    ) -> PublishFuture<'a>;

    /// The ids of every image registered for us in this cloud right now: what is installed is
    /// reconciled with it, so an image deregistered by an operator shows as uninstalled again.
    fn registered(&self) -> RegisteredFuture<'_>;
}

/// The EC2 id prefix of each kind (Eucalyptus' naming).
pub fn id_prefix(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Kernel => "eki",
        FileKind::Ramdisk => "eri",
        FileKind::Image => "emi",
    }
}

/// Bundles an artifact's raw image bytes into `dir` (SPEC §7), reporting "Bundling kernel: 3 of 5
/// MiB" as the first half of its progress. A gzipped raw image is measured first: the tar header
/// states the size before the bytes.
pub fn bundle_artifact(
    artifact: &Artifact,
    keys: &BundleKeys,
    dir: &Path,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<Bundle, CloudError> {
    let noun = artifact.kind.noun();
    let total = artifact.source_size;
    let size = unpack::image_size(
        &artifact.source,
        artifact.compression,
        artifact.packing,
        &|done| {
            progress.report(
                format!("Measuring {noun}: {}", detail::amount(done, total)),
                0,
            )
        },
    )?;
    std::fs::create_dir_all(dir).map_err(|source| CloudError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let spec = BundleSpec {
        prefix: &artifact.name,
        kind: artifact.kind,
        arch: &artifact.arch,
        kernel_id: artifact.kernel_id.as_deref(),
        ramdisk_id: artifact.ramdisk_id.as_deref(),
        size,
        level: COMPRESSION_LEVEL,
    };
    unpack::with_image_bytes(
        &artifact.source,
        artifact.compression,
        artifact.packing,
        &|done| {
            progress.report(
                format!("Bundling {noun}: {}", detail::amount(done, total)),
                done / 2,
            )
        },
        |stream| {
            bundle::write_bundle(stream.reader, &spec, keys, dir, &mut |_| {
                !cancel.is_cancelled()
            })
            .map_err(|error| match error {
                BundleError::Cancelled => CloudError::Cancelled,
                other => CloudError::Bundle(other),
            })
        },
    )
}
