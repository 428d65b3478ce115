//! A real cloud: Eucalyptus, or any EC2/S3-compatible one (SPEC §7). Objects go to S3 (`s3.rs`:
//! a part the bucket already holds with the same MD5 is not sent again), registrations to EC2
//! (`ec2.rs`: `DescribeImages` finds an image registered from the same manifest or, on clouds
//! that do not report locations, under the same name). Bundles are made under
//! `<data-dir>/bundles/` by the publisher; this is only the transport.

use super::aws::{self, Endpoint};
use super::credentials::CloudCredentials;
use super::ec2::Ec2;
use super::s3::S3;
use super::{AttemptFuture, Cloud, CloudError, CloudFuture, Registration, Sent};
use crate::bundle::keys::BundleKeys;
use crate::fetch::RetryPolicy;
use std::collections::HashSet;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// One EC2/S3 cloud as its credentials name it.
pub struct EucalyptusCloud {
    id: String,
    s3: S3,
    ec2: Ec2,
    keys: BundleKeys,
    bucket: Option<String>,
    retry: RetryPolicy,
}

impl EucalyptusCloud {
    /// Reaches the cloud the credentials name, retrying what may pass as `retry` says.
    pub fn new(credentials: CloudCredentials, retry: RetryPolicy) -> Result<Self, CloudError> {
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
            bucket: credentials.bucket,
            retry,
        })
    }

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

impl Cloud for EucalyptusCloud {
    fn id(&self) -> &str {
        &self.id
    }

    fn bucket<'a>(&'a self, install_bucket: &'a str) -> &'a str {
        self.bucket.as_deref().unwrap_or(install_bucket)
    }

    fn bundle_keys(&self) -> Result<BundleKeys, CloudError> {
        Ok(self.keys.clone())
    }

    fn ensure_bucket<'a>(
        &'a self,
        bucket: &'a str,
        cancel: &'a CancellationToken,
    ) -> CloudFuture<'a, ()> {
        Box::pin(self.s3.ensure_bucket(bucket, cancel))
    }

    fn has_object<'a>(&'a self, bucket: &'a str, key: &'a str) -> CloudFuture<'a, bool> {
        Box::pin(self.s3.has_object(bucket, key))
    }

    fn put_object<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        path: &'a Path,
        sent: Sent,
        cancel: &'a CancellationToken,
    ) -> CloudFuture<'a, bool> {
        Box::pin(
            self.s3
                .put_file_unless_present(bucket, key, path, sent, cancel),
        )
    }

    fn delete_object<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> CloudFuture<'a, ()> {
        Box::pin(self.s3.delete_object(bucket, key, cancel))
    }

    fn find_registration<'a>(
        &'a self,
        location: &'a str,
        name: &'a str,
    ) -> AttemptFuture<'a, Option<String>> {
        Box::pin(self.registered_earlier(location, name))
    }

    fn register<'a>(&'a self, registration: &'a Registration<'a>) -> AttemptFuture<'a, String> {
        Box::pin(self.ec2.register(registration))
    }

    fn deregister<'a>(&'a self, image_id: &'a str) -> CloudFuture<'a, ()> {
        Box::pin(async move {
            let never = CancellationToken::new();
            aws::with_retries(&self.retry, &never, || self.ec2.deregister(image_id)).await
        })
    }

    fn delete_bundle<'a>(&'a self, location: &'a str) -> CloudFuture<'a, usize> {
        Box::pin(async move {
            let (bucket, prefix) = super::split_location(location);
            let keys = self.s3.list_keys(bucket, &format!("{prefix}.")).await?;
            let mut deleted = 0;
            for key in keys
                .iter()
                .filter(|key| super::is_bundle_object(prefix, key))
            {
                self.s3
                    .delete_object(bucket, key, &CancellationToken::new())
                    .await?;
                deleted += 1;
            }
            Ok(deleted)
        })
    }

    fn registered(&self) -> CloudFuture<'_, HashSet<String>> {
        Box::pin(async move {
            let never = CancellationToken::new();
            let images = aws::with_retries(&self.retry, &never, || self.ec2.own_images()).await?;
            Ok(images.into_iter().map(|image| image.id).collect())
        })
    }
}
