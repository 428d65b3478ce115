//! EC2 image bundles, byte-compatible with `euca-bundle-image` (SPEC §7): the image as the one
//! member of a GNU tar stream, the SHA-1 of that stream, gzip, AES-128-CBC under a random key and
//! IV, cut into 10 MiB parts `<prefix>.part.NN`, and `<prefix>.manifest.xml` describing and signing
//! it all. Every byte passes once through one chain of writers, so memory stays flat whatever the
//! image's size. Pure and synchronous: the caller runs it on a blocking thread. Each part is
//! announced to the caller's [`PartSink`] as soon as it is closed.

use super::gzip::{GzipSettings, GzipWriter};
use super::keys::BundleKeys;
use crate::catalog::model::FileKind;
use crate::fetch::stream::Digesting;
use crate::unpack::UnpackError;
use aes::Aes128;
use cbc::cipher::{BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
use rsa::{Pkcs1v15Encrypt, Pkcs1v15Sign};
use sha1::{Digest, Sha1};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};

/// euca2ools' part size: 10 MiB.
pub const PART_SIZE: u64 = 10 << 20;
/// Python's `tarfile` pads a stream to a whole record of 20 blocks.
const TAR_RECORD: u64 = 20 * 512;
/// The longest prefix a GNU tar header holds without extensions.
pub const MAX_PREFIX: usize = 100;
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The source file could not be unpacked (`pipeline.rs`' reader thread).
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("reading the image: {0}")]
    Read(io::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// A bundle's own file read back: the `<image>` element that waited for its links.
    #[error("reading {path}: {source}")]
    ReadBack { path: PathBuf, source: io::Error },
    #[error("the image gave {actual} bytes where {expected} were expected")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("bundle name {0:?} must be 1-100 characters of A-Z a-z 0-9 . _ -")]
    BadName(String),
    #[error("encrypting the bundle key for the {which} certificate: {cause}")]
    WrapKey { which: &'static str, cause: String },
    #[error("signing the manifest with the user key: {0}")]
    Sign(String),
    #[error("cancelled")]
    Cancelled,
    /// Told by the splicer (`splice/`) and handled by the pipeline, which recompresses instead.
    #[error("the upstream's compressed data cannot be spliced: {0}")]
    NotSpliceable(super::splice::Unsuitable),
}

/// What to bundle.
#[derive(Debug, Clone)]
pub struct BundleSpec<'a> {
    /// The bundle prefix: the tar member's name and the parts' and manifest's file names.
    pub prefix: &'a str,
    pub kind: FileKind,
    /// `i386`, `x86_64`, ...
    pub arch: &'a str,
    /// For a machine image: the kernel and ramdisk it boots with.
    pub kernel_id: Option<&'a str>,
    pub ramdisk_id: Option<&'a str>,
    /// The image's size in bytes: the tar header states it before the bytes flow.
    pub size: u64,
    /// gzip level and deflate threads.
    pub gzip: GzipSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub file_name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha1: String,
}

/// A finished bundle on disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest_name: String,
    pub manifest_path: PathBuf,
    pub parts: Vec<Part>,
    /// SHA-1 of the tar stream.
    pub digest: String,
    pub size: u64,
    pub bundled_size: u64,
}

/// Told how many image bytes went in; `false` stops the bundle (cancelled).
pub type Progress<'a> = &'a mut (dyn FnMut(u64) -> bool + Send);

/// What the writer tells as it goes (push model, after ripgrep's `Sink`): image bytes from the
/// thread making the gzip member, closed parts from the thread encrypting and writing them, as
/// soon as each closes (the member's maker may be waiting on a download meanwhile).
pub trait PartSink: Send {
    /// `done` image bytes went in; `false` stops the bundle (cancelled).
    fn image_bytes(&mut self, done: u64) -> bool;

    /// `part` is closed: whole, synced and hashed. `false` stops the bundle (cancelled).
    fn part_closed(&mut self, _part: &Part) -> bool {
        true
    }

    /// Whether the manifest waits for its links: a machine image whose kernel and ramdisk are
    /// registered only after its bundle is made (they are registered once it has verified, and
    /// their ids are in the signed half). Then the bundle ends with its manifest's `<image>`
    /// element alone, which needs no link ([`complete_manifest`] writes the manifest later).
    fn manifest_waits(&self) -> bool {
        false
    }
}

/// A progress closure is a sink that does not care about parts.
struct Counting<'a>(Progress<'a>);

impl PartSink for Counting<'_> {
    fn image_bytes(&mut self, done: u64) -> bool {
        (self.0)(done)
    }
}

/// Writes the bundle of the `spec.size` bytes `image` yields into `dir`.
pub fn write_bundle(
    image: &mut dyn Read,
    spec: &BundleSpec<'_>,
    keys: &BundleKeys,
    dir: &Path,
    progress: Progress<'_>,
) -> Result<Bundle, BundleError> {
    write_bundle_into(image, spec, keys, dir, &mut Counting(progress))
}

/// [`write_bundle`], telling `sink` of each part as soon as it is closed.
pub fn write_bundle_into(
    image: &mut dyn Read,
    spec: &BundleSpec<'_>,
    keys: &BundleKeys,
    dir: &Path,
    sink: &mut dyn PartSink,
) -> Result<Bundle, BundleError> {
    write_bundle_with(spec, keys, dir, sink, &mut |cipher, tick| {
        let write_error = |source| BundleError::Write {
            path: dir.join(format!("{}.part.*", spec.prefix)),
            source,
        };
        let gzip = GzipWriter::new(cipher, spec.gzip);
        let mut tar = Digesting::new(gzip, Sha1::new());
        tar.write_all(&tar_header(spec.prefix, spec.size))
            .map_err(write_error)?;
        copy_exact(image, &mut tar, spec.size, tick)?;
        write_zeros(&mut tar, tar_tail_len(spec.size)).map_err(write_error)?;
        let (gzip, hasher) = tar.into_parts();
        gzip.finish().map_err(write_error)?;
        Ok(hex::encode(hasher.finalize()))
    })
}

/// What writes the tar stream's gzip member into the encrypting part writer: deflate
/// ([`write_bundle_into`]) or the splicer (`splice/`). It returns the tar stream's SHA-1 (hex)
/// and calls `tick` with the image bytes done, stopping with [`BundleError::Cancelled`] when it
/// answers false.
pub type GzipBody<'a> =
    &'a mut dyn FnMut(&mut dyn Write, &mut dyn FnMut(u64) -> bool) -> Result<String, BundleError>;

/// The bundle whose gzip member `body` writes: encrypted, cut into parts (each told to `sink`
/// as it closes), and its manifest written last.
pub fn write_bundle_with(
    spec: &BundleSpec<'_>,
    keys: &BundleKeys,
    dir: &Path,
    sink: &mut dyn PartSink,
    body: GzipBody<'_>,
) -> Result<Bundle, BundleError> {
    write_bundle_sized_by(spec, keys, dir, sink, &mut |out, tick| {
        Ok((body(out, tick)?, spec.size))
    })
}

/// A [`GzipBody`] that finds the image's size as it goes (a tarball's member states it in its
/// own header, met mid-stream): it returns the size with the digest.
pub type SizingGzipBody<'a> = &'a mut dyn FnMut(
    &mut dyn Write,
    &mut dyn FnMut(u64) -> bool,
) -> Result<(String, u64), BundleError>;

/// [`write_bundle_with`] whose manifest states the size `body` returns, not `spec.size`.
pub fn write_bundle_sized_by(
    spec: &BundleSpec<'_>,
    keys: &BundleKeys,
    dir: &Path,
    sink: &mut dyn PartSink,
    body: SizingGzipBody<'_>,
) -> Result<Bundle, BundleError> {
    if spec.prefix.is_empty()
        || spec.prefix.len() > MAX_PREFIX
        || !spec
            .prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        || spec.prefix.starts_with('.')
    {
        return Err(BundleError::BadName(spec.prefix.to_string()));
    }
    let mut rng = rand::rngs::OsRng;
    let key: [u8; 16] = rand::Rng::r#gen(&mut rng);
    let iv: [u8; 16] = rand::Rng::r#gen(&mut rng);

    let (closed, closed_parts) = mpsc::channel();
    let files = PartFiles::new(dir, spec.prefix, closed);
    let write_error = |source| BundleError::Write {
        path: dir.join(format!("{}.part.*", spec.prefix)),
        source,
    };
    let sink = Mutex::new(sink);
    let stopped = AtomicBool::new(false);
    // The gzip member is made on this thread (deflate's own workers beside it); encrypting,
    // hashing and writing the parts on another, so that a splice, whose inflate pass is the
    // other half of the work, runs on both cores.
    let (digest, parts) = std::thread::scope(|scope| {
        let (full, to_encrypt) = mpsc::sync_channel::<Vec<u8>>(CIPHER_QUEUE_DEPTH);
        let (spent, empties) = mpsc::channel::<Vec<u8>>();
        let (sink, stopped) = (&sink, &stopped);
        let encrypting = scope.spawn(move || -> Result<Vec<Part>, BundleError> {
            let mut cipher = CbcWriter::new(files, &key, &iv);
            let mut ended = false;
            for mut chunk in to_encrypt {
                if chunk.is_empty() {
                    ended = true;
                    break;
                }
                cipher.write_all(&chunk).map_err(write_error)?;
                if !pass_on(&closed_parts, sink) {
                    stopped.store(true, Ordering::Relaxed);
                    return Err(BundleError::Cancelled);
                }
                chunk.clear();
                let _ = spent.send(chunk);
            }
            if !ended {
                // The member's maker failed: its error says why; the last part stays unclosed
                // and untold.
                return Ok(Vec::new());
            }
            let parts = cipher.finish().map_err(write_error)?.finish()?;
            if !pass_on(&closed_parts, sink) {
                return Err(BundleError::Cancelled);
            }
            Ok(parts)
        });
        let mut cipher = ToCipher {
            chunk: Vec::with_capacity(CHUNK),
            full,
            empties,
        };
        let written = body(&mut cipher, &mut |done| {
            !stopped.load(Ordering::Relaxed)
                && sink.lock().expect("part sink lock").image_bytes(done)
        })
        .and_then(|written| cipher.end().map(|()| written).map_err(write_error));
        drop(cipher);
        let parts = match encrypting.join() {
            Ok(parts) => parts,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        // The encrypting thread's own error is the cause of any the body saw writing to it.
        match (written, parts) {
            (_, Err(error)) => Err(error),
            (Err(error), Ok(_)) => Err(error),
            (Ok(written), Ok(parts)) => Ok((written, parts)),
        }
    })?;
    let (digest, size) = digest;
    let spec = &BundleSpec {
        size,
        ..spec.clone()
    };

    let manifest = Manifest {
        spec,
        keys,
        digest: &digest,
        parts: &parts,
        key_hex: &hex::encode(key),
        iv_hex: &hex::encode(iv),
    };
    let manifest_name = super::manifest_name(spec.prefix);
    let manifest_path = dir.join(&manifest_name);
    if sink.lock().expect("part sink lock").manifest_waits() {
        // Written last, like the manifest: a whole bundle waiting for its links.
        let image = manifest.image()?;
        write_file_synced(
            &dir.join(super::waiting_name(spec.prefix)),
            image.as_bytes(),
        )?;
    } else {
        write_file_synced(&manifest_path, manifest.render()?.as_bytes())?;
    }
    Ok(Bundle {
        manifest_name,
        manifest_path,
        bundled_size: parts.iter().map(|p| p.size).sum(),
        parts,
        digest,
        size: spec.size,
    })
}

/// The zeros after a `size`-byte member: its padding to a 512-byte block, the end-of-archive's
/// two blocks, and padding to a whole record, as Python's `tarfile` writes a stream.
pub fn tar_tail_len(size: u64) -> u64 {
    let padding = (512 - size % 512) % 512;
    let body_end = 512 + size + padding + 1024;
    let record_padding = (TAR_RECORD - body_end % TAR_RECORD) % TAR_RECORD;
    padding + 1024 + record_padding
}

/// Tells the caller's sink of the parts closed since it was last told; `false` when it wants
/// the bundle stopped.
fn pass_on(closed: &Receiver<Part>, sink: &Mutex<&mut dyn PartSink>) -> bool {
    while let Ok(part) = closed.try_recv() {
        if !sink.lock().expect("part sink lock").part_closed(&part) {
            return false;
        }
    }
    true
}

fn copy_exact(
    image: &mut dyn Read,
    out: &mut dyn Write,
    expected: u64,
    tick: &mut dyn FnMut(u64) -> bool,
) -> Result<u64, BundleError> {
    let mut buffer = vec![0u8; CHUNK];
    let mut copied = 0u64;
    loop {
        let n = match image.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::Read(e)),
        };
        copied += n as u64;
        if copied > expected {
            return Err(BundleError::SizeMismatch {
                expected,
                actual: copied,
            });
        }
        out.write_all(&buffer[..n])
            .map_err(|source| BundleError::Write {
                path: PathBuf::from("bundle part"),
                source,
            })?;
        if !tick(copied) {
            return Err(BundleError::Cancelled);
        }
    }
    if copied != expected {
        return Err(BundleError::SizeMismatch {
            expected,
            actual: copied,
        });
    }
    Ok(copied)
}

fn write_zeros(out: &mut dyn Write, mut count: u64) -> io::Result<()> {
    let zeros = [0u8; 512];
    while count > 0 {
        let n = count.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..n])?;
        count -= n as u64;
    }
    Ok(())
}

/// The GNU tar header Python's `tarfile` writes for a stream member: mode 0644, owner 0/0, mtime 0.
pub fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_gnu();
    header
        .set_path(name)
        .expect("a validated prefix fits a tar header");
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    *header.as_bytes()
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let error = |source| BundleError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = File::create(path).map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)
}

/// 1 MiB chunks of the gzip member queued for the encrypting thread.
const CIPHER_QUEUE_DEPTH: usize = 4;

/// The gzip member's way to the encrypting thread: whole chunks, their buffers handed back, and
/// an empty chunk at the end; without it (the member's maker failed) no part is finished.
struct ToCipher {
    chunk: Vec<u8>,
    full: mpsc::SyncSender<Vec<u8>>,
    empties: Receiver<Vec<u8>>,
}

impl ToCipher {
    /// Sends what is buffered, if anything.
    fn send(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let next = self
            .empties
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let chunk = std::mem::replace(&mut self.chunk, next);
        self.full
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the encrypting thread stopped"))
    }
}

impl ToCipher {
    /// Sends the rest, then the empty chunk that says the member is whole.
    fn end(&mut self) -> io::Result<()> {
        self.send()?;
        self.full
            .send(Vec::new())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the encrypting thread stopped"))
    }
}

impl Write for ToCipher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// AES-128-CBC with PKCS#7 padding, as `openssl enc -aes-128-cbc -K .. -iv ..` writes it (no
/// `Salted__` header).
struct CbcWriter<W> {
    inner: W,
    cipher: cbc::Encryptor<Aes128>,
    /// Bytes waiting to fill a block.
    pending: Vec<u8>,
    scratch: Vec<u8>,
}

impl<W: Write> CbcWriter<W> {
    fn new(inner: W, key: &[u8; 16], iv: &[u8; 16]) -> Self {
        Self {
            inner,
            cipher: cbc::Encryptor::<Aes128>::new(key.into(), iv.into()),
            pending: Vec::with_capacity(16),
            scratch: Vec::with_capacity(CHUNK + 16),
        }
    }

    fn encrypt_in_place(cipher: &mut cbc::Encryptor<Aes128>, blocks: &mut [u8]) {
        for block in blocks.chunks_exact_mut(16) {
            cipher.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
    }

    fn finish(mut self) -> io::Result<W> {
        let pad = 16 - self.pending.len() as u8;
        self.pending.resize(16, pad);
        let mut last = std::mem::take(&mut self.pending);
        Self::encrypt_in_place(&mut self.cipher, &mut last);
        self.inner.write_all(&last)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for CbcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let total = self.pending.len() + buf.len();
        if total < 16 {
            self.pending.extend_from_slice(buf);
            return Ok(buf.len());
        }
        let whole = total - total % 16;
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.pending);
        let from_buf = whole - self.pending.len();
        self.scratch.extend_from_slice(&buf[..from_buf]);
        Self::encrypt_in_place(&mut self.cipher, &mut self.scratch);
        self.inner.write_all(&self.scratch)?;
        self.pending.clear();
        self.pending.extend_from_slice(&buf[from_buf..]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Cuts the encrypted stream into `PART_SIZE` files, each with its SHA-1; each closed part is
/// also sent on `closed`, for the bundle's [`PartSink`].
struct PartFiles {
    dir: PathBuf,
    prefix: String,
    current: Option<(BufWriter<File>, Part, Sha1)>,
    done: Vec<Part>,
    closed: Sender<Part>,
}

impl PartFiles {
    fn new(dir: &Path, prefix: &str, closed: Sender<Part>) -> Self {
        Self {
            dir: dir.to_owned(),
            prefix: prefix.to_string(),
            current: None,
            done: Vec::new(),
            closed,
        }
    }

    fn open_next(&mut self) -> io::Result<()> {
        let file_name = format!("{}.part.{:02}", self.prefix, self.done.len());
        let path = self.dir.join(&file_name);
        let file = File::create(&path)?;
        self.current = Some((
            BufWriter::with_capacity(CHUNK, file),
            Part {
                file_name,
                path,
                size: 0,
                sha1: String::new(),
            },
            Sha1::new(),
        ));
        Ok(())
    }

    fn close_current(&mut self) -> io::Result<()> {
        if let Some((writer, mut part, hasher)) = self.current.take() {
            let file = writer.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            part.sha1 = hex::encode(hasher.finalize());
            // The receiver lives as long as the bundle being written.
            let _ = self.closed.send(part.clone());
            self.done.push(part);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<Part>, BundleError> {
        let path = self
            .current
            .as_ref()
            .map(|(_, part, _)| part.path.clone())
            .unwrap_or_else(|| self.dir.clone());
        self.close_current()
            .map_err(|source| BundleError::Write { path, source })?;
        Ok(self.done)
    }
}

impl Write for PartFiles {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self
            .current
            .as_ref()
            .is_some_and(|(_, part, _)| part.size == PART_SIZE)
        {
            self.close_current()?;
        }
        if self.current.is_none() {
            self.open_next()?;
        }
        let (writer, part, hasher) = self.current.as_mut().expect("a part is open");
        let room = (PART_SIZE - part.size) as usize;
        let n = buf.len().min(room);
        writer.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        part.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.current.as_mut() {
            Some((writer, _, _)) => writer.flush(),
            None => Ok(()),
        }
    }
}

/// The manifest, version 2007-10-10, in euca2ools' element order and with no whitespace between
/// elements. The signature covers `<machine_configuration>…</machine_configuration><image>…</image>`
/// exactly as written, because Eucalyptus finds both by substring search.
struct Manifest<'a> {
    spec: &'a BundleSpec<'a>,
    keys: &'a BundleKeys,
    digest: &'a str,
    parts: &'a [Part],
    key_hex: &'a str,
    iv_hex: &'a str,
}

/// Eucalyptus' default block device mapping for a machine image, sorted by virtual name.
const MACHINE_BLOCK_DEVICES: [(&str, &str); 4] = [
    ("ami", "sda1"),
    ("ephemeral0", "sda2"),
    ("root", "/dev/sda1"),
    ("swap", "sda3"),
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What the manifest's `<machine_configuration>` says: the architecture, and for a machine image
/// the kernel and ramdisk it boots with.
#[derive(Debug, Clone, Copy)]
pub struct MachineConfiguration<'a> {
    pub kind: FileKind,
    pub arch: &'a str,
    pub kernel_id: Option<&'a str>,
    pub ramdisk_id: Option<&'a str>,
}

impl MachineConfiguration<'_> {
    fn xml(&self) -> String {
        let mut xml = String::from("<machine_configuration>");
        xml.push_str(&format!(
            "<architecture>{}</architecture>",
            escape(self.arch)
        ));
        match self.kind {
            FileKind::Image => {
                xml.push_str("<block_device_mapping>");
                for (virtual_name, device) in MACHINE_BLOCK_DEVICES {
                    xml.push_str(&format!(
                        "<mapping><virtual>{virtual_name}</virtual><device>{device}</device></mapping>"
                    ));
                }
                xml.push_str("</block_device_mapping>");
                if let Some(kernel) = self.kernel_id {
                    xml.push_str(&format!("<kernel_id>{}</kernel_id>", escape(kernel)));
                }
                if let Some(ramdisk) = self.ramdisk_id {
                    xml.push_str(&format!("<ramdisk_id>{}</ramdisk_id>", escape(ramdisk)));
                }
            }
            // Eucalyptus' mark for a kernel or ramdisk, beside the image type.
            FileKind::Kernel => xml.push_str("<kernel_id>true</kernel_id>"),
            FileKind::Ramdisk => xml.push_str("<ramdisk_id>true</ramdisk_id>"),
        }
        xml.push_str("</machine_configuration>");
        xml
    }
}

/// Writes the manifest of the bundle in `dir` that waited for its links
/// ([`PartSink::manifest_waits`]): `configuration` and the waiting `<image>` element, signed,
/// then the waiting element removed. The manifest is synced before that, so a stop between the
/// two leaves a finished bundle.
pub fn complete_manifest(
    dir: &Path,
    prefix: &str,
    configuration: &MachineConfiguration<'_>,
    keys: &BundleKeys,
) -> Result<(), BundleError> {
    let pending = dir.join(super::waiting_name(prefix));
    let image = std::fs::read_to_string(&pending).map_err(|source| BundleError::ReadBack {
        path: pending.clone(),
        source,
    })?;
    let manifest = signed_manifest(keys, &configuration.xml(), &image)?;
    write_file_synced(&dir.join(super::manifest_name(prefix)), manifest.as_bytes())?;
    match std::fs::remove_file(&pending) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => Err(BundleError::Write {
            path: pending,
            source,
        }),
        _ => Ok(()),
    }
}

/// The manifest around its two signed elements, `<machine_configuration>` and `<image>`.
fn signed_manifest(
    keys: &BundleKeys,
    machine_configuration: &str,
    image: &str,
) -> Result<String, BundleError> {
    let signed = format!("{machine_configuration}{image}");
    let signature = keys
        .user_key
        .sign(
            Pkcs1v15Sign::new::<Sha1>(),
            &Sha1::digest(signed.as_bytes()),
        )
        .map_err(|e| BundleError::Sign(e.to_string()))?;
    Ok(format!(
        "<?xml version='1.0' encoding='ASCII'?>\n<manifest><version>2007-10-10</version>\
         <bundler><name>image-store-proxy</name><version>{}</version><release>0</release></bundler>\
         {signed}<signature>{}</signature></manifest>",
        env!("CARGO_PKG_VERSION"),
        hex::encode(signature)
    ))
}

impl Manifest<'_> {
    fn machine_configuration(&self) -> String {
        MachineConfiguration {
            kind: self.spec.kind,
            arch: self.spec.arch,
            kernel_id: self.spec.kernel_id,
            ramdisk_id: self.spec.ramdisk_id,
        }
        .xml()
    }

    fn image(&self) -> Result<String, BundleError> {
        let spec = self.spec;
        let kind = match spec.kind {
            FileKind::Kernel => "kernel",
            FileKind::Ramdisk => "ramdisk",
            FileKind::Image => "machine",
        };
        let wrap = |which: &'static str, key: &rsa::RsaPublicKey, text: &str| {
            key.encrypt(&mut rand::rngs::OsRng, Pkcs1v15Encrypt, text.as_bytes())
                .map(hex::encode)
                .map_err(|e| BundleError::WrapKey {
                    which,
                    cause: e.to_string(),
                })
        };
        let keys = self.keys;
        let mut xml = String::from("<image>");
        xml.push_str(&format!("<name>{}</name>", escape(spec.prefix)));
        xml.push_str(&format!("<user>{}</user>", escape(&keys.user_id)));
        xml.push_str(&format!("<type>{kind}</type>"));
        xml.push_str(&format!(
            "<digest algorithm=\"SHA1\">{}</digest>",
            self.digest
        ));
        xml.push_str(&format!("<size>{}</size>", spec.size));
        xml.push_str(&format!(
            "<bundled_size>{}</bundled_size>",
            self.parts.iter().map(|p| p.size).sum::<u64>()
        ));
        xml.push_str(&format!(
            "<ec2_encrypted_key algorithm=\"AES-128-CBC\">{}</ec2_encrypted_key>",
            wrap("cloud", &keys.cloud_cert, self.key_hex)?
        ));
        xml.push_str(&format!(
            "<user_encrypted_key algorithm=\"AES-128-CBC\">{}</user_encrypted_key>",
            wrap("user", &keys.user_cert, self.key_hex)?
        ));
        xml.push_str(&format!(
            "<ec2_encrypted_iv>{}</ec2_encrypted_iv>",
            wrap("cloud", &keys.cloud_cert, self.iv_hex)?
        ));
        xml.push_str(&format!(
            "<user_encrypted_iv>{}</user_encrypted_iv>",
            wrap("user", &keys.user_cert, self.iv_hex)?
        ));
        xml.push_str(&format!("<parts count=\"{}\">", self.parts.len()));
        for (index, part) in self.parts.iter().enumerate() {
            xml.push_str(&format!(
                "<part index=\"{index}\"><filename>{}</filename><digest algorithm=\"SHA1\">{}</digest></part>",
                escape(&part.file_name),
                part.sha1
            ));
        }
        xml.push_str("</parts></image>");
        Ok(xml)
    }

    fn render(&self) -> Result<String, BundleError> {
        signed_manifest(self.keys, &self.machine_configuration(), &self.image()?)
    }
}

/// The string the manifest's signature covers, cut out of a manifest as Eucalyptus does.
pub fn signed_text(manifest: &str) -> Option<&str> {
    let start = manifest.find("<machine_configuration>")?;
    let end = manifest.find("</image>")? + "</image>".len();
    (start < end).then(|| &manifest[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbc_writer_pads_like_pkcs7_whatever_the_write_sizes() {
        let key = [7u8; 16];
        let iv = [9u8; 16];
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let one_go = {
            let mut writer = CbcWriter::new(Vec::new(), &key, &iv);
            writer.write_all(&data).unwrap();
            writer.finish().unwrap()
        };
        let dribbled = {
            let mut writer = CbcWriter::new(Vec::new(), &key, &iv);
            for chunk in data.chunks(7) {
                writer.write_all(chunk).unwrap();
            }
            writer.finish().unwrap()
        };
        assert_eq!(one_go, dribbled);
        assert_eq!(one_go.len(), 1008, "1000 bytes pad to 63 blocks");
        use cbc::cipher::{BlockDecryptMut, block_padding::Pkcs7};
        let plain = cbc::Decryptor::<Aes128>::new(&key.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&one_go)
            .unwrap();
        assert_eq!(plain, data);
    }

    #[test]
    fn tar_header_is_gnu_with_zeroed_owner_and_time() {
        let header = tar_header("vmlinuz", 1234);
        let parsed = tar::Header::from_byte_slice(&header);
        assert!(parsed.as_gnu().is_some());
        assert_eq!(parsed.size().unwrap(), 1234);
        assert_eq!(parsed.mode().unwrap(), 0o644);
        assert_eq!(parsed.mtime().unwrap(), 0);
        assert_eq!(&*parsed.path().unwrap(), Path::new("vmlinuz"));
    }

    /// Records each closed part, checking it is whole on disk and the manifest not yet written.
    struct Closed {
        manifest: PathBuf,
        parts: Vec<Part>,
    }

    impl PartSink for Closed {
        fn image_bytes(&mut self, _: u64) -> bool {
            true
        }

        fn part_closed(&mut self, part: &Part) -> bool {
            assert_eq!(std::fs::metadata(&part.path).unwrap().len(), part.size);
            assert!(!self.manifest.exists(), "a part closes before the manifest");
            self.parts.push(part.clone());
            true
        }
    }

    #[test]
    fn each_part_is_told_to_the_sink_as_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = super::super::keys::fake_cloud_keys(&dir.path().join("keys")).unwrap();
        // Stored, not deflated: 21 MiB in make three parts.
        let image = vec![7u8; 21 << 20];
        let spec = BundleSpec {
            prefix: "three-parts",
            kind: FileKind::Kernel,
            arch: "x86_64",
            kernel_id: None,
            ramdisk_id: None,
            size: image.len() as u64,
            gzip: GzipSettings {
                level: 0,
                threads: 1,
                recompress: true,
            },
        };
        let mut sink = Closed {
            manifest: dir.path().join("three-parts.manifest.xml"),
            parts: Vec::new(),
        };
        let bundle =
            write_bundle_into(&mut &image[..], &spec, &keys, dir.path(), &mut sink).unwrap();
        assert_eq!(bundle.parts.len(), 3);
        assert_eq!(sink.parts, bundle.parts);
    }

    /// Asks for the manifest to wait for its links.
    struct Waiting;

    impl PartSink for Waiting {
        fn image_bytes(&mut self, _: u64) -> bool {
            true
        }

        fn manifest_waits(&self) -> bool {
            true
        }
    }

    /// A machine image bundled before its kernel and ramdisk are registered: the bundle ends
    /// with the manifest's `<image>` element alone (no manifest, so no finished bundle), and the
    /// manifest written later names the ids, holds that element as it was, and is signed.
    #[test]
    fn a_manifest_that_waits_for_its_links_is_written_later_with_them_and_signed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = super::super::keys::fake_cloud_keys(&dir.path().join("keys")).unwrap();
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let prefix = "waiting-image";
        let spec = BundleSpec {
            prefix,
            kind: FileKind::Image,
            arch: "x86_64",
            kernel_id: None,
            ramdisk_id: None,
            size: image.len() as u64,
            gzip: GzipSettings {
                level: 1,
                threads: 1,
                recompress: true,
            },
        };
        let out = dir.path().join("bundle");
        std::fs::create_dir_all(&out).unwrap();
        let bundle = write_bundle_into(&mut &image[..], &spec, &keys, &out, &mut Waiting).unwrap();
        assert!(!bundle.manifest_path.exists(), "no manifest yet");
        assert!(super::super::finished_bundle(&out, prefix).is_none());
        let waiting = super::super::waiting_bundle(&out, prefix).unwrap();
        assert_eq!(waiting.parts, bundle.parts);
        assert_eq!(waiting.digest, bundle.digest);
        assert_eq!(waiting.size, image.len() as u64);
        let element =
            std::fs::read_to_string(out.join(super::super::waiting_name(prefix))).unwrap();
        assert!(!element.contains("kernel_id"), "{element}");

        let configuration = MachineConfiguration {
            kind: FileKind::Image,
            arch: "x86_64",
            kernel_id: Some("eki-1234ABCD"),
            ramdisk_id: Some("eri-5678EF01"),
        };
        complete_manifest(&out, prefix, &configuration, &keys).unwrap();
        assert!(super::super::waiting_bundle(&out, prefix).is_none());
        assert!(!out.join(super::super::waiting_name(prefix)).exists());
        let finished = super::super::finished_bundle(&out, prefix).unwrap();
        assert_eq!(finished.parts, bundle.parts);
        let manifest = std::fs::read_to_string(&finished.manifest_path).unwrap();
        let signed = signed_text(&manifest).unwrap();
        assert!(signed.ends_with(&element), "the element as it waited");
        assert!(
            signed.contains(
                "<kernel_id>eki-1234ABCD</kernel_id><ramdisk_id>eri-5678EF01</ramdisk_id>\
                 </machine_configuration>"
            ),
            "{signed}"
        );
        let signature = manifest
            .split_once("<signature>")
            .and_then(|(_, rest)| rest.split_once("</signature>"))
            .map(|(hex, _)| hex::decode(hex).unwrap())
            .unwrap();
        keys.user_cert
            .verify(
                Pkcs1v15Sign::new::<Sha1>(),
                &Sha1::digest(signed.as_bytes()),
                &signature,
            )
            .expect("signed with the user's key");
    }

    #[test]
    fn signed_text_spans_configuration_and_image() {
        let manifest = "<manifest><machine_configuration>a</machine_configuration><image>b</image><signature>s</signature></manifest>";
        assert_eq!(
            signed_text(manifest),
            Some("<machine_configuration>a</machine_configuration><image>b</image>")
        );
    }
}
