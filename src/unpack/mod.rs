//! Turns a cached download into the bytes that get installed (SPEC §5): gunzip when compressed;
//! for a tarball the member of the artifact wanted (`tar.rs`: a UEC tarball's `*.img`,
//! `*vmlinuz*` and `*initrd*`, every member judged); for a qcow2 whole disk its raw disk
//! (`qcow2/`, every structure judged), read in place from the cache file with memory flat and no
//! raw copy on disk. Progress is told in bytes of the source file consumed.

pub mod qcow2;
mod tar;

use crate::catalog::model::{Compression, FileKind, Packing};
use flate2::read::MultiGzDecoder;
use qcow2::{Qcow2Error, Qcow2Image};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub use tar::{pattern, raw_tar_member};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading {path}: {}", one_line(source))]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the tarball {path} holds no regular {} member{}",
        pattern(*kind),
        needed_for(*kind)
    )]
    NoMember { path: PathBuf, kind: FileKind },
    #[error("the tarball {path} is refused: member {member:?} {reason}")]
    Refused {
        path: PathBuf,
        member: String,
        reason: String,
    },
    #[error(
        "the tarball {path} is refused: it holds two {} files, {first:?} and {second:?}, and which one to install is ambiguous",
        pattern(*kind)
    )]
    TwoMembers {
        path: PathBuf,
        kind: FileKind,
        first: String,
        second: String,
    },
    #[error(
        "the tarball {path} is refused: member {member:?} is cut short, {present} of the {declared} bytes its header declares"
    )]
    Truncated {
        path: PathBuf,
        member: String,
        declared: u64,
        present: u64,
    },
    #[error("the qcow2 image {path} cannot be installed: {source}")]
    Qcow2 { path: PathBuf, source: Qcow2Error },
    /// A qcow2 disk is read at offsets, which a gzip stream cannot give.
    #[error("the qcow2 image {path} is gzipped: a qcow2 disk is read in place, uncompressed")]
    GzippedQcow2 { path: PathBuf },
}

impl UnpackError {
    /// A failed read of `path`'s unpacked bytes: a qcow2 refusal met mid-stream (the raw reader
    /// carries it inside an `io::Error`) comes out as itself.
    pub fn reading(path: &Path, source: io::Error) -> UnpackError {
        if source
            .get_ref()
            .is_some_and(|inner| inner.is::<Qcow2Error>())
        {
            let inner = source.into_inner().expect("checked above");
            let source = *inner.downcast::<Qcow2Error>().expect("checked above");
            return UnpackError::Qcow2 {
                path: path.to_owned(),
                source,
            };
        }
        UnpackError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

/// Why a tarball's missing member matters: Eucalyptus 4+ boots a paravirtual image only with
/// its own kernel and ramdisk.
fn needed_for(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Kernel => ": a paravirtual image needs a kernel to boot",
        FileKind::Ramdisk => ": a paravirtual image needs a ramdisk to boot",
        FileKind::Image => "",
    }
}

/// `error` with control characters escaped: `tar` quotes a bad header's raw bytes, newlines included,
/// and an error must stay one line in a status.
fn one_line(error: &io::Error) -> String {
    error
        .to_string()
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A source file's bytes, read in order or at offsets.
pub trait SourceRead: Read + Seek + Send {}
impl<T: Read + Seek + Send> SourceRead for T {}

/// Opens a source file that is still arriving: each call a fresh reader of it.
pub type OpenArriving<'a> = &'a (dyn Fn() -> io::Result<Box<dyn SourceRead>> + Sync);

/// Where a source file's bytes come from: the file at rest, or a reader that follows a download
/// still writing it (the overlapped install; its reads block until the bytes are there). `path`
/// names it in every message either way.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub path: &'a Path,
    arriving: Option<OpenArriving<'a>>,
}

impl<'a> Source<'a> {
    /// The file at `path`, whole on disk.
    pub fn at_rest(path: &'a Path) -> Self {
        Self {
            path,
            arriving: None,
        }
    }

    /// The file a download is writing, read through `open`'s readers.
    pub fn arriving(path: &'a Path, open: OpenArriving<'a>) -> Self {
        Self {
            path,
            arriving: Some(open),
        }
    }

    fn open(&self) -> Result<Box<dyn SourceRead>, UnpackError> {
        let read_error = |source| UnpackError::Read {
            path: self.path.to_owned(),
            source,
        };
        match self.arriving {
            Some(open) => open().map_err(read_error),
            None => Ok(Box::new(File::open(self.path).map_err(read_error)?)),
        }
    }
}

impl<'a> From<&'a Path> for Source<'a> {
    fn from(path: &'a Path) -> Self {
        Source::at_rest(path)
    }
}

impl<'a> From<&'a PathBuf> for Source<'a> {
    fn from(path: &'a PathBuf) -> Self {
        Source::at_rest(path)
    }
}

/// Reports how many bytes of the source file were consumed, once per MiB.
struct Metered<'a> {
    inner: Box<dyn SourceRead>,
    consumed: u64,
    reported: u64,
    report: &'a (dyn Fn(u64) + Sync),
}

impl Seek for Metered<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

impl Read for Metered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        if self.consumed - self.reported >= 1 << 20 || n == 0 {
            self.reported = self.consumed;
            (self.report)(self.consumed);
        }
        Ok(n)
    }
}

/// The raw bytes of one artifact as they stream out of the source file.
pub struct ImageStream<'a> {
    /// For a tarball, the member's file name.
    pub name: Option<&'a str>,
    /// The number of bytes `reader` yields, when known before reading them: a tar member's
    /// header says, an uncompressed file is its own size, a qcow2 disk its virtual size. A
    /// gzipped file does not say.
    pub size: Option<u64>,
    pub reader: &'a mut dyn Read,
}

/// Calls `install` with a stream of the raw bytes of the artifact `wanted` of the source file (a
/// file that is not a tarball is one artifact, whatever is wanted). `consumed` is told how far
/// into the source file the work has got: for a qcow2 disk, the bytes read of it so far (tables
/// and clusters, metered as they are read, at most the file's size), since its clusters need not
/// lie in guest order.
pub fn with_artifact_bytes<'s, T, E: From<UnpackError>>(
    source: impl Into<Source<'s>>,
    compression: Compression,
    packing: Packing,
    wanted: FileKind,
    consumed: &(dyn Fn(u64) + Sync),
    install: impl FnOnce(ImageStream<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let source = source.into();
    let path = source.path;
    let read_error = |source| UnpackError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = source.open()?;
    let source_size = file.seek(SeekFrom::End(0)).map_err(read_error)?;
    file.seek(SeekFrom::Start(0)).map_err(read_error)?;
    // Said before the first byte: a failure in the first MiB then names this step, not the last.
    consumed(0);
    if packing == Packing::Qcow2 {
        return with_qcow2_disk(path, file, compression, source_size, consumed, install);
    }
    let metered = Metered {
        inner: file,
        consumed: 0,
        reported: 0,
        report: consumed,
    };
    let mut decompressed = decompressed(compression, metered);
    match packing {
        Packing::Tar => tar::with_member(path, decompressed, wanted, install),
        Packing::Raw | Packing::Qcow2 => install(ImageStream {
            name: None,
            size: (compression == Compression::None).then_some(source_size),
            reader: &mut decompressed,
        }),
    }
}

/// Calls `install` with the member of role `wanted` of the tar stream `tar_stream` (already
/// decompressed) and the offset of its first byte in that stream, every member judged as
/// [`with_artifact_bytes`] judges a tarball's: the UEC splicer (`bundle/splice/uec.rs`) walks
/// the stream it inflates with the same rules, so it picks the same member and refuses the same
/// tarballs.
pub fn with_tar_member<T, E: From<UnpackError>>(
    path: &Path,
    tar_stream: impl Read,
    wanted: FileKind,
    install: impl FnOnce(u64, ImageStream<'_>) -> Result<T, E>,
) -> Result<T, E> {
    tar::with_located_member(path, tar_stream, wanted, install)
}

/// Calls `read` with the source file's bytes as they are on disk (still compressed), metered
/// as [`with_artifact_bytes`] meters them: the bundle's splicer (`bundle/splice/`) reuses a
/// gzipped upstream's deflate data. The one place a bundler opens its source.
pub fn with_source_bytes<'s, T, E: From<UnpackError>>(
    source: impl Into<Source<'s>>,
    consumed: &(dyn Fn(u64) + Sync),
    read: impl FnOnce(&mut dyn Read) -> Result<T, E>,
) -> Result<T, E> {
    let file = source.into().open()?;
    consumed(0);
    let mut metered = Metered {
        inner: file,
        consumed: 0,
        reported: 0,
        report: consumed,
    };
    read(&mut metered)
}

/// Calls `read` with the source file to read at offsets, metered as a qcow2 disk's reads are
/// (the bytes read, at most the file's size; the whole file told at the end): the qcow2 splicer
/// (`bundle/splice/cluster.rs`) walks the disk's clusters itself.
pub fn with_source_file<'s, T, E: From<UnpackError>>(
    source: impl Into<Source<'s>>,
    consumed: &(dyn Fn(u64) + Sync),
    read: impl FnOnce(&mut dyn SourceRead) -> Result<T, E>,
) -> Result<T, E> {
    let source = source.into();
    let mut file = source.open()?;
    let source_size = file
        .seek(SeekFrom::End(0))
        .map_err(|error| UnpackError::Read {
            path: source.path.to_owned(),
            source: error,
        })?;
    consumed(0);
    let capped = |done: u64| consumed(done.min(source_size));
    let mut metered = Metered {
        inner: file,
        consumed: 0,
        reported: 0,
        report: &capped,
    };
    let value = read(&mut metered)?;
    consumed(source_size);
    Ok(value)
}

fn decompressed<'a>(compression: Compression, metered: Metered<'a>) -> Box<dyn Read + 'a> {
    match compression {
        Compression::None => Box::new(BufReader::with_capacity(1 << 20, metered)),
        Compression::Gzip => Box::new(MultiGzDecoder::new(BufReader::with_capacity(
            1 << 20,
            metered,
        ))),
    }
}

/// The raw disk of the qcow2 image in `file`, read at offsets (no read-ahead buffer: the reader
/// reads whole clusters, and a buffer would only read past each seek).
fn with_qcow2_disk<T, E: From<UnpackError>>(
    path: &Path,
    file: Box<dyn SourceRead>,
    compression: Compression,
    source_size: u64,
    consumed: &(dyn Fn(u64) + Sync),
    install: impl FnOnce(ImageStream<'_>) -> Result<T, E>,
) -> Result<T, E> {
    if compression != Compression::None {
        return Err(UnpackError::GzippedQcow2 {
            path: path.to_owned(),
        }
        .into());
    }
    // A compressed cluster's sectors may be read again with its neighbour's: never past the file.
    let capped = |done: u64| consumed(done.min(source_size));
    let metered = Metered {
        inner: file,
        consumed: 0,
        reported: 0,
        report: &capped,
    };
    let image = Qcow2Image::open(metered).map_err(|source| UnpackError::Qcow2 {
        path: path.to_owned(),
        source,
    })?;
    let size = image.virtual_size();
    let mut reader = image.into_reader();
    let value = install(ImageStream {
        name: None,
        size: Some(size),
        reader: &mut reader,
    })?;
    consumed(source_size);
    Ok(value)
}

/// The size of a qcow2 image's raw disk, read off its (judged) header.
pub fn qcow2_virtual_size<'s>(source: impl Into<Source<'s>>) -> Result<u64, UnpackError> {
    let source = source.into();
    let path = source.path;
    Qcow2Image::open(source.open()?)
        .map(|image| image.virtual_size())
        .map_err(|source| UnpackError::Qcow2 {
            path: path.to_owned(),
            source,
        })
}

/// ISIZE, the last four bytes of a gzip member: the uncompressed length modulo 2^32. (Of a file
/// still arriving, read once its end is there.)
pub fn gzip_trailer_size<'s>(source: impl Into<Source<'s>>) -> Result<u32, UnpackError> {
    let source = source.into();
    let mut file = source.open()?;
    let mut isize = [0u8; 4];
    file.seek(SeekFrom::End(-4))
        .and_then(|_| file.read_exact(&mut isize))
        .map_err(|error| UnpackError::Read {
            path: source.path.to_owned(),
            source: error,
        })?;
    Ok(u32::from_le_bytes(isize))
}

/// Checks, in one pass over the tarball, that it holds exactly one regular member of each role in
/// `roles` (and that every member passes `tar.rs`' rules): done before anything of a file that
/// provides several artifacts is published. Returns each role's member size, in `roles`' order.
pub fn check_members(
    path: &Path,
    compression: Compression,
    roles: &[FileKind],
    consumed: &(dyn Fn(u64) + Sync),
) -> Result<Vec<u64>, UnpackError> {
    let file = File::open(path).map_err(|source| UnpackError::Read {
        path: path.to_owned(),
        source,
    })?;
    consumed(0);
    let metered = Metered {
        inner: Box::new(file),
        consumed: 0,
        reported: 0,
        report: consumed,
    };
    tar::census(path, decompressed(compression, metered), roles)
}

/// The number of raw bytes of the artifact `wanted` in a source file: read off a tar header, a
/// qcow2 header or the file itself when possible, else counted by decompressing once (a gzip
/// trailer holds the size only modulo 4 GiB, and only for its last member).
pub fn artifact_size<'s>(
    source: impl Into<Source<'s>>,
    compression: Compression,
    packing: Packing,
    wanted: FileKind,
    consumed: &(dyn Fn(u64) + Sync),
) -> Result<u64, UnpackError> {
    let source = source.into();
    let path = source.path;
    with_artifact_bytes(source, compression, packing, wanted, consumed, |stream| {
        if let Some(size) = stream.size {
            return Ok(size);
        }
        io::copy(stream.reader, &mut io::sink())
            .map_err(|source| UnpackError::reading(path, source))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const SEED: &[u8] = include_bytes!("../../fuzz/corpus/qcow2/seed-compressed-v3-512.qcow2");

    fn read_disk(
        path: &Path,
        reports: &Mutex<Vec<u64>>,
    ) -> Result<(Option<u64>, Vec<u8>), UnpackError> {
        let report = |done| reports.lock().unwrap().push(done);
        with_artifact_bytes(
            path,
            Compression::None,
            Packing::Qcow2,
            FileKind::Image,
            &report,
            |stream| {
                let mut out = Vec::new();
                stream
                    .reader
                    .read_to_end(&mut out)
                    .map_err(|source| UnpackError::reading(path, source))?;
                Ok((stream.size, out))
            },
        )
    }

    #[test]
    fn a_qcow2_file_streams_its_raw_disk_and_reports_source_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk1.img");
        std::fs::write(&path, SEED).unwrap();
        let reports = Mutex::new(Vec::new());
        let (size, raw) = read_disk(&path, &reports).unwrap();
        let mut expected = Vec::new();
        Qcow2Image::open(io::Cursor::new(SEED))
            .unwrap()
            .into_reader()
            .read_to_end(&mut expected)
            .unwrap();
        assert_eq!(size, Some(expected.len() as u64));
        assert!(raw == expected);
        assert_eq!(qcow2_virtual_size(&path).unwrap(), raw.len() as u64);
        let reports = reports.into_inner().unwrap();
        assert_eq!(reports.first(), Some(&0));
        assert_eq!(reports.last(), Some(&(SEED.len() as u64)));
        assert!(reports.iter().all(|&done| done <= SEED.len() as u64));
    }

    #[test]
    fn a_qcow2_refusal_reaches_the_caller_as_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk1.img");
        let mut huge = SEED.to_vec();
        huge[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes());
        std::fs::write(&path, &huge).unwrap();
        let error = read_disk(&path, &Mutex::default()).unwrap_err();
        assert!(
            matches!(
                &error,
                UnpackError::Qcow2 {
                    source: Qcow2Error::VirtualSizeTooLarge { .. },
                    ..
                }
            ),
            "{error}"
        );
        let line = crate::report::one_line(&error);
        assert_eq!(
            line,
            format!(
                "the qcow2 image {} cannot be installed: the virtual size of {} bytes is past the cap of {} bytes",
                path.display(),
                1u64 << 62,
                crate::limits::MAX_QCOW2_VIRTUAL_BYTES
            )
        );

        // Met mid-stream (a compressed cluster's deflate data broken), it is the same variant.
        let mut broken = SEED.to_vec();
        let l1 = u64::from_be_bytes(broken[40..48].try_into().unwrap()) as usize;
        let l2 = (u64::from_be_bytes(broken[l1..l1 + 8].try_into().unwrap())
            & 0x00ff_ffff_ffff_fe00) as usize;
        let entry = (0..64)
            .map(|i| u64::from_be_bytes(broken[l2 + i * 8..l2 + i * 8 + 8].try_into().unwrap()))
            .find(|entry| entry >> 62 & 1 == 1)
            .expect("a compressed cluster in the seed");
        let offset = (entry & ((1 << 61) - 1)) as usize;
        broken[offset..offset + 16].fill(0xff);
        std::fs::write(&path, &broken).unwrap();
        let error = read_disk(&path, &Mutex::default()).unwrap_err();
        assert!(
            matches!(
                &error,
                UnpackError::Qcow2 {
                    source: Qcow2Error::Inflate { .. } | Qcow2Error::InflateShort { .. },
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(!crate::report::one_line(&error).contains('\n'));

        let error = with_artifact_bytes(
            &path,
            Compression::Gzip,
            Packing::Qcow2,
            FileKind::Image,
            &|_| {},
            |_| Ok::<_, UnpackError>(()),
        )
        .unwrap_err();
        assert!(matches!(error, UnpackError::GzippedQcow2 { .. }), "{error}");
    }
}
