//! From a verified cache file to a bundle on disk, with every byte read once and the stages on all
//! cores: a reader thread opens the file and unpacks it (gunzips it, finds the artifact's member
//! of a tarball, or reads a qcow2 disk's raw disk), handing 1 MiB buffers over a short queue; this thread frames the tar stream, hashes
//! it (SHA-1) and feeds the gzip stage, whose blocks deflate on worker threads (`gzip.rs`), then
//! encrypts and writes the parts (`format.rs`). Deflate bounds the whole; everything else hides
//! beside it.
//!
//! The tar header states the image's size before its bytes, and a gzipped raw image does not say
//! its size up front. Its gzip trailer does, modulo 4 GiB: that guess is tried first and checked
//! by the bundle writer, which refuses a stream of any other length; only when it was wrong (an
//! image of 4 GiB or more, a multi-member gzip) is the image measured by decompressing it once and
//! bundled again.

use super::format::{self, Bundle, BundleError, Part, PartSink};
use super::gzip::GzipSettings;
use super::keys::BundleKeys;
use super::splice;
use super::{BundleSink, SourceImage};
use crate::catalog::model::{Compression, Packing};
use crate::status::Step;
use crate::unpack::{self, UnpackError};
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use tokio_util::sync::CancellationToken;

/// Buffers between the reader thread and the bundle writer.
const QUEUE_DEPTH: usize = 4;
const BUFFER: usize = 1 << 20;

/// Bundles an image's raw bytes into `dir` (SPEC §7), telling `sink` of each step ("Bundling
/// kernel: 3 of 5 MiB") and of each part as it closes.
///
/// A bundle that failed leaves no manifest: a tarball refused for a member after its image has
/// had its bundle written, and must not pass for a finished one ([`super::finished_bundle`]).
pub fn bundle_artifact(
    image: &SourceImage<'_>,
    keys: &BundleKeys,
    dir: &Path,
    gzip: GzipSettings,
    sink: &dyn BundleSink,
    cancel: &CancellationToken,
) -> Result<Bundle, BundleError> {
    // With the size the source suggests; measured and bundled again when the gzip trailer's
    // guess was wrong.
    let bundled = (|| {
        std::fs::create_dir_all(dir).map_err(|source| BundleError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let hint = size_hint(image)?;
        let first = bundle_pass(image, keys, dir, gzip, hint.size, sink, cancel);
        match first {
            Err(BundleError::SizeMismatch { expected, actual }) if hint.guessed => {
                tracing::info!(
                    image = %image.path.display(),
                    "the gzip trailer's size ({expected}) was not the image's (at least {actual}): measuring it"
                );
                let kind = image.kind;
                let total = image.size;
                let size = unpack::artifact_size(
                    image.source(),
                    image.compression,
                    image.packing,
                    kind,
                    &|done| sink.step(Step::Measuring { kind, done, total }),
                )?;
                bundle_pass(image, keys, dir, gzip, Some(size), sink, cancel)
            }
            other => other,
        }
    })();
    if bundled.is_err() {
        let _ = std::fs::remove_file(dir.join(super::manifest_name(image.prefix)));
        let _ = std::fs::remove_file(dir.join(super::waiting_name(image.prefix)));
    }
    bundled
}

/// What is known of the image's size before reading it.
struct SizeHint {
    size: Option<u64>,
    /// Read off a gzip trailer: right only modulo 4 GiB, so the bundle writer checks it.
    guessed: bool,
}

fn size_hint(image: &SourceImage<'_>) -> Result<SizeHint, UnpackError> {
    let exact = |size| SizeHint {
        size,
        guessed: false,
    };
    match (image.compression, image.packing) {
        // A tar member's header says; the reader passes it on.
        (_, Packing::Tar) => Ok(exact(None)),
        (Compression::None, Packing::Qcow2) => {
            Ok(exact(Some(unpack::qcow2_virtual_size(image.source())?)))
        }
        // Refused by the reader, with its reason.
        (Compression::Gzip, Packing::Qcow2) => Ok(exact(None)),
        (Compression::None, Packing::Raw) => Ok(exact(Some(image.size))),
        (Compression::Gzip, Packing::Raw) => {
            let trailer = match image.trailer_isize {
                Some(isize) => isize,
                None => unpack::gzip_trailer_size(image.source())?,
            };
            Ok(SizeHint {
                size: Some(smallest_plausible_size(trailer, image.size)),
                guessed: true,
            })
        }
    }
}

/// The smallest length with this ISIZE that `compressed` bytes of gzip can hold: deflate never
/// grows data by more than 5 bytes per 16 KiB stored block plus the gzip header and trailer.
fn smallest_plausible_size(isize: u32, compressed: u64) -> u64 {
    let floor = compressed
        .saturating_sub(compressed / 3000)
        .saturating_sub(64);
    let mut size = u64::from(isize);
    while size < floor {
        size += 1 << 32;
    }
    size
}

/// Removes `prefix`'s parts from `dir`, and the records of those sent.
fn remove_parts(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let stem = format!("{prefix}.part.");
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&stem) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// One read of the source: spliced where the upstream's deflate data can be reused (`splice/`),
/// else deflated.
///
/// Each pass makes the bundle whole under a fresh AES key, so it first removes what an earlier
/// pass, or a bundle cut by a kill, left of its parts (and the records of those the cloud has):
/// they name bytes this one will not hold.
fn bundle_pass(
    image: &SourceImage<'_>,
    keys: &BundleKeys,
    dir: &Path,
    gzip: GzipSettings,
    size: Option<u64>,
    sink: &dyn BundleSink,
    cancel: &CancellationToken,
) -> Result<Bundle, BundleError> {
    remove_parts(dir, image.prefix);
    if splice::applies(image, gzip) {
        let kind = image.kind;
        let total = image.size;
        let report = |done: u64| sink.step(Step::Bundling { kind, done, total });
        let mut parts = PartsTo { sink, cancel };
        match splice::bundle(image, keys, dir, gzip, size, &report, &mut parts) {
            Err(BundleError::NotSpliceable(why)) => {
                tracing::info!(image = %image.path.display(), "recompressing: the upstream's compressed data cannot be spliced: {why}");
                remove_parts(dir, image.prefix);
            }
            spliced => return spliced,
        }
    }
    deflate_pass(image, keys, dir, gzip, size, sink, cancel)
}

/// One read of the source: the reader thread decompresses, this thread bundles.
fn deflate_pass(
    image: &SourceImage<'_>,
    keys: &BundleKeys,
    dir: &Path,
    gzip: GzipSettings,
    size: Option<u64>,
    sink: &dyn BundleSink,
    cancel: &CancellationToken,
) -> Result<Bundle, BundleError> {
    let kind = image.kind;
    let total = image.size;
    let report = |done: u64| sink.step(Step::Bundling { kind, done, total });
    std::thread::scope(|scope| {
        let (started, start) = mpsc::sync_channel::<Option<u64>>(1);
        let (writer, mut reader) = pipe();
        let reading = std::thread::Builder::new()
            .name("image reader".into())
            .spawn_scoped(scope, move || {
                unpack::with_artifact_bytes(
                    image.source(),
                    image.compression,
                    image.packing,
                    image.kind,
                    &report,
                    |stream| -> Result<(), ReadFailure> {
                        let _ = started.send(stream.size);
                        writer.pump(stream.reader).map_err(|error| match error {
                            PumpError::Read(source) => {
                                ReadFailure::Unpack(UnpackError::reading(image.path, source))
                            }
                            PumpError::WriterGone => ReadFailure::WriterGone,
                        })
                    },
                )
            })
            .expect("the reader thread starts");
        let written = start.recv().ok().map(|stream_size| {
            let spec = image.bundle_spec(stream_size.or(size).unwrap_or_default(), gzip);
            let mut parts = PartsTo { sink, cancel };
            format::write_bundle_into(&mut reader, &spec, keys, dir, &mut parts)
        });
        // Stops the reader if the writer gave up first.
        drop(reader);
        let read = reading.join().expect("the image reader does not panic");
        match (read, written) {
            // The reader's own failure says more than the writer's view of a short stream.
            (Err(ReadFailure::Unpack(error)), _) => Err(error.into()),
            (_, Some(result)) => result,
            (_, None) => Err(BundleError::Read(io::Error::other(
                "the image reader stopped before the image began",
            ))),
        }
    })
}

/// The writer's view of the caller's sink: closed parts passed on, cancellation asked at each
/// write (progress comes from the reader thread, which sees the source bytes).
struct PartsTo<'a> {
    sink: &'a dyn BundleSink,
    cancel: &'a CancellationToken,
}

impl PartSink for PartsTo<'_> {
    fn image_bytes(&mut self, _done: u64) -> bool {
        !self.cancel.is_cancelled()
    }

    fn part_closed(&mut self, part: &Part) -> bool {
        self.sink.part_closed(part);
        !self.cancel.is_cancelled()
    }

    fn manifest_waits(&self) -> bool {
        self.sink.manifest_waits()
    }
}

enum ReadFailure {
    Unpack(UnpackError),
    /// The bundle writer stopped reading (it failed or was cancelled): its error says why.
    WriterGone,
}

impl From<UnpackError> for ReadFailure {
    fn from(error: UnpackError) -> Self {
        ReadFailure::Unpack(error)
    }
}

enum PumpError {
    Read(io::Error),
    WriterGone,
}

/// A bounded queue of large buffers from one thread to another; buffers go back for reuse.
fn pipe() -> (PipeWriter, PipeReader) {
    let (full, filled) = mpsc::sync_channel(QUEUE_DEPTH);
    let (give_back, returned) = mpsc::sync_channel(QUEUE_DEPTH + 2);
    (
        PipeWriter { full, returned },
        PipeReader {
            filled,
            give_back,
            current: Vec::new(),
            position: 0,
            ended: false,
        },
    )
}

/// `None` on the queue marks the end of the stream; a queue closed without it, a failed reader.
struct PipeWriter {
    full: SyncSender<Option<Vec<u8>>>,
    returned: Receiver<Vec<u8>>,
}

impl PipeWriter {
    /// Reads `source` to its end into the queue.
    fn pump(self, source: &mut dyn Read) -> Result<(), PumpError> {
        loop {
            let mut buffer = self
                .returned
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(BUFFER));
            buffer.resize(BUFFER, 0);
            let mut filled = 0;
            while filled < BUFFER {
                match source.read(&mut buffer[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(PumpError::Read(e)),
                }
            }
            buffer.truncate(filled);
            let at_end = filled < BUFFER;
            if filled > 0 && self.full.send(Some(buffer)).is_err() {
                return Err(PumpError::WriterGone);
            }
            if at_end {
                return self.full.send(None).map_err(|_| PumpError::WriterGone);
            }
        }
    }
}

struct PipeReader {
    filled: Receiver<Option<Vec<u8>>>,
    give_back: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            if self.ended {
                return Ok(0);
            }
            match self.filled.recv() {
                Ok(Some(next)) => {
                    let used = std::mem::replace(&mut self.current, next);
                    let _ = self.give_back.try_send(used);
                    self.position = 0;
                }
                Ok(None) => self.ended = true,
                Err(_) => return Err(io::Error::other("the image reader stopped")),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_guess_is_the_smallest_size_the_compressed_length_allows() {
        assert_eq!(smallest_plausible_size(1000, 500), 1000);
        // 5 GiB of zeros compress to a few MiB: the trailer says 1 GiB, and 1 GiB it is guessed.
        assert_eq!(smallest_plausible_size(1 << 30, 5 << 20), 1 << 30);
        // 6 GiB of noise cannot be 2 GiB of image.
        assert_eq!(
            smallest_plausible_size(2 << 30, 6 << 30),
            (2u64 << 30) + (4 << 30)
        );
    }

    /// Two gzip members: the trailer tells only the second one's size, so the first pass fails
    /// its size check and the image is measured and bundled again, correctly.
    #[test]
    fn a_wrong_trailer_guess_is_caught_and_the_image_measured() {
        use flate2::{Compression as Level, write::GzEncoder};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
        let second = b"the second member".to_vec();
        let mut file = Vec::new();
        for member in [&first, &second] {
            let mut encoder = GzEncoder::new(Vec::new(), Level::fast());
            encoder.write_all(member).unwrap();
            file.extend(encoder.finish().unwrap());
        }
        let source = dir.path().join("image.gz");
        std::fs::write(&source, &file).unwrap();
        let artifact = machine_image(
            &source,
            Compression::Gzip,
            Packing::Raw,
            "two-members-image",
        );
        let hint = size_hint(&artifact).unwrap();
        assert!(hint.guessed);
        assert_ne!(hint.size, Some((first.len() + second.len()) as u64));
        let out = dir.path().join("bundle");
        let bundle =
            crate::testing::bundle_quietly(&artifact, dir.path(), "bundle", 2, false).unwrap();
        assert_eq!(bundle.size, (first.len() + second.len()) as u64);
        let parts = std::fs::read_dir(&out).unwrap().count();
        assert_eq!(parts, bundle.parts.len() + 1, "parts and the manifest only");
    }

    /// The image member is bundled whole before the member after it is judged: the refused
    /// tarball's bundle must not pass for a finished one.
    #[test]
    fn a_tarball_refused_after_its_image_leaves_no_finished_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let member = |name: &str, data: &[u8]| {
            crate::unpack::raw_tar_member(
                tar::EntryType::Regular,
                name,
                "",
                data,
                data.len() as u64,
            )
        };
        let mut tarball = member("disk.img", &[5u8; 70_000]);
        tarball.extend(member("../escape", b"pwned"));
        tarball.extend([0u8; 1024]);
        let source = dir.path().join("image.tar");
        std::fs::write(&source, &tarball).unwrap();
        let image = machine_image(&source, Compression::None, Packing::Tar, "refused-image");
        let out = dir.path().join("bundle");
        let refused = crate::testing::bundle_quietly(&image, dir.path(), "bundle", 1, false);
        assert!(
            matches!(refused, Err(BundleError::Unpack(_))),
            "{refused:?}"
        );
        assert!(super::super::finished_bundle(&out, "refused-image").is_none());
    }

    #[test]
    fn the_pipe_carries_every_byte_in_order_and_reports_a_failed_reader() {
        let data: Vec<u8> = (0..(3 * BUFFER + 17)).map(|i| (i % 251) as u8).collect();
        let (writer, mut reader) = pipe();
        let source = data.clone();
        let pumping = std::thread::spawn(move || writer.pump(&mut &source[..]).is_ok());
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert!(pumping.join().unwrap());
        assert!(out == data);

        let (writer, mut reader) = pipe();
        drop(writer);
        assert!(reader.read(&mut [0u8; 8]).is_err());
    }

    /// An x86_64 machine image at `path` (its size read from the file), with no kernel or ramdisk.
    fn machine_image<'a>(
        path: &'a Path,
        compression: Compression,
        packing: Packing,
        prefix: &'a str,
    ) -> SourceImage<'a> {
        SourceImage {
            kind: crate::catalog::model::FileKind::Image,
            path,
            arriving: None,
            trailer_isize: None,
            size: std::fs::metadata(path).unwrap().len(),
            compression,
            packing,
            prefix,
            arch: "x86_64",
            kernel_id: None,
            ramdisk_id: None,
        }
    }
}
