//! A qcow2 version 3 writer (qemu's `docs/interop/qcow2.txt`) for the simplestreams `disk1.img`
//! items: a whole raw disk as `qemu-img convert -c -O qcow2` would store it. Clusters of zeros are
//! left unallocated, clusters deflate shrinks are stored compressed (raw deflate with a 4 KiB
//! window, as qemu compresses and inflates them), the rest are stored as they are. Everything is
//! laid out once, in memory: the demo disks are a few MiB.
//!
//! Layout: the header cluster, the uncompressed data clusters, the compressed data (packed byte
//! by byte, the area padded to a cluster), the L2 tables, the L1 table, the refcount blocks and
//! the refcount table.

use flate2::{Compress, Compression, FlushCompress, Status};

const MAGIC: &[u8; 4] = b"QFI\xfb";
const VERSION: u32 = 3;
/// 64 KiB clusters, qemu's default.
const CLUSTER_BITS: u32 = 16;
const CLUSTER: usize = 1 << CLUSTER_BITS;
/// 16-bit refcounts (`refcount_order` 4), qemu's default.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: usize = CLUSTER / 2;
/// The version 3 header without the optional compression-type field: deflate is implied.
const HEADER_LENGTH: u32 = 104;
const ENTRIES_PER_TABLE: usize = CLUSTER / 8;
/// qemu compresses with `deflateInit2(.., -12, ..)` and inflates with a 4 KiB window: a longer
/// window would make back-references qemu cannot follow.
const DEFLATE_WINDOW_BITS: u8 = 12;
const SECTOR: usize = 512;
/// L1 and standard L2 entries: the cluster's refcount is exactly one.
const OFLAG_COPIED: u64 = 1 << 63;
/// An L2 entry that is a compressed cluster descriptor.
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Where a compressed descriptor's sector count starts: `62 - (cluster_bits - 8)`.
const COMPRESSED_SECTORS_SHIFT: u32 = 62 - (CLUSTER_BITS - 8);

/// How one guest cluster is stored.
enum Stored {
    Unallocated,
    Plain(usize),
    Compressed(Vec<u8>),
}

/// `raw` (a whole disk, its length a multiple of 512) as a qcow2 v3 image with compressed clusters.
pub fn compressed_whole_disk(raw: &[u8]) -> Vec<u8> {
    assert!(
        raw.len().is_multiple_of(SECTOR),
        "a disk is whole sectors, not {} bytes",
        raw.len()
    );
    let guest_clusters = raw.len().div_ceil(CLUSTER);
    let stored: Vec<Stored> = (0..guest_clusters)
        .map(|index| {
            let mut cluster = raw[index * CLUSTER..raw.len().min((index + 1) * CLUSTER)].to_vec();
            cluster.resize(CLUSTER, 0);
            if cluster.iter().all(|b| *b == 0) {
                Stored::Unallocated
            } else {
                match deflate(&cluster) {
                    Some(compressed) => Stored::Compressed(compressed),
                    None => Stored::Plain(index),
                }
            }
        })
        .collect();

    let mut image = vec![0u8; CLUSTER]; // the header cluster, written last
    let mut l2_entries = vec![0u64; guest_clusters];
    // Host cluster -> refcount, grown as clusters are used.
    let mut refcounts: Vec<u16> = vec![1];
    for (index, stored) in stored.iter().enumerate() {
        if let Stored::Plain(guest) = stored {
            let offset = image.len();
            let end = raw.len().min((guest + 1) * CLUSTER);
            image.extend_from_slice(&raw[guest * CLUSTER..end]);
            image.resize(offset + CLUSTER, 0);
            refcounts.push(1);
            l2_entries[index] = offset as u64 | OFLAG_COPIED;
        }
    }
    for (index, stored) in stored.iter().enumerate() {
        if let Stored::Compressed(data) = stored {
            let offset = image.len();
            image.extend_from_slice(data);
            // qemu reads the sectors from the one holding `offset` to the one holding the end.
            let additional_sectors = (offset + data.len() - 1) / SECTOR - offset / SECTOR;
            let first = offset / CLUSTER;
            let last = (offset + (additional_sectors + 1) * SECTOR - offset % SECTOR - 1) / CLUSTER;
            for host in first..=last {
                count_reference(&mut refcounts, host);
            }
            l2_entries[index] = OFLAG_COMPRESSED
                | ((additional_sectors as u64) << COMPRESSED_SECTORS_SHIFT)
                | offset as u64;
        }
    }
    pad_to_cluster(&mut image);

    let l1_size = guest_clusters.div_ceil(ENTRIES_PER_TABLE);
    let mut l1 = vec![0u64; l1_size];
    for (table, entries) in l2_entries.chunks(ENTRIES_PER_TABLE).enumerate() {
        if entries.iter().all(|e| *e == 0) {
            continue; // an absent L2 table reads as unallocated clusters
        }
        let offset = append_table(&mut image, &mut refcounts, entries);
        l1[table] = offset | OFLAG_COPIED;
    }
    let l1_offset = if l1.is_empty() {
        0
    } else {
        append_table(&mut image, &mut refcounts, &l1)
    };

    // The refcount blocks count themselves and the refcount table too: grow until they fit.
    let used = refcounts.len();
    let (mut blocks, mut table_clusters) = (0, 0);
    loop {
        let total = used + blocks + table_clusters;
        let needed_blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
        let needed_table = (needed_blocks * 8).div_ceil(CLUSTER);
        if (needed_blocks, needed_table) == (blocks, table_clusters) {
            break;
        }
        (blocks, table_clusters) = (needed_blocks, needed_table);
    }
    refcounts.resize(used + blocks + table_clusters, 1);
    let first_block = image.len();
    for block in refcounts.chunks(REFCOUNTS_PER_BLOCK) {
        for count in block {
            image.extend_from_slice(&count.to_be_bytes());
        }
        pad_to_cluster(&mut image);
    }
    let refcount_table_offset = image.len();
    for block in 0..blocks {
        image.extend_from_slice(&((first_block + block * CLUSTER) as u64).to_be_bytes());
    }
    pad_to_cluster(&mut image);
    debug_assert_eq!(image.len(), refcounts.len() * CLUSTER);

    let header = [
        &MAGIC[..],
        &VERSION.to_be_bytes(),
        &0u64.to_be_bytes(), // no backing file
        &0u32.to_be_bytes(),
        &CLUSTER_BITS.to_be_bytes(),
        &(raw.len() as u64).to_be_bytes(),
        &0u32.to_be_bytes(), // no encryption
        &(l1_size as u32).to_be_bytes(),
        &l1_offset.to_be_bytes(),
        &(refcount_table_offset as u64).to_be_bytes(),
        &(table_clusters as u32).to_be_bytes(),
        &0u32.to_be_bytes(), // no snapshots
        &0u64.to_be_bytes(),
        &0u64.to_be_bytes(), // incompatible features
        &0u64.to_be_bytes(), // compatible features
        &0u64.to_be_bytes(), // autoclear features
        &REFCOUNT_ORDER.to_be_bytes(),
        &HEADER_LENGTH.to_be_bytes(),
    ]
    .concat();
    debug_assert_eq!(header.len(), HEADER_LENGTH as usize);
    // The eight zero bytes after the header are the end-of-extensions marker.
    image[..header.len()].copy_from_slice(&header);
    image
}

/// One cluster deflated as qemu does, or `None` when that saves nothing.
fn deflate(cluster: &[u8]) -> Option<Vec<u8>> {
    let mut compressor =
        Compress::new_with_window_bits(Compression::default(), false, DEFLATE_WINDOW_BITS);
    let mut out = Vec::with_capacity(CLUSTER);
    match compressor.compress_vec(cluster, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) if out.len() < CLUSTER - SECTOR => Some(out),
        _ => None, // did not fit the buffer: not worth compressing
    }
}

fn count_reference(refcounts: &mut Vec<u16>, host_cluster: usize) {
    if refcounts.len() <= host_cluster {
        refcounts.resize(host_cluster + 1, 0);
    }
    refcounts[host_cluster] += 1;
}

fn pad_to_cluster(image: &mut Vec<u8>) {
    image.resize(image.len().div_ceil(CLUSTER) * CLUSTER, 0);
}

/// Appends a table of big-endian entries in whole clusters of its own; returns its offset.
fn append_table(image: &mut Vec<u8>, refcounts: &mut Vec<u16>, entries: &[u64]) -> u64 {
    let offset = image.len();
    for entry in entries {
        image.extend_from_slice(&entry.to_be_bytes());
    }
    pad_to_cluster(image);
    for host in offset / CLUSTER..image.len() / CLUSTER {
        count_reference(refcounts, host);
    }
    offset as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Zeros, text and noise clusters, and a partial last cluster.
    fn disk() -> Vec<u8> {
        let mut disk = vec![0u8; 3 * CLUSTER];
        disk.extend(
            b"fake-store qcow2 test text. "
                .iter()
                .cycle()
                .take(5 * CLUSTER),
        );
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..(2 * CLUSTER / 8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            disk.extend_from_slice(&state.to_le_bytes());
        }
        disk.extend(std::iter::repeat_n(7u8, 9 * SECTOR));
        disk
    }

    fn qemu_img(args: &[&str]) -> std::process::Output {
        Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img is installed (the test command installs it)")
    }

    #[test]
    fn qemu_img_checks_the_image_and_converts_it_back_to_the_same_disk() {
        let raw = disk();
        let image = compressed_whole_disk(&raw);
        assert!(image.len() < raw.len(), "{} bytes", image.len());
        let dir = tempfile::tempdir().unwrap();
        let qcow2 = dir.path().join("disk1.img");
        std::fs::write(&qcow2, &image).unwrap();
        let path = qcow2.to_str().unwrap();

        let check = qemu_img(&["check", "--output=json", "-f", "qcow2", path]);
        let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
        assert!(
            check.status.success(),
            "qemu-img check: {report}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        assert_eq!(report["check-errors"], 0, "{report}");
        assert_eq!(report.get("leaks"), None, "{report}");
        assert_eq!(report.get("corruptions"), None, "{report}");
        // text clusters compressed, noise clusters plain, zero clusters unallocated
        assert!(
            report["compressed-clusters"].as_u64().unwrap() >= 5,
            "{report}"
        );
        assert_eq!(report["allocated-clusters"], 5 + 2 + 1, "{report}");

        let info = qemu_img(&["info", "--output=json", path]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], raw.len());
        assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");

        let back = dir.path().join("disk.raw");
        let convert = qemu_img(&[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            path,
            back.to_str().unwrap(),
        ]);
        assert!(
            convert.status.success(),
            "{}",
            String::from_utf8_lossy(&convert.stderr)
        );
        assert!(
            std::fs::read(&back).unwrap() == raw,
            "the converted disk differs"
        );
    }

    #[test]
    fn an_empty_disk_is_a_valid_image_with_nothing_allocated() {
        let image = compressed_whole_disk(&vec![0u8; 4 * CLUSTER]);
        let dir = tempfile::tempdir().unwrap();
        let qcow2 = dir.path().join("empty.img");
        std::fs::write(&qcow2, &image).unwrap();
        let check = qemu_img(&["check", "--output=json", qcow2.to_str().unwrap()]);
        let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
        assert!(check.status.success(), "{report}");
        assert_eq!(report["check-errors"], 0, "{report}");
        // qemu-img leaves a zero count out
        assert_eq!(
            report["allocated-clusters"].as_u64().unwrap_or(0),
            0,
            "{report}"
        );
    }
}
