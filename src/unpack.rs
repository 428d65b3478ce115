//! Turns a cached download into the bytes that get installed (SPEC §5): gunzip when compressed,
//! and for a UEC-style tarball the `*.img` member, streamed straight out of the archive. Nothing is
//! extracted to disk, so a hostile tarball's paths, links and devices are never written anywhere:
//! only a regular file's bytes are read.

use crate::catalog::model::{Compression, Packing};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading {path}: {}", one_line(source))]
    Read { path: PathBuf, source: io::Error },
    #[error("the tarball {path} holds no regular *.img file")]
    NoImage { path: PathBuf },
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

/// Reports how many bytes of the source file were consumed, once per MiB.
struct Metered<'a> {
    inner: File,
    consumed: u64,
    reported: u64,
    report: &'a (dyn Fn(u64) + Sync),
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

/// The raw image bytes as they stream out of the source file.
pub struct ImageStream<'a> {
    /// For a tarball, the member's file name.
    pub name: Option<&'a str>,
    /// The number of bytes `reader` yields, when known before reading them: a tar member's
    /// header says, and an uncompressed file is its own size. A gzipped file does not say.
    pub size: Option<u64>,
    pub reader: &'a mut dyn Read,
}

/// Calls `install` with a stream of the image's raw bytes. `consumed` is told how far into the
/// source file the work has got.
pub fn with_image_bytes<T, E: From<UnpackError>>(
    path: &Path,
    compression: Compression,
    packing: Packing,
    consumed: &(dyn Fn(u64) + Sync),
    install: impl FnOnce(ImageStream<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let read_error = |source| UnpackError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let source_size = file.metadata().map_err(read_error)?.len();
    let metered = Metered {
        inner: file,
        consumed: 0,
        reported: 0,
        report: consumed,
    };
    let mut decompressed: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(BufReader::with_capacity(1 << 20, metered)),
        Compression::Gzip => Box::new(MultiGzDecoder::new(BufReader::with_capacity(
            1 << 20,
            metered,
        ))),
    };
    match packing {
        Packing::Raw => install(ImageStream {
            name: None,
            size: (compression == Compression::None).then_some(source_size),
            reader: &mut decompressed,
        }),
        Packing::Tar => {
            let mut archive = tar::Archive::new(decompressed);
            for entry in archive.entries().map_err(read_error)? {
                let mut entry = entry.map_err(read_error)?;
                if entry.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let entry_path = entry.path().map_err(read_error)?.into_owned();
                let Some(name) = entry_path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                else {
                    continue;
                };
                if name.ends_with(".img") {
                    let size = entry.size();
                    return install(ImageStream {
                        name: Some(&name),
                        size: Some(size),
                        reader: &mut entry,
                    });
                }
            }
            Err(UnpackError::NoImage {
                path: path.to_owned(),
            }
            .into())
        }
    }
}

/// The number of raw image bytes in a source file: read off a tar header or the file itself when
/// possible, else counted by decompressing once (a gzip trailer holds the size only modulo 4 GiB,
/// and only for its last member).
pub fn image_size(
    path: &Path,
    compression: Compression,
    packing: Packing,
    consumed: &(dyn Fn(u64) + Sync),
) -> Result<u64, UnpackError> {
    with_image_bytes(path, compression, packing, consumed, |stream| {
        if let Some(size) = stream.size {
            return Ok(size);
        }
        io::copy(stream.reader, &mut io::sink()).map_err(|source| UnpackError::Read {
            path: path.to_owned(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression as Level, write::GzEncoder};
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Level::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn read_all(
        path: &Path,
        compression: Compression,
        packing: Packing,
    ) -> Result<(Option<String>, Vec<u8>), UnpackError> {
        with_image_bytes(path, compression, packing, &|_| {}, |stream| {
            let mut out = Vec::new();
            stream
                .reader
                .read_to_end(&mut out)
                .map_err(|source| UnpackError::Read {
                    path: path.into(),
                    source,
                })?;
            Ok((stream.name.map(str::to_owned), out))
        })
    }

    #[test]
    fn gunzips_and_picks_the_img_member_skipping_links() {
        let dir = tempfile::tempdir().unwrap();
        let mut tarball = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        tarball
            .append_link(&mut link, "evil.img", "/etc/passwd")
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        tarball
            .append_data(&mut header, "README", &b"hello"[..])
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(6);
        tarball
            .append_data(&mut header, "sub/disk.img", &b"IMAGE!"[..])
            .unwrap();
        let path = dir.path().join("image.tar.gz");
        std::fs::write(&path, gzip(&tarball.into_inner().unwrap())).unwrap();
        let (name, bytes) = read_all(&path, Compression::Gzip, Packing::Tar).unwrap();
        assert_eq!(name.as_deref(), Some("disk.img"));
        assert_eq!(bytes, b"IMAGE!");

        let raw = dir.path().join("kernel.gz");
        std::fs::write(&raw, gzip(b"kernel bytes")).unwrap();
        assert_eq!(
            read_all(&raw, Compression::Gzip, Packing::Raw).unwrap().1,
            b"kernel bytes"
        );
    }

    #[test]
    fn a_header_with_newlines_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_path("disk.img").unwrap();
        header.as_mut_bytes()[148..156].copy_from_slice(b"\n\n\n\n\n\n\n\n");
        let mut tarball = header.as_bytes().to_vec();
        tarball.resize(2048, 0);
        let path = dir.path().join("image.tar");
        std::fs::write(&path, tarball).unwrap();
        let error = read_all(&path, Compression::None, Packing::Tar)
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with("numeric field was not a number: \\n\\n\\n\\n\\n\\n\\n\\n when getting cksum for disk.img"),
            "{error:?}"
        );
    }

    #[test]
    fn a_tarball_without_an_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tarball = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        tarball
            .append_data(&mut header, "notes.txt", &b"hi"[..])
            .unwrap();
        let path = dir.path().join("image.tar");
        std::fs::write(&path, tarball.into_inner().unwrap()).unwrap();
        assert!(matches!(
            read_all(&path, Compression::None, Packing::Tar),
            Err(UnpackError::NoImage { .. })
        ));
    }
}
