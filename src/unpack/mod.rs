//! Turns a cached download into the bytes that get installed (SPEC §5): gunzip when compressed,
//! and for a UEC-style tarball the `*.img` member, streamed straight out of the archive. Nothing is
//! extracted to disk, so a hostile tarball's paths, links and devices are never written anywhere:
//! only a regular file's bytes are read.
//!
//! A tarball is still judged whole, every member, before its image counts ([`image_size`] reads it
//! through; the cloud measures before it bundles). Refused outright, the member named: an absolute
//! path or a `..` anywhere (also on an `*.img`: a tarball built so is hostile or broken, and which
//! file was meant is a guess), a symbolic or hard link whose target leaves the archive, a device
//! or FIFO, a member shorter than its header says, and two regular `*.img` members (which one to
//! install would be a guess). Ignored: directories, other files, links that stay inside (a link
//! is never followed, so an `*.img` that is a link does not count as the image).

pub mod qcow2;

use crate::catalog::model::{Compression, Packing};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading {path}: {}", one_line(source))]
    Read { path: PathBuf, source: io::Error },
    #[error("the tarball {path} holds no regular *.img file")]
    NoImage { path: PathBuf },
    #[error("the tarball {path} is refused: member {member:?} {reason}")]
    Refused {
        path: PathBuf,
        member: String,
        reason: String,
    },
    #[error(
        "the tarball {path} is refused: it holds two *.img files, {first:?} and {second:?}, and which one to install is ambiguous"
    )]
    TwoImages {
        path: PathBuf,
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
}

/// Why a member makes its tarball unacceptable, if it does.
fn refusal(entry: &tar::Entry<'_, impl Read>) -> io::Result<Option<String>> {
    let path = entry.path()?;
    if let Some(reason) = path_problem(&path) {
        return Ok(Some(format!("has {reason}")));
    }
    let kind = entry.header().entry_type();
    let link = |what: &str, base: &Path| -> io::Result<Option<String>> {
        let target = entry.link_name()?.unwrap_or_default();
        Ok(escapes(base, &target)
            .then(|| format!("is a {what} pointing out of the archive (to {target:?})")))
    };
    match kind {
        tar::EntryType::Symlink => link("symbolic link", path.parent().unwrap_or(Path::new(""))),
        tar::EntryType::Link => link("hard link", Path::new("")),
        tar::EntryType::Char => Ok(Some("is a character device".into())),
        tar::EntryType::Block => Ok(Some("is a block device".into())),
        tar::EntryType::Fifo => Ok(Some("is a FIFO".into())),
        _ => Ok(None),
    }
}

/// An absolute path or a `..` in a member's own name.
fn path_problem(path: &Path) -> Option<&'static str> {
    path.components().find_map(|component| match component {
        Component::RootDir | Component::Prefix(_) => Some("an absolute path"),
        Component::ParentDir => Some("\"..\" in its path"),
        Component::CurDir | Component::Normal(_) => None,
    })
}

/// Whether `target`, taken from the directory `base` inside the archive, ends up outside it.
fn escapes(base: &Path, target: &Path) -> bool {
    let mut depth = base
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    for component in target.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return true,
            Component::ParentDir if depth == 0 => return true,
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
        }
    }
    false
}

/// A member's bytes that fail loudly when the archive ends before the header's size is reached
/// (the tar crate would just stop short).
struct ExactMember<R: Read> {
    entry: R,
    declared: u64,
    present: u64,
    /// The archive ended before the member did.
    at_end: bool,
}

impl<R: Read> Read for ExactMember<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.entry.read(buf)?;
        self.present += n as u64;
        if n == 0 && !buf.is_empty() && self.present < self.declared {
            self.at_end = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the tarball ends {} bytes into a member whose header declares {}",
                    self.present, self.declared
                ),
            ));
        }
        Ok(n)
    }
}

impl<R: Read> ExactMember<R> {
    /// Reads what the consumer left, to check the member is all there.
    fn finish(mut self) -> io::Result<Result<(), (u64, u64)>> {
        self.present += io::copy(&mut self.entry, &mut io::sink())?;
        Ok(if self.present < self.declared {
            Err((self.present, self.declared))
        } else {
            Ok(())
        })
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
    // Said before the first byte: a failure in the first MiB then names this step, not the last.
    consumed(0);
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
        Packing::Tar => with_tar_image(path, decompressed, install),
        // TODO(issue 14): the qcow2 reader streamed here (the install helper's branch).
        Packing::Qcow2 => Err(UnpackError::NoImage {
            path: path.to_owned(),
        }
        .into()),
    }
}

/// Walks every member of the tarball (see the module's rules), handing the one regular `*.img`
/// to `install` as it passes.
fn with_tar_image<T, E: From<UnpackError>>(
    path: &Path,
    decompressed: impl Read,
    install: impl FnOnce(ImageStream<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let read_error = |source| UnpackError::Read {
        path: path.to_owned(),
        source,
    };
    let mut install = Some(install);
    let mut image: Option<(String, T)> = None;
    let mut archive = tar::Archive::new(decompressed);
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if let Some(reason) = refusal(&entry).map_err(read_error)? {
            return Err(UnpackError::Refused {
                path: path.to_owned(),
                member,
                reason,
            }
            .into());
        }
        let declared = entry.size();
        let name = entry
            .path()
            .map_err(read_error)?
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".img"))
            .map(str::to_owned);
        let is_image = entry.header().entry_type() == tar::EntryType::Regular && name.is_some();
        if let (true, Some((first, _))) = (is_image, &image) {
            return Err(UnpackError::TwoImages {
                path: path.to_owned(),
                first: first.clone(),
                second: member,
            }
            .into());
        }
        let mut exact = ExactMember {
            entry: &mut entry,
            declared,
            present: 0,
            at_end: false,
        };
        let installed = match (is_image, install.take()) {
            (true, Some(install)) => {
                let result = install(ImageStream {
                    name: name.as_deref(),
                    size: Some(declared),
                    reader: &mut exact,
                });
                // A reader that met the archive's end inside the member: the cut is the cause.
                if result.is_err() && exact.present < exact.declared && exact.at_end {
                    return Err(UnpackError::Truncated {
                        path: path.to_owned(),
                        member,
                        declared,
                        present: exact.present,
                    }
                    .into());
                }
                Some(result?)
            }
            (_, unused) => {
                install = unused;
                None
            }
        };
        if let Err((present, declared)) = exact.finish().map_err(read_error)? {
            return Err(UnpackError::Truncated {
                path: path.to_owned(),
                member,
                declared,
                present,
            }
            .into());
        }
        if let Some(value) = installed {
            image = Some((member, value));
        }
    }
    match image {
        Some((_, value)) => Ok(value),
        None => Err(UnpackError::NoImage {
            path: path.to_owned(),
        }
        .into()),
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

/// One tar member written byte by byte (header, data, padding), with whatever name, link target,
/// type and declared size: the tar crate refuses to write the hostile members (`..` names, links
/// out, sizes that lie) that the tests and fuzz seeds of this module need.
#[doc(hidden)]
pub fn raw_tar_member(
    kind: tar::EntryType,
    name: &str,
    link: &str,
    data: &[u8],
    declared: u64,
) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(declared);
    header.set_mode(0o644);
    let gnu = header.as_gnu_mut().expect("a GNU header");
    assert!(name.len() <= 100 && link.len() <= 100, "{name} {link}");
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
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
    fn gunzips_and_picks_the_img_member_skipping_links_that_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let mut tarball = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        tarball
            .append_link(&mut link, "link.img", "sub/disk.img")
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

    fn regular(name: &str, data: &[u8]) -> Vec<u8> {
        super::raw_tar_member(tar::EntryType::Regular, name, "", data, data.len() as u64)
    }

    /// Writes `members` as a gzipped tarball and unpacks it.
    fn unpack(members: &[Vec<u8>]) -> Result<(Option<String>, Vec<u8>), UnpackError> {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = members.concat();
        tar.extend_from_slice(&[0; 1024]);
        let path = dir.path().join("image.tar.gz");
        std::fs::write(&path, gzip(&tar)).unwrap();
        read_all(&path, Compression::Gzip, Packing::Tar)
    }

    fn refused_member(result: Result<(Option<String>, Vec<u8>), UnpackError>) -> (String, String) {
        match result {
            Err(UnpackError::Refused { member, reason, .. }) => (member, reason),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn hostile_members_refuse_the_tarball_before_or_after_the_image() {
        use tar::EntryType::{Block, Char, Fifo, Link, Symlink};
        let image = regular("disk.img", b"IMAGE!");
        for (hostile, member, reason) in [
            (
                regular("/etc/evil.img", b"x"),
                "/etc/evil.img",
                "has an absolute path",
            ),
            (
                regular("../evil.img", b"x"),
                "../evil.img",
                "has \"..\" in its path",
            ),
            (
                regular("a/../../notes", b"x"),
                "a/../../notes",
                "has \"..\" in its path",
            ),
            (
                super::raw_tar_member(Symlink, "passwd", "/etc/passwd", b"", 0),
                "passwd",
                "is a symbolic link pointing out of the archive (to \"/etc/passwd\")",
            ),
            (
                super::raw_tar_member(Symlink, "a/b/up", "../../../x", b"", 0),
                "a/b/up",
                "is a symbolic link pointing out of the archive (to \"../../../x\")",
            ),
            (
                super::raw_tar_member(Link, "hard", "../outside", b"", 0),
                "hard",
                "is a hard link pointing out of the archive (to \"../outside\")",
            ),
            (
                super::raw_tar_member(Char, "dev/null", "", b"", 0),
                "dev/null",
                "is a character device",
            ),
            (
                super::raw_tar_member(Block, "dev/sda", "", b"", 0),
                "dev/sda",
                "is a block device",
            ),
            (
                super::raw_tar_member(Fifo, "pipe", "", b"", 0),
                "pipe",
                "is a FIFO",
            ),
        ] {
            for members in [
                vec![hostile.clone(), image.clone()],
                vec![image.clone(), hostile.clone()],
            ] {
                let (got_member, got_reason) = refused_member(unpack(&members));
                assert_eq!((got_member.as_str(), got_reason.as_str()), (member, reason));
            }
        }
        // Links that stay inside are ignored, and an *.img that is only a link is no image.
        let inside = super::raw_tar_member(Symlink, "a/b/link", "../c", b"", 0);
        let hard = super::raw_tar_member(Link, "again.img", "disk.img", b"", 0);
        let (name, bytes) = unpack(&[image.clone(), inside, hard.clone()]).unwrap();
        assert_eq!(
            (name.as_deref(), bytes.as_slice()),
            (Some("disk.img"), &b"IMAGE!"[..])
        );
        assert!(matches!(unpack(&[hard]), Err(UnpackError::NoImage { .. })));
    }

    #[test]
    fn two_images_are_ambiguous_and_a_short_member_is_cut_short() {
        let two = unpack(&[regular("a.img", b"A"), regular("sub/b.img", b"B")]);
        assert!(
            matches!(&two, Err(UnpackError::TwoImages { first, second, .. }) if first == "a.img" && second == "sub/b.img"),
            "{two:?}"
        );
        // The header says 4096 bytes; the archive ends after 100.
        for members in [
            vec![super::raw_tar_member(
                tar::EntryType::Regular,
                "disk.img",
                "",
                &[7; 100],
                4096,
            )],
            vec![
                regular("disk.img", b"IMAGE!"),
                super::raw_tar_member(tar::EntryType::Regular, "notes", "", &[7; 100], 4096),
            ],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("image.tar.gz");
            std::fs::write(&path, gzip(&members.concat())).unwrap();
            let error = image_size(&path, Compression::Gzip, Packing::Tar, &|_| {}).unwrap_err();
            assert!(
                matches!(
                    error,
                    UnpackError::Truncated {
                        present: 512,
                        declared: 4096,
                        ..
                    }
                ),
                "{error:?}"
            );
            assert!(
                error
                    .to_string()
                    .ends_with("is cut short, 512 of the 4096 bytes its header declares"),
                "{error}"
            );
            // Read through, the image itself reports the cut as a read error.
            assert!(read_all(&path, Compression::Gzip, Packing::Tar).is_err());
        }
    }

    #[test]
    fn link_targets_are_resolved_from_the_link_s_directory() {
        assert!(!escapes(Path::new("a/b"), Path::new("../c")));
        assert!(!escapes(Path::new("a"), Path::new("./b/../c")));
        assert!(escapes(Path::new("a"), Path::new("../../c")));
        assert!(escapes(Path::new(""), Path::new("..")));
        assert!(escapes(Path::new("a"), Path::new("/c")));
        assert!(!escapes(Path::new(""), Path::new("disk.img")));
    }
}
