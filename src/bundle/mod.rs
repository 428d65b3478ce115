//! The EC2 image bundle (SPEC §7), apart from any cloud that receives one: `format.rs` writes it
//! (tar framing, SHA-1, gzip, AES-128-CBC, 10 MiB parts, the signed manifest; pure and
//! streaming), `gzip.rs` deflates on every core, `splice/` reuses a gzipped upstream's (or a compressed
//! qcow2 disk's clusters') own deflate data instead, `keys.rs` loads and makes the RSA keys a bundle
//! is wrapped and signed with, and `pipeline.rs` ([`bundle_artifact`]) reads a verified cache file
//! once, unpacking it on a reader thread while this thread bundles.
//!
//! The bundler reports as it goes through a [`BundleSink`] (push model, after ripgrep's `Sink`):
//! typed progress steps for the status line, and each part the moment it is closed and synced, so
//! that an uploader can start on it while the next part is written.

pub mod format;
pub mod gzip;
pub mod keys;
mod pipeline;
pub mod splice;

use crate::catalog::model::{Compression, FileKind, Packing};
use crate::status::Step;
use crate::unpack;
use std::path::{Path, PathBuf};

pub use format::{
    Bundle, BundleError, BundleSpec, MAX_PREFIX, MachineConfiguration, PART_SIZE, Part, PartSink,
    complete_manifest, signed_text, write_bundle, write_bundle_into,
};
pub use pipeline::bundle_artifact;

/// A verified image file and what its bundle says about it: what [`bundle_artifact`] reads.
#[derive(Clone, Copy)]
pub struct SourceImage<'a> {
    pub kind: FileKind,
    /// The cache file (named in messages).
    pub path: &'a Path,
    /// Set when the file is still downloading: its readers follow the download (an overlapped
    /// install); unset, the file at `path` is read, whole.
    pub arriving: Option<unpack::OpenArriving<'a>>,
    /// A gzipped image's ISIZE (its trailer's last four bytes) read ahead of the download, so
    /// that an arriving file's bundle need not wait for its end to size its tar header; checked
    /// like the trailer's own.
    pub trailer_isize: Option<u32>,
    /// Its size on disk (compressed, or the tarball's), which progress is counted in.
    pub size: u64,
    pub compression: Compression,
    pub packing: Packing,
    /// The bundle prefix: the tar member's name, the parts' and the manifest's file names.
    pub prefix: &'a str,
    /// `x86_64` or `i386`.
    pub arch: &'a str,
    /// For a machine image: the kernel and ramdisk it boots with.
    pub kernel_id: Option<&'a str>,
    pub ramdisk_id: Option<&'a str>,
}

impl<'a> SourceImage<'a> {
    /// Where the bundler reads the file's bytes from.
    pub fn source(&self) -> unpack::Source<'a> {
        match self.arriving {
            Some(open) => unpack::Source::arriving(self.path, open),
            None => unpack::Source::at_rest(self.path),
        }
    }

    /// What its bundle is made of: its names and links, `size` bytes, deflated by `gzip`.
    pub fn bundle_spec(&self, size: u64, gzip: gzip::GzipSettings) -> format::BundleSpec<'a> {
        format::BundleSpec {
            prefix: self.prefix,
            kind: self.kind,
            arch: self.arch,
            kernel_id: self.kernel_id,
            ramdisk_id: self.ramdisk_id,
            size,
            gzip,
        }
    }
}

/// Told what the bundler does, as it does it. Called from the bundler's threads (the reader
/// reports bytes consumed), hence `Sync`.
pub trait BundleSink: Sync {
    /// A step worth a status line: [`Step::Bundling`] as bytes flow, [`Step::Measuring`] when an
    /// image's size must be found first.
    fn step(&self, step: Step);

    /// `part` is whole and synced on disk; the manifest, written last, is not yet. The seam where
    /// an overlapped upload starts on a part while the next one is written.
    fn part_closed(&self, _part: &Part) {}

    /// Whether the manifest waits for links known only later ([`PartSink::manifest_waits`]):
    /// the bundle then ends waiting ([`waiting_bundle`]), for [`complete_manifest`].
    fn manifest_waits(&self) -> bool {
        false
    }
}

/// `<prefix>.manifest.xml`: the manifest's file and object name.
pub fn manifest_name(prefix: &str) -> String {
    format!("{prefix}.manifest.xml")
}

/// `<prefix>.manifest.waiting`: a machine image's manifest `<image>` element alone, written
/// last as the manifest would be, while its kernel's and ramdisk's ids are not known yet (they
/// are registered only once the image has verified). Never uploaded.
pub fn waiting_name(prefix: &str) -> String {
    format!("{prefix}.manifest.waiting")
}

/// `<part>.sent`: the record that a part is in the bucket, left in its file's place. Once a part is
/// sent its bytes are not needed on disk again, so a bundle in the air holds only the parts
/// not yet sent (a few, `--upload-concurrency`), not the whole image a second time beside the
/// cache file; the record keeps its size, which the bundle's size is summed from.
fn sent_record(part_path: &Path) -> PathBuf {
    let mut name = part_path.as_os_str().to_owned();
    name.push(".sent");
    PathBuf::from(name)
}

/// The size of a part recorded as sent, if it is.
fn sent_size(part_path: &Path) -> Option<u64> {
    std::fs::read_to_string(sent_record(part_path))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `part` is recorded as in the bucket ([`part_sent`]): it is not sent again.
pub fn is_sent(part: &Part) -> bool {
    sent_size(&part.path) == Some(part.size)
}

/// Records that the cloud has `part` and removes its file: the record is whole (written under
/// another name, then renamed) before the part goes, so after a kill either the part is still
/// on disk or the record says it was sent.
pub fn part_sent(part: &Part) -> std::io::Result<()> {
    let record = sent_record(&part.path);
    let mut incoming = record.clone().into_os_string();
    incoming.push(".incoming");
    std::fs::write(&incoming, format!("{}\n", part.size))?;
    std::fs::rename(&incoming, &record)?;
    match std::fs::remove_file(&part.path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A bundle an earlier attempt finished in `dir`: its manifest is written last, after every part,
/// so a manifest whose parts are all present describes a whole bundle.
/// A part recorded as sent ([`part_sent`]) counts as present.
pub fn finished_bundle(dir: &Path, prefix: &str) -> Option<Bundle> {
    read_bundle(dir, prefix, &manifest_name(prefix))
}

/// A bundle whose parts are whole but whose manifest waits for its links
/// ([`BundleSink::manifest_waits`]); its `manifest_path` is where [`complete_manifest`] will
/// write the manifest. A bundle whose manifest was written is [`finished_bundle`]'s, not this.
pub fn waiting_bundle(dir: &Path, prefix: &str) -> Option<Bundle> {
    if dir.join(manifest_name(prefix)).exists() {
        return None;
    }
    read_bundle(dir, prefix, &waiting_name(prefix))
}

/// The bundle in `dir` that the manifest (or the waiting `<image>` element) `described` names.
fn read_bundle(dir: &Path, prefix: &str, described: &str) -> Option<Bundle> {
    let manifest_name = manifest_name(prefix);
    let manifest_path = dir.join(&manifest_name);
    let text = std::fs::read_to_string(dir.join(described)).ok()?;
    let doc = roxmltree::Document::parse(&text).ok()?;
    let field = |name: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(str::to_string)
    };
    let mut parts = Vec::new();
    for part in doc.descendants().filter(|n| n.has_tag_name("part")) {
        let file_name = part
            .children()
            .find(|n| n.has_tag_name("filename"))?
            .text()?
            .to_string();
        let sha1 = part
            .children()
            .find(|n| n.has_tag_name("digest"))?
            .text()?
            .to_string();
        if file_name.contains('/') {
            return None;
        }
        let path = dir.join(&file_name);
        let size = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(_) => sent_size(&path)?,
        };
        parts.push(Part {
            file_name,
            path,
            size,
            sha1,
        });
    }
    Some(Bundle {
        manifest_name,
        manifest_path,
        digest: field("digest")?,
        size: field("size")?.parse().ok()?,
        bundled_size: parts.iter().map(|p| p.size).sum(),
        parts,
    })
}
