//! The image sets as a simplestreams mirror (the proxy's SPEC §5.2), laid out as Canonical's
//! `cloud-images.ubuntu.com/releases/` is, under [`ROOT_PATH`]: a clear-signed index
//! (`streams/v1/index.sjson`, and its unsigned `index.json`) naming an `image-downloads` products
//! file and an `image-ids` one (as real mirrors have), and the items under `server/releases/`.
//!
//! Each image set is a release: one product per architecture (`com.ubuntu.cloud:server:<version>:
//! <arch>`), one version per serial (meta.json's `serials`, else the day of `updated`). Each version
//! has a `disk1.img` item, a qcow2 whole disk with compressed clusters of the set's image, and,
//! when the set has a kernel and a ramdisk, a `tar.gz` UEC tarball of the image, the kernel and
//! the ramdisk. Each serial's disk carries a stamp naming it in its last sector, so that no two
//! builds are the same bytes. A set's `ports` (`arm64`) add a product whose newest serial has a
//! `disk1.img` only. Fields sit where Canonical's do, so that items inherit most of theirs.
//!
//! The payload (qcow2 images and tarballs) is built once, on first use; the documents are built
//! and signed for each request, so that the [`StreamFaults`] switched on now shape them.

use crate::catalog::{Error, ImageSet, SetFile};
use crate::signing::SigningKey;
use axum::body::Bytes;
use md5::Md5;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::{Duration, OffsetDateTime};

/// Where the mirror root is on fake-store's listener: `http://ADDR/simplestreams/`.
pub const ROOT_PATH: &str = "/simplestreams/";
/// The signed index, under the mirror root: what `sstream-query` and the proxy are pointed at.
pub const INDEX_PATH: &str = "streams/v1/index.sjson";
/// The content id of the image downloads (Canonical's released images).
pub const DOWNLOAD_CONTENT_ID: &str = "com.ubuntu.cloud:released:download";
/// The content id of the `image-ids` products file: where each version is registered already.
pub const IMAGE_IDS_CONTENT_ID: &str = "com.ubuntu.cloud:released:aws";
/// The content id a products file claims under [`StreamFaults::content_id_mismatch`].
pub const MISMATCHED_CONTENT_ID: &str = "com.ubuntu.cloud:daily:download";

/// The image set's `image-ids` region, spelled as Canonical's `_aliases` spell it.
const REGION: &str = "us-east-1";
/// Tarball members' modification time: the same bytes on every machine.
const TAR_MTIME: u64 = 1_271_000_000;

/// What the simplestreams tree gets wrong, on purpose: each a bad input the proxy must refuse.
/// The documents are built with these as each request arrives.
#[derive(Debug, Default, Clone)]
pub struct StreamFaults {
    /// Serve every `.sjson` with one letter of its signed text changed after signing.
    pub tamper_signed: bool,
    /// Clear-sign the `.sjson` documents with this armored secret key instead.
    pub signed_by: Option<String>,
    /// Serve no `.sjson` at all (404): an unsigned tree of `.json` only.
    pub unsigned_only: bool,
    /// Every document's `updated` is a day earlier than the store's: an old tree, genuinely
    /// signed, replayed (a rollback).
    pub rolled_back: bool,
    /// The image-downloads products file says it is [`MISMATCHED_CONTENT_ID`], not the id its
    /// index entry names.
    pub content_id_mismatch: bool,
    /// Every item's `path` starts with `../`: it would leave the mirror root.
    pub item_path_escapes: bool,
    /// Every item's `size` is one more than its file's.
    pub wrong_item_size: bool,
    /// Every item's `sha256` has its last digit changed.
    pub wrong_item_sha256: bool,
}

/// One item of the image-downloads products file, with every field it inherits resolved: what
/// a client of the tree should find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamItem {
    pub content_id: String,
    pub product_name: String,
    pub version_name: String,
    pub item_name: String,
    pub arch: String,
    pub release: String,
    /// `disk1.img` (a qcow2 whole disk) or `tar.gz` (a UEC tarball).
    pub ftype: String,
    /// Under the mirror root.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub md5: String,
}

struct Item {
    ftype: &'static str,
    path: String,
    sha256: String,
    md5: String,
    size: u64,
}

struct Version {
    serial: String,
    pubname: String,
    items: Vec<Item>,
}

struct Product {
    name: String,
    arch: String,
    release: String,
    release_title: String,
    release_codename: Option<String>,
    version: String,
    versions: Vec<Version>,
}

/// The built tree: its products and the bytes of every item, by path.
pub struct Payload {
    products: Vec<Product>,
    files: HashMap<String, Bytes>,
}

fn stream_error(set: &ImageSet, cause: impl std::fmt::Display) -> Error {
    Error::Stream {
        set: set.name.clone(),
        cause: cause.to_string(),
    }
}

/// A file's contents as the proxy installs them: gunzipped when it is `.gz`, and for a tarball
/// its `*.img` member.
fn contents(set: &ImageSet, file: &SetFile) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        path: file.path.clone(),
        source,
    };
    let bytes = std::fs::read(&file.path).map_err(io)?;
    let mut plain = Vec::new();
    if file.name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut plain)
            .map_err(io)?;
    } else {
        plain = bytes;
    }
    if !file.name.contains(".tar") {
        return Ok(plain);
    }
    let mut archive = tar::Archive::new(&plain[..]);
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let is_image = entry
            .path()
            .map_err(io)?
            .to_string_lossy()
            .ends_with(".img");
        if entry.header().entry_type().is_file() && is_image {
            let mut image = Vec::new();
            entry.read_to_end(&mut image).map_err(io)?;
            return Ok(image);
        }
    }
    Err(stream_error(
        set,
        format!("{} has no *.img member", file.name),
    ))
}

/// The set's image as one build's disk: whole sectors, its last sector naming the build.
fn stamped_disk(image: &[u8], release: &str, arch: &str, serial: &str) -> Vec<u8> {
    const SECTOR: usize = 512;
    let mut disk = image.to_vec();
    disk.resize(image.len().div_ceil(SECTOR).max(1) * SECTOR, 0);
    let stamp = format!("fake-store simplestreams build: {release} {arch} serial {serial}\n");
    let mut sector = stamp.into_bytes();
    sector.resize(SECTOR, 0);
    let at = disk.len() - SECTOR;
    disk[at..].copy_from_slice(&sector);
    disk
}

/// A UEC tarball: the image, the kernel and the ramdisk, named as Canonical names them.
fn uec_tarball(
    name: &str,
    image: &[u8],
    kernel: &[u8],
    ramdisk: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (member, bytes) in [
        (format!("{name}.img"), image),
        (format!("{name}-vmlinuz-generic"), kernel),
        (format!("{name}-initrd-generic"), ramdisk),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(TAR_MTIME);
        builder.append_data(&mut header, member, bytes)?;
    }
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, &builder.into_inner()?)?;
    gzip.finish()
}

/// The simplestreams spelling of a catalog architecture.
fn stream_arch(arch: &str) -> String {
    match arch {
        "x86_64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        other => other.to_owned(),
    }
}

/// A name that may be one segment of an item path.
fn check_segment(set: &ImageSet, what: &str, value: &str) -> Result<(), Error> {
    let safe = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if safe {
        Ok(())
    } else {
        Err(stream_error(
            set,
            format!("its {what} {value:?} cannot be part of an item path"),
        ))
    }
}

impl Payload {
    /// Builds every item of `sets`; `updated` (RFC 3339) gives the serial of a set without any.
    pub fn build(sets: &[ImageSet], updated: &str) -> Result<Payload, Error> {
        let day = OffsetDateTime::parse(updated, &Rfc3339)
            .map_err(|_| Error::Time(updated.to_owned()))?;
        let default_serial = format!(
            "{:04}{:02}{:02}",
            day.year(),
            u8::from(day.month()),
            day.day()
        );
        let mut payload = Payload {
            products: Vec::new(),
            files: HashMap::new(),
        };
        for set in sets {
            payload.add_set(set, &default_serial)?;
        }
        payload.products.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(payload)
    }

    fn add_set(&mut self, set: &ImageSet, default_serial: &str) -> Result<(), Error> {
        let meta = &set.meta;
        let file = |kind: &str| set.files.iter().find(|f| f.kind == kind);
        let image_file = file("image").ok_or_else(|| stream_error(set, "it has no image"))?;
        let image = contents(set, image_file)?;
        let kernel_and_ramdisk = match (file("kernel"), file("ramdisk")) {
            (Some(kernel), Some(ramdisk)) => {
                Some((contents(set, kernel)?, contents(set, ramdisk)?))
            }
            _ => None,
        };
        let version = meta.version.clone().unwrap_or_else(|| "1.0".into());
        let release = meta.release.clone().unwrap_or_else(|| set.name.clone());
        let mut serials = meta
            .serials
            .clone()
            .unwrap_or_else(|| vec![default_serial.to_owned()]);
        serials.sort();
        serials.dedup();
        check_segment(set, "version", &version)?;
        check_segment(set, "release", &release)?;
        let main_arch = stream_arch(meta.arch.as_deref().unwrap_or("x86_64"));
        let mut arches = vec![(main_arch, serials.clone(), true)];
        let newest = serials.last().cloned().into_iter().collect::<Vec<_>>();
        for port in meta.ports.iter().flatten() {
            arches.push((stream_arch(port), newest.clone(), false));
        }
        for (arch, serials, with_tarball) in arches {
            check_segment(set, "architecture", &arch)?;
            let mut product = Product {
                name: format!("com.ubuntu.cloud:server:{version}:{arch}"),
                arch: arch.clone(),
                release: release.clone(),
                release_title: meta
                    .release_title
                    .clone()
                    .unwrap_or_else(|| version.clone()),
                release_codename: meta.release_codename.clone(),
                version: version.clone(),
                versions: Vec::new(),
            };
            if self.products.iter().any(|p| p.name == product.name) {
                return Err(stream_error(
                    set,
                    format!("another set is product {} already", product.name),
                ));
            }
            for serial in serials {
                check_segment(set, "serial", &serial)?;
                let disk = stamped_disk(&image, &release, &arch, &serial);
                let dir = format!("server/releases/{release}/release-{serial}");
                let stem = format!("{dir}/ubuntu-{version}-server-cloudimg-{arch}");
                let mut items = vec![self.add_file(
                    "disk1.img",
                    format!("{stem}.img"),
                    crate::qcow2::compressed_whole_disk(&disk),
                )];
                if let (true, Some((kernel, ramdisk))) = (with_tarball, &kernel_and_ramdisk) {
                    let name = format!("{release}-server-cloudimg-{arch}");
                    let tarball = uec_tarball(&name, &disk, kernel, ramdisk)
                        .map_err(|e| stream_error(set, e))?;
                    items.push(self.add_file("tar.gz", format!("{stem}.tar.gz"), tarball));
                }
                product.versions.push(Version {
                    pubname: format!("ubuntu-{release}-{version}-{arch}-server-{serial}"),
                    serial,
                    items,
                });
            }
            self.products.push(product);
        }
        Ok(())
    }

    fn add_file(&mut self, ftype: &'static str, path: String, bytes: Vec<u8>) -> Item {
        let item = Item {
            ftype,
            sha256: hex::encode(Sha256::digest(&bytes)),
            md5: hex::encode(Md5::digest(&bytes)),
            size: bytes.len() as u64,
            path: path.clone(),
        };
        self.files.insert(path, Bytes::from(bytes));
        item
    }

    /// Every image-downloads item, in product, version, item order, as honestly described.
    pub fn items(&self) -> Vec<StreamItem> {
        let mut items = Vec::new();
        for product in &self.products {
            for version in &product.versions {
                for item in &version.items {
                    items.push(StreamItem {
                        content_id: DOWNLOAD_CONTENT_ID.to_owned(),
                        product_name: product.name.clone(),
                        version_name: version.serial.clone(),
                        item_name: item.ftype.to_owned(),
                        arch: product.arch.clone(),
                        release: product.release.clone(),
                        ftype: item.ftype.to_owned(),
                        path: item.path.clone(),
                        size: item.size,
                        sha256: item.sha256.clone(),
                        md5: item.md5.clone(),
                    });
                }
            }
        }
        items
    }

    /// What is served at `path` under the mirror root now: a document built (and, for `.sjson`,
    /// signed by `key`) with `faults`, or an item's bytes. `None`: nothing is there.
    pub fn serve(
        &self,
        path: &str,
        updated: &str,
        key: &SigningKey,
        faults: &StreamFaults,
    ) -> Result<Option<Bytes>, String> {
        if let Some(file) = self.files.get(path) {
            return Ok(Some(file.clone()));
        }
        let Some(rest) = path.strip_prefix("streams/v1/") else {
            return Ok(None);
        };
        let (name, signed) = if let Some(name) = rest.strip_suffix(".sjson") {
            (name, true)
        } else if let Some(name) = rest.strip_suffix(".json") {
            (name, false)
        } else {
            return Ok(None);
        };
        if signed && faults.unsigned_only {
            return Ok(None);
        }
        let updated = self.stream_updated(updated, faults)?;
        let document = match name {
            "index" => self.index(&updated, signed, faults),
            DOWNLOAD_CONTENT_ID => self.downloads(&updated, faults),
            IMAGE_IDS_CONTENT_ID => self.image_ids(&updated),
            _ => return Ok(None),
        };
        let mut text = serde_json::to_vec_pretty(&document).expect("a document serialises");
        text.push(b'\n');
        if !signed {
            return Ok(Some(Bytes::from(text)));
        }
        let other_key;
        let key = match &faults.signed_by {
            Some(armored) => {
                other_key = SigningKey::from_armored(armored)?;
                &other_key
            }
            None => key,
        };
        let mut signed_text = key.clearsign(&text).map_err(|e| e.to_string())?;
        if faults.tamper_signed {
            tamper(&mut signed_text);
        }
        Ok(Some(Bytes::from(signed_text)))
    }

    /// The documents' `updated`, in RFC 2822 as simplestreams writes it.
    fn stream_updated(&self, updated: &str, faults: &StreamFaults) -> Result<String, String> {
        let mut time = OffsetDateTime::parse(updated, &Rfc3339).map_err(|e| e.to_string())?;
        if faults.rolled_back {
            time -= Duration::days(1);
        }
        time.format(&Rfc2822).map_err(|e| e.to_string())
    }

    fn product_names(&self) -> Vec<&str> {
        self.products.iter().map(|p| p.name.as_str()).collect()
    }

    /// The index; the signed one names the `.sjson` products files, the unsigned one `.json`.
    fn index(&self, updated: &str, signed: bool, faults: &StreamFaults) -> Value {
        let suffix = if signed && !faults.unsigned_only {
            "sjson"
        } else {
            "json"
        };
        let entry = |content_id: &str, datatype: &str| {
            json!({
                "datatype": datatype,
                "format": "products:1.0",
                "path": format!("streams/v1/{content_id}.{suffix}"),
                "products": self.product_names(),
                "updated": updated,
            })
        };
        let mut image_ids = entry(IMAGE_IDS_CONTENT_ID, "image-ids");
        image_ids["cloudname"] = json!("aws");
        json!({
            "format": "index:1.0",
            "updated": updated,
            "index": {
                DOWNLOAD_CONTENT_ID: entry(DOWNLOAD_CONTENT_ID, "image-downloads"),
                IMAGE_IDS_CONTENT_ID: image_ids,
            },
        })
    }

    /// The products every products file shares, with each version's items from `items`.
    fn products(&self, items: impl Fn(&Version) -> Value) -> Value {
        let mut products = Map::new();
        for product in &self.products {
            let mut versions = Map::new();
            for version in &product.versions {
                versions.insert(
                    version.serial.clone(),
                    json!({
                        "label": "release",
                        "pubname": version.pubname,
                        "items": items(version),
                    }),
                );
            }
            let mut fields = json!({
                "aliases": format!("{},{}", product.version, product.release),
                "arch": product.arch,
                "os": "ubuntu",
                "release": product.release,
                "release_title": product.release_title,
                "version": product.version,
                "versions": versions,
            });
            if let Some(codename) = &product.release_codename {
                fields["release_codename"] = json!(codename);
            }
            products.insert(product.name.clone(), fields);
        }
        Value::Object(products)
    }

    fn downloads(&self, updated: &str, faults: &StreamFaults) -> Value {
        let products = self.products(|version| {
            let mut items = Map::new();
            for item in &version.items {
                let mut sha256 = item.sha256.clone();
                if faults.wrong_item_sha256 {
                    let last = if sha256.ends_with('0') { "1" } else { "0" };
                    sha256.replace_range(sha256.len() - 1.., last);
                }
                let path = if faults.item_path_escapes {
                    format!("../{}", item.path)
                } else {
                    item.path.clone()
                };
                let size = item.size + u64::from(faults.wrong_item_size);
                items.insert(
                    item.ftype.to_owned(),
                    json!({
                        "ftype": item.ftype, "path": path, "size": size,
                        "sha256": sha256, "md5": item.md5,
                    }),
                );
            }
            Value::Object(items)
        });
        let content_id = if faults.content_id_mismatch {
            MISMATCHED_CONTENT_ID
        } else {
            DOWNLOAD_CONTENT_ID
        };
        json!({
            "content_id": content_id,
            "datatype": "image-downloads",
            "format": "products:1.0",
            "license": "http://www.canonical.com/intellectual-property-policy",
            "updated": updated,
            "products": products,
        })
    }

    /// Where each version is registered already, as Canonical publishes its AMIs: an id derived
    /// from the version's disk, in one region named through `_aliases`.
    fn image_ids(&self, updated: &str) -> Value {
        let products = self.products(|version| {
            let disk = version.items.iter().find(|i| i.ftype == "disk1.img");
            let id = disk.map_or_else(String::new, |d| format!("ami-{}", &d.sha256[..17]));
            json!({"usee1hebs": {"crsn": REGION, "id": id, "root_store": "ebs", "virt": "hvm"}})
        });
        json!({
            "_aliases": {"crsn": {REGION: {
                "endpoint": format!("https://ec2.{REGION}.amazonaws.com"),
                "region": REGION,
            }}},
            "content_id": IMAGE_IDS_CONTENT_ID,
            "datatype": "image-ids",
            "format": "products:1.0",
            "updated": updated,
            "products": products,
        })
    }
}

/// Changes the case of the first letter of the first `updated` value of the signed text: still
/// valid JSON, no longer what was signed.
fn tamper(signed: &mut [u8]) {
    let needle = b"\"updated\": \"";
    if let Some(at) = signed.windows(needle.len()).position(|w| w == needle) {
        let letter = &mut signed[at + needle.len()];
        *letter = if letter.is_ascii_uppercase() {
            letter.to_ascii_lowercase()
        } else {
            letter.to_ascii_uppercase()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn demo_payload() -> (tempfile::TempDir, Payload) {
        let dir = tempfile::tempdir().unwrap();
        crate::demo::write_demo_images(dir.path()).unwrap();
        let sets = crate::catalog::scan(dir.path()).unwrap();
        let payload = Payload::build(&sets, "2026-11-20T10:00:00Z").unwrap();
        (dir, payload)
    }

    fn key() -> SigningKey {
        SigningKey::from_armored(crate::TEST_SIGNING_KEY).unwrap()
    }

    fn document(payload: &Payload, path: &str, faults: &StreamFaults) -> Value {
        let bytes = payload
            .serve(path, "2026-11-20T10:00:00Z", &key(), faults)
            .unwrap()
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn the_demo_sets_are_two_releases_one_with_two_serials_and_an_arm64_port() {
        let (_dir, payload) = demo_payload();
        let items: Vec<(String, String, String)> = payload
            .items()
            .into_iter()
            .map(|i| (i.product_name, i.version_name, i.item_name))
            .collect();
        let item = |p: &str, v: &str, i: &str| (p.to_owned(), v.to_owned(), i.to_owned());
        assert_eq!(
            items,
            [
                item(
                    "com.ubuntu.cloud:server:10.04:amd64",
                    "20100427",
                    "disk1.img"
                ),
                item("com.ubuntu.cloud:server:10.04:amd64", "20100427", "tar.gz"),
                item(
                    "com.ubuntu.cloud:server:10.04:amd64",
                    "20101020",
                    "disk1.img"
                ),
                item("com.ubuntu.cloud:server:10.04:amd64", "20101020", "tar.gz"),
                item(
                    "com.ubuntu.cloud:server:10.04:arm64",
                    "20101020",
                    "disk1.img"
                ),
                item(
                    "com.ubuntu.cloud:server:9.10:amd64",
                    "20100415",
                    "disk1.img"
                ),
                item("com.ubuntu.cloud:server:9.10:amd64", "20100415", "tar.gz"),
            ]
        );
        for item in payload.items() {
            let bytes = &payload.files[&item.path];
            assert_eq!(bytes.len() as u64, item.size, "{}", item.path);
            assert_eq!(hex::encode(Sha256::digest(bytes)), item.sha256);
            assert_eq!(hex::encode(Md5::digest(bytes)), item.md5);
        }
    }

    #[test]
    fn disk1_img_is_the_sets_image_as_qcow2_and_the_tarball_holds_kernel_and_initrd() {
        let (dir, payload) = demo_payload();
        let lucid = dir.path().join("ubuntu-10.04-server-amd64");
        let mut image = Vec::new();
        let tarball =
            flate2::read::GzDecoder::new(std::fs::File::open(lucid.join("image.tar.gz")).unwrap());
        tar::Archive::new(tarball)
            .entries()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .read_to_end(&mut image)
            .unwrap();
        let path = "server/releases/lucid/release-20101020/ubuntu-10.04-server-cloudimg-amd64";

        let work = tempfile::tempdir().unwrap();
        let qcow2 = work.path().join("disk1.img");
        std::fs::write(&qcow2, &payload.files[&format!("{path}.img")]).unwrap();
        let raw = work.path().join("disk.raw");
        let convert = Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .args([&qcow2, &raw])
            .output()
            .expect("qemu-img is installed");
        assert!(
            convert.status.success(),
            "{}",
            String::from_utf8_lossy(&convert.stderr)
        );
        let disk = std::fs::read(&raw).unwrap();
        assert_eq!(disk.len(), image.len());
        let stamp_at = disk.len() - 512;
        assert!(
            disk[..stamp_at] == image[..stamp_at],
            "the disk is not the set's image"
        );
        assert!(
            disk[stamp_at..]
                .starts_with(b"fake-store simplestreams build: lucid amd64 serial 20101020\n")
        );

        let kernel = std::fs::read(lucid.join("kernel")).unwrap();
        let mut ramdisk = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(lucid.join("ramdisk.gz")).unwrap())
            .read_to_end(&mut ramdisk)
            .unwrap();
        let tarball = &payload.files[&format!("{path}.tar.gz")][..];
        let mut members = Vec::new();
        for entry in tar::Archive::new(flate2::read::GzDecoder::new(tarball))
            .entries()
            .unwrap()
        {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            members.push((name, bytes));
        }
        let name = "lucid-server-cloudimg-amd64";
        assert_eq!(
            members,
            [
                (format!("{name}.img"), disk),
                (format!("{name}-vmlinuz-generic"), kernel),
                (format!("{name}-initrd-generic"), ramdisk),
            ]
        );
    }

    #[test]
    fn fields_sit_where_canonicals_do_and_the_faults_change_what_they_say() {
        let (_dir, payload) = demo_payload();
        let honest = StreamFaults::default();
        let path = "streams/v1/com.ubuntu.cloud:released:download.json";
        let products = document(&payload, path, &honest);
        assert_eq!(products["content_id"], DOWNLOAD_CONTENT_ID);
        assert_eq!(products["updated"], "Fri, 20 Nov 2026 10:00:00 +0000");
        let lucid = &products["products"]["com.ubuntu.cloud:server:10.04:amd64"];
        assert_eq!(lucid["release_codename"], "Lucid Lynx");
        assert_eq!(lucid["release_title"], "10.04 LTS");
        let version = &lucid["versions"]["20101020"];
        assert_eq!(
            version["pubname"],
            "ubuntu-lucid-10.04-amd64-server-20101020"
        );
        let disk = &version["items"]["disk1.img"];
        assert_eq!(disk["ftype"], "disk1.img");
        assert_eq!(disk.get("arch"), None, "inherited from the product");

        let faults = StreamFaults {
            rolled_back: true,
            content_id_mismatch: true,
            item_path_escapes: true,
            wrong_item_size: true,
            wrong_item_sha256: true,
            ..StreamFaults::default()
        };
        let bad = document(&payload, path, &faults);
        assert_eq!(bad["content_id"], MISMATCHED_CONTENT_ID);
        assert_eq!(bad["updated"], "Thu, 19 Nov 2026 10:00:00 +0000");
        let bad_disk = &bad["products"]["com.ubuntu.cloud:server:10.04:amd64"]["versions"]["20101020"]
            ["items"]["disk1.img"];
        assert_eq!(
            bad_disk["path"],
            format!("../{}", disk["path"].as_str().unwrap())
        );
        assert_eq!(bad_disk["size"], disk["size"].as_u64().unwrap() + 1);
        assert_ne!(bad_disk["sha256"], disk["sha256"]);
        assert_eq!(bad_disk["sha256"].as_str().unwrap().len(), 64);

        let index = document(&payload, "streams/v1/index.json", &honest);
        assert_eq!(
            index["index"][IMAGE_IDS_CONTENT_ID]["datatype"],
            "image-ids"
        );
        assert_eq!(
            index["index"][DOWNLOAD_CONTENT_ID]["path"],
            "streams/v1/com.ubuntu.cloud:released:download.json"
        );
    }

    #[test]
    fn sjson_is_clear_signed_like_canonicals_and_unsigned_only_hides_it() {
        let (_dir, payload) = demo_payload();
        let serve = |path: &str, faults: &StreamFaults| {
            payload
                .serve(path, "2026-11-20T10:00:00Z", &key(), faults)
                .unwrap()
        };
        let honest = StreamFaults::default();
        let signed = serve(INDEX_PATH, &honest).unwrap();
        let text = std::str::from_utf8(&signed).unwrap();
        assert!(
            text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{"),
            "{text}"
        );
        assert!(text.contains("\"path\": \"streams/v1/com.ubuntu.cloud:released:download.sjson\""));
        assert!(text.trim_end().ends_with("-----END PGP SIGNATURE-----"));
        let tampered = serve(
            INDEX_PATH,
            &StreamFaults {
                tamper_signed: true,
                ..honest.clone()
            },
        )
        .unwrap();
        assert_eq!(tampered.len(), signed.len());
        assert_ne!(tampered, signed);
        let unsigned = StreamFaults {
            unsigned_only: true,
            ..honest.clone()
        };
        assert_eq!(serve(INDEX_PATH, &unsigned), None);
        let index: Value =
            serde_json::from_slice(&serve("streams/v1/index.json", &unsigned).unwrap()).unwrap();
        assert_eq!(
            index["index"][DOWNLOAD_CONTENT_ID]["path"],
            "streams/v1/com.ubuntu.cloud:released:download.json"
        );
        assert_eq!(serve("streams/v1/nothing.json", &honest), None);
        assert_eq!(serve("server/releases/nothing.img", &honest), None);
    }
}
