//! The splicer against gzip(1)'s own output, and each upstream it must refuse by name.

use super::*;
use flate2::read::GzDecoder;
use std::process::{Command, Stdio};

/// A raw-image-like mix: noise, zeros, text, a repeating pattern.
pub(super) fn realistic_image(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut image = Vec::with_capacity(len);
    while image.len() < len {
        let run = 1 + (state as usize % 40_000);
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        match state % 4 {
            0 => image.extend((0..run).map(|i| ((state >> (i % 24)) ^ i as u32) as u8)),
            1 => image.extend(std::iter::repeat_n(0u8, run)),
            2 => image.extend(
                b"GNU C Library (Ubuntu GLIBC 2.39) stable release version 2.39.\n"
                    .iter()
                    .cycle()
                    .take(run),
            ),
            _ => image.extend((0..run).map(|i| (i % 251) as u8)),
        }
    }
    image.truncate(len);
    image
}

/// `data` through `gzip -LEVEL -c`: the compressor upstreams use.
pub(super) fn gzip_cli(data: &[u8], level: u32) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg(format!("-{level}"))
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip(1) runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn gzip_flate2(data: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// The tar stream recompression writes for `image` named `name`.
pub(super) fn tar_stream(name: &str, image: &[u8]) -> Vec<u8> {
    let mut tar = format::tar_header(name, image.len() as u64).to_vec();
    tar.extend_from_slice(image);
    tar.extend(std::iter::repeat_n(
        0u8,
        format::tar_tail_len(image.len() as u64) as usize,
    ));
    tar
}

fn splice(upstream: &[u8], size: u64) -> Result<(Vec<u8>, String), BundleError> {
    let mut out = Vec::new();
    let digest = write_member(
        &mut &upstream[..],
        "disk.img",
        size,
        6,
        &mut out,
        &mut |_| true,
    )?;
    Ok((out, digest))
}

/// Spliced, the gzip member holds exactly the recompressed tar stream, its digest is that
/// stream's SHA-1, and nothing follows the member.
fn assert_spliced_right(upstream: &[u8], image: &[u8]) {
    let (member, digest) = splice(upstream, image.len() as u64).unwrap();
    let expected = tar_stream("disk.img", image);
    let mut decoder = GzDecoder::new(&member[..]);
    let mut got = Vec::new();
    decoder.read_to_end(&mut got).unwrap();
    assert!(got == expected, "the tar stream differs");
    assert_eq!(digest, hex::encode(Sha1::digest(&expected)));
    // One member, nothing after it: a multi-member reader sees the same bytes.
    let mut all = Vec::new();
    flate2::read::MultiGzDecoder::new(&member[..])
        .read_to_end(&mut all)
        .unwrap();
    assert!(all == expected);
    // Reused, not recompressed: about the upstream's size.
    assert!(
        member.len() <= upstream.len() + 600 + 64,
        "{} spliced bytes from {}",
        member.len(),
        upstream.len()
    );
}

#[test]
fn gzip_1_6_and_9_upstreams_are_spliced_to_the_recompressed_tar_stream() {
    for (level, len) in [(1, 3_000_000), (6, 2_500_001), (9, 1_000_333)] {
        let image = realistic_image(len, level);
        assert_spliced_right(&gzip_cli(&image, level), &image);
    }
}

#[test]
fn small_empty_and_stored_block_upstreams_are_spliced() {
    for image in [
        Vec::new(),
        b"x".to_vec(),
        realistic_image(511, 3),
        realistic_image(512, 4),
        realistic_image(100_000, 5),
    ] {
        for level in [0, 1, 6, 9] {
            assert_spliced_right(&gzip_flate2(&image, level), &image);
        }
    }
}

#[test]
fn a_gzip_header_with_name_comment_extra_and_header_crc_is_read_past() {
    let image = realistic_image(70_000, 7);
    let mut encoder = flate2::GzBuilder::new()
        .filename("disk.img")
        .comment("built by a test")
        .extra(vec![1, 2, 3, 4])
        .write(Vec::new(), flate2::Compression::default());
    encoder.write_all(&image).unwrap();
    let mut upstream = encoder.finish().unwrap();
    assert_eq!(upstream[3], 4 | 8 | 16);
    assert_spliced_right(&upstream, &image);
    // FHCRC: flate2 does not write it; set it and insert the CRC-16 of the header by hand.
    let header_end = upstream
        .iter()
        .skip(10 + 2 + 4)
        .position(|&b| b == 0)
        .map(|name_end| {
            let after_name = 10 + 2 + 4 + name_end + 1;
            after_name + upstream[after_name..].iter().position(|&b| b == 0).unwrap() + 1
        })
        .unwrap();
    upstream[3] |= 2;
    let crc16 = (crc32fast::hash(&upstream[..header_end]) & 0xffff) as u16;
    let mut with_crc = upstream.clone();
    with_crc.splice(header_end..header_end, crc16.to_le_bytes());
    assert_spliced_right(&with_crc, &image);
    let mut wrong = upstream;
    wrong.splice(header_end..header_end, (crc16 ^ 1).to_le_bytes());
    assert_eq!(
        unsuitable(&wrong, image.len() as u64),
        Unsuitable::Header("a header CRC that does not match")
    );
}

/// A match whose distance reaches before the stream's first byte: zlib refuses it, and spliced
/// after the tar header it would copy header bytes; miniz's wrapping buffer would not notice.
#[test]
fn a_match_reaching_before_the_first_byte_is_not_spliced() {
    let mut deflate = bits::BitWriter::new();
    deflate.push_bits(0b011, 3); // final, fixed Huffman
    deflate.push_bits(0b100_0000, 7); // length code 257 (3 bytes), code 0000001 sent MSB first
    deflate.push_bits(0, 5); // distance code 0: 1 byte back, before anything was written
    deflate.push_bits(0, 7); // end of block
    let mut upstream = GZIP_HEADER.to_vec();
    upstream.extend(deflate.take_whole_bytes());
    upstream.extend(deflate_tail_byte(&mut deflate));
    upstream.extend(crc32fast::hash(&[0, 0, 0]).to_le_bytes());
    upstream.extend(3u32.to_le_bytes());
    assert!(
        GzDecoder::new(&upstream[..])
            .read_to_end(&mut Vec::new())
            .is_err(),
        "gunzip refuses it too"
    );
    assert!(matches!(unsuitable(&upstream, 3), Unsuitable::Corrupt(_)));
}

/// The partly filled last byte of `bits`, if any.
fn deflate_tail_byte(bits: &mut bits::BitWriter) -> Vec<u8> {
    bits.push_bits(0, (8 - bits.phase()) % 8);
    bits.take_whole_bytes()
}

#[test]
fn the_upstream_last_block_ends_at_every_bit_phase_across_sizes() {
    let mut phases = [0usize; 8];
    for len in 0..200usize {
        let image = realistic_image(len * 37 + len % 5, len as u32);
        let upstream = gzip_flate2(&image, 1 + (len % 9) as u32);
        let mut go_on = |_| true;
        let mut source = &upstream[..];
        let mut walker = member::Walker::new(&mut source, &mut go_on).unwrap();
        let end = loop {
            if let member::Step::End(end) = walker.next().unwrap() {
                break end;
            }
        };
        assert_eq!(end.length, image.len() as u64);
        phases[usize::from(end.last_bits)] += 1;
        assert_spliced_right(&upstream, &image);
    }
    assert!(phases.iter().all(|&n| n > 0), "phases met: {phases:?}");
}

fn unsuitable(upstream: &[u8], size: u64) -> Unsuitable {
    match splice(upstream, size) {
        Err(BundleError::NotSpliceable(why)) => why,
        other => panic!("expected a refusal, got {:?}", other.map(|(_, d)| d)),
    }
}

#[test]
fn a_multi_member_upstream_is_not_spliced() {
    let mut upstream = gzip_cli(b"first member", 6);
    upstream.extend(gzip_cli(b"second member", 6));
    assert_eq!(unsuitable(&upstream, 12), Unsuitable::SecondMember);
}

#[test]
fn trailing_garbage_after_the_trailer_is_not_spliced() {
    let image = realistic_image(50_000, 9);
    let mut upstream = gzip_cli(&image, 6);
    upstream.extend(b"garbage");
    assert_eq!(
        unsuitable(&upstream, image.len() as u64),
        Unsuitable::TrailingData
    );
    // Zero padding, as some tape-era tools leave, is trailing data too.
    let mut padded = gzip_cli(&image, 6);
    padded.extend([0u8; 512]);
    assert_eq!(
        unsuitable(&padded, image.len() as u64),
        Unsuitable::TrailingData
    );
}

#[test]
fn a_wrong_crc_is_not_spliced() {
    let image = realistic_image(50_000, 10);
    let mut upstream = gzip_cli(&image, 6);
    let at = upstream.len() - 8;
    upstream[at] ^= 0x01;
    assert!(matches!(
        unsuitable(&upstream, image.len() as u64),
        Unsuitable::Crc { .. }
    ));
}

#[test]
fn a_wrong_isize_is_not_spliced() {
    let image = realistic_image(50_000, 11);
    let mut upstream = gzip_cli(&image, 6);
    let at = upstream.len() - 1;
    upstream[at] ^= 0x01;
    assert!(matches!(
        unsuitable(&upstream, image.len() as u64),
        Unsuitable::Length { .. }
    ));
}

#[test]
fn a_truncated_upstream_is_not_spliced() {
    let image = realistic_image(300_000, 12);
    let upstream = gzip_cli(&image, 6);
    for cut in [
        5,
        10,
        11,
        upstream.len() / 2,
        upstream.len() - 9,
        upstream.len() - 1,
    ] {
        assert_eq!(
            unsuitable(&upstream[..cut], image.len() as u64),
            Unsuitable::Truncated,
            "cut at {cut}"
        );
    }
}

#[test]
fn corrupt_deflate_data_and_a_foreign_header_are_not_spliced() {
    let image = realistic_image(300_000, 13);
    let mut upstream = gzip_cli(&image, 6);
    for byte in &mut upstream[10..40] {
        *byte = 0xff;
    }
    assert!(matches!(
        unsuitable(&upstream, image.len() as u64),
        Unsuitable::Corrupt(_) | Unsuitable::Crc { .. }
    ));
    assert!(matches!(
        unsuitable(b"BZh91AY&SY not gzip at all", 1),
        Unsuitable::Header(_)
    ));
    let mut reserved = gzip_cli(b"abc", 6);
    reserved[3] |= 0x80;
    assert!(matches!(unsuitable(&reserved, 3), Unsuitable::Header(_)));
}

#[test]
fn an_image_longer_than_the_size_stated_stops_with_a_size_mismatch() {
    let image = realistic_image(100_000, 14);
    let upstream = gzip_cli(&image, 6);
    assert!(matches!(
        splice(&upstream, 99_999),
        Err(BundleError::SizeMismatch {
            expected: 99_999,
            ..
        })
    ));
    assert!(matches!(
        splice(&upstream, 100_001),
        Err(BundleError::SizeMismatch {
            expected: 100_001,
            actual: 100_000
        })
    ));
}

#[test]
fn every_refusal_is_one_line() {
    for why in [
        Unsuitable::Header("no gzip magic"),
        Unsuitable::Corrupt(12),
        Unsuitable::Truncated,
        Unsuitable::Crc {
            stated: 1,
            actual: 2,
        },
        Unsuitable::Length {
            stated: 1,
            actual: 2,
        },
        Unsuitable::SecondMember,
        Unsuitable::TrailingData,
        Unsuitable::UnknownSize,
        Unsuitable::Tar("the upstream ends inside the member"),
    ] {
        let line = BundleError::from(why).to_string();
        assert!(line.starts_with("the upstream's compressed data cannot be spliced: "));
        assert!(!line.contains('\n'));
    }
}

/// Through the pipeline: `bundle_artifact` on `upstream` as a gzipped raw image, spliced or
/// with `--recompress`, at level 1 on 2 threads.
/// An error comes back as its line, the temporary directory's path said as `DIR`.
fn bundle_through_pipeline(upstream: &[u8], recompress: bool) -> Result<Bundle, String> {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("disk.img.gz");
    std::fs::write(&source, upstream).unwrap();
    let image = SourceImage {
        kind: crate::catalog::model::FileKind::Image,
        path: &source,
        size: upstream.len() as u64,
        compression: Compression::Gzip,
        packing: Packing::Raw,
        prefix: "disk.img",
        arch: "x86_64",
        kernel_id: None,
        ramdisk_id: None,
        arriving: None,
        trailer_isize: None,
    };
    let bundle = crate::testing::bundle_quietly(&image, dir.path(), "bundle", 2, recompress);
    if let Ok(bundle) = &bundle {
        let files = std::fs::read_dir(dir.path().join("bundle"))
            .unwrap()
            .count();
        assert_eq!(
            files,
            bundle.parts.len() + 1,
            "the parts and the manifest only"
        );
    }
    bundle.map_err(|error| {
        error
            .to_string()
            .replace(&dir.path().display().to_string(), "DIR")
    })
}

#[test]
fn the_pipeline_splices_a_gzipped_raw_image_with_the_recompressed_digest_and_size() {
    let image = realistic_image(12 << 20, 21);
    let upstream = gzip_cli(&image, 9);
    let spliced = bundle_through_pipeline(&upstream, false).unwrap();
    let recompressed = bundle_through_pipeline(&upstream, true).unwrap();
    assert_eq!(spliced.digest, recompressed.digest);
    assert_eq!(
        spliced.digest,
        hex::encode(Sha1::digest(tar_stream("disk.img", &image)))
    );
    assert_eq!(spliced.size, image.len() as u64);
    assert_eq!(spliced.size, recompressed.size);
    assert!(!spliced.parts.is_empty());
    // The upstream's level-9 data, not a level-1 recompression: within the framing of its size.
    assert!(
        spliced.bundled_size <= upstream.len() as u64 + 700,
        "{} bundled from {} upstream",
        spliced.bundled_size,
        upstream.len()
    );
    assert!(recompressed.bundled_size > spliced.bundled_size);
}

/// Each upstream the splicer refuses bundles exactly as `--recompress` does: a second member
/// bundles whole, bad data fails with recompression's own error.
#[test]
fn every_unspliceable_upstream_falls_back_to_recompression() {
    let image = realistic_image(400_000, 22);
    let good = gzip_cli(&image, 6);
    let mut multi = gzip_cli(&image[..100_000], 6);
    multi.extend(gzip_cli(&image[100_000..], 6));
    let mut garbage = good.clone();
    garbage.extend(b"trailing garbage");
    let mut crc = good.clone();
    let at = crc.len() - 8;
    crc[at] ^= 0x40;
    let truncated = good[..good.len() / 2].to_vec();
    for (name, upstream) in [
        ("multi-member", multi),
        ("trailing garbage", garbage),
        ("wrong CRC", crc),
        ("truncated", truncated),
    ] {
        let spliced = bundle_through_pipeline(&upstream, false);
        let recompressed = bundle_through_pipeline(&upstream, true);
        match (&spliced, &recompressed) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.digest, b.digest, "{name}");
                assert_eq!(a.size, image.len() as u64, "{name}");
            }
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{name}");
                assert!(!a.contains("spliced"), "{name}: {a}");
            }
            _ => panic!("{name}: spliced {spliced:?}, recompressed {recompressed:?}"),
        }
        if name == "multi-member" {
            assert!(spliced.is_ok(), "a second member is not an error");
        } else {
            assert!(spliced.is_err(), "{name} is bad data");
        }
    }
}
