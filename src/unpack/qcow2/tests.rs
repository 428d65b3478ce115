use super::reader::inflate_cluster;
use super::*;
use flate2::Decompress;
use flate2::{Compress, Compression, FlushCompress};
use std::io::Cursor;
use std::io::Read;

const CLUSTER_BITS: u32 = 9;
const CLUSTER: usize = 1 << CLUSTER_BITS;

/// A small v3 image with 512-byte clusters: header (cluster 0), refcount table (1), refcount
/// block (2), L1 (3), L2 (4), then data clusters; `entries` are the L2 entries.
fn image(entries: &[u64], data: &[u8], virtual_size: u64) -> Vec<u8> {
    let mut file = vec![0u8; 5 * CLUSTER];
    file[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    file[4..8].copy_from_slice(&3u32.to_be_bytes());
    file[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
    file[24..32].copy_from_slice(&virtual_size.to_be_bytes());
    file[36..40].copy_from_slice(&1u32.to_be_bytes());
    file[40..48].copy_from_slice(&(3 * CLUSTER as u64).to_be_bytes());
    file[48..56].copy_from_slice(&(CLUSTER as u64).to_be_bytes());
    file[56..60].copy_from_slice(&1u32.to_be_bytes());
    file[96..100].copy_from_slice(&4u32.to_be_bytes());
    file[100..104].copy_from_slice(&112u32.to_be_bytes());
    file[CLUSTER..CLUSTER + 8].copy_from_slice(&(2 * CLUSTER as u64).to_be_bytes());
    file[3 * CLUSTER..3 * CLUSTER + 8]
        .copy_from_slice(&(FLAG_COPIED | (4 * CLUSTER as u64)).to_be_bytes());
    for (i, entry) in entries.iter().enumerate() {
        let at = 4 * CLUSTER + i * 8;
        file[at..at + 8].copy_from_slice(&entry.to_be_bytes());
    }
    file.extend_from_slice(data);
    file
}

fn open(file: &[u8]) -> Result<Qcow2Image<Cursor<&[u8]>>, Qcow2Error> {
    Qcow2Image::open(Cursor::new(file))
}

fn read_all(file: &[u8]) -> Result<Vec<u8>, io::Error> {
    let mut out = Vec::new();
    open(file)?.into_reader().read_to_end(&mut out)?;
    Ok(out)
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    compress
        .compress_vec(data, &mut out, FlushCompress::Finish)
        .unwrap();
    out
}

/// An L2 entry for a compressed cluster of 512-byte clusters at `offset`, `len` bytes.
fn compressed_entry(offset: u64, len: u64) -> u64 {
    let offset_bits = 62 - (CLUSTER_BITS - 8);
    let sectors = (offset + len).div_ceil(SECTOR) - offset / SECTOR;
    FLAG_COMPRESSED | ((sectors - 1) << offset_bits) | offset
}

fn data_offset(n: usize) -> u64 {
    ((5 + n) * CLUSTER) as u64
}

#[test]
fn reads_each_kind_of_cluster() {
    let pattern: Vec<u8> = (0..CLUSTER).map(|i| (i * 7 % 251) as u8).collect();
    let mut data = pattern.clone();
    let packed = deflate(&pattern);
    data.extend_from_slice(&packed);
    let entries = [
        FLAG_COPIED | data_offset(0),
        0,
        FLAG_ZERO,
        compressed_entry(data_offset(1), packed.len() as u64),
    ];
    let file = image(&entries, &data, 4 * CLUSTER as u64 - 100);
    let mut opened = open(&file).unwrap();
    let kinds: Vec<_> = opened.clusters().map(|c| c.unwrap().kind).collect();
    assert_eq!(
        kinds[0],
        ClusterKind::Data {
            host_offset: data_offset(0)
        }
    );
    assert_eq!(kinds[1], ClusterKind::Unallocated);
    assert_eq!(kinds[2], ClusterKind::Zero);
    assert!(matches!(kinds[3], ClusterKind::Compressed(c) if c.host_offset == data_offset(1)));
    let raw = read_all(&file).unwrap();
    assert_eq!(raw.len(), 4 * CLUSTER - 100);
    assert_eq!(&raw[..CLUSTER], &pattern[..]);
    assert!(raw[CLUSTER..3 * CLUSTER].iter().all(|&b| b == 0));
    assert_eq!(&raw[3 * CLUSTER..], &pattern[..CLUSTER - 100]);
}

#[test]
fn reads_through_odd_sized_reads() {
    let pattern: Vec<u8> = (0..2 * CLUSTER).map(|i| (i * 13 % 256) as u8).collect();
    let packed = deflate(&pattern[CLUSTER..]);
    let mut data = pattern[..CLUSTER].to_vec();
    data.extend_from_slice(&packed);
    let entries = [
        data_offset(0),
        compressed_entry(data_offset(1), packed.len() as u64),
    ];
    let file = image(&entries, &data, 2 * CLUSTER as u64);
    let mut reader = open(&file).unwrap().into_reader();
    let mut out = Vec::new();
    let mut buf = [0u8; 77];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, pattern);
}

fn refusal(file: &[u8]) -> Qcow2Error {
    match open(file) {
        Err(error) => error,
        Ok(image) => {
            let mut out = Vec::new();
            let error = image.into_reader().read_to_end(&mut out).unwrap_err();
            *error
                .into_inner()
                .unwrap()
                .downcast::<Qcow2Error>()
                .unwrap()
        }
    }
}

#[test]
fn refuses_bad_headers() {
    let good = image(&[], &[], 4096);
    let patched = |at: usize, bytes: &[u8]| {
        let mut file = good.clone();
        file[at..at + bytes.len()].copy_from_slice(bytes);
        refusal(&file)
    };
    assert!(matches!(patched(0, b"QFI\0"), Qcow2Error::BadMagic { .. }));
    assert!(matches!(
        patched(4, &4u32.to_be_bytes()),
        Qcow2Error::UnsupportedVersion { version: 4 }
    ));
    assert!(matches!(
        patched(20, &40u32.to_be_bytes()),
        Qcow2Error::BadHeader {
            field: "cluster_bits",
            ..
        }
    ));
    assert!(matches!(
        patched(24, &(1u64 << 62).to_be_bytes()),
        Qcow2Error::VirtualSizeTooLarge { .. }
    ));
    assert!(matches!(
        patched(8, &(600u64).to_be_bytes()),
        Qcow2Error::BackingFile { offset: 600, .. }
    ));
    assert!(matches!(
        patched(32, &2u32.to_be_bytes()),
        Qcow2Error::Encrypted { .. }
    ));
    assert!(matches!(
        patched(79, &[1 << 5]),
        Qcow2Error::UnknownIncompatibleFeatures { bits: 0x20 }
    ));
    assert!(matches!(
        patched(79, &[4]),
        Qcow2Error::ExternalDataFile { .. }
    ));
    assert!(matches!(
        patched(79, &[16]),
        Qcow2Error::UnsupportedFeature { bit: 4, .. }
    ));
    assert!(matches!(
        patched(79, &[2]),
        Qcow2Error::UnsupportedFeature { bit: 1, .. }
    ));
    // The dirty bit only says the refcounts may be stale: the image still reads.
    let mut dirty = good.clone();
    dirty[79] = 1;
    assert_eq!(read_all(&dirty).unwrap(), vec![0; 4096]);
    let mut zstd = good.clone();
    zstd[79] = 8;
    zstd[104] = 1;
    assert!(matches!(
        refusal(&zstd),
        Qcow2Error::UnsupportedCompression { kind: 1, .. }
    ));
    assert!(matches!(
        patched(100, &100u32.to_be_bytes()),
        Qcow2Error::BadHeader {
            field: "header_length",
            ..
        }
    ));
    assert!(matches!(
        patched(36, &0u32.to_be_bytes()),
        Qcow2Error::L1TooSmall { .. }
    ));
    assert!(matches!(
        patched(40, &(7 * CLUSTER as u64).to_be_bytes()),
        Qcow2Error::BeyondEnd {
            what: Region::L1Table,
            ..
        }
    ));
    assert!(matches!(
        patched(40, &(0u64).to_be_bytes()),
        Qcow2Error::Overlap {
            what: Region::L1Table,
            other: Region::Header,
            ..
        }
    ));
    assert!(matches!(
        patched(40, &(700u64).to_be_bytes()),
        Qcow2Error::Misaligned { .. }
    ));
    let extension = [0x05, 0x37, 0xbe, 0x77, 0, 0, 0, 16];
    assert!(matches!(
        patched(112, &extension),
        Qcow2Error::Encrypted { .. }
    ));
    let extension = [0x44, 0x41, 0x54, 0x41, 0, 0, 0, 4];
    assert!(matches!(
        patched(112, &extension),
        Qcow2Error::ExternalDataFile { .. }
    ));
    let extension = [0x12, 0x34, 0x56, 0x78, 0, 0, 0xff, 0xff];
    assert!(matches!(
        patched(112, &extension),
        Qcow2Error::BadHeader {
            field: "header extension area",
            ..
        }
    ));
    assert!(matches!(
        refusal(&good[..50]),
        Qcow2Error::ShortRead {
            what: Region::Header,
            ..
        }
    ));
}

/// What a refusal must match.
type Expected = fn(&Qcow2Error) -> bool;

#[test]
fn refuses_bad_references() {
    let l2 = 4 * CLUSTER as u64;
    let cases: [(&[u64], Expected); 7] = [
        (&[data_offset(9)], |e| {
            matches!(e, Qcow2Error::BeyondEnd { .. })
        }),
        (&[l2], |e| {
            matches!(
                e,
                Qcow2Error::Overlap {
                    other: Region::L2Table { l1_index: 0 },
                    ..
                }
            )
        }),
        (&[3 * CLUSTER as u64], |e| {
            matches!(
                e,
                Qcow2Error::Overlap {
                    other: Region::L1Table,
                    ..
                }
            )
        }),
        (&[2 * CLUSTER as u64], |e| {
            matches!(
                e,
                Qcow2Error::Overlap {
                    other: Region::RefcountBlock { index: 0 },
                    ..
                }
            )
        }),
        (&[FLAG_COPIED], |e| {
            matches!(
                e,
                Qcow2Error::Overlap {
                    other: Region::Header,
                    ..
                }
            )
        }),
        (&[data_offset(0) | 2], |e| {
            matches!(e, Qcow2Error::ReservedBits { .. })
        }),
        (&[compressed_entry(l2 + 8, 100)], |e| {
            matches!(e, Qcow2Error::Overlap { .. })
        }),
    ];
    for (entries, expected) in cases {
        let file = image(entries, &[0; CLUSTER], CLUSTER as u64);
        let error = refusal(&file);
        assert!(expected(&error), "{entries:x?}: {error}");
    }
    // The L1 entry names the refcount table, or the L1 table itself, as its L2 table.
    for target in [CLUSTER as u64, 3 * CLUSTER as u64] {
        let mut file = image(&[], &[], CLUSTER as u64);
        file[3 * CLUSTER..3 * CLUSTER + 8].copy_from_slice(&target.to_be_bytes());
        assert!(matches!(
            refusal(&file),
            Qcow2Error::Overlap {
                what: Region::L2Table { .. },
                ..
            }
        ));
    }
    // The L2 table is also the refcount block.
    let mut file = image(&[], &[], CLUSTER as u64);
    file[3 * CLUSTER..3 * CLUSTER + 8].copy_from_slice(&(2 * CLUSTER as u64).to_be_bytes());
    assert!(matches!(refusal(&file), Qcow2Error::Overlap { .. }));
}

#[test]
fn refuses_a_compressed_cluster_that_is_not_one_cluster() {
    let check = |payload: &[u8], expected: Expected| {
        let entries = [compressed_entry(data_offset(0), payload.len() as u64)];
        let file = image(&entries, payload, CLUSTER as u64);
        let error = refusal(&file);
        assert!(expected(&error), "{error}");
        assert!(!error.to_string().contains('\n'));
    };
    check(&deflate(&[5; CLUSTER - 1]), |e| {
        matches!(e, Qcow2Error::InflateShort { produced: 511, .. })
    });
    check(&deflate(&[5; CLUSTER + 1]), |e| {
        matches!(e, Qcow2Error::InflateLong { .. })
    });
    let whole = deflate(&[5; CLUSTER]);
    check(&whole[..whole.len() / 2], |e| {
        matches!(
            e,
            Qcow2Error::InflateShort { .. } | Qcow2Error::InflateUnterminated { .. }
        )
    });
    check(&[0xff; 16], |e| matches!(e, Qcow2Error::Inflate { .. }));
}

#[test]
fn inflates_a_stream_followed_by_other_bytes() {
    let mut input = deflate(&[9; CLUSTER]);
    input.extend_from_slice(&[0xff; 40]);
    let mut out = vec![0; CLUSTER];
    inflate_cluster(&mut Decompress::new(false), &input, &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 9));
}

#[test]
fn fuzz_harness_takes_what_it_is_given() {
    let pattern: Vec<u8> = (0..CLUSTER).map(|i| i as u8).collect();
    fuzz_qcow2(&image(&[data_offset(0)], &pattern, CLUSTER as u64));
    fuzz_qcow2(&[]);
    fuzz_qcow2(b"QFI\xfb");
    fuzz_qcow2(&image(&[], &[], 1 << 40));
}

/// The fuzz seeds are real qemu-img images (512-byte clusters): each opens and reads whole.
#[test]
fn fuzz_seeds_are_images_that_read() {
    let seeds: [&[u8]; 3] = [
        include_bytes!("../../../fuzz/corpus/qcow2/seed-compressed-v3-512.qcow2"),
        include_bytes!("../../../fuzz/corpus/qcow2/seed-v2-512.qcow2"),
        include_bytes!("../../../fuzz/corpus/qcow2/seed-empty-v3.qcow2"),
    ];
    for seed in seeds {
        fuzz_qcow2(seed);
        let raw = read_all(seed).unwrap();
        assert_eq!(raw.len() as u64, open(seed).unwrap().virtual_size());
    }
    let raw = read_all(seeds[0]).unwrap();
    assert!(raw.starts_with(b"cloud image store proxy qcow2 1\n"));
    assert_eq!(raw, read_all(seeds[1]).unwrap());
}
