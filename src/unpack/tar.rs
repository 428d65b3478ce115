//! The tarball's members (SPEC §5), streamed straight out of the archive. Nothing is extracted
//! to disk, so a hostile tarball's paths, links and devices are never written anywhere: only a
//! regular file's bytes are read.
//!
//! A tarball is judged whole, every member, before what it holds counts ([`census`] and each
//! read walk it to its end). Refused outright, the member named: an absolute path or a `..`
//! anywhere (also on a member we want: a tarball built so is hostile or broken, and which file was
//! meant is a guess), a symbolic or hard link whose target leaves the archive, a device or FIFO,
//! a member shorter than its header says, and two regular members for one role (which one to
//! install would be a guess). Ignored: directories, other files, links that stay inside (a link
//! is never followed, so an `*.img` that is a link does not count as the image).
//!
//! A member's role is read off its file name, as UEC tarballs name them: `*vmlinuz*` is the
//! kernel, `*initrd*` the ramdisk, any other `*.img` the machine image (so `initrd.img` is a
//! ramdisk, not a second image).

use super::{ImageStream, UnpackError};
use crate::catalog::model::FileKind;
use std::io::{self, Read};
use std::path::{Component, Path};

/// The role a regular member named `name` (its file name) plays in a UEC tarball, if any.
fn role(name: &str) -> Option<FileKind> {
    if name.contains("vmlinuz") {
        Some(FileKind::Kernel)
    } else if name.contains("initrd") {
        Some(FileKind::Ramdisk)
    } else if name.ends_with(".img") {
        Some(FileKind::Image)
    } else {
        None
    }
}

/// How a refusal names the members of a role.
pub fn pattern(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Kernel => "*vmlinuz*",
        FileKind::Ramdisk => "*initrd*",
        FileKind::Image => "*.img",
    }
}

/// A member that passed the rules: its path as the archive spells it, and its role if it is a
/// regular file with one.
struct Judged {
    member: String,
    name: String,
    role: Option<FileKind>,
}

/// Applies the module's rules to one member.
fn judge(path: &Path, entry: &::tar::Entry<'_, impl Read>) -> Result<Judged, UnpackError> {
    let read_error = |source| UnpackError::Read {
        path: path.to_owned(),
        source,
    };
    let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if let Some(reason) = refusal(entry).map_err(read_error)? {
        return Err(UnpackError::Refused {
            path: path.to_owned(),
            member,
            reason,
        });
    }
    let name = entry
        .path()
        .map_err(read_error)?
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let role = (entry.header().entry_type() == ::tar::EntryType::Regular)
        .then(|| role(&name))
        .flatten();
    Ok(Judged { member, name, role })
}

/// Walks every member of the tarball, handing the one regular member of role `wanted` to
/// `install` as it passes.
pub(super) fn with_member<T, E: From<UnpackError>>(
    path: &Path,
    decompressed: impl Read,
    wanted: FileKind,
    install: impl FnOnce(ImageStream<'_>) -> Result<T, E>,
) -> Result<T, E> {
    with_located_member(path, decompressed, wanted, |_, stream| install(stream))
}

/// [`with_member`], `install` also told where the member's bytes begin in the tar stream (they
/// run on for its size: a regular member is contiguous): the UEC splicer follows its inflate
/// pass with this walk.
pub(super) fn with_located_member<T, E: From<UnpackError>>(
    path: &Path,
    decompressed: impl Read,
    wanted: FileKind,
    install: impl FnOnce(u64, ImageStream<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let read_error = |source| UnpackError::Read {
        path: path.to_owned(),
        source,
    };
    let mut install = Some(install);
    let mut found: Option<(String, T)> = None;
    let mut archive = ::tar::Archive::new(decompressed);
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let Judged { member, name, role } = judge(path, &entry)?;
        let is_wanted = role == Some(wanted);
        if let (true, Some((first, _))) = (is_wanted, &found) {
            return Err(UnpackError::TwoMembers {
                path: path.to_owned(),
                kind: wanted,
                first: first.clone(),
                second: member,
            }
            .into());
        }
        let declared = entry.size();
        let offset = entry.raw_file_position();
        let mut exact = ExactMember {
            entry: &mut entry,
            declared,
            present: 0,
            at_end: false,
        };
        let installed = match (is_wanted, install.take()) {
            (true, Some(install)) => {
                let result = install(
                    offset,
                    ImageStream {
                        name: Some(&name),
                        size: Some(declared),
                        reader: &mut exact,
                    },
                );
                // A reader that met the archive's end inside the member: the cut is the cause.
                if result.is_err() && exact.present < exact.declared && exact.at_end {
                    return Err(truncated(path, member, declared, exact.present).into());
                }
                Some(result?)
            }
            (_, unused) => {
                install = unused;
                None
            }
        };
        if let Err((present, declared)) = exact.finish().map_err(read_error)? {
            return Err(truncated(path, member, declared, present).into());
        }
        if let Some(value) = installed {
            found = Some((member, value));
        }
    }
    match found {
        Some((_, value)) => Ok(value),
        None => Err(UnpackError::NoMember {
            path: path.to_owned(),
            kind: wanted,
        }
        .into()),
    }
}

/// Walks every member of the tarball once, judging each, and checks it holds exactly one regular
/// member of each role in `roles`: the check made before anything of a file that provides several
/// artifacts is published, so a tarball without its ramdisk registers nothing. Returns each
/// role's member size, in the order of `roles`.
pub(super) fn census(
    path: &Path,
    decompressed: impl Read,
    roles: &[FileKind],
) -> Result<Vec<u64>, UnpackError> {
    let read_error = |source| UnpackError::Read {
        path: path.to_owned(),
        source,
    };
    let mut found: Vec<Option<(String, u64)>> = vec![None; roles.len()];
    let mut archive = ::tar::Archive::new(decompressed);
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let Judged { member, role, .. } = judge(path, &entry)?;
        let declared = entry.size();
        if let Some(slot) = role.and_then(|role| roles.iter().position(|&r| r == role)) {
            if let Some((first, _)) = &found[slot] {
                return Err(UnpackError::TwoMembers {
                    path: path.to_owned(),
                    kind: roles[slot],
                    first: first.clone(),
                    second: member,
                });
            }
            found[slot] = Some((member.clone(), declared));
        }
        let exact = ExactMember {
            entry: &mut entry,
            declared,
            present: 0,
            at_end: false,
        };
        if let Err((present, declared)) = exact.finish().map_err(read_error)? {
            return Err(truncated(path, member, declared, present));
        }
    }
    roles
        .iter()
        .zip(found)
        .map(|(&kind, found)| {
            found.map(|(_, size)| size).ok_or(UnpackError::NoMember {
                path: path.to_owned(),
                kind,
            })
        })
        .collect()
}

fn truncated(path: &Path, member: String, declared: u64, present: u64) -> UnpackError {
    UnpackError::Truncated {
        path: path.to_owned(),
        member,
        declared,
        present,
    }
}

/// Why a member makes its tarball unacceptable, if it does.
fn refusal(entry: &::tar::Entry<'_, impl Read>) -> io::Result<Option<String>> {
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
        ::tar::EntryType::Symlink => link("symbolic link", path.parent().unwrap_or(Path::new(""))),
        ::tar::EntryType::Link => link("hard link", Path::new("")),
        ::tar::EntryType::Char => Ok(Some("is a character device".into())),
        ::tar::EntryType::Block => Ok(Some("is a block device".into())),
        ::tar::EntryType::Fifo => Ok(Some("is a FIFO".into())),
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

/// One tar member written byte by byte (header, data, padding), with whatever name, link target,
/// type and declared size: the tar crate refuses to write the hostile members (`..` names, links
/// out, sizes that lie) that the tests and fuzz seeds of this module need.
#[doc(hidden)]
pub fn raw_tar_member(
    kind: ::tar::EntryType,
    name: &str,
    link: &str,
    data: &[u8],
    declared: u64,
) -> Vec<u8> {
    let mut header = ::tar::Header::new_gnu();
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
    use super::super::{artifact_size, check_members, with_artifact_bytes};
    use super::*;
    use crate::catalog::model::{Compression, Packing};
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
        read_role(path, compression, packing, FileKind::Image)
    }

    fn read_role(
        path: &Path,
        compression: Compression,
        packing: Packing,
        wanted: FileKind,
    ) -> Result<(Option<String>, Vec<u8>), UnpackError> {
        with_artifact_bytes(path, compression, packing, wanted, &|_| {}, |stream| {
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
            Err(UnpackError::NoMember {
                kind: FileKind::Image,
                ..
            })
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
        assert!(matches!(
            unpack(&[hard]),
            Err(UnpackError::NoMember {
                kind: FileKind::Image,
                ..
            })
        ));
    }

    #[test]
    fn two_images_are_ambiguous_and_a_short_member_is_cut_short() {
        let two = unpack(&[regular("a.img", b"A"), regular("sub/b.img", b"B")]);
        assert!(
            matches!(&two, Err(UnpackError::TwoMembers { first, second, .. }) if first == "a.img" && second == "sub/b.img"),
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
            let error = artifact_size(
                &path,
                Compression::Gzip,
                Packing::Tar,
                FileKind::Image,
                &|_| {},
            )
            .unwrap_err();
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

    /// A UEC tarball as `tar czf` lays one out: the image, its kernel and its ramdisk.
    fn uec(members: &[(&str, &[u8])]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mut tar: Vec<u8> = members
            .iter()
            .flat_map(|(name, data)| regular(name, data))
            .collect();
        tar.extend_from_slice(&[0; 1024]);
        let path = dir.path().join("uec.tar.gz");
        std::fs::write(&path, gzip(&tar)).unwrap();
        (dir, path)
    }

    const ALL: [FileKind; 3] = [FileKind::Kernel, FileKind::Ramdisk, FileKind::Image];

    #[test]
    fn each_role_reads_its_own_member_and_an_initrd_named_img_is_the_ramdisk() {
        let (_dir, path) = uec(&[
            ("README.files", b"notes"),
            ("lucid-server-uec-amd64.img", b"IMAGE!"),
            ("lucid-server-uec-amd64-vmlinuz-virtual", b"KERNEL"),
            ("initrd.img", b"RAMDISK!"),
        ]);
        let read = |kind| read_role(&path, Compression::Gzip, Packing::Tar, kind).unwrap();
        assert_eq!(
            read(FileKind::Kernel),
            (
                Some("lucid-server-uec-amd64-vmlinuz-virtual".into()),
                b"KERNEL".to_vec()
            )
        );
        assert_eq!(
            read(FileKind::Ramdisk),
            (Some("initrd.img".into()), b"RAMDISK!".to_vec())
        );
        assert_eq!(read(FileKind::Image).1, b"IMAGE!");
        let sizes = check_members(&path, Compression::Gzip, &ALL, &|_| {}).unwrap();
        assert_eq!(sizes, [6, 8, 6]);
    }

    #[test]
    fn the_census_names_a_missing_initrd_and_refuses_two_kernels_or_a_hostile_member() {
        let (_dir, path) = uec(&[("disk.img", b"IMAGE!"), ("vmlinuz", b"KERNEL")]);
        let error = check_members(&path, Compression::Gzip, &ALL, &|_| {}).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the tarball {} holds no regular *initrd* member: a paravirtual image needs a ramdisk to boot",
                path.display()
            )
        );
        // A tarball that provides only its image needs no kernel or ramdisk.
        assert_eq!(
            check_members(&path, Compression::Gzip, &[FileKind::Image], &|_| {}).unwrap(),
            [6]
        );
        let (_dir, path) = uec(&[
            ("disk.img", b"IMAGE!"),
            ("vmlinuz-a", b"A"),
            ("initrd", b"R"),
            ("boot/vmlinuz-b", b"B"),
        ]);
        let error = check_members(&path, Compression::Gzip, &ALL, &|_| {}).unwrap_err();
        assert!(
            matches!(&error, UnpackError::TwoMembers { kind: FileKind::Kernel, first, second, .. }
                if first == "vmlinuz-a" && second == "boot/vmlinuz-b"),
            "{error}"
        );
        assert!(error.to_string().contains("two *vmlinuz* files"), "{error}");
        assert!(matches!(
            read_role(&path, Compression::Gzip, Packing::Tar, FileKind::Kernel),
            Err(UnpackError::TwoMembers { .. })
        ));
        let mut members = vec![regular("disk.img", b"I"), regular("vmlinuz", b"K")];
        members.push(regular("initrd", b"R"));
        members.push(super::raw_tar_member(
            ::tar::EntryType::Symlink,
            "evil",
            "/etc/shadow",
            b"",
            0,
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uec.tar");
        let mut tar = members.concat();
        tar.extend_from_slice(&[0; 1024]);
        std::fs::write(&path, tar).unwrap();
        assert!(matches!(
            check_members(&path, Compression::None, &ALL, &|_| {}),
            Err(UnpackError::Refused { member, .. }) if member == "evil"
        ));
    }
}
