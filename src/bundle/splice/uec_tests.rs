//! The UEC splicer against tarballs made by GNU tar + gzip(1) and by Python's `tarfile`, each
//! spliced member checked with gzip(1) and Python's `tarfile` `r|gz`, and each upstream it must
//! not splice.

use super::super::bits::BitWriter;
use super::super::tests::{gzip_cli, realistic_image, tar_stream};
use super::*;
use flate2::read::GzDecoder;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Semi-compressible bytes, as a disk image's files mostly are: log-like text lines with
/// random fields, short zero runs and bits of noise. Deflate makes many blocks of it (about 3:1),
/// where `realistic_image`'s long runs make a few huge ones.
fn semi_compressible(len: usize, seed: u32) -> Vec<u8> {
    let mut state = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const WORDS: [&str; 12] = [
        "kernel:",
        "eth0",
        "link",
        "up",
        "systemd[1]:",
        "Started",
        "session",
        "of",
        "user",
        "ubuntu.",
        "cloud-init",
        "EXT4-fs",
    ];
    let mut out = Vec::with_capacity(len + 200);
    while out.len() < len {
        let r = next();
        match r % 20 {
            0 => out.extend((0..(r >> 8) % 300).map(|_| next() as u8)),
            1 => out.resize(out.len() + ((r >> 8) % 2000) as usize, 0),
            _ => {
                let line = format!(
                    "Dec  1 {:02}:{:02}:{:02} host {} {} {} [{}.{:06}] 0x{:08x}\n",
                    (r >> 8) % 24,
                    (r >> 16) % 60,
                    (r >> 24) % 60,
                    WORDS[((r >> 32) % 12) as usize],
                    WORDS[((r >> 36) % 12) as usize],
                    WORDS[((r >> 40) % 12) as usize],
                    (r >> 44) % 100_000,
                    next() % 1_000_000,
                    next() as u32
                );
                out.extend_from_slice(line.as_bytes());
            }
        }
    }
    out.truncate(len);
    out
}

/// Files for a UEC tarball, in the order they go in: a kernel and a note before the image, a
/// ramdisk after it.
fn uec_files(image_len: usize, seed: u32) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "lucid-server-uec-amd64-vmlinuz-virtual",
            realistic_image(300_000, seed + 1),
        ),
        (
            "README.files",
            b"a kernel, an image and a ramdisk\n".to_vec(),
        ),
        (
            "lucid-server-uec-amd64.img",
            semi_compressible(image_len, seed),
        ),
        ("lucid-server-uec-amd64-loader", Vec::new()),
        ("initrd.img", realistic_image(90_000, seed + 2)),
    ]
}

fn write_files(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
}

fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join().unwrap();
    assert!(out.status.success(), "{program} {args:?} failed");
    out.stdout
}

/// `tar -cf - FILES | gzip -LEVEL`, as UEC tarballs were made.
fn gnu_tar_gz(dir: &Path, files: &[(&str, Vec<u8>)], level: u32) -> Vec<u8> {
    write_files(dir, files);
    let mut args = vec!["--format=gnu", "-cf", "-", "-C", dir.to_str().unwrap()];
    args.extend(files.iter().map(|(name, _)| *name));
    let tar = run("tar", &args, None);
    gzip_cli(&tar, level)
}

/// Python's `tarfile.open(mode='w:gz')` (zlib underneath), pax format.
fn python_tar_gz(dir: &Path, files: &[(&str, Vec<u8>)], level: u32) -> Vec<u8> {
    write_files(dir, files);
    let out = dir.join("python.tar.gz");
    let names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
    let script = format!(
        "import os, sys, tarfile\n\
         os.chdir(sys.argv[1])\n\
         with tarfile.open(sys.argv[2], 'w:gz', compresslevel={level}, format=tarfile.PAX_FORMAT) as t:\n\
         \x20   for name in sys.argv[3:]:\n\
         \x20       t.add(name)\n"
    );
    let mut args = vec!["-c", &script, dir.to_str().unwrap(), out.to_str().unwrap()];
    args.extend(names);
    run("python3", &args, None);
    std::fs::read(out).unwrap()
}

fn splice_with(
    upstream: &[u8],
    wanted: FileKind,
    level: u32,
    hold: usize,
) -> Result<(Vec<u8>, Spliced), BundleError> {
    let mut out = Vec::new();
    let spliced = write_member(
        &mut &upstream[..],
        Path::new("/cache/uec.tar.gz"),
        wanted,
        "disk.img",
        level,
        hold,
        &mut out,
        &mut |_| true,
    )?;
    Ok((out, spliced))
}

/// The spliced member holds exactly the tar stream recompression writes for `member`, is one
/// gzip member that gzip(1) passes and Python's `tarfile` `r|gz` reads, and its digest and size
/// are that stream's.
fn assert_spliced_right(member: &[u8], spliced: &Spliced, image: &[u8]) {
    let expected = tar_stream("disk.img", image);
    let mut got = Vec::new();
    let mut first = flate2::bufread::GzDecoder::new(member);
    first.read_to_end(&mut got).unwrap();
    assert!(
        got == expected,
        "the tar stream differs from recompression's"
    );
    assert!(first.into_inner().is_empty(), "bytes after the member");
    assert_eq!(spliced.digest, hex::encode(Sha1::digest(&expected)));
    assert_eq!(spliced.size, image.len() as u64);
    run("gzip", &["-t"], Some(member));
    let python = run(
        "python3",
        &[
            "-c",
            "import hashlib, sys, tarfile\n\
             t = tarfile.open(fileobj=sys.stdin.buffer, mode='r|gz')\n\
             m = t.next()\n\
             data = t.extractfile(m).read()\n\
             assert t.next() is None\n\
             print(m.name, len(data), hashlib.sha1(data).hexdigest())",
        ],
        Some(member),
    );
    assert_eq!(
        String::from_utf8_lossy(&python).trim(),
        format!(
            "disk.img {} {}",
            image.len(),
            hex::encode(Sha1::digest(image))
        )
    );
}

/// Copied, not deflated again: nearly all of the output is the upstream's own bits, and the
/// member is about the size gzip at the upstream's level makes of the image alone, whatever
/// level the fresh pieces use.
fn assert_reused(member: &[u8], spliced: &Spliced, image: &[u8], upstream_level: u32) {
    let stats = spliced.stats;
    assert!(stats.copied_blocks >= 5, "{stats:?}");
    assert!(
        stats.copied_bits / 8 >= member.len() as u64 * 9 / 10,
        "{stats:?} for {} bytes",
        member.len()
    );
    // The head (32 KiB and the rest of its block) and the tail are all that is fresh.
    assert!(stats.fresh_bytes < image.len() as u64 / 5, "{stats:?}");
    let alone = gzip_cli(image, upstream_level).len() as i64;
    let diff = (member.len() as i64 - alone).abs();
    assert!(
        diff < alone / 50 + 2048,
        "{} spliced against {alone} for the image alone",
        member.len()
    );
}

#[test]
fn gnu_tar_with_gzip_1_6_and_9_splices_the_image_member_placed_after_others() {
    let dir = tempfile::tempdir().unwrap();
    for level in [1, 6, 9] {
        let files = uec_files(3_000_000 + level as usize * 1111, level);
        let upstream = gnu_tar_gz(dir.path(), &files, level);
        // Fresh pieces at level 1: the copied level-9 data is told apart by its size.
        let (member, spliced) =
            splice_with(&upstream, FileKind::Image, 1, SPLICE_HOLD_MAX_BYTES).unwrap();
        assert_spliced_right(&member, &spliced, &files[2].1);
        assert_reused(&member, &spliced, &files[2].1, level);
        assert_eq!(spliced.stats.overflowed_blocks, 0);
    }
}

#[test]
fn python_tarfile_tarballs_splice_their_image_kernel_and_ramdisk() {
    let dir = tempfile::tempdir().unwrap();
    for level in [1, 9] {
        let files = uec_files(2_500_000, 10 + level);
        let upstream = python_tar_gz(dir.path(), &files, level);
        let (member, spliced) =
            splice_with(&upstream, FileKind::Image, 6, SPLICE_HOLD_MAX_BYTES).unwrap();
        assert_spliced_right(&member, &spliced, &files[2].1);
        assert_reused(&member, &spliced, &files[2].1, level);
        for (kind, index) in [(FileKind::Kernel, 0), (FileKind::Ramdisk, 4)] {
            let (member, spliced) = splice_with(&upstream, kind, 6, SPLICE_HOLD_MAX_BYTES).unwrap();
            assert_spliced_right(&member, &spliced, &files[index].1);
        }
    }
}

/// What `unpack` reads as the member is what the splicer framed: the same member picked.
#[test]
fn the_member_spliced_is_the_one_unpack_reads() {
    let dir = tempfile::tempdir().unwrap();
    let files = uec_files(400_000, 31);
    let upstream = gnu_tar_gz(dir.path(), &files, 6);
    let path = dir.path().join("uec.tar.gz");
    std::fs::write(&path, &upstream).unwrap();
    for kind in [FileKind::Kernel, FileKind::Ramdisk, FileKind::Image] {
        let unpacked = unpack::with_artifact_bytes(
            &path,
            crate::catalog::model::Compression::Gzip,
            crate::catalog::model::Packing::Tar,
            kind,
            &|_| {},
            |stream| {
                let mut out = Vec::new();
                stream.reader.read_to_end(&mut out).unwrap();
                Ok::<_, UnpackError>(out)
            },
        )
        .unwrap();
        let (member, spliced) = splice_with(&upstream, kind, 6, SPLICE_HOLD_MAX_BYTES).unwrap();
        assert_spliced_right(&member, &spliced, &unpacked);
    }
}

#[test]
fn small_and_empty_members_are_deflated_whole() {
    let dir = tempfile::tempdir().unwrap();
    for len in [0, 1, 511, 512, 30_000, 40_000] {
        let files = vec![
            ("vmlinuz", realistic_image(70_000, 40)),
            ("disk.img", realistic_image(len, 41)),
        ];
        let upstream = gnu_tar_gz(dir.path(), &files, 6);
        let (member, spliced) =
            splice_with(&upstream, FileKind::Image, 6, SPLICE_HOLD_MAX_BYTES).unwrap();
        assert_spliced_right(&member, &spliced, &files[1].1);
        if len < 32 << 10 {
            assert_eq!(spliced.stats.copied_blocks, 0, "{len}");
        }
        std::fs::remove_file(dir.path().join("disk.img")).unwrap();
    }
}

/// Blocks bigger than the hold are deflated afresh, and copying resumes after each: the output
/// is still the recompressed tar stream.
#[test]
fn blocks_bigger_than_the_hold_are_deflated_and_copying_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let files = uec_files(2_000_000, 50);
    let upstream = gnu_tar_gz(dir.path(), &files, 6);
    for hold in [1, 20_000, 60_000] {
        let (member, spliced) = splice_with(&upstream, FileKind::Image, 6, hold).unwrap();
        assert_spliced_right(&member, &spliced, &files[2].1);
        assert!(
            spliced.stats.overflowed_blocks > 0,
            "{hold}: {:?}",
            spliced.stats
        );
        if hold == 1 {
            assert_eq!(spliced.stats.copied_blocks, 0);
        }
    }
}

/// A fixed-Huffman code sent most significant bit first, as `push_bits` wants it (reversed).
fn push_code(bits: &mut BitWriter, code: u32, len: u8) {
    let reversed = (0..len).fold(0, |acc, i| acc | (((code >> i) & 1) << (len - 1 - i)));
    bits.push_bits(reversed, len);
}

/// A tarball whose image member holds one fixed-Huffman block of `zeros` zero bytes (a literal
/// 0, then matches of 258 at distance 1), after 40,000 stored bytes; everything else stored.
fn tarball_with_one_huge_block(zeros: usize) -> (Vec<u8>, Vec<u8>) {
    let mut image = realistic_image(40_000, 60);
    let start = image.len();
    image.resize(start + zeros, 0);
    let mut tar = unpack::raw_tar_member(
        ::tar::EntryType::Regular,
        "disk.img",
        "",
        &image,
        image.len() as u64,
    );
    tar.extend([0u8; 1024]);
    let mut bits = BitWriter::new();
    bits.push_bytes(&GZIP_HEADER);
    for chunk in tar[..512 + start].chunks(65_535) {
        bits.stored_block(chunk, false);
    }
    bits.push_bits(0b010, 3); // not final, fixed Huffman
    push_code(&mut bits, 0x30, 8); // literal 0
    let mut left = zeros - 1;
    while left > 0 {
        // Lengths 3-258 with at least 3 left over, or the rest as literals.
        if left >= 258 + 3 || left == 258 {
            push_code(&mut bits, 0b1100_0101, 8); // length code 285: 258
            push_code(&mut bits, 0, 5); // distance code 0: 1
            left -= 258;
        } else {
            push_code(&mut bits, 0x30, 8);
            left -= 1;
        }
    }
    push_code(&mut bits, 0, 7); // end of block
    let rest = &tar[512 + image.len()..];
    bits.stored_block(rest, true);
    let mut upstream = bits.take_whole_bytes();
    upstream.extend(crc32fast::hash(&tar).to_le_bytes());
    upstream.extend((tar.len() as u32).to_le_bytes());
    (upstream, image)
}

#[test]
fn a_block_bigger_than_the_hold_limit_is_deflated_afresh() {
    let (upstream, image) = tarball_with_one_huge_block(SPLICE_HOLD_MAX_BYTES + (1 << 20));
    let mut tar = Vec::new();
    GzDecoder::new(&upstream[..]).read_to_end(&mut tar).unwrap();
    let (member, spliced) =
        splice_with(&upstream, FileKind::Image, 6, SPLICE_HOLD_MAX_BYTES).unwrap();
    assert_spliced_right(&member, &spliced, &image);
    assert_eq!(spliced.stats.overflowed_blocks, 1, "{:?}", spliced.stats);
    // Under the limit, the same block is copied.
    let (upstream, image) = tarball_with_one_huge_block(SPLICE_HOLD_MAX_BYTES - (1 << 20));
    let (member, spliced) =
        splice_with(&upstream, FileKind::Image, 6, SPLICE_HOLD_MAX_BYTES).unwrap();
    assert_spliced_right(&member, &spliced, &image);
    assert_eq!(spliced.stats.overflowed_blocks, 0);
    assert!(spliced.stats.copied_blocks >= 1, "{:?}", spliced.stats);
}

fn refusal(upstream: &[u8]) -> BundleError {
    match splice_with(upstream, FileKind::Image, 6, SPLICE_HOLD_MAX_BYTES) {
        Err(error) => error,
        Ok(_) => panic!("spliced"),
    }
}

#[test]
fn a_bad_gzip_around_a_good_tar_is_not_spliced() {
    let dir = tempfile::tempdir().unwrap();
    let files = uec_files(500_000, 70);
    let good = gnu_tar_gz(dir.path(), &files, 6);
    let mut crc = good.clone();
    let at = crc.len() - 8;
    crc[at] ^= 1;
    let mut isize = good.clone();
    let at = isize.len() - 1;
    isize[at] ^= 1;
    let mut garbage = good.clone();
    garbage.extend(b"garbage");
    let mut two = good.clone();
    two.extend(gzip_cli(b"more", 6));
    let cut = good[..good.len() - 3].to_vec();
    for (name, upstream) in [
        ("crc", crc),
        ("isize", isize),
        ("garbage", garbage),
        ("two members", two),
        ("cut", cut),
    ] {
        let error = refusal(&upstream);
        assert!(
            matches!(error, BundleError::NotSpliceable(_)),
            "{name}: {error}"
        );
    }
}

#[test]
fn a_tarball_unpack_refuses_is_refused_with_unpack_s_error() {
    let image = realistic_image(100_000, 80);
    let build = |members: &[Vec<u8>]| {
        let mut tar = members.concat();
        tar.extend([0u8; 1024]);
        gzip_cli(&tar, 6)
    };
    let regular = |name: &str, data: &[u8]| {
        unpack::raw_tar_member(::tar::EntryType::Regular, name, "", data, data.len() as u64)
    };
    let hostile = build(&[regular("disk.img", &image), regular("../evil", b"x")]);
    assert!(matches!(
        refusal(&hostile),
        BundleError::Unpack(UnpackError::Refused { .. })
    ));
    let two = build(&[regular("a.img", &image), regular("b.img", b"B")]);
    assert!(matches!(
        refusal(&two),
        BundleError::Unpack(UnpackError::TwoMembers { .. })
    ));
    let none = build(&[regular("notes", &image)]);
    assert!(matches!(
        refusal(&none),
        BundleError::Unpack(UnpackError::NoMember { .. })
    ));
    // The header says more than the archive holds.
    let mut short =
        unpack::raw_tar_member(::tar::EntryType::Regular, "disk.img", "", &image, 200_000);
    short.truncate(512 + image.len());
    let error = refusal(&gzip_cli(&short, 6));
    assert!(
        matches!(
            error,
            BundleError::Unpack(UnpackError::Truncated { .. }) | BundleError::NotSpliceable(_)
        ),
        "{error}"
    );
}

/// Through the pipeline, a UEC tarball's image is spliced with the recompressed digest and size,
/// and a tarball the splicer will not take is recompressed.
#[test]
fn the_pipeline_splices_a_uec_tarball_and_recompresses_what_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let files = uec_files(6 << 20, 90);
    let good = gnu_tar_gz(dir.path(), &files, 9);
    let mut garbage = good.clone();
    garbage.extend(b"trailing");
    let bundle = |upstream: &[u8], recompress: bool, out: &str| {
        let source: PathBuf = dir.path().join(format!("{out}.tar.gz"));
        std::fs::write(&source, upstream).unwrap();
        let image = SourceImage {
            kind: FileKind::Image,
            path: &source,
            size: upstream.len() as u64,
            compression: crate::catalog::model::Compression::Gzip,
            packing: crate::catalog::model::Packing::Tar,
            prefix: "disk.img",
            arch: "x86_64",
            kernel_id: Some("eki-1"),
            ramdisk_id: Some("eri-1"),
            arriving: None,
            trailer_isize: None,
        };
        crate::testing::bundle_quietly(&image, dir.path(), out, 2, recompress).unwrap()
    };
    let spliced = bundle(&good, false, "spliced");
    let recompressed = bundle(&good, true, "recompressed");
    assert_eq!(spliced.digest, recompressed.digest);
    assert_eq!(
        spliced.digest,
        hex::encode(Sha1::digest(tar_stream("disk.img", &files[2].1)))
    );
    assert_eq!(spliced.size, files[2].1.len() as u64);
    assert_eq!(spliced.size, recompressed.size);
    assert!(
        spliced.bundled_size < recompressed.bundled_size,
        "level 9 copied, not level 1 deflated: {} against {}",
        spliced.bundled_size,
        recompressed.bundled_size
    );
    let fallback = bundle(&garbage, false, "fallback");
    assert_eq!(fallback.digest, recompressed.digest);
    assert_eq!(fallback.bundled_size, recompressed.bundled_size);
}
