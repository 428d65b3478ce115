//! The qcow2 reader (`image_store_proxy::unpack::qcow2`) against qemu itself: fixtures made here with
//! `qemu-img` (Debian qemu-utils) from raw files of known content, read through `Qcow2Reader` and
//! through `unpack::with_artifact_bytes` (the install's road) and compared by SHA-256 with
//! `qemu-img convert -O raw` of the same file; then one named test per image the reader must
//! refuse, made by qemu-img or by patching the bytes of a real fixture, each refusal reaching the
//! install as one line through `unpack`.
//! Without qemu-img each test says it is skipped and returns.

use crate::common;
use image_store_proxy::catalog::model::{Compression, FileKind, Packing};
use image_store_proxy::unpack::qcow2::{ClusterKind, Qcow2Error, Qcow2Image, Region};
use image_store_proxy::unpack::{self, UnpackError};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The host offset bits of a compressed L2 entry at 64 KiB clusters: x = 62 - (16 - 8) (the spec's
/// "Compressed Clusters Descriptor").
const COMPRESSED_OFFSET_MASK: u64 = (1 << 54) - 1;

/// Whether qemu-img runs here; if not, says the test is skipped.
fn have_qemu_img(test: &str) -> bool {
    let found = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!(
            "skipped {test}: qemu-img is not installed (Debian qemu-utils; test.sh installs it)"
        );
    }
    found
}

/// Runs qemu-img (or qemu-io) and panics with its stderr unless it succeeds.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs qemu-img; false (and a message) when this qemu-img does not know an option.
fn try_qemu_img(args: &[&str]) -> bool {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    if !out.status.success() {
        eprintln!(
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// A piece of a raw fixture.
enum Segment {
    /// Bytes that compress well but not to nothing: words from a small vocabulary.
    Text(u64),
    /// Incompressible bytes (qemu stores such clusters uncompressed even with `-c`).
    Random(u64),
    /// Zeros written out.
    Zeros(u64),
    /// A hole: never written.
    Hole(u64),
}

impl Segment {
    fn len(&self) -> u64 {
        match *self {
            Segment::Text(len)
            | Segment::Random(len)
            | Segment::Zeros(len)
            | Segment::Hole(len) => len,
        }
    }
}

/// Compressible text of `len` bytes: words picked by deterministic noise, now and then three
/// bytes of it, so deflate has work to do but plenty to gain.
fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "cloud ",
        "image ",
        "store ",
        "proxy ",
        "qcow2 ",
        "cluster ",
        "ubuntu ",
        "noble ",
        "bundle ",
        "deflate ",
        "\n",
        "eucalyptus ",
    ];
    let picks = common::noise(seed, len);
    let mut out = Vec::with_capacity(len + 16);
    for pick in picks.chunks(4) {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(WORDS[(pick[0] % 12) as usize].as_bytes());
        if pick[1] & 0x3 == 0 {
            out.extend_from_slice(&pick[1..]);
        }
    }
    out.truncate(len);
    out
}

/// Writes a raw file of `segments`, in order; returns its length.
fn make_raw(path: &Path, segments: &[Segment]) -> u64 {
    let mut file = File::create(path).unwrap();
    let mut at = 0;
    for (seed, segment) in (0x9e37_79b9_7f4a_7c15..).zip(segments) {
        match *segment {
            Segment::Text(len) => file.write_all(&text(seed, len as usize)).unwrap(),
            Segment::Random(len) => file.write_all(&common::noise(seed, len as usize)).unwrap(),
            Segment::Zeros(len) => file.write_all(&vec![0; len as usize]).unwrap(),
            Segment::Hole(len) => {
                file.seek(SeekFrom::Current(len as i64)).unwrap();
            }
        }
        at += segment.len();
    }
    file.set_len(at).unwrap();
    at
}

/// A raw disk with every kind of content, 12 MiB and 7 sectors: not a multiple of any cluster
/// size used here.
fn mixed_raw(path: &Path) -> u64 {
    let total = 12 * MIB + 7 * 512;
    let mut segments = vec![
        Segment::Text(MIB + 3000),
        Segment::Random(256 * KIB),
        Segment::Zeros(512 * KIB),
        Segment::Hole(2 * MIB),
        Segment::Text(300 * KIB),
        Segment::Random(64 * KIB + 100),
        Segment::Hole(3 * MIB),
        Segment::Text(2 * MIB),
        Segment::Zeros(MIB),
    ];
    let written: u64 = segments.iter().map(Segment::len).sum();
    segments.push(Segment::Random(total - written));
    make_raw(path, &segments)
}

fn sha256(mut reader: impl Read) -> (String, u64) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; MIB as usize];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    (hex::encode(hasher.finalize()), total)
}

/// Reads `qcow2` through the reader and through `qemu-img convert -O raw`; panics unless the two
/// are the same bytes. Returns the image, opened again, for the caller's own checks.
fn assert_same_as_qemu(qcow2: &Path) -> Qcow2Image<File> {
    let raw = qcow2.with_extension("qemu.raw");
    run(
        "qemu-img",
        &["convert", "-O", "raw", path(qcow2), path(&raw)],
    );
    let (expected, expected_len) = sha256(File::open(&raw).unwrap());
    fs::remove_file(&raw).unwrap();
    let image = Qcow2Image::open(File::open(qcow2).unwrap()).unwrap();
    assert_eq!(image.virtual_size(), expected_len, "{}", qcow2.display());
    let (actual, actual_len) = sha256(image.into_reader());
    assert_eq!(
        (&actual, actual_len),
        (&expected, expected_len),
        "{}",
        qcow2.display()
    );
    let (unpacked, unpacked_len) = through_unpack(qcow2, |stream| {
        assert_eq!(
            stream.size,
            Some(expected_len),
            "the stream states its size"
        );
        Ok(sha256(stream.reader))
    })
    .unwrap();
    assert_eq!(
        (unpacked, unpacked_len),
        (expected, expected_len),
        "{} through unpack",
        qcow2.display()
    );
    Qcow2Image::open(File::open(qcow2).unwrap()).unwrap()
}

/// `qcow2` as an install reads it: `unpack::with_artifact_bytes` on a qcow2 machine image.
fn through_unpack<T>(
    qcow2: &Path,
    read: impl FnOnce(unpack::ImageStream<'_>) -> Result<T, UnpackError>,
) -> Result<T, UnpackError> {
    unpack::with_artifact_bytes(
        qcow2,
        Compression::None,
        Packing::Qcow2,
        FileKind::Image,
        &|_| {},
        read,
    )
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// How many guest clusters of each kind: (unallocated, zero, data, compressed).
fn kinds(image: &mut Qcow2Image<File>) -> (u64, u64, u64, u64) {
    let mut counts = (0, 0, 0, 0);
    for cluster in image.clusters() {
        match cluster.unwrap().kind {
            ClusterKind::Unallocated => counts.0 += 1,
            ClusterKind::Zero => counts.1 += 1,
            ClusterKind::Data { .. } => counts.2 += 1,
            ClusterKind::Compressed(_) => counts.3 += 1,
        }
    }
    counts
}

/// Converts the mixed raw disk with `options` and checks it reads as qemu reads it.
fn convert_and_compare(options: &[&str], cluster_size: u64, version: u32) -> (u64, u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    mixed_raw(&raw);
    let mut args = vec!["convert"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["-f", "raw", "-O", "qcow2", path(&raw), path(&qcow2)]);
    run("qemu-img", &args);
    let mut image = assert_same_as_qemu(&qcow2);
    assert_eq!(image.cluster_size(), cluster_size);
    assert_eq!(image.version(), version);
    assert_ne!(
        image.virtual_size() % cluster_size,
        0,
        "the last cluster is short"
    );
    kinds(&mut image)
}

#[test]
fn compressed_v3_reads_as_qemu_reads_it() {
    if !have_qemu_img("compressed_v3_reads_as_qemu_reads_it") {
        return;
    }
    let (unallocated, _, data, compressed) = convert_and_compare(&["-c"], 64 * KIB, 3);
    assert!(
        unallocated > 0 && compressed > 0,
        "holes and compressed text"
    );
    assert!(data > 0, "random clusters stay uncompressed");
}

#[test]
fn uncompressed_v3_reads_as_qemu_reads_it() {
    if !have_qemu_img("uncompressed_v3_reads_as_qemu_reads_it") {
        return;
    }
    let (unallocated, _, data, compressed) = convert_and_compare(&[], 64 * KIB, 3);
    assert!(unallocated > 0 && data > 0 && compressed == 0);
}

#[test]
fn version_2_reads_as_qemu_reads_it() {
    if !have_qemu_img("version_2_reads_as_qemu_reads_it") {
        return;
    }
    let (_, zero, data, compressed) = convert_and_compare(&["-o", "compat=0.10"], 64 * KIB, 2);
    assert!(data > 0 && zero == 0 && compressed == 0);
    let (_, zero, _, compressed) = convert_and_compare(&["-c", "-o", "compat=0.10"], 64 * KIB, 2);
    assert!(compressed > 0 && zero == 0);
}

#[test]
fn small_clusters_read_as_qemu_reads_them() {
    if !have_qemu_img("small_clusters_read_as_qemu_reads_them") {
        return;
    }
    // 4 KiB clusters: an L2 table maps 2 MiB, so the disk spans seven of them.
    let (_, _, data, compressed) =
        convert_and_compare(&["-c", "-o", "cluster_size=4k"], 4 * KIB, 3);
    assert!(data > 0 && compressed > 0);
    convert_and_compare(&["-o", "cluster_size=4k"], 4 * KIB, 3);
}

#[test]
fn large_clusters_read_as_qemu_reads_them() {
    if !have_qemu_img("large_clusters_read_as_qemu_reads_them") {
        return;
    }
    let (_, _, _, compressed) = convert_and_compare(&["-c", "-o", "cluster_size=2M"], 2 * MIB, 3);
    assert!(compressed > 0);
    convert_and_compare(&["-o", "cluster_size=2M"], 2 * MIB, 3);
}

#[test]
fn a_disk_past_one_l2_table_reads_as_qemu_reads_it() {
    if !have_qemu_img("a_disk_past_one_l2_table_reads_as_qemu_reads_it") {
        return;
    }
    // At 64 KiB clusters one L2 table maps 512 MiB: data on both sides of that line.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    make_raw(
        &raw,
        &[
            Segment::Text(MIB),
            Segment::Hole(511 * MIB + 1536),
            Segment::Text(MIB),
            Segment::Random(100 * KIB),
            Segment::Hole(3 * 512),
        ],
    );
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            path(&raw),
            path(&qcow2),
        ],
    );
    let mut image = assert_same_as_qemu(&qcow2);
    let mut l2_tables = std::collections::BTreeSet::new();
    for cluster in image.clusters() {
        let cluster = cluster.unwrap();
        if !cluster.reads_as_zeros() {
            l2_tables.insert(cluster.guest_offset >> 29);
        }
    }
    assert_eq!(l2_tables.len(), 2, "data under two L2 tables");
}

#[test]
fn zero_clusters_read_as_zeros() {
    if !have_qemu_img("zero_clusters_read_as_zeros") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    mixed_raw(&raw);
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            path(&raw),
            path(&qcow2),
        ],
    );
    // Zero the first MiB (allocated: the zero flag over a preallocation) and a MiB of hole.
    for range in ["0 1M", "2M 1M"] {
        run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -z {range}"),
                path(&qcow2),
            ],
        );
    }
    let (_, zero, _, _) = kinds(&mut assert_same_as_qemu(&qcow2));
    assert!(zero >= 16, "{zero} zero clusters");
}

/// The refusal met opening `file` or reading it to the end, by the reader and through `unpack`:
/// there it is an `UnpackError::Qcow2` whose one line names the file, then says the reader's.
fn refusal(file: &Path) -> Qcow2Error {
    let error = match Qcow2Image::open(File::open(file).unwrap()) {
        Err(error) => error,
        Ok(image) => {
            let error = io::copy(&mut image.into_reader(), &mut io::sink()).unwrap_err();
            *error
                .into_inner()
                .unwrap()
                .downcast::<Qcow2Error>()
                .unwrap()
        }
    };
    let line = error.to_string();
    assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
    let unpacked = through_unpack(file, |stream| {
        io::copy(stream.reader, &mut io::sink())
            .map_err(|source| UnpackError::reading(file, source))
    })
    .unwrap_err();
    let reported = image_store_proxy::report::one_line(&unpacked);
    assert_eq!(
        reported,
        format!(
            "the qcow2 image {} cannot be installed: {line}",
            file.display()
        )
    );
    match unpacked {
        UnpackError::Qcow2 { source, .. } => assert_eq!(source.to_string(), line),
        other => panic!("not a qcow2 refusal: {other:?}"),
    }
    eprintln!("refused as expected: {reported}");
    error
}

/// A small real image to patch: compressed (`-c`) or not, 64 KiB clusters.
fn fixture(dir: &Path, compressed: bool) -> PathBuf {
    let raw = dir.join("small.raw");
    let qcow2 = dir.join("small.qcow2");
    make_raw(
        &raw,
        &[
            Segment::Text(MIB),
            Segment::Random(128 * KIB),
            Segment::Hole(MIB),
        ],
    );
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    if compressed {
        args.push("-c");
    }
    args.extend_from_slice(&[path(&raw), path(&qcow2)]);
    run("qemu-img", &args);
    qcow2
}

fn be64(bytes: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap())
}

fn put64(bytes: &mut [u8], at: u64, value: u64) {
    bytes[at as usize..at as usize + 8].copy_from_slice(&value.to_be_bytes());
}

/// Where the first L2 table is, and its first entry of a kind (`compressed` or standard).
fn first_l2_entry(bytes: &[u8], compressed: bool) -> (u64, u64, u64) {
    let l1 = be64(bytes, 40);
    let l2 = be64(bytes, l1) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0);
    for index in 0..8192 {
        let entry = be64(bytes, l2 + index * 8);
        if entry != 0 && (entry >> 62 & 1 == 1) == compressed {
            return (l2, index, entry);
        }
    }
    panic!("no such L2 entry");
}

/// Patches a fresh fixture with `patch` and returns the refusal.
fn patched(compressed: bool, patch: impl FnOnce(&mut Vec<u8>)) -> Qcow2Error {
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = fixture(dir.path(), compressed);
    let mut bytes = fs::read(&qcow2).unwrap();
    patch(&mut bytes);
    fs::write(&qcow2, &bytes).unwrap();
    refusal(&qcow2)
}

#[test]
fn refuses_a_backing_file() {
    if !have_qemu_img("refuses_a_backing_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let overlay = dir.path().join("overlay.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", path(&base), "1M"]);
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            path(&base),
            "-F",
            "qcow2",
            path(&overlay),
        ],
    );
    let error = refusal(&overlay);
    assert!(matches!(error, Qcow2Error::BackingFile { .. }), "{error}");
}

#[test]
fn refuses_an_external_data_file() {
    if !have_qemu_img("refuses_an_external_data_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.raw");
    let image = dir.path().join("image.qcow2");
    let option = format!("data_file={}", path(&data));
    run(
        "qemu-img",
        &["create", "-f", "qcow2", "-o", &option, path(&image), "1M"],
    );
    let error = refusal(&image);
    assert!(
        matches!(error, Qcow2Error::ExternalDataFile { .. }),
        "{error}"
    );
}

#[test]
fn refuses_an_encrypted_image() {
    if !have_qemu_img("refuses_an_encrypted_image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("luks.qcow2");
    let options = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10";
    let secret = "secret,id=s,data=x";
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "--object",
            secret,
            "-o",
            options,
            path(&image),
            "1M",
        ],
    );
    let error = refusal(&image);
    assert!(matches!(error, Qcow2Error::Encrypted { .. }), "{error}");
}

#[test]
fn refuses_zstd_compression() {
    if !have_qemu_img("refuses_zstd_compression") {
        return;
    }
    // No zstd crate in the tree: a zstd image is refused by name rather than read.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let image = dir.path().join("zstd.qcow2");
    make_raw(&raw, &[Segment::Text(MIB)]);
    let args = [
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
    ];
    if !try_qemu_img(&[&args[..], &[path(&raw), path(&image)]].concat()) {
        eprintln!("skipped refuses_zstd_compression: this qemu-img cannot write zstd");
        return;
    }
    let error = refusal(&image);
    assert!(
        matches!(error, Qcow2Error::UnsupportedCompression { kind: 1, .. }),
        "{error}"
    );
}

#[test]
fn refuses_an_l1_table_past_the_end_of_the_file() {
    if !have_qemu_img("refuses_an_l1_table_past_the_end_of_the_file") {
        return;
    }
    let error = patched(true, |bytes| {
        let past = (bytes.len() as u64).next_multiple_of(64 * KIB) + 64 * KIB;
        put64(bytes, 40, past);
    });
    assert!(
        matches!(
            error,
            Qcow2Error::BeyondEnd {
                what: Region::L1Table,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn refuses_an_l2_table_past_the_end_of_the_file() {
    if !have_qemu_img("refuses_an_l2_table_past_the_end_of_the_file") {
        return;
    }
    let error = patched(true, |bytes| {
        let l1 = be64(bytes, 40);
        let past = (bytes.len() as u64).next_multiple_of(64 * KIB) + 2 * 64 * KIB;
        put64(bytes, l1, 1 << 63 | past);
    });
    assert!(
        matches!(
            error,
            Qcow2Error::BeyondEnd {
                what: Region::L2Table { l1_index: 0 },
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn refuses_an_l2_entry_past_the_end_of_the_file() {
    if !have_qemu_img("refuses_an_l2_entry_past_the_end_of_the_file") {
        return;
    }
    let error = patched(false, |bytes| {
        let (l2, index, entry) = first_l2_entry(bytes, false);
        let past = (bytes.len() as u64).next_multiple_of(64 * KIB) + 4 * 64 * KIB;
        put64(bytes, l2 + index * 8, entry & (1 << 63) | past);
    });
    assert!(
        matches!(
            error,
            Qcow2Error::BeyondEnd {
                what: Region::DataCluster { .. },
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn refuses_a_compressed_cluster_past_the_end_of_the_file() {
    if !have_qemu_img("refuses_a_compressed_cluster_past_the_end_of_the_file") {
        return;
    }
    let error = patched(true, |bytes| {
        let (l2, index, entry) = first_l2_entry(bytes, true);
        let past = bytes.len() as u64 + 1000;
        put64(
            bytes,
            l2 + index * 8,
            entry & !COMPRESSED_OFFSET_MASK | past,
        );
    });
    assert!(
        matches!(
            error,
            Qcow2Error::BeyondEnd {
                what: Region::CompressedCluster { .. },
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn refuses_an_l2_entry_pointing_into_the_header() {
    if !have_qemu_img("refuses_an_l2_entry_pointing_into_the_header") {
        return;
    }
    // A standard cluster at host offset 0 (the "copied" flag set, so it is not unallocated).
    let error = patched(false, |bytes| {
        let (l2, index, _) = first_l2_entry(bytes, false);
        put64(bytes, l2 + index * 8, 1 << 63);
    });
    assert!(
        matches!(
            error,
            Qcow2Error::Overlap {
                other: Region::Header,
                ..
            }
        ),
        "{error}"
    );
    // A compressed cluster whose deflate data would start inside the header.
    let error = patched(true, |bytes| {
        let (l2, index, entry) = first_l2_entry(bytes, true);
        put64(bytes, l2 + index * 8, entry & !COMPRESSED_OFFSET_MASK | 100);
    });
    assert!(
        matches!(
            error,
            Qcow2Error::Overlap {
                other: Region::Header,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn refuses_an_l2_table_naming_itself_or_the_l1_table() {
    if !have_qemu_img("refuses_an_l2_table_naming_itself_or_the_l1_table") {
        return;
    }
    // The cycles qcow2 can have: an L2 table's entry naming that table, or the L1 table, as data;
    // an L1 entry naming the L1 table or the refcount table as an L2 table.
    let error = patched(false, |bytes| {
        let (l2, index, entry) = first_l2_entry(bytes, false);
        put64(bytes, l2 + index * 8, entry & (1 << 63) | l2);
    });
    assert!(
        matches!(
            error,
            Qcow2Error::Overlap {
                other: Region::L2Table { l1_index: 0 },
                ..
            }
        ),
        "{error}"
    );
    let error = patched(false, |bytes| {
        let (l2, index, entry) = first_l2_entry(bytes, false);
        let l1 = be64(bytes, 40);
        put64(bytes, l2 + index * 8, entry & (1 << 63) | l1);
    });
    assert!(
        matches!(
            error,
            Qcow2Error::Overlap {
                other: Region::L1Table,
                ..
            }
        ),
        "{error}"
    );
    for table in [40, 48] {
        let error = patched(false, |bytes| {
            let l1 = be64(bytes, 40);
            let target = be64(bytes, table);
            put64(bytes, l1, 1 << 63 | target);
        });
        assert!(
            matches!(
                error,
                Qcow2Error::Overlap {
                    what: Region::L2Table { l1_index: 0 },
                    ..
                }
            ),
            "{error}"
        );
    }
}

#[test]
fn refuses_a_compressed_cluster_with_flipped_deflate_data() {
    if !have_qemu_img("refuses_a_compressed_cluster_with_flipped_deflate_data") {
        return;
    }
    let error = patched(true, |bytes| {
        let (_, _, entry) = first_l2_entry(bytes, true);
        let offset = entry & COMPRESSED_OFFSET_MASK;
        for byte in &mut bytes[offset as usize..offset as usize + 200] {
            *byte ^= 0x5a;
        }
    });
    assert!(
        matches!(
            error,
            Qcow2Error::Inflate { .. }
                | Qcow2Error::InflateShort { .. }
                | Qcow2Error::InflateLong { .. }
                | Qcow2Error::InflateUnterminated { .. }
        ),
        "{error}"
    );
}

#[test]
fn refuses_a_virtual_size_of_2_to_the_62() {
    if !have_qemu_img("refuses_a_virtual_size_of_2_to_the_62") {
        return;
    }
    let error = patched(true, |bytes| put64(bytes, 24, 1 << 62));
    assert!(
        matches!(error, Qcow2Error::VirtualSizeTooLarge { size, .. } if size == 1 << 62),
        "{error}"
    );
}

#[test]
fn refuses_a_cluster_bits_of_40() {
    if !have_qemu_img("refuses_a_cluster_bits_of_40") {
        return;
    }
    let error = patched(true, |bytes| {
        bytes[20..24].copy_from_slice(&40u32.to_be_bytes())
    });
    assert!(
        matches!(
            error,
            Qcow2Error::BadHeader {
                field: "cluster_bits",
                value: 40,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn refuses_a_file_cut_short() {
    if !have_qemu_img("refuses_a_file_cut_short") {
        return;
    }
    // Cut inside the data: an L2 entry or the refcount table now points past the end.
    let error = patched(false, |bytes| bytes.truncate(bytes.len() - 100 * 1024));
    assert!(matches!(error, Qcow2Error::BeyondEnd { .. }), "{error}");
    let error = patched(false, |bytes| bytes.truncate(60));
    assert!(
        matches!(
            error,
            Qcow2Error::ShortRead {
                what: Region::Header,
                ..
            }
        ),
        "{error}"
    );
}

/// Whether `needle`'s bits lie in `haystack` at some bit offset: a deflate stream copied into
/// another at whatever bit it stood.
pub(crate) fn holds_bits(haystack: &[u8], needle: &[u8]) -> bool {
    (0..8).any(|shift| {
        let shifted: Vec<u8> = needle
            .windows(2)
            .map(|pair| (pair[1] << shift) | ((u16::from(pair[0]) >> (8 - shift)) as u8))
            .collect();
        haystack.windows(shifted.len()).any(|w| w == &shifted[..])
    })
}

/// Bytes 1..65 of every whole compressed cluster whose sectors run past 1 KiB: inside its
/// deflate stream (which ends in its last sector), after its first block's BFINAL. (A last
/// cluster cut short by the virtual size is deflated afresh.)
pub(crate) fn compressed_stream_heads(qcow2: &Path) -> Vec<Vec<u8>> {
    let mut image = Qcow2Image::open(File::open(qcow2).unwrap()).unwrap();
    let mut heads = Vec::new();
    for index in 0..image.cluster_count() {
        let cluster = image.cluster(index).unwrap();
        if let ClusterKind::Compressed(compressed) = cluster.kind
            && compressed.len > 1024
            && cluster.len == image.cluster_size()
        {
            heads.push(image.compressed_data(&cluster).unwrap()[1..65].to_vec());
        }
    }
    heads
}

/// A disk of `qemu-img convert -c` (64 KiB and 4 KiB clusters, some clusters rewritten
/// uncompressed by `qemu-io`, holes, a last cluster cut short) bundled as the pipeline bundles
/// it: spliced, and with `--recompress`. The spliced bundle decrypts with `openssl enc -d` to one
/// gzip member that `gzip -t` passes and Python's `tarfile` `r|gz` reads whole, holding qemu's raw
/// disk (`qemu-img convert -O raw`); its digest is the recompressed bundle's; and the compressed
/// clusters' own deflate bits are in it.
#[test]
fn a_compressed_disk_bundles_spliced_as_qemu_s_raw_disk_recompressed() {
    use image_store_proxy::bundle::{self, SourceImage};
    if !have_qemu_img("a_compressed_disk_bundles_spliced_as_qemu_s_raw_disk_recompressed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let keys = bundle::keys::fake_cloud_keys(&keys_dir).unwrap();
    let raw = dir.path().join("disk.raw");
    mixed_raw(&raw);
    for cluster_size in ["65536", "4096"] {
        let qcow2 = dir.path().join(format!("disk-{cluster_size}.qcow2"));
        run(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-o",
                &format!("cluster_size={cluster_size}"),
                "-f",
                "raw",
                "-O",
                "qcow2",
                path(&raw),
                path(&qcow2),
            ],
        );
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x3c 128k 256k", path(&qcow2)],
        );
        let expected = dir.path().join(format!("disk-{cluster_size}.qemu.raw"));
        run(
            "qemu-img",
            &["convert", "-O", "raw", path(&qcow2), path(&expected)],
        );
        let expected = fs::read(&expected).unwrap();
        let size = fs::metadata(&qcow2).unwrap().len();
        let bundle_with = |recompress: bool| {
            let image = SourceImage {
                kind: FileKind::Image,
                path: &qcow2,
                arriving: None,
                trailer_isize: None,
                size,
                compression: Compression::None,
                packing: Packing::Qcow2,
                prefix: "disk1.img",
                arch: "x86_64",
                kernel_id: None,
                ramdisk_id: None,
            };
            let out = dir.path().join(format!(
                "{cluster_size}-{}",
                if recompress { "r" } else { "s" }
            ));
            common::bundle_at_level_1(&image, &keys, &out, recompress)
        };
        let spliced = bundle_with(false);
        let recompressed = bundle_with(true);
        let opened = common::openssl::open_bundle(
            &spliced.manifest_path,
            &keys_dir.join("user-pk.pem"),
            common::openssl::WrappedFor::User,
            &dir.path().join(format!("opened-{cluster_size}")),
        );
        assert_eq!(opened.member, "disk1.img");
        assert!(opened.image == expected, "{cluster_size}: qemu's raw disk");
        assert_eq!(spliced.digest, recompressed.digest, "{cluster_size}");
        assert_eq!(spliced.size, expected.len() as u64);
        assert_eq!(spliced.digest, common::openssl::sha1_of_bytes(&opened.tar));
        common::openssl::run("gzip", &["-t"], Some(&opened.compressed));
        assert_eq!(
            common::openssl::python_tarfile_member(&opened.compressed),
            format!(
                "disk1.img {} {}",
                expected.len(),
                common::openssl::sha1_of_bytes(&expected)
            )
        );
        let heads = compressed_stream_heads(&qcow2);
        assert!(heads.len() > 10, "{cluster_size}: {} clusters", heads.len());
        // A sample: each search is a scan of the whole bundle at eight shifts.
        for head in heads.iter().step_by(heads.len() / 6) {
            assert!(
                holds_bits(&opened.compressed, head),
                "{cluster_size}: a compressed cluster's deflate bits are in the bundle"
            );
        }
    }
}
