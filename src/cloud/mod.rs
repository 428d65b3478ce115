//! Where installed images go (SPEC §7). One small trait, [`Cloud`]: publish one artifact (a kernel,
//! a ramdisk, or a machine image linked to them) and return the id the cloud registered it under.
//! The installer decides what to publish and remembers what was (`db::cloud_objects`); a cloud only
//! moves bytes and registers. `fake.rs` is `--fake-eucalyptus`; a real EC2/S3 cloud plugs in here.

pub mod fake;

use crate::catalog::model::{Compression, FileKind, Packing};
use crate::unpack::UnpackError;
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
    #[error("the cloud refused {action}: {reason}")]
    Refused {
        action: &'static str,
        reason: String,
    },
    #[error("cancelled")]
    Cancelled,
}

pub type PublishFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Published, CloudError>> + Send + 'a>>;

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
}

/// The EC2 id prefix of each kind (Eucalyptus' naming).
pub fn id_prefix(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Kernel => "eki",
        FileKind::Ramdisk => "eri",
        FileKind::Image => "emi",
    }
}
