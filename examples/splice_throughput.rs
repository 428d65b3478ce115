//! Times one gzipped raw image, one UEC tarball (a name ending in `.tar.gz`: its `*.img` member),
//! or one qcow2 disk (its compressed clusters; told by its magic), bundled through
//! `bundle_artifact`, spliced (the upstream's deflate data reused) or with `--recompress` (a
//! qcow2 disk converted to its raw disk first), at level 6 on every core, with the fake cloud's
//! keys. Usage: splice_throughput IMAGE.GZ|IMAGE.TAR.GZ|DISK.QCOW2 OUT-DIR splice|recompress
//! Prints the wall time, the process's CPU seconds (user + system), the image and bundle sizes,
//! and the image's MiB/s. Run it under `/usr/bin/time -v` for peak RSS.

use image_store_proxy::bundle::gzip::GzipSettings;
use image_store_proxy::bundle::{self, BundleSink, SourceImage, keys};
use image_store_proxy::catalog::model::{Compression, FileKind, Packing};
use image_store_proxy::status::Step;
use std::path::Path;
use std::time::Instant;

struct Quiet;
impl BundleSink for Quiet {
    fn step(&self, _: Step) {}
}

/// User + system CPU seconds of this process so far, from /proc/self/stat (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn main() {
    // The pipeline says at info why it recompresses what it was asked to splice.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let [_, source, out, mode] = &args[..] else {
        eprintln!(
            "usage: splice_throughput IMAGE.GZ|IMAGE.TAR.GZ|DISK.QCOW2 OUT-DIR splice|recompress"
        );
        std::process::exit(2);
    };
    let source = Path::new(source);
    let out = Path::new(out);
    let keys = keys::fake_cloud_keys(&out.join("keys")).unwrap();
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(source).unwrap(), &mut magic).unwrap();
    let (compression, packing) = if magic == *b"QFI\xfb" {
        (Compression::None, Packing::Qcow2)
    } else if source.to_string_lossy().ends_with(".tar.gz") {
        (Compression::Gzip, Packing::Tar)
    } else {
        (Compression::Gzip, Packing::Raw)
    };
    let image = SourceImage {
        kind: FileKind::Image,
        path: source,
        size: std::fs::metadata(source).unwrap().len(),
        compression,
        packing,
        prefix: "image",
        arch: "x86_64",
        kernel_id: None,
        ramdisk_id: None,
        arriving: None,
        trailer_isize: None,
    };
    let gzip = GzipSettings {
        recompress: mode == "recompress",
        ..GzipSettings::default_for_this_machine()
    };
    let cpu = cpu_seconds();
    let started = Instant::now();
    let made = bundle::bundle_artifact(
        &image,
        &keys,
        &out.join(mode),
        gzip,
        &Quiet,
        &tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{mode}: {wall:.2} s wall, {:.2} CPU s, {:.0} MiB/s of image, image {} bytes, upstream {} bytes, bundle {} bytes, digest {}",
        cpu_seconds() - cpu,
        made.size as f64 / wall / f64::from(1 << 20),
        made.size,
        image.size,
        made.bundled_size,
        made.digest
    );
}
