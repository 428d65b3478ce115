//! Times the bundle writer on one image (see `bench/bundle.sh`, which also times the shell pipeline
//! `euca-bundle-image` runs on the same bytes). Usage: bundle_throughput DIR MIB
//! Writes DIR/image (disk-like bytes: zero runs, text, noise) unless it exists, bundles it into
//! DIR/proxy/, and prints the time and the input rate.

use image_store_proxy::bundle::gzip::GzipSettings;
use image_store_proxy::bundle::keys;
use image_store_proxy::bundle::{self, BundleSpec};
use image_store_proxy::catalog::model::FileKind;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

fn write_image(path: &Path, mib: u64) {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let text =
        b"root:x:0:0:root:/root:/bin/bash\nGNU GRUB  version 1.97~beta4\nlibc6 2.10.1-0ubuntu15\n";
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        // Per MiB: a third zeros, a third text, a third noise, as a freshly built root disk is.
        let third = chunk.len() / 3;
        chunk[..third].fill(0);
        for (i, byte) in chunk[third..2 * third].iter_mut().enumerate() {
            *byte = text[i % text.len()];
        }
        for byte in chunk[2 * third..].iter_mut() {
            *byte = next() as u8;
        }
        out.write_all(&chunk).unwrap();
    }
    out.flush().unwrap();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DIR"));
    let mib: u64 = args.next().map_or(512, |m| m.parse().expect("MIB"));
    let image = dir.join("image");
    if !image.exists() {
        write_image(&image, mib);
    }
    let keys = keys::fake_cloud_keys(&dir.join("keys")).unwrap();
    let out = dir.join("proxy");
    std::fs::create_dir_all(&out).unwrap();
    let size = std::fs::metadata(&image).unwrap().len();
    let spec = BundleSpec {
        prefix: "image",
        kind: FileKind::Image,
        arch: "x86_64",
        kernel_id: None,
        ramdisk_id: None,
        size,
        gzip: GzipSettings::default_for_this_machine(),
    };
    let started = Instant::now();
    let mut file = std::fs::File::open(&image).unwrap();
    let made = bundle::write_bundle(&mut file, &spec, &keys, &out, &mut |_| true).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let mib = size as f64 / (1 << 20) as f64;
    println!(
        "proxy bundle writer: {mib:.0} MiB in {seconds:.2} s = {:.1} MiB/s ({} parts, {:.0} MiB bundled)",
        mib / seconds,
        made.parts.len(),
        made.bundled_size as f64 / (1 << 20) as f64
    );
    // The writer streams: the peak stays flat whatever the image's size.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(peak) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        println!(
            "peak RSS of the bundling process: {}",
            peak["VmHWM:".len()..].trim()
        );
    }
}
