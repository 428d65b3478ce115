//! Where installed images go (SPEC §7): the clouds that receive EC2 image bundles. [`Cloud`] is a
//! transport: make sure a bucket exists, put an object unless the bucket has it, find an earlier
//! registration, register, list what is registered. What to send and in which order (bundle,
//! upload, register, and the recovery when an earlier run stopped half-way) is decided once, in
//! `publish.rs`, for every cloud; the bundle itself is `bundle/`'s.
//!
//! `eucalyptus.rs` is a real cloud: S3 (`s3.rs`) and EC2 (`ec2.rs`) over `aws.rs`' client,
//! signing as `sign.rs` says with `credentials.rs`' keys; `fake.rs` (`--fake-eucalyptus`) keeps
//! buckets and registrations on the local disk.

pub mod aws;
pub mod credentials;
pub mod ec2;
pub mod eucalyptus;
pub mod fake;
pub mod s3;
pub mod sign;

use crate::bundle::keys::{BundleKeys, KeyError};
use crate::bundle::{Bundle, BundleError};
use crate::catalog::model::{FileKind, Virtualization};
use crate::unpack::UnpackError;
pub use aws::{Failure, with_retries};
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// A local file of the bundle or of the fake cloud could not be read or written.
    #[error("{action} {path}: {source}")]
    Local {
        /// `reading`, `writing`.
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The fake cloud's own keys could not be loaded or made.
    #[error("making the fake cloud's keys in {dir}: {source}")]
    Keys { dir: PathBuf, source: KeyError },
    #[error(transparent)]
    Bundle(BundleError),
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
    /// An overlapped publish's file failed verification: its parts were taken back (the
    /// file's own error says why).
    #[error("the file failed verification; its uploaded parts were deleted")]
    Unverified,
}

impl From<BundleError> for CloudError {
    /// A bundle that failed because its source did not unpack, or because it was cancelled, is
    /// reported as that.
    fn from(error: BundleError) -> Self {
        match error {
            BundleError::Unpack(error) => CloudError::Unpack(error),
            BundleError::Cancelled => CloudError::Cancelled,
            other => CloudError::Bundle(other),
        }
    }
}

/// What to register: a bundle's manifest in the bucket and, for a machine image, its kernel and
/// ramdisk.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub kind: FileKind,
    /// What makes two registrations the same: kind, content and links (the fake cloud's ids
    /// derive from it).
    pub identity: &'a str,
    /// `bucket/prefix.manifest.xml`.
    pub location: &'a str,
    /// The bundle prefix, registered as the image's name.
    pub name: &'a str,
    pub architecture: &'a str,
    pub kernel_id: Option<&'a str>,
    pub ramdisk_id: Option<&'a str>,
    /// How a machine image boots: an HVM one is registered with no kernel or ramdisk.
    pub virtualization: Virtualization,
    /// The image's description in the cloud (its stream identity), at most
    /// [`crate::limits::MAX_IMAGE_DESCRIPTION_CHARS`].
    pub description: Option<&'a str>,
    /// The bundle the manifest describes.
    pub bundle: &'a Bundle,
}

/// A cloud call that retries on its own.
pub type CloudFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CloudError>> + Send + 'a>>;
/// One attempt of a cloud call, whose failure says whether another try may pass
/// ([`with_retries`]).
pub type AttemptFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + 'a>>;

/// Whether the bytes of a put may be in the cloud already, which decides if its first try
/// looks before it leaps (every later try does: the cloud may have kept a try whose reply was lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Read back from disk: an earlier run may have sent them.
    Maybe,
    /// Made by this run under a fresh AES key and not tried yet: nobody can have sent them,
    /// so asking first would cost a round trip per part for nothing.
    Never,
}

/// A cloud that receives bundles: a transport, with no opinion on what to send.
pub trait Cloud: Send + Sync {
    /// Names this cloud in `cloud_objects`, so a registration is reused only in the cloud that has it.
    fn id(&self) -> &str;

    /// The bucket an install's bundles go to: the install's own, unless the cloud's
    /// configuration names one.
    fn bucket<'a>(&'a self, install_bucket: &'a str) -> &'a str {
        install_bucket
    }

    /// The keys bundles for this cloud are made with (the user's, and the cloud's certificate).
    /// May block (the fake cloud makes its keys on first use).
    fn bundle_keys(&self) -> Result<BundleKeys, CloudError>;

    /// Creates `bucket` unless it exists (and is ours).
    fn ensure_bucket<'a>(
        &'a self,
        bucket: &'a str,
        cancel: &'a CancellationToken,
    ) -> CloudFuture<'a, ()>;

    /// Whether `bucket/key` exists (a missing bucket holds nothing); one try.
    fn has_object<'a>(&'a self, bucket: &'a str, key: &'a str) -> CloudFuture<'a, bool>;

    /// Puts the file at `path` as `bucket/key`, unless an object with the same MD5 is already
    /// there (asked before each try, but the first of a [`Sent::Never`]); counts the bytes sent
    /// (`metrics`). Returns whether bytes were sent.
    fn put_object<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        path: &'a Path,
        sent: Sent,
        cancel: &'a CancellationToken,
    ) -> CloudFuture<'a, bool>;

    /// Deletes `bucket/key`; one that is not there counts as deleted. Parts uploaded from a file
    /// that then failed its verification are taken back with it.
    fn delete_object<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> CloudFuture<'a, ()>;

    /// The id of an image of ours registered from `location` (or, where the cloud reports no
    /// locations, under `name`): a registration whose reply was lost, or whose id was never
    /// recorded because the proxy stopped first. One attempt.
    fn find_registration<'a>(
        &'a self,
        location: &'a str,
        name: &'a str,
    ) -> AttemptFuture<'a, Option<String>>;

    /// Registers the manifest; returns the new image's id. One attempt.
    fn register<'a>(&'a self, registration: &'a Registration<'a>) -> AttemptFuture<'a, String>;

    /// The ids of every image registered for us in this cloud right now: what is installed is
    /// reconciled with it, so an image deregistered by an operator shows as uninstalled again.
    fn registered(&self) -> CloudFuture<'_, HashSet<String>>;

    /// Deregisters `image_id` (EC2 `DeregisterImage`), so that `registered` no longer lists it;
    /// an image already gone counts as done. Retries what may pass.
    fn deregister<'a>(&'a self, image_id: &'a str) -> CloudFuture<'a, ()>;

    /// Deletes the bundle whose manifest is at `location` (`bucket/prefix.manifest.xml`): the
    /// manifest and its `prefix.part.NN` parts, nothing else of the bucket. Returns how many
    /// objects were deleted. Retries what may pass.
    fn delete_bundle<'a>(&'a self, location: &'a str) -> CloudFuture<'a, usize>;
}

/// `bucket/prefix.manifest.xml` as its bucket and bundle prefix.
pub fn split_location(location: &str) -> (&str, &str) {
    let (bucket, manifest) = location.split_once('/').unwrap_or(("", location));
    (
        bucket,
        manifest.strip_suffix(".manifest.xml").unwrap_or(manifest),
    )
}

/// Whether `key` is an object of the bundle `prefix`: its manifest or one of its parts.
pub fn is_bundle_object(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| {
            rest == "manifest.xml"
                || rest
                    .strip_prefix("part.")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The EC2 id prefix of each kind (Eucalyptus' naming).
pub fn id_prefix(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Kernel => "eki",
        FileKind::Ramdisk => "eri",
        FileKind::Image => "emi",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_its_manifest_and_numbered_parts_alone() {
        assert_eq!(
            split_location("image-store-1/ubuntu-9.10-image.manifest.xml"),
            ("image-store-1", "ubuntu-9.10-image")
        );
        let prefix = "ubuntu-9.10-image";
        for key in [
            "ubuntu-9.10-image.manifest.xml",
            "ubuntu-9.10-image.part.00",
            "ubuntu-9.10-image.part.117",
        ] {
            assert!(is_bundle_object(prefix, key), "{key}");
        }
        for key in [
            "ubuntu-9.10-image.registration.json",
            "ubuntu-9.10-image.part.",
            "ubuntu-9.10-image.part.x1",
            "ubuntu-9.10-image-2.manifest.xml",
            "ubuntu-9.10-kernel.manifest.xml",
            ".ubuntu-9.10-image.part.00.incoming",
        ] {
            assert!(!is_bundle_object(prefix, key), "{key}");
        }
    }
}
