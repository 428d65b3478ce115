//! One install attempt, step by step: each file downloaded (resuming), checked against the signed
//! size and SHA-256, its detached signature verified, promoted into the cache; then kernel,
//! ramdisk and machine image published to the cloud, each once per cloud. A file that provides
//! several artifacts (a UEC tarball: kernel, ramdisk and image) is checked whole for all of them
//! first, so a tarball that lacks one registers nothing.

use super::Installer;
use super::keyed_lock::KeyGuard;
use super::state::InstallState;
use crate::bundle;
use crate::catalog::model::{
    Compression, FileKind, FileRef, Image, Packing, StreamIdentity, Virtualization,
};
use crate::cloud::CloudError;
use crate::db::installs::Change;
use crate::db::{DbError, InstallRow, RegisteredIds};
use crate::fetch::growing::Growth;
use crate::fetch::verified::{FileError, FileStages, SignedFile};
use crate::metrics;
use crate::publish::{Artifact, Links, OpenGrowing, Progress, Staged, Uploaded, Verification};
use crate::status::{self, Step};
use crate::unpack;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

/// What ends an install attempt early; its one line follows "Failure encountered while: ...".
#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Budget(#[from] crate::cache::budget::BudgetError),
    /// Cancelled while waiting for another install to finish with a shared file or artifact.
    #[error("cancelled")]
    Cancelled,
}

impl JobError {
    fn is_cancel(&self) -> bool {
        match self {
            JobError::File(error) => error.is_cancel(),
            JobError::Cloud(error) => matches!(error, CloudError::Cancelled),
            JobError::Cancelled => true,
            JobError::Db(_) | JobError::Budget(_) => false,
        }
    }
}

/// Runs the install of `uri` to its end: installed, failed or cancelled; or, on shutdown, leaves it
/// in flight for the next start.
pub(super) async fn run(
    installer: &Installer,
    uri: &str,
    cancel: &CancellationToken,
    shutdown: &CancellationToken,
) {
    let row = match installer.db.install(uri) {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(error) => {
            tracing::error!(%uri, "cannot load the install: {error}");
            return;
        }
    };
    let job = Job {
        installer,
        row: &row,
        cancel,
    };
    let outcome = job.perform().await;
    let change = match &outcome {
        Ok(ids) => Change {
            to: InstallState::Installed,
            detail: &status::installed_for(row.origin, ids.emi.as_deref().unwrap_or("?")),
            error: None,
            ids: Some(ids),
        },
        Err(error) if error.is_cancel() && shutdown.is_cancelled() => return,
        Err(error) if error.is_cancel() => Change {
            to: InstallState::Cancelled,
            detail: status::CANCELLED,
            error: None,
            ids: None,
        },
        Err(error) => {
            let during = installer.board.detail(uri).unwrap_or_default();
            let line = status::failure(&during, &error.to_string());
            tracing::warn!(%uri, "{line}");
            return job.commit_failure(&during, &line);
        }
    };
    let detail_text = change.detail.to_string();
    match installer.db.transition(uri, change) {
        Ok(row) => {
            tracing::info!(%uri, "install {}: {detail_text}", row.state);
            installer.board.put(&row);
        }
        Err(error) => tracing::error!(%uri, "cannot record the end of the install: {error}"),
    }
}

struct Job<'a> {
    installer: &'a Installer,
    row: &'a InstallRow,
    cancel: &'a CancellationToken,
}

impl Job<'_> {
    fn image(&self) -> &Arc<Image> {
        &self.row.image
    }

    fn uri(&self) -> &str {
        &self.row.image.uri
    }

    fn set_state(&self, to: InstallState, detail: &str) -> Result<(), DbError> {
        let row = self.installer.db.transition(
            self.uri(),
            Change {
                to,
                detail,
                error: None,
                ids: None,
            },
        )?;
        self.installer.board.put(&row);
        Ok(())
    }

    fn commit_failure(&self, during: &str, line: &str) {
        let change = Change {
            to: InstallState::Failed,
            detail: during,
            error: Some(line),
            ids: None,
        };
        match self.installer.db.transition(self.uri(), change) {
            Ok(row) => self.installer.board.put(&row),
            Err(error) => tracing::error!(uri = %self.uri(), "cannot record the failure: {error}"),
        }
    }

    async fn perform(&self) -> Result<RegisteredIds, JobError> {
        let image = self.image().clone();
        let installs = self.installer.db.installs()?;
        self.installer.budget.make_room(&image, &installs)?;
        let total = image.total_bytes();
        let overlapped = self.overlappable(&image)?;
        let ahead = match overlapped {
            Some(_) => &image.files[..image.files.len() - 1],
            None => &image.files[..],
        };
        let mut done = 0;
        for file in ahead {
            let _only_us = self
                .exclusively(&format!("download:{}", file.sha256), file.kind, done, total)
                .await?;
            if !self.is_cached(file)? {
                self.download(file, done, total).await?;
            }
            done += file.size;
            self.installer.board.progress(
                self.uri(),
                done,
                total,
                status::downloading(file.kind, file.size, file.size),
            );
        }
        let Some(last) = overlapped else {
            return self.publish_all(&image).await;
        };
        let ahead = self.stage_ahead(&image, ahead, done, total).await?;
        crate::pause::here("ahead-staged").await;
        self.overlap(&image, last, ahead, done, total).await
    }

    /// The image's last file, when its install overlaps its download (issue 16): a file that is
    /// one machine image, a raw image or an uncompressed qcow2 disk, not verified yet, behind
    /// files that are each a kernel or a ramdisk. Those are small, and go first: downloaded and
    /// verified, their bundles sent, parts and manifest (`Job::stage_ahead`), but none of them
    /// registered until the image has verified too (`Job::register_ahead`), so that an image
    /// that fails registers nothing. The image's manifest names their ids, which only their
    /// registration gives: when they are new, the image's bundle ends with its manifest waiting
    /// for them (`publish::Links::Later`), written once they are registered. A UEC tarball stays
    /// sequential: it is checked whole for all its members (`unpack::check_members`) before any
    /// of them is published, so that a tarball short of one registers nothing, and that check
    /// needs the whole file.
    fn overlappable<'i>(&self, image: &'i Image) -> Result<Option<&'i FileRef>, JobError> {
        let Some((last, ahead)) = image.files.split_last() else {
            return Ok(None);
        };
        let boot_files = ahead.iter().all(|file| {
            matches!(
                file.artifacts()[..],
                [FileKind::Kernel] | [FileKind::Ramdisk]
            )
        });
        let fits = boot_files
            && last.artifacts() == [FileKind::Image]
            && match last.packing {
                Packing::Raw => true,
                Packing::Qcow2 => last.compression == Compression::None,
                Packing::Tar => false,
            };
        if !fits || self.is_cached(last)? {
            return Ok(None);
        }
        Ok(Some(last))
    }

    /// The files ahead of an overlapped image (its kernel and ramdisk), verified: each one's
    /// bundle goes up, parts and manifest, unless it is registered already, and none is
    /// registered. Each keeps its publish lock until it is (`Job::register_ahead`), so that no
    /// other install bundles or registers it meanwhile.
    async fn stage_ahead<'j>(
        &'j self,
        image: &Image,
        files: &[FileRef],
        done: u64,
        total: u64,
    ) -> Result<Vec<Ahead<'j>>, JobError> {
        let installer = self.installer;
        let cloud_id = installer.publisher.cloud().id().to_string();
        let mut ahead = Vec::new();
        for file in files {
            let artifact = self.artifact(image, file, file.kind, &RegisteredIds::default());
            let lock = self
                .exclusively(
                    &format!("publish:{}", artifact.identity),
                    artifact.kind,
                    done,
                    total,
                )
                .await?;
            let state = match installer.db.cloud_object(&cloud_id, &artifact.identity)? {
                Some(id) => {
                    installer.board.progress(
                        self.uri(),
                        done,
                        total,
                        status::already_registered(artifact.kind, &id),
                    );
                    AheadState::Registered(id)
                }
                None => {
                    // Its progress stays where the downloads ended: its own bytes are few.
                    let progress = BoardProgress {
                        installer,
                        uri: self.uri(),
                        done_before: done,
                        total,
                        share: 0,
                        source_size: artifact.source_size,
                    };
                    let staged = installer
                        .publisher
                        .stage(&artifact, &progress, self.cancel)
                        .await
                        .inspect_err(record_cloud_error)?;
                    match staged {
                        Staged::Uploaded(uploaded) => AheadState::Uploaded(uploaded),
                        // An earlier run registered it and stopped before recording the id.
                        Staged::Registered(published) => {
                            self.record(&artifact, &published)?;
                            AheadState::Registered(published.image_id)
                        }
                    }
                }
            };
            ahead.push(Ahead {
                artifact,
                state,
                _lock: lock,
            });
        }
        Ok(ahead)
    }

    /// Registers the files ahead of an overlapped image, now that it has verified too; their
    /// ids, for its manifest. Progress stays at `at`.
    async fn register_ahead(
        &self,
        ahead: Vec<Ahead<'_>>,
        at: u64,
        total: u64,
    ) -> Result<RegisteredIds, JobError> {
        let installer = self.installer;
        let mut ids = RegisteredIds::default();
        for Ahead {
            artifact, state, ..
        } in ahead
        {
            let id = match state {
                AheadState::Registered(id) => id,
                AheadState::Uploaded(uploaded) => {
                    let progress = BoardProgress {
                        installer,
                        uri: self.uri(),
                        done_before: at,
                        total,
                        share: 0,
                        source_size: artifact.source_size,
                    };
                    let published = installer
                        .publisher
                        .register_uploaded(&artifact, uploaded, &progress, self.cancel)
                        .await
                        .inspect_err(record_cloud_error)?;
                    self.record(&artifact, &published)?;
                    published.image_id
                }
            };
            match artifact.kind {
                FileKind::Kernel => ids.eki = Some(id),
                FileKind::Ramdisk => ids.eri = Some(id),
                FileKind::Image => ids.emi = Some(id),
            }
        }
        crate::pause::here("ahead-registered").await;
        Ok(ids)
    }

    /// Commits what a publish registered to `cloud_objects`.
    fn record(
        &self,
        artifact: &Artifact,
        published: &crate::publish::Published,
    ) -> Result<(), DbError> {
        let cloud_id = self.installer.publisher.cloud().id();
        self.installer.db.record_cloud_object(
            cloud_id,
            &artifact.identity,
            &published.image_id,
            &published.location,
        )?;
        tracing::info!(uri = %self.uri(), id = %published.image_id, location = %published.location, "registered {}", artifact.kind.noun());
        Ok(())
    }

    /// Downloads `file` while its bundle is made from the bytes as they arrive and its parts go
    /// up; once the file has verified, the files `ahead` are registered, then the image's
    /// manifest goes up (naming them) and the image is registered. A file that fails takes its
    /// parts back (`Publisher::send_overlapped`) and nothing is registered. The cache file is
    /// written as ever. Returns the install's ids.
    async fn overlap(
        &self,
        image: &Image,
        file: &FileRef,
        ahead: Vec<Ahead<'_>>,
        done_before: u64,
        total: u64,
    ) -> Result<RegisteredIds, JobError> {
        let installer = self.installer;
        let _downloading = self
            .exclusively(
                &format!("download:{}", file.sha256),
                file.kind,
                done_before,
                total,
            )
            .await?;
        // Every file ahead registered already (or none ahead): the image's links are known.
        let known: Option<RegisteredIds> =
            ahead
                .iter()
                .try_fold(RegisteredIds::default(), |mut ids, ahead| {
                    match &ahead.state {
                        AheadState::Registered(id) => {
                            match ahead.artifact.kind {
                                FileKind::Kernel => ids.eki = Some(id.clone()),
                                FileKind::Ramdisk => ids.eri = Some(id.clone()),
                                FileKind::Image => {}
                            }
                            Some(ids)
                        }
                        AheadState::Uploaded(_) => None,
                    }
                });
        let mut artifact = self.artifact(
            image,
            file,
            FileKind::Image,
            &known.clone().unwrap_or_default(),
        );
        if file.compression == Compression::Gzip
            && file.packing == Packing::Raw
            && file.size > bundle::PART_SIZE
        {
            // The tar header states the image's size, which only the gzip trailer tells: read
            // it ahead rather than wait for the download to reach it. A file no bigger than a
            // part (its bundle is about its size) sends little or nothing before its end
            // anyway: not worth the request.
            artifact.trailer_isize = installer
                .fetcher
                .tail(file.url.as_str(), 4)
                .await
                .map(|tail| u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        }
        // With its links known, so is the image's identity, and another install may have
        // registered it; with its links to come, nothing can have (they are not registered).
        let mut publishing = None;
        let mut registered = None;
        if known.is_some() {
            publishing = Some(
                self.exclusively(
                    &format!("publish:{}", artifact.identity),
                    artifact.kind,
                    done_before,
                    total,
                )
                .await?,
            );
            registered = installer
                .db
                .cloud_object(installer.publisher.cloud().id(), &artifact.identity)?;
        }
        if self.is_cached(file)? || registered.is_some() {
            // Another install brought it in while we waited: nothing left to overlap.
            drop(publishing);
            if !self.is_cached(file)? {
                self.download(file, done_before, total).await?;
            }
            self.set_state(InstallState::Installing, &status::installing(&image.title))?;
            let mut ids = self.register_ahead(ahead, done_before, total).await?;
            let artifact = self.artifact(image, file, FileKind::Image, &ids);
            ids.emi = Some(
                self.publish_once(&artifact, file.size, done_before, total)
                    .await?,
            );
            return Ok(ids);
        }
        let links = match known {
            Some(_) => Links::Known,
            None => Links::Later,
        };
        let growth = Growth::new();
        let (tell, verification) = tokio::sync::watch::channel(None);
        let open: Arc<OpenGrowing> = {
            let growth = growth.clone();
            let partial = installer.cache.partial_path(&file.sha256);
            let promoted = installer.cache.path(&file.sha256);
            let size = file.size;
            Arc::new(move || {
                Ok(
                    Box::new(growth.reader(partial.clone(), promoted.clone(), size))
                        as Box<dyn unpack::SourceRead>,
                )
            })
        };
        let line = OverlapLine {
            job: self,
            kind: file.kind,
            done_before,
            total,
            size: file.size,
            downloaded: AtomicU64::new(0),
            parts: AtomicU64::new(0),
            downloading: AtomicBool::new(true),
            installing: AtomicBool::new(false),
        };
        let stages = DownloadStages {
            job: self,
            file,
            done_before,
            total,
            overlap: Some(&line),
        };
        let downloading = async {
            let fetched = installer
                .downloads()
                .fetch_growing(signed_file(file), &stages, Some(&growth), self.cancel)
                .await;
            line.downloading.store(false, Ordering::SeqCst);
            let outcome = match fetched {
                Ok(_) => self
                    .set_state(InstallState::Installing, &status::installing(&image.title))
                    .map_err(JobError::from),
                Err(error) => Err(error.into()),
            };
            line.installing.store(outcome.is_ok(), Ordering::SeqCst);
            let _ = tell.send(Some(outcome.is_ok()));
            if outcome.is_ok() {
                tracing::info!(uri = %self.uri(), kind = file.kind.noun(), sha256 = file.sha256.short(), "file verified");
            }
            outcome
        };
        let sending = installer.publisher.send_overlapped(
            &artifact,
            open,
            &line,
            Verification(verification),
            links,
            self.cancel,
        );
        let (downloaded, sent) = tokio::join!(downloading, sending);
        // The file's own failure says why; the publish only took its parts back.
        downloaded?;
        let sent = sent.inspect_err(record_cloud_error)?;
        // Every file of the install has verified: now the files ahead are registered, and the
        // image's manifest can name them.
        let mut ids = self
            .register_ahead(ahead, done_before + file.size, total)
            .await?;
        let trailer_isize = artifact.trailer_isize;
        let artifact = Artifact {
            trailer_isize,
            ..self.artifact(image, file, FileKind::Image, &ids)
        };
        // Held since before the file verified when the links were known; otherwise no other
        // install could publish this image meanwhile (it needs the verified file, and the
        // download's lock is ours), and the lock is taken for the registration's sake alone.
        let _publishing = match publishing {
            Some(guard) => guard,
            None => {
                self.exclusively(
                    &format!("publish:{}", artifact.identity),
                    artifact.kind,
                    done_before,
                    total,
                )
                .await?
            }
        };
        let published = installer
            .publisher
            .finish_overlapped(&artifact, sent, &line, self.cancel)
            .await
            .inspect_err(record_cloud_error)?;
        self.record(&artifact, &published)?;
        ids.emi = Some(published.image_id);
        Ok(ids)
    }

    /// Waits, cancellably, until no other install works on `key` (the same file or artifact).
    async fn exclusively(
        &self,
        key: &str,
        kind: FileKind,
        done: u64,
        total: u64,
    ) -> Result<KeyGuard<'_>, JobError> {
        let locks = &self.installer.exclusive;
        if let Some(guard) = locks.try_lock(key) {
            return Ok(guard);
        }
        self.installer.board.progress(
            self.uri(),
            done,
            total,
            status::waiting_for_other_install(kind),
        );
        tokio::select! {
            guard = locks.lock(key) => Ok(guard),
            _ = self.cancel.cancelled() => Err(JobError::Cancelled),
        }
    }

    fn is_cached(&self, file: &FileRef) -> Result<bool, DbError> {
        self.installer.downloads().has(&signed_file(file))
    }

    /// Brings `file` verified into the cache, reporting each stage on the board and in the
    /// install's state (`downloading`, then `verifying`).
    async fn download(&self, file: &FileRef, done_before: u64, total: u64) -> Result<(), JobError> {
        let stages = DownloadStages {
            job: self,
            file,
            done_before,
            total,
            overlap: None,
        };
        self.installer
            .downloads()
            .fetch(signed_file(file), &stages, self.cancel)
            .await?;
        tracing::info!(uri = %self.uri(), kind = file.kind.noun(), sha256 = file.sha256.short(), "file verified");
        Ok(())
    }

    async fn publish_all(&self, image: &Image) -> Result<RegisteredIds, JobError> {
        self.set_state(InstallState::Installing, &status::installing(&image.title))?;
        let total: u64 = image.total_bytes();
        let mut ids = RegisteredIds::default();
        let mut done = 0;
        self.publish_files(image, &image.files, &mut ids, &mut done, total)
            .await?;
        Ok(ids)
    }

    /// Publishes each artifact of `files` (verified in the cache), in order, into `ids`.
    async fn publish_files(
        &self,
        image: &Image,
        files: &[FileRef],
        ids: &mut RegisteredIds,
        done: &mut u64,
        total: u64,
    ) -> Result<(), JobError> {
        for file in files {
            let kinds = file.artifacts();
            let shares = self.shares(file, &kinds, *done, total)?;
            for (kind, share) in kinds.into_iter().zip(shares) {
                let artifact = self.artifact(image, file, kind, ids);
                let id = self.publish_once(&artifact, share, *done, total).await?;
                match kind {
                    FileKind::Kernel => ids.eki = Some(id),
                    FileKind::Ramdisk => ids.eri = Some(id),
                    FileKind::Image => ids.emi = Some(id),
                }
                *done += share;
            }
        }
        Ok(())
    }

    /// How much of the install's progress each of the file's artifacts stands for: the whole file
    /// for a file that is one artifact. A file that provides several is checked first, in one
    /// pass, to hold a member for each (`unpack::check_members`), and its bytes are split in
    /// proportion to the members' sizes: each publish reads the whole tarball, but its bundling
    /// and upload, most of its work, go as its member's size.
    fn shares(
        &self,
        file: &FileRef,
        kinds: &[FileKind],
        done: u64,
        total: u64,
    ) -> Result<Vec<u64>, JobError> {
        if kinds.len() < 2 {
            return Ok(vec![file.size]);
        }
        let path = self.installer.cache.path(&file.sha256);
        let report = |read: u64| {
            self.installer.board.progress(
                self.uri(),
                done,
                total,
                status::checking_tarball(read, file.size),
            )
        };
        let sizes = tokio::task::block_in_place(|| {
            unpack::check_members(&path, file.compression, kinds, &report)
        })
        .map_err(CloudError::from)
        .inspect_err(record_cloud_error)?;
        Ok(split(file.size, &sizes))
    }

    fn artifact(
        &self,
        image: &Image,
        file: &FileRef,
        kind: FileKind,
        ids: &RegisteredIds,
    ) -> Artifact {
        let (kernel_id, ramdisk_id) = match kind {
            FileKind::Image => (ids.eki.clone(), ids.eri.clone()),
            _ => (None, None),
        };
        let virtualization = match kind {
            FileKind::Image => image.virtualization,
            FileKind::Kernel | FileKind::Ramdisk => Virtualization::Paravirtual,
        };
        let suffix = match kind {
            FileKind::Kernel => "kernel",
            FileKind::Ramdisk => "ramdisk",
            FileKind::Image => "image",
        };
        // The artifact's own kind and the file's SHA-256: a UEC tarball's kernel is
        // `kernel:<the tarball's sha256>`, shared by every image of that tarball but not with
        // another tarball holding the same kernel bytes (knowing those would take a pass over
        // the tarball before `cloud_objects` could say it is registered). An HVM disk says so,
        // which paravirtual identities (kept as they were) never do.
        let mut identity = format!(
            "{suffix}:{}:{}:{}:{}",
            file.sha256,
            image.arch,
            kernel_id.as_deref().unwrap_or("-"),
            ramdisk_id.as_deref().unwrap_or("-")
        );
        if virtualization == Virtualization::Hvm {
            identity.push_str(":hvm");
        }
        Artifact {
            kind,
            source: self.installer.cache.path(&file.sha256),
            source_size: file.size,
            compression: file.compression,
            packing: file.packing,
            name: bundle_name(&image.product, &image.version, suffix),
            arch: image.arch.clone(),
            bucket: self.row.bucket.clone(),
            kernel_id,
            ramdisk_id,
            virtualization,
            description: image.stream.as_ref().map(StreamIdentity::description),
            identity,
            trailer_isize: None,
        }
    }

    /// Publishes an artifact unless this cloud already has it (a kernel shared by two images).
    /// `share`: the bytes of the install's progress this publish stands for.
    async fn publish_once(
        &self,
        artifact: &Artifact,
        share: u64,
        done_before: u64,
        total: u64,
    ) -> Result<String, JobError> {
        let installer = self.installer;
        let cloud_id = installer.publisher.cloud().id().to_string();
        let _only_us = self
            .exclusively(
                &format!("publish:{}", artifact.identity),
                artifact.kind,
                done_before,
                total,
            )
            .await?;
        if let Some(id) = installer.db.cloud_object(&cloud_id, &artifact.identity)? {
            installer.board.progress(
                self.uri(),
                done_before + share,
                total,
                status::already_registered(artifact.kind, &id),
            );
            return Ok(id);
        }
        let progress = BoardProgress {
            installer,
            uri: self.uri(),
            done_before,
            total,
            share,
            source_size: artifact.source_size,
        };
        let published = installer
            .publisher
            .publish(artifact, &progress, self.cancel)
            .await
            .inspect_err(record_cloud_error)?;
        self.record(artifact, &published)?;
        Ok(published.image_id)
    }
}

/// A file ahead of an overlapped image (a kernel or a ramdisk), with its publish lock held
/// until it is registered.
struct Ahead<'j> {
    artifact: Artifact,
    state: AheadState,
    _lock: KeyGuard<'j>,
}

enum AheadState {
    /// In this cloud already (an earlier install of an image it boots too).
    Registered(String),
    /// Its bundle in the bucket, registered once the image has verified.
    Uploaded(Uploaded),
}

/// The catalog's description of a file, as the verified download needs it.
fn signed_file(file: &FileRef) -> SignedFile<'_> {
    SignedFile {
        url: &file.url,
        size: file.size,
        sha256: &file.sha256,
        signature_url: file.signature_url.as_deref(),
    }
}

/// How a file's road into the cache shows: install states, status lines and board progress.
struct DownloadStages<'a> {
    job: &'a Job<'a>,
    file: &'a FileRef,
    done_before: u64,
    total: u64,
    /// An overlapped install's one line, which the download's bytes go to.
    overlap: Option<&'a OverlapLine<'a>>,
}

impl FileStages for DownloadStages<'_> {
    fn downloading(&self) -> Result<(), DbError> {
        self.job.set_state(
            InstallState::Downloading,
            &status::downloading(self.file.kind, 0, self.file.size),
        )
    }

    fn fetching_signature(&self) {
        self.job.installer.board.progress(
            self.job.uri(),
            self.done_before,
            self.total,
            status::fetching_signature(self.file.kind),
        );
    }

    fn received(&self, bytes: u64) {
        if let Some(line) = self.overlap {
            line.downloaded.store(bytes, Ordering::SeqCst);
            return line.show();
        }
        self.job.installer.board.progress(
            self.job.uri(),
            self.done_before + bytes,
            self.total,
            status::downloading(self.file.kind, bytes, self.file.size),
        );
    }

    async fn verifying(&self, signed: bool) -> Result<(), DbError> {
        if let Some(line) = self.overlap {
            line.downloading.store(false, Ordering::SeqCst);
        }
        self.job.set_state(
            InstallState::Verifying,
            &status::verifying(self.file.kind, signed),
        )?;
        crate::pause::here("verify").await;
        Ok(())
    }
}

/// An overlapped install's status: one line for the download and the parts sent beside it,
/// its progress the download's bytes (so it only moves forward); once the file is in, the
/// publish's own steps (manifest, registration) at the file's whole share.
struct OverlapLine<'a> {
    job: &'a Job<'a>,
    kind: FileKind,
    done_before: u64,
    total: u64,
    size: u64,
    downloaded: AtomicU64,
    parts: AtomicU64,
    /// Until the download ends (then the verifying line stands).
    downloading: AtomicBool,
    /// Once the file verified: the parts still going up show in the upload's own line.
    installing: AtomicBool,
}

impl OverlapLine<'_> {
    fn show(&self) {
        let done = self.downloaded.load(Ordering::SeqCst);
        self.job.installer.board.progress(
            self.job.uri(),
            self.done_before + done,
            self.total,
            status::downloading_and_sending(
                self.kind,
                done,
                self.size,
                self.parts.load(Ordering::SeqCst),
            ),
        );
    }
}

impl Progress for OverlapLine<'_> {
    fn report(&self, step: Step, _source_done: u64) {
        match step {
            Step::UploadingParts { sent, .. } => {
                self.parts.store(sent, Ordering::SeqCst);
                if self.downloading.load(Ordering::SeqCst) {
                    self.show();
                } else if self.installing.load(Ordering::SeqCst) {
                    self.job.installer.board.progress(
                        self.job.uri(),
                        self.done_before + self.size,
                        self.total,
                        step.line(),
                    );
                }
            }
            Step::UploadingManifest { .. } | Step::Registering { .. } => {
                self.job.installer.board.progress(
                    self.job.uri(),
                    self.done_before + self.size,
                    self.total,
                    step.line(),
                );
            }
            // The download's line stands for bundling.
            _ => {}
        }
    }
}

/// Counts a failed publish in `image_store_proxy_cloud_errors_total` (a cancel is no error).
fn record_cloud_error(error: &CloudError) {
    let kind = match error {
        CloudError::Unpack(_) => "unpack",
        CloudError::Local { .. } | CloudError::Keys { .. } => "write",
        CloudError::Bundle(_) => "bundle",
        CloudError::Refused { .. } => "refused",
        CloudError::Unreachable { .. } => "unreachable",
        CloudError::Cancelled | CloudError::Unverified => return,
    };
    metrics::global().cloud_error(kind);
}

struct BoardProgress<'a> {
    installer: &'a Installer,
    uri: &'a str,
    done_before: u64,
    total: u64,
    /// The publish's bytes of the install, and the source file's size its reports count in.
    share: u64,
    source_size: u64,
}

/// Publishing's steps, worded by `status`, on the board as part of the whole install's bytes.
impl Progress for BoardProgress<'_> {
    fn report(&self, step: Step, source_done: u64) {
        let scaled = if self.source_size == 0 {
            self.share
        } else {
            (u128::from(source_done.min(self.source_size)) * u128::from(self.share)
                / u128::from(self.source_size)) as u64
        };
        self.installer
            .board
            .progress(self.uri, self.done_before + scaled, self.total, step.line());
    }
}

/// `size` split in proportion to `weights` (all of it, the rounding in the last share); evenly
/// when the weights are all zero.
fn split(size: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|&w| match sum {
            0 => size / weights.len() as u64,
            _ => (u128::from(size) * u128::from(w) / sum) as u64,
        })
        .collect();
    let given: u64 = shares.iter().sum();
    if let Some(last) = shares.last_mut() {
        *last += size - given;
    }
    shares
}

/// A bundle prefix made only of `[A-Za-z0-9._-]`: `ubuntu-server-amd64-9.10-kernel`; at most
/// [`bundle::MAX_PREFIX`] characters (a tar header's name field), the suffix always kept.
fn bundle_name(product: &str, version: &str, suffix: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches('-')
            .to_string()
    };
    let mut stem = [clean(product), clean(version)]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    stem.truncate(bundle::MAX_PREFIX - suffix.len() - 1);
    let stem = stem.trim_end_matches(['-', '.']).trim_start_matches('.');
    if stem.is_empty() {
        suffix.to_string()
    } else {
        format!("{stem}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tarball_s_bytes_split_by_its_members_sizes_and_add_up() {
        assert_eq!(super::split(1000, &[4, 12, 384]), [10, 30, 960]);
        assert_eq!(super::split(1001, &[1, 1, 1]), [333, 333, 335]);
        assert_eq!(super::split(10, &[0, 0]), [5, 5]);
        assert_eq!(super::split(7, &[5]), [7]);
    }

    #[test]
    fn bundle_names_are_path_safe() {
        assert_eq!(
            super::bundle_name("ubuntu server/amd64", "9.10", "kernel"),
            "ubuntu-server-amd64-9.10-kernel"
        );
        assert_eq!(super::bundle_name("../..", "", "image"), "image");
        assert_eq!(
            super::bundle_name(".hidden", "1", "kernel"),
            "hidden-1-kernel"
        );
        let long = super::bundle_name(&"x".repeat(300), "1.0", "ramdisk");
        assert_eq!(long.len(), 100);
        assert!(long.ends_with("x-ramdisk"), "{long}");
    }
}
