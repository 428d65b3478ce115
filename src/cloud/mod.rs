//! Where installed images go (SPEC §7). One small trait, [`Cloud`]: publish one artifact (a kernel,
//! a ramdisk, or a machine image linked to them) and return the id the cloud registered it under.
//! The installer decides what to publish and remembers what was (`db::cloud_objects`); a cloud only
//! bundles, moves bytes and registers. Both clouds make the same EC2 image bundle
//! ([`bundle_artifact`]: `pipeline.rs` streams the image through `bundle.rs` and `gzip.rs`): `eucalyptus.rs` uploads it to S3 (`s3.rs`) and registers it
//! through EC2 (`ec2.rs`), signing as `sign.rs` says with `credentials.rs`' keys; `fake.rs`
//! (`--fake-eucalyptus`) keeps it on the local disk.

pub mod aws;
pub mod bundle;
pub mod credentials;
pub mod ec2;
pub mod eucalyptus;
pub mod fake;
pub mod gzip;
pub mod keys;
mod pipeline;
pub mod s3;
pub mod sign;

use crate::catalog::model::{Compression, FileKind, Packing};
use crate::unpack::UnpackError;
use bundle::BundleError;
pub use pipeline::bundle_artifact;
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
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
