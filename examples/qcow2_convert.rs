//! Converts a qcow2 image to its raw disk with the proxy's streaming reader, and prints the rate:
//! the HVM install path's first stage, timed beside `qemu-img convert -O raw` on the same file.
//! Usage: qcow2_convert IMAGE.qcow2 [OUTPUT|-]   (no OUTPUT: read and discard; `-`: stdout)
//! The rate (MiB of raw disk per second) goes to stderr.

use image_store_proxy::unpack::qcow2::Qcow2Image;
use std::fs::File;
use std::io::{self, Read, Write};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(input) = args.next() else {
        anyhow::bail!("usage: qcow2_convert IMAGE.qcow2 [OUTPUT|-]");
    };
    let mut output: Box<dyn Write> = match args.next().as_deref() {
        None => Box::new(io::sink()),
        Some("-") => Box::new(io::stdout().lock()),
        Some(path) => Box::new(File::create(path)?),
    };
    let started = Instant::now();
    let image = Qcow2Image::open(File::open(&input)?)?;
    let (virtual_size, cluster_size) = (image.virtual_size(), image.cluster_size());
    let mut reader = image.into_reader();
    // Reads of several clusters: data clusters go straight into this buffer, no copy.
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n])?;
        total += n as u64;
    }
    output.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    let mib = total as f64 / f64::from(1 << 20);
    eprintln!(
        "{input}: {mib:.1} MiB raw ({virtual_size} bytes, {cluster_size}-byte clusters) in {seconds:.2} s: {:.0} MiB/s",
        mib / seconds
    );
    Ok(())
}
