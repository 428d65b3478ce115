//! The demo image sets: small but real files, generated (never committed as binaries). Two sets
//! share the same kernel and ramdisk, as releases of one distribution often do, so a demo install
//! of the second shows the proxy reusing what it already has. As simplestreams they are two
//! releases, the second with two serials and an arm64 port (see `simplestreams.rs`).

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use std::io::{self, Write};
use std::path::Path;

const MIB: usize = 1 << 20;
const COMPLETE: &str = ".demo-complete";

/// A small deterministic PRNG (xorshift64*): the same demo bytes on every machine.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        while len > 0 && !out.len().is_multiple_of(8) {
            out.push(self.next() as u8);
        }
        let end = out.len() + len;
        while out.len() + 8 <= end {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        while out.len() < end {
            out.push(self.next() as u8);
        }
    }
}

/// A bzImage-looking kernel: boot sector signature, `HdrS` setup header, then noise.
fn kernel() -> Vec<u8> {
    let mut bytes = vec![0u8; 0x400];
    bytes[0x1fe] = 0x55;
    bytes[0x1ff] = 0xaa;
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    bytes[0x100..0x100 + 38].copy_from_slice(b"image-store-proxy demo kernel 2.6.31\0\0");
    Noise(0x6b65_726e_656c).fill(&mut bytes, 2 * MIB - 0x400);
    bytes
}

/// A raw disk image: zero runs, text-like blocks and noise, like a sparse filesystem.
fn disk_image(seed: u64, len: usize) -> Vec<u8> {
    let mut noise = Noise(seed);
    let text = b"Lorem ipsum dolor sit amet, image-store-proxy demo filesystem block. ";
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let block = (len - bytes.len()).min(64 << 10);
        match noise.next() % 4 {
            0 | 1 => bytes.resize(bytes.len() + block, 0),
            2 => bytes.extend(text.iter().cycle().take(block)),
            _ => noise.fill(&mut bytes, block),
        }
    }
    bytes
}

/// A newc cpio archive, the format of Linux initramfs images.
fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
    fn pad(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    let trailer: &[(&str, &[u8])] = &[("TRAILER!!!", b"")];
    for (ino, (name, data)) in files.iter().chain(trailer).enumerate() {
        let mode = if *name == "TRAILER!!!" { 0 } else { 0o100644 };
        let fields = [
            ino as u32 + 1,
            mode,
            0,
            0,
            1,
            1_256_000_000,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for field in fields {
            out.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend_from_slice(data);
        pad(&mut out);
    }
    out
}

fn ramdisk() -> Vec<u8> {
    let init = b"#!/bin/sh\necho 'image-store-proxy demo initramfs'\nexec /sbin/init\n";
    let modules = b"virtio_blk\nvirtio_net\next3\n";
    let mut firmware = Vec::new();
    Noise(0x7261_6d64).fill(&mut firmware, 48 << 10);
    cpio(&[
        ("init", init),
        ("etc/modules", modules),
        ("lib/firmware/demo.bin", &firmware),
    ])
}

fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

fn tar(member: &str, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_271_000_000);
    builder.append_data(&mut header, member, bytes)?;
    builder.into_inner()
}

/// Writes the demo image sets into `dir`, unless a previous run already completed them.
pub fn write_demo_images(dir: &Path) -> io::Result<()> {
    if dir.join(COMPLETE).exists() {
        return Ok(());
    }
    let kernel = kernel();
    let ramdisk = gzip(&ramdisk())?;
    let provider = json!({"title": "Canonical (demo)", "uri": "https://www.ubuntu.com/"});
    let karmic = dir.join("ubuntu-9.10-server-amd64");
    std::fs::create_dir_all(&karmic)?;
    std::fs::write(karmic.join("kernel"), &kernel)?;
    std::fs::write(karmic.join("ramdisk.gz"), &ramdisk)?;
    std::fs::write(karmic.join("image.gz"), gzip(&disk_image(910, 8 * MIB))?)?;
    let meta = json!({
        "title": "Ubuntu 9.10 Server (amd64)", "version": "9.10", "product": "ubuntu-server-amd64",
        "summary": "Ubuntu Server 9.10 (Karmic Koala) for the Ubuntu Enterprise Cloud",
        "description-html": "<p>A demo image of Ubuntu Server.</p><ul><li>kernel and ramdisk</li><li>8 MiB root disk</li></ul>",
        "tags": ["ubuntu", "server", "karmic"], "arch": "x86_64", "provider": provider,
        "release": "karmic", "release-codename": "Karmic Koala", "release-title": "9.10",
        "serials": ["20100415"],
    });
    std::fs::write(karmic.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;

    let lucid = dir.join("ubuntu-10.04-server-amd64");
    std::fs::create_dir_all(&lucid)?;
    std::fs::write(lucid.join("kernel"), &kernel)?;
    std::fs::write(lucid.join("ramdisk.gz"), &ramdisk)?;
    std::fs::write(
        lucid.join("image.tar.gz"),
        gzip(&tar(
            "lucid-server-uec-amd64.img",
            &disk_image(1004, 6 * MIB),
        )?)?,
    )?;
    let meta = json!({
        "title": "Ubuntu 10.04 LTS Server (amd64)", "version": "10.04", "product": "ubuntu-server-amd64",
        "summary": "Lucid Lynx \u{2014} long-term support, shipped as a UEC tarball",
        "description-html": "<p>A demo image shipped as <code>*.tar.gz</code>, as UEC images were.</p>",
        "tags": ["ubuntu", "server", "lucid", "lts"], "arch": "x86_64", "provider": provider,
        "release": "lucid", "release-codename": "Lucid Lynx", "release-title": "10.04 LTS",
        "serials": ["20100427", "20101020"], "ports": ["arm64"],
    });
    std::fs::write(lucid.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
    std::fs::write(dir.join(COMPLETE), b"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn demo_sets_are_valid_and_share_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        write_demo_images(dir.path()).unwrap();
        let karmic = dir.path().join("ubuntu-9.10-server-amd64");
        let lucid = dir.path().join("ubuntu-10.04-server-amd64");
        assert_eq!(
            std::fs::read(karmic.join("kernel")).unwrap(),
            std::fs::read(lucid.join("kernel")).unwrap()
        );
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(karmic.join("image.gz")).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), 8 * MIB);
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(karmic.join("ramdisk.gz")).unwrap())
            .read_to_end(&mut cpio)
            .unwrap();
        assert!(cpio.starts_with(b"070701"));
        let tarball =
            flate2::read::GzDecoder::new(std::fs::File::open(lucid.join("image.tar.gz")).unwrap());
        let mut archive = tar::Archive::new(tarball);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(
            entry.path().unwrap().to_str(),
            Some("lucid-server-uec-amd64.img")
        );
        assert_eq!(entry.size(), 6 * MIB as u64);
        // A second call finds the sets complete and leaves them alone.
        write_demo_images(dir.path()).unwrap();
    }
}
