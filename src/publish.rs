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
//! ([`BundleSink::part_closed`]). A bundle of a verified file is sent once it is whole, several
//! parts at a time (`--upload-concurrency`); an overlapped publish
//! ([`Publisher::send_overlapped`], then [`Publisher::finish_overlapped`]) bundles a file still
//! downloading and sends each part as it closes, the manifest and the registration held until
//! the file has verified. The files ahead of such an image (its kernel and ramdisk) are
//! [`Publisher::stage`]d, their bundles sent but not registered, and registered
//! ([`Publisher::register_uploaded`]) only once the image too has verified: the image's manifest,
//! which names their ids, is then written from the `<image>` element its bundle ended with
//! ([`Links::Later`], `bundle::complete_manifest`).

use crate::bundle::gzip::GzipSettings;
use crate::bundle::{self, Bundle, BundleSink, Part, SourceImage};
use crate::catalog::model::{Compression, FileKind, Packing, Virtualization};
use crate::cloud::{Cloud, CloudError, Registration, Sent, with_retries};
use crate::fetch::RetryPolicy;
use crate::limits;
use crate::pause;
use crate::status::Step;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// A gzipped image's trailer ISIZE read ahead (`Fetcher::tail`), for an overlapped publish.
    pub trailer_isize: Option<u32>,
}

impl Artifact {
    /// What the bundler reads of it.
    fn source_image(&self) -> SourceImage<'_> {
        SourceImage {
            kind: self.kind,
            path: &self.source,
            arriving: None,
            size: self.source_size,
            compression: self.compression,
            packing: self.packing,
            prefix: &self.name,
            arch: &self.arch,
            kernel_id: self.kernel_id.as_deref(),
            ramdisk_id: self.ramdisk_id.as_deref(),
            trailer_isize: self.trailer_isize,
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

/// A bundle whose parts and manifest are in the bucket, not registered: a file ahead of an
/// overlapped image, registered once the image has verified too.
#[derive(Debug)]
pub struct Uploaded {
    bundle: Bundle,
    dir: PathBuf,
    location: String,
}

/// What [`Publisher::stage`] left: a bundle in the bucket to register, or a registration an
/// earlier run made (it stopped before the id was recorded).
#[derive(Debug)]
pub enum Staged {
    Uploaded(Uploaded),
    Registered(Published),
}

/// Whether an overlapped image's manifest can be written when its bundle is: the ids of its
/// kernel and ramdisk are known then (registered already, or it has none), or they come only
/// once those register, after the image has verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    Known,
    Later,
}

/// An overlapped publish whose file verified: every part is in the bucket, the manifest not yet
/// (written too, unless it waits for its links).
#[derive(Debug)]
pub struct PartsSent {
    bundle: Bundle,
    dir: PathBuf,
    location: String,
}

/// Opens a reader of a file still downloading (`fetch::growing`), for the bundler's thread.
pub type OpenGrowing =
    dyn Fn() -> std::io::Result<Box<dyn crate::unpack::SourceRead>> + Send + Sync;

/// Whether the file an overlapped publish reads has verified: `None` while it is checked, then
/// `Some(true)` (size, SHA-256 and signature checked out) or `Some(false)`.
pub struct Verification(pub tokio::sync::watch::Receiver<Option<bool>>);

impl Verification {
    /// Waits for the outcome; a sender gone without one counts as failed.
    async fn wait(&mut self, cancel: &CancellationToken) -> Result<bool, CloudError> {
        tokio::select! {
            outcome = self.0.wait_for(Option::is_some) => {
                Ok(outcome.map(|outcome| *outcome == Some(true)).unwrap_or(false))
            }
            _ = cancel.cancelled() => Err(CloudError::Cancelled),
        }
    }
}

/// What the bundler's thread tells the uploading task.
enum BundleEvent {
    Step(Step),
    Closed(Part),
}

/// The bundler's sink in an overlapped publish: every step and closed part over a channel.
/// With the test hook set (`pause`), stops the bundling thread past a quarter of the source, as
/// [`BundlingHalf`] does.
struct ChannelSink {
    events: tokio::sync::mpsc::UnboundedSender<BundleEvent>,
    quarter: u64,
    links: Links,
}

impl BundleSink for ChannelSink {
    fn manifest_waits(&self) -> bool {
        self.links == Links::Later
    }

    fn step(&self, step: Step) {
        let _ = self.events.send(BundleEvent::Step(step));
        if let Step::Bundling { done, .. } = step
            && done > 0
            && done >= self.quarter
        {
            pause::here_blocking("bundling");
        }
    }

    fn part_closed(&self, part: &Part) {
        let _ = self.events.send(BundleEvent::Closed(part.clone()));
    }
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
    /// Parts in the air at once.
    upload_concurrency: usize,
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
            upload_concurrency: crate::config::DEFAULT_UPLOAD_CONCURRENCY,
        }
    }

    /// How many parts go up at once (`--upload-concurrency`, at least 1): on a link where one
    /// connection is slower than the pipe, more fill it.
    pub fn with_upload_concurrency(self, parts: usize) -> Self {
        Self {
            upload_concurrency: parts.max(1),
            ..self
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
        match self.stage(artifact, progress, cancel).await? {
            Staged::Registered(published) => Ok(published),
            Staged::Uploaded(uploaded) => {
                self.register_uploaded(artifact, uploaded, progress, cancel)
                    .await
            }
        }
    }

    /// Bundles and uploads one artifact, parts and manifest, and registers nothing: a file
    /// ahead of an overlapped image, which has verified while the image has not. Its bundle
    /// stays on disk until [`Publisher::register_uploaded`], so a later attempt finds it and
    /// sends nothing again (each object looked up by MD5).
    pub async fn stage(
        &self,
        artifact: &Artifact,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Staged, CloudError> {
        let cloud = self.cloud();
        let bucket = cloud.bucket(&artifact.bucket);
        let dir = self.bundles.join(bucket).join(&artifact.name);
        let manifest = bundle::manifest_name(&artifact.name);
        let location = format!("{bucket}/{manifest}");
        let (bundle, sent_earlier) = match self.bundle_on_disk(artifact, &dir)? {
            Some(bundle) => (bundle, Sent::Maybe),
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
                        return Ok(Staged::Registered(Published { image_id, location }));
                    }
                }
                (self.bundle(artifact, &dir, progress, cancel)?, Sent::Never)
            }
        };
        self.upload(artifact, bucket, &bundle, sent_earlier, progress, cancel)
            .await?;
        Ok(Staged::Uploaded(Uploaded {
            bundle,
            dir,
            location,
        }))
    }

    /// Registers a bundle [`Publisher::stage`] uploaded (looking first); returns its id.
    pub async fn register_uploaded(
        &self,
        artifact: &Artifact,
        uploaded: Uploaded,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Published, CloudError> {
        let Uploaded {
            bundle,
            dir,
            location,
        } = uploaded;
        self.register(artifact, &bundle, &dir, location, progress, cancel)
            .await
    }

    /// The bundle an earlier attempt made in `dir`: finished, or waiting for its links (a
    /// machine image bundled before its kernel and ramdisk were registered), whose manifest is
    /// written now with `artifact`'s.
    fn bundle_on_disk(
        &self,
        artifact: &Artifact,
        dir: &Path,
    ) -> Result<Option<Bundle>, CloudError> {
        if let Some(bundle) = bundle::finished_bundle(dir, &artifact.name) {
            return Ok(Some(bundle));
        }
        if bundle::waiting_bundle(dir, &artifact.name).is_none() {
            return Ok(None);
        }
        self.complete_manifest(artifact, dir).map(Some)
    }

    /// Writes the manifest of the bundle in `dir` that waited for its links, naming
    /// `artifact`'s kernel and ramdisk; returns the finished bundle.
    fn complete_manifest(&self, artifact: &Artifact, dir: &Path) -> Result<Bundle, CloudError> {
        tokio::task::block_in_place(|| {
            let keys = self.cloud.bundle_keys()?;
            let configuration = bundle::MachineConfiguration {
                kind: artifact.kind,
                arch: &artifact.arch,
                kernel_id: artifact.kernel_id.as_deref(),
                ramdisk_id: artifact.ramdisk_id.as_deref(),
            };
            bundle::complete_manifest(dir, &artifact.name, &configuration, &keys)?;
            bundle::finished_bundle(dir, &artifact.name).ok_or_else(|| CloudError::Local {
                action: "reading",
                path: dir.join(bundle::manifest_name(&artifact.name)),
                source: std::io::Error::other("the manifest just written is not whole"),
            })
        })
    }

    /// Registers the uploaded bundle (looking first), removes it from disk; returns its id.
    async fn register(
        &self,
        artifact: &Artifact,
        bundle: &Bundle,
        dir: &Path,
        location: String,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Published, CloudError> {
        let cloud = self.cloud();
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
            bundle,
        };
        let image_id = with_retries(&self.retry, cancel, || async {
            match cloud.find_registration(&location, &artifact.name).await? {
                Some(id) => Ok(id),
                None => cloud.register(&registration).await,
            }
        })
        .await?;
        if let Err(error) = tokio::fs::remove_dir_all(dir).await {
            tracing::warn!("removing the uploaded bundle {}: {error}", dir.display());
        }
        // The install's bucket directory goes with its last bundle (it fails while others stay).
        if let Some(bucket_dir) = dir.parent() {
            let _ = tokio::fs::remove_dir(bucket_dir).await;
        }
        pause::here("registered").await;
        Ok(Published { image_id, location })
    }

    /// Sends an artifact whose file is still downloading (the overlapped install): the bundler
    /// reads the file through `open`'s readers as it grows, each part goes up as it closes
    /// ([`BundleSink::part_closed`]), [`Publisher::with_upload_concurrency`] at a time; then it
    /// waits until `verified` says the file's size, SHA-256 and signature checked out, and
    /// returns with no manifest sent ([`Publisher::finish_overlapped`] sends it). If they did
    /// not, every part of the bundle is deleted from the bucket and the bundle from disk. A
    /// bundle an earlier attempt finished on disk (stopped before the file verified) is sent as
    /// it is. With [`Links::Later`] the bundle ends with its manifest waiting for its links.
    ///
    /// Progress: each step as it comes, with 0 bytes (the installer counts the download's).
    pub async fn send_overlapped(
        &self,
        artifact: &Artifact,
        open: Arc<OpenGrowing>,
        progress: &dyn Progress,
        mut verified: Verification,
        links: Links,
        cancel: &CancellationToken,
    ) -> Result<PartsSent, CloudError> {
        let cloud = self.cloud();
        let bucket = cloud.bucket(&artifact.bucket).to_string();
        let dir = self.bundles.join(&bucket).join(&artifact.name);
        let location = format!("{bucket}/{}", bundle::manifest_name(&artifact.name));
        let sent = Mutex::new(Vec::new());
        let outcome = async {
            progress.report(
                Step::CheckingBucket {
                    kind: artifact.kind,
                },
                0,
            );
            cloud.ensure_bucket(&bucket, cancel).await?;
            let bundle = self
                .bundle_uploading(
                    artifact, open, &bucket, &dir, progress, &sent, links, cancel,
                )
                .await?;
            if !verified.wait(cancel).await? {
                return Err(CloudError::Unverified);
            }
            Ok(bundle)
        }
        .await;
        let error = match outcome {
            Ok(bundle) => {
                return Ok(PartsSent {
                    bundle,
                    dir,
                    location,
                });
            }
            Err(error) => error,
        };
        // A cancel keeps what went up for the retry; a file that failed takes it all back.
        if cancel.is_cancelled() {
            return Err(CloudError::Cancelled);
        }
        if !matches!(error, CloudError::Cancelled) && !verified.wait(cancel).await.unwrap_or(true) {
            let names = sent.into_inner().expect("sent parts lock");
            self.take_back(&bucket, &dir, &artifact.name, names).await;
            return Err(CloudError::Unverified);
        }
        Err(error)
    }

    /// Sends the manifest of an overlapped publish whose file verified and registers it. A
    /// manifest that waited for its links is written first, naming `artifact`'s kernel and
    /// ramdisk (registered by now).
    pub async fn finish_overlapped(
        &self,
        artifact: &Artifact,
        sent: PartsSent,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Published, CloudError> {
        let PartsSent {
            bundle,
            dir,
            location,
        } = sent;
        let bundle = match bundle::waiting_bundle(&dir, &artifact.name) {
            Some(_) => self.complete_manifest(artifact, &dir)?,
            None => bundle,
        };
        progress.report(
            Step::UploadingManifest {
                kind: artifact.kind,
            },
            artifact.source_size,
        );
        let bucket = self.cloud.bucket(&artifact.bucket);
        self.cloud
            .put_object(
                bucket,
                &bundle.manifest_name,
                &bundle.manifest_path,
                Sent::Maybe,
                cancel,
            )
            .await?;
        self.register(artifact, &bundle, &dir, location, progress, cancel)
            .await
    }

    /// Deletes from `bucket` every part of the bundle in `dir` (those `sent`, and any a finished
    /// bundle names), then the bundle itself: its file failed verification.
    async fn take_back(&self, bucket: &str, dir: &Path, prefix: &str, mut sent: Vec<String>) {
        if let Some(bundle) =
            bundle::finished_bundle(dir, prefix).or_else(|| bundle::waiting_bundle(dir, prefix))
        {
            sent.extend(bundle.parts.into_iter().map(|part| part.file_name));
        }
        sent.sort();
        sent.dedup();
        // Its own token: the install's may be what ended it.
        let never = CancellationToken::new();
        for name in &sent {
            if let Err(error) = self.cloud.delete_object(bucket, name, &never).await {
                tracing::warn!(
                    "taking back {bucket}/{name}, bundled from a file that failed verification: {error}"
                );
            }
        }
        if let Err(error) = tokio::fs::remove_dir_all(dir).await
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing the unverified bundle {}: {error}", dir.display());
        }
        tracing::info!(
            parts = sent.len(),
            "took back the parts of {prefix}: its file failed verification"
        );
    }

    /// Bundles on a blocking thread and puts each part as it closes, at most
    /// `upload_concurrency` in the air; the names of the parts put are kept in `sent`. A bundle
    /// finished on disk (or waiting for its links) is put as it is; with [`Links::Later`] a
    /// finished one is not, its manifest naming links from before.
    #[allow(clippy::too_many_arguments)]
    async fn bundle_uploading(
        &self,
        artifact: &Artifact,
        open: Arc<OpenGrowing>,
        bucket: &str,
        dir: &Path,
        progress: &dyn Progress,
        sent: &Mutex<Vec<String>>,
        links: Links,
        cancel: &CancellationToken,
    ) -> Result<Bundle, CloudError> {
        let kind = artifact.kind;
        let (events, mut closed) = tokio::sync::mpsc::unbounded_channel();
        // Stops the bundler when the upload fails first.
        let stop = cancel.child_token();
        let _stop_on_return = stop.clone().drop_guard();
        let on_disk = match links {
            Links::Known => bundle::finished_bundle(dir, &artifact.name)
                .or_else(|| bundle::waiting_bundle(dir, &artifact.name)),
            Links::Later => {
                let _ = std::fs::remove_file(dir.join(bundle::manifest_name(&artifact.name)));
                bundle::waiting_bundle(dir, &artifact.name)
            }
        };
        let mut bundling = match &on_disk {
            Some(bundle) => {
                for part in &bundle.parts {
                    let _ = events.send(BundleEvent::Closed(part.clone()));
                }
                drop(events);
                None
            }
            None => {
                let keys = tokio::task::block_in_place(|| self.cloud.bundle_keys())?;
                let owned = artifact.clone();
                let dir = dir.to_owned();
                let gzip = self.gzip;
                let stop = stop.clone();
                Some(tokio::task::spawn_blocking(move || {
                    let opener = move || open();
                    let image = SourceImage {
                        arriving: Some(&opener),
                        ..owned.source_image()
                    };
                    let sink = ChannelSink {
                        events,
                        quarter: owned.source_size / 4,
                        links,
                    };
                    bundle::bundle_artifact(&image, &keys, &dir, gzip, &sink, &stop)
                }))
            }
        };
        let sent_earlier = if on_disk.is_some() {
            Sent::Maybe
        } else {
            Sent::Never
        };
        let mut pending = std::collections::VecDeque::new();
        let mut in_air = futures_util::stream::FuturesUnordered::new();
        let mut bundle = None;
        let mut parts_sent = 0;
        let mut parts_closed = 0;
        let mut all_closed = false;
        loop {
            while in_air.len() < self.upload_concurrency
                && let Some(part) = pending.pop_front()
            {
                let cloud = self.cloud.clone();
                let bucket = bucket.to_string();
                let cancel = cancel.clone();
                in_air.push(async move {
                    let part: Part = part;
                    put_part(&*cloud, &bucket, &part, sent_earlier, &cancel)
                        .await
                        .map(|_| part.file_name)
                });
            }
            if all_closed && pending.is_empty() && in_air.is_empty() {
                if let Some(bundling) = bundling.take() {
                    let made = bundling.await.expect("the bundler does not panic")?;
                    bundle = Some(made);
                }
                break;
            }
            tokio::select! {
                event = closed.recv(), if !all_closed => match event {
                    Some(BundleEvent::Closed(part)) => {
                        parts_closed += 1;
                        pending.push_back(part);
                    }
                    Some(BundleEvent::Step(step)) => progress.report(step, 0),
                    None => all_closed = true,
                },
                Some(put) = in_air.next(), if !in_air.is_empty() => {
                    let name = put?;
                    sent.lock().expect("sent parts lock").push(name);
                    parts_sent += 1;
                    // Of the parts closed so far: the count is whole once bundling is done.
                    progress.report(Step::UploadingParts { kind, sent: parts_sent, count: parts_closed }, 0);
                }
                _ = cancel.cancelled() => return Err(CloudError::Cancelled),
            }
        }
        match bundle {
            Some(bundle) => Ok(bundle),
            None => on_disk.ok_or_else(|| CloudError::Local {
                action: "reading",
                path: dir.join(bundle::manifest_name(&artifact.name)),
                source: std::io::Error::other("the finished bundle went missing"),
            }),
        }
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

    /// Sends the parts, [`Publisher::with_upload_concurrency`] at a time, each with the cloud's
    /// own retries and look before it leaps (a part already there is not sent again); then the
    /// manifest, only once every part is in (the cloud reads a manifest only once its parts are
    /// there). The first part that fails for good ends the upload with its error, and the parts
    /// still in the air are dropped with it; a cancel drops them at once.
    async fn upload(
        &self,
        artifact: &Artifact,
        bucket: &str,
        bundle: &Bundle,
        sent_earlier: Sent,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<(), CloudError> {
        let cloud = self.cloud();
        let kind = artifact.kind;
        let size = artifact.source_size;
        let count = bundle.parts.len() as u64;
        progress.report(Step::CheckingBucket { kind }, size / 2);
        cloud.ensure_bucket(bucket, cancel).await?;
        let report = |sent: u64| {
            progress.report(
                Step::UploadingParts { kind, sent, count },
                size / 2 + size / 2 * sent / count.max(1),
            )
        };
        report(0);
        // Made up front (a put does nothing until polled): a closure in the stream's type would
        // not be `Send` for every lifetime, as the installer's spawned task needs.
        let puts: Vec<_> = bundle
            .parts
            .iter()
            .map(|part| put_part(cloud, bucket, part, sent_earlier, cancel))
            .collect();
        let mut puts = futures_util::stream::iter(puts).buffer_unordered(self.upload_concurrency);
        let mut sent = 0;
        loop {
            let put = tokio::select! {
                put = puts.next() => put,
                _ = cancel.cancelled() => return Err(CloudError::Cancelled),
            };
            match put {
                Some(put) => {
                    put?;
                    sent += 1;
                    report(sent);
                }
                None => break,
            }
        }
        progress.report(Step::UploadingManifest { kind }, size);
        cloud
            .put_object(
                bucket,
                &bundle.manifest_name,
                &bundle.manifest_path,
                sent_earlier,
                cancel,
            )
            .await?;
        Ok(())
    }
}

/// Puts one part of a bundle, unless it is recorded as sent; once the cloud has it, the part's
/// file gives way to that record ([`bundle::part_sent`]): nothing reads it again, and a bundle
/// in the air then holds on disk only the parts not yet sent.
async fn put_part(
    cloud: &dyn Cloud,
    bucket: &str,
    part: &Part,
    sent: Sent,
    cancel: &CancellationToken,
) -> Result<(), CloudError> {
    if bundle::is_sent(part) {
        return Ok(());
    }
    cloud
        .put_object(bucket, &part.file_name, &part.path, sent, cancel)
        .await?;
    bundle::part_sent(part).map_err(|source| CloudError::Local {
        action: "writing",
        path: part.path.clone(),
        source,
    })
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
                recompress: false,
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
            trailer_isize: None,
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
            lines[lines.len() - 5..],
            [
                "Uploading kernel bundle: checking the bucket",
                "Uploading kernel bundle: 0 of 1 parts sent",
                "Uploading kernel bundle: 1 of 1 parts sent",
                "Uploading kernel bundle: manifest",
                "Registering kernel",
            ]
        );
        let bucket = data_dir.join("fake-cloud/image-store-1");
        assert_eq!(
            names_in(&bucket),
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

    /// The names in `dir`, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Tells the bundler the manifest waits for its links.
    struct WaitingForLinks;

    impl BundleSink for WaitingForLinks {
        fn step(&self, _: Step) {}

        fn manifest_waits(&self) -> bool {
            true
        }
    }

    /// A kernel staged (parts and manifest in the bucket, nothing registered) and registered
    /// after; a machine image whose bundle waited for its links (as an overlapped install
    /// leaves it when stopped before registering) is published with them: its manifest is
    /// written naming the kernel, and nothing is bundled again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_staged_bundle_registers_later_and_a_waiting_one_is_finished_with_its_links() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path();
        let cloud = Arc::new(FakeCloud::new(data_dir));
        let publisher = Publisher::new(cloud.clone(), data_dir).with_gzip(GzipSettings {
            level: 1,
            threads: 2,
            recompress: false,
        });
        let source = data_dir.join("source");
        std::fs::write(&source, vec![9u8; 200_000]).unwrap();
        let kernel = Artifact {
            kind: FileKind::Kernel,
            source: source.clone(),
            source_size: 200_000,
            name: "test-1-kernel".into(),
            bucket: "image-store-1".into(),
            identity: "kernel:test".into(),
            ..artifact()
        };
        let cancel = CancellationToken::new();
        let bucket = data_dir.join("fake-cloud/image-store-1");
        let Staged::Uploaded(uploaded) = publisher
            .stage(&kernel, &Lines::default(), &cancel)
            .await
            .unwrap()
        else {
            panic!("nothing was registered before");
        };
        assert!(bucket.join("test-1-kernel.manifest.xml").exists());
        assert!(!bucket.join("test-1-kernel.registration.json").exists());
        let kernel_id = publisher
            .register_uploaded(&kernel, uploaded, &Lines::default(), &cancel)
            .await
            .unwrap()
            .image_id;
        assert!(bucket.join("test-1-kernel.registration.json").exists());

        let image = Artifact {
            source: source.clone(),
            source_size: 200_000,
            name: "test-1-image".into(),
            bucket: "image-store-1".into(),
            kernel_id: Some(kernel_id.clone()),
            identity: format!("image:test:{kernel_id}"),
            ..artifact()
        };
        let bundle_dir = data_dir.join("bundles/image-store-1/test-1-image");
        let keys = cloud.bundle_keys().unwrap();
        bundle::bundle_artifact(
            &image.source_image(),
            &keys,
            &bundle_dir,
            publisher.gzip,
            &WaitingForLinks,
            &cancel,
        )
        .unwrap();
        assert!(bundle::waiting_bundle(&bundle_dir, "test-1-image").is_some());
        let lines = Lines::default();
        publisher.publish(&image, &lines, &cancel).await.unwrap();
        let lines = lines.0.into_inner().unwrap();
        assert!(
            !lines.iter().any(|line| line.starts_with("Bundling")),
            "{lines:?}"
        );
        let manifest = std::fs::read_to_string(bucket.join("test-1-image.manifest.xml")).unwrap();
        assert!(
            manifest.contains(&format!("<kernel_id>{kernel_id}</kernel_id>")),
            "{manifest}"
        );
        let registration =
            std::fs::read_to_string(bucket.join("test-1-image.registration.json")).unwrap();
        assert!(registration.contains(&kernel_id), "{registration}");
    }

    /// A cloud that only takes puts: each waits `delay` in the air (a part named `fails` is
    /// refused at once), and it counts how many are in the air, at most, and what landed in order.
    struct Recording {
        delay: std::time::Duration,
        fails: Option<&'static str>,
        in_air: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
        landed: Mutex<Vec<String>>,
    }

    /// Counts a put out of the air however it ends: done, failed or dropped.
    struct InAir<'a>(&'a std::sync::atomic::AtomicUsize);

    impl Drop for InAir<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Recording {
        fn new(delay_ms: u64, fails: Option<&'static str>) -> Self {
            Self {
                delay: std::time::Duration::from_millis(delay_ms),
                fails,
                in_air: Default::default(),
                most: Default::default(),
                landed: Mutex::default(),
            }
        }
    }

    impl Cloud for Recording {
        fn id(&self) -> &str {
            "recording"
        }
        fn bundle_keys(&self) -> Result<crate::bundle::keys::BundleKeys, CloudError> {
            Err(CloudError::Refused {
                action: "bundling",
                reason: "this test cloud only takes uploads".into(),
            })
        }
        fn ensure_bucket<'a>(
            &'a self,
            _: &'a str,
            _: &'a CancellationToken,
        ) -> crate::cloud::CloudFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }
        fn has_object<'a>(
            &'a self,
            _: &'a str,
            key: &'a str,
        ) -> crate::cloud::CloudFuture<'a, bool> {
            Box::pin(async move { Ok(self.landed.lock().unwrap().iter().any(|k| k == key)) })
        }
        fn put_object<'a>(
            &'a self,
            _: &'a str,
            key: &'a str,
            _: &'a Path,
            _: Sent,
            _: &'a CancellationToken,
        ) -> crate::cloud::CloudFuture<'a, bool> {
            use std::sync::atomic::Ordering::SeqCst;
            Box::pin(async move {
                let now = self.in_air.fetch_add(1, SeqCst) + 1;
                let _in_air = InAir(&self.in_air);
                self.most.fetch_max(now, SeqCst);
                if self.fails == Some(key) {
                    return Err(CloudError::Refused {
                        action: "PutObject",
                        reason: format!("AccessDenied: {key}"),
                    });
                }
                tokio::time::sleep(self.delay).await;
                self.landed.lock().unwrap().push(key.to_string());
                Ok(true)
            })
        }
        fn delete_object<'a>(
            &'a self,
            _: &'a str,
            key: &'a str,
            _: &'a CancellationToken,
        ) -> crate::cloud::CloudFuture<'a, ()> {
            Box::pin(async move {
                self.landed.lock().unwrap().retain(|k| k != key);
                Ok(())
            })
        }
        fn find_registration<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> crate::cloud::AttemptFuture<'a, Option<String>> {
            Box::pin(async { Ok(None) })
        }
        fn register<'a>(
            &'a self,
            _: &'a Registration<'a>,
        ) -> crate::cloud::AttemptFuture<'a, String> {
            Box::pin(async { Ok("emi-1".to_string()) })
        }
        fn registered(&self) -> crate::cloud::CloudFuture<'_, std::collections::HashSet<String>> {
            Box::pin(async { Ok(Default::default()) })
        }
        fn deregister<'a>(&'a self, _: &'a str) -> crate::cloud::CloudFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }
        fn delete_bundle<'a>(&'a self, _: &'a str) -> crate::cloud::CloudFuture<'a, usize> {
            Box::pin(async { Ok(0) })
        }
    }

    /// A bundle of `parts` parts in `dir` as the uploader sees it (the bytes are not read by
    /// this cloud; each sent part's record is written in `dir`).
    fn bundle_of(dir: &Path, parts: usize) -> Bundle {
        std::fs::create_dir_all(dir).unwrap();
        Bundle {
            manifest_name: "x.manifest.xml".into(),
            manifest_path: dir.join("x.manifest.xml"),
            parts: (0..parts)
                .map(|n| Part {
                    file_name: format!("x.part.{n:02}"),
                    path: dir.join(format!("x.part.{n:02}")),
                    size: 1,
                    sha1: String::new(),
                })
                .collect(),
            digest: String::new(),
            size: 0,
            bundled_size: 0,
        }
    }

    fn artifact() -> Artifact {
        Artifact {
            kind: FileKind::Image,
            source: "x".into(),
            source_size: 900,
            compression: Compression::None,
            packing: Packing::Raw,
            name: "x".into(),
            arch: "x86_64".into(),
            bucket: "b".into(),
            kernel_id: None,
            ramdisk_id: None,
            virtualization: Virtualization::Paravirtual,
            description: None,
            identity: "image:x".into(),
            trailer_isize: None,
        }
    }

    /// Nine parts at four at a time: four in the air at once (one at a time with 1), each part
    /// put once, the manifest only after the last part, and the status line counting parts sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_go_up_n_at_a_time_each_once_and_the_manifest_after_the_last() {
        let dir = tempfile::tempdir().unwrap();
        for (concurrency, most) in [(4, 4), (1, 1)] {
            let parts_dir = dir.path().join(format!("at-{concurrency}"));
            let cloud = Arc::new(Recording::new(30, None));
            let publisher =
                Publisher::new(cloud.clone(), dir.path()).with_upload_concurrency(concurrency);
            let lines = Lines::default();
            publisher
                .upload(
                    &artifact(),
                    "b",
                    &bundle_of(&parts_dir, 9),
                    Sent::Never,
                    &lines,
                    &CancellationToken::new(),
                )
                .await
                .unwrap();
            use std::sync::atomic::Ordering::SeqCst;
            assert_eq!(cloud.most.load(SeqCst), most, "at {concurrency} at a time");
            let landed = cloud.landed.lock().unwrap().clone();
            let mut parts = landed[..9].to_vec();
            parts.sort();
            parts.dedup();
            assert_eq!(
                parts,
                bundle_of(&parts_dir, 9)
                    .parts
                    .iter()
                    .map(|p| p.file_name.clone())
                    .collect::<Vec<_>>()
            );
            assert_eq!(landed[9..], ["x.manifest.xml"], "the manifest last, once");
            let lines = lines.0.into_inner().unwrap();
            assert_eq!(
                lines[1],
                "Uploading machine image bundle: 0 of 9 parts sent"
            );
            assert_eq!(
                lines[10],
                "Uploading machine image bundle: 9 of 9 parts sent"
            );
            assert_eq!(lines[11], "Uploading machine image bundle: manifest");
        }
    }

    /// A part refused for good ends the upload with that refusal at once: the parts in the air
    /// are dropped, the manifest never goes up. A cancel drops them as promptly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_part_that_fails_ends_the_upload_and_no_manifest_goes_up() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let cloud = Arc::new(Recording::new(60_000, Some("x.part.02")));
        let publisher = Publisher::new(cloud.clone(), dir.path()).with_upload_concurrency(4);
        let started = std::time::Instant::now();
        let error = publisher
            .upload(
                &artifact(),
                "b",
                &bundle_of(dir.path(), 9),
                Sent::Never,
                &Lines::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the cloud refused PutObject: AccessDenied: x.part.02"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(cloud.in_air.load(SeqCst), 0, "the others were dropped");
        assert!(cloud.landed.lock().unwrap().is_empty(), "no manifest");

        let cloud = Arc::new(Recording::new(60_000, None));
        let publisher = Publisher::new(cloud.clone(), dir.path()).with_upload_concurrency(4);
        let cancel = CancellationToken::new();
        let cancelling = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            cancelling.cancel();
        });
        let error = publisher
            .upload(
                &artifact(),
                "b",
                &bundle_of(dir.path(), 9),
                Sent::Never,
                &Lines::default(),
                &cancel,
            )
            .await
            .unwrap_err();
        assert!(matches!(error, CloudError::Cancelled), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        assert_eq!(cloud.in_air.load(SeqCst), 0);
        assert_eq!(cloud.most.load(SeqCst), 4);
    }

    /// A part the cloud has is not needed on disk again: its file gives way to a record of it,
    /// the bundle still reads back whole (sizes from the records), and sending it again puts
    /// only the manifest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sent_part_gives_way_to_a_record_and_is_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, crate::testing::noise(16, 25 << 20)).unwrap();
        let image = Artifact {
            source: source.clone(),
            source_size: 25 << 20,
            ..artifact()
        };
        let bundle_dir = dir.path().join("bundle");
        let keys = FakeCloud::new(dir.path()).bundle_keys().unwrap();
        let gzip = GzipSettings {
            level: 0,
            threads: 1,
            recompress: false,
        };
        let cancel = CancellationToken::new();
        let made = bundle::bundle_artifact(
            &image.source_image(),
            &keys,
            &bundle_dir,
            gzip,
            &WaitingForLinks,
            &cancel,
        )
        .unwrap();
        assert_eq!(made.parts.len(), 3, "25 MiB stored: three 10 MiB parts");
        let cloud = Arc::new(Recording::new(0, None));
        let publisher = Publisher::new(cloud.clone(), dir.path());
        let lines = Lines::default();
        publisher
            .upload(&image, "b", &made, Sent::Never, &lines, &cancel)
            .await
            .unwrap();
        assert_eq!(
            names_in(&bundle_dir),
            [
                "x.manifest.waiting",
                "x.part.00.sent",
                "x.part.01.sent",
                "x.part.02.sent"
            ],
            "no part's bytes stay once the cloud has them"
        );
        let again = bundle::waiting_bundle(&bundle_dir, "x").expect("the bundle reads back");
        let sizes = |bundle: &Bundle| -> Vec<u64> { bundle.parts.iter().map(|p| p.size).collect() };
        assert_eq!(sizes(&again), sizes(&made));
        assert_eq!(again.bundled_size, made.bundled_size);
        publisher
            .upload(&image, "b", &again, Sent::Maybe, &Lines::default(), &cancel)
            .await
            .unwrap();
        let landed = cloud.landed.lock().unwrap().clone();
        assert_eq!(
            landed[3..],
            ["x.manifest.xml", "x.manifest.xml"],
            "the second time, only the manifest: {landed:?}"
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
