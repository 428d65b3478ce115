//! The two simplestreams install roads through the real installer into the fake cloud, in-process:
//! a UEC tarball made by GNU `tar czf` (one file providing kernel, ramdisk and machine image) and
//! an HVM qcow2 disk made by `qemu-img convert -c -O qcow2`. Each file is put in the cache as
//! verified (the download road is proved elsewhere); what is proved here is what gets registered,
//! linked and recorded, and that a tarball short of a member, or with two of one, fails with one
//! line naming it and registers nothing.

use crate::common::openssl::{self, WrappedFor};
use image_store_proxy::bundle::gzip::GzipSettings;
use image_store_proxy::cache::{Cache, Sha256Hex};
use image_store_proxy::catalog::model::{
    self, Compression, FileKind, FileRef, Image, Packing, StreamIdentity, Virtualization,
};
use image_store_proxy::cloud::fake::FakeCloud;
use image_store_proxy::db::Db;
use image_store_proxy::fetch::{Fetcher, RetryPolicy};
use image_store_proxy::install::Installer;
use image_store_proxy::install::board::InstallView;
use image_store_proxy::install::state::InstallState;
use image_store_proxy::publish::Publisher;
use image_store_proxy::trust::Trust;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// An installer on a fresh data dir, publishing into the fake cloud there.
struct Proxy {
    dir: tempfile::TempDir,
    db: Db,
    cache: Cache,
    installer: Arc<Installer>,
    shutdown: CancellationToken,
}

impl Proxy {
    fn start() -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let db = Db::open(&data.join("state.sqlite")).unwrap();
        let cache = Cache::new(data);
        let publisher =
            Publisher::new(Arc::new(FakeCloud::new(data)), data).with_gzip(GzipSettings {
                level: 1,
                threads: 2,
                recompress: false,
            });
        let installer = Installer::new(
            db.clone(),
            cache.clone(),
            Fetcher::new(RetryPolicy::default()).unwrap(),
            Arc::new(Trust::new(data.join("keyring.gpg"))),
            publisher,
            1,
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(installer.clone().run(shutdown.clone()));
        Proxy {
            dir,
            db,
            cache,
            installer,
            shutdown,
        }
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    /// `path`'s bytes in the cache, recorded as verified: the file an install then publishes.
    fn cached(
        &self,
        path: &Path,
        kind: FileKind,
        compression: Compression,
        packing: Packing,
    ) -> FileRef {
        let bytes = std::fs::read(path).unwrap();
        let sha256 = Sha256Hex::from_digest(&Sha256::digest(&bytes));
        let url = format!(
            "http://upstream.invalid/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        self.cache.prepare_dir(&sha256).unwrap();
        std::fs::write(self.cache.path(&sha256), &bytes).unwrap();
        self.db
            .mark_file_verified(sha256.as_str(), bytes.len() as u64, &url)
            .unwrap();
        FileRef {
            kind,
            url,
            size: bytes.len() as u64,
            sha256,
            signature_url: None,
            compression,
            packing,
            provides: Vec::new(),
        }
    }

    /// Installs `image` and waits for it to be installed or failed.
    async fn install(&self, image: &Image) -> InstallView {
        self.installer.request_install(image).unwrap();
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            let view = self.installer.board().get(&image.uri).unwrap();
            if matches!(view.state, InstallState::Installed | InstallState::Failed) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "still {:?}: {}",
                view.state,
                view.detail
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every registration record the fake cloud wrote, by image name.
    fn records(&self) -> Vec<Value> {
        let root = self.data().join("fake-cloud");
        let mut records: Vec<Value> = walk(&root)
            .into_iter()
            .filter(|path| path.to_string_lossy().ends_with(".registration.json"))
            .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
            .collect();
        records.sort_by_key(|record| record["name"].as_str().unwrap().to_string());
        records
    }

    /// The image bundled as `name`, opened with openssl, gzip and tar from its manifest.
    fn bundled(&self, record: &Value) -> Vec<u8> {
        self.opened(record).image
    }

    /// The bundle registered as `record`, opened with openssl, gzip and tar.
    fn opened(&self, record: &Value) -> openssl::Opened {
        let location = record["location"].as_str().unwrap();
        let manifest = self.data().join("fake-cloud").join(location);
        let name = record["name"].as_str().unwrap();
        openssl::open_bundle(
            &manifest,
            &FakeCloud::keys_dir(self.data()).join("user-pk.pem"),
            WrappedFor::User,
            &self.data().join("opened").join(name),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

fn stream() -> StreamIdentity {
    StreamIdentity {
        content_id: "com.ubuntu.cloud:released:download".into(),
        product: "com.ubuntu.cloud:server:10.04:amd64".into(),
        version: "20110201.1".into(),
        item: "tar.gz".into(),
    }
}

fn image(uri: &str, file: FileRef, virtualization: Virtualization) -> Image {
    Image {
        uri: uri.into(),
        key: model::image_key(uri),
        product: "com.ubuntu.cloud:server:10.04:amd64".into(),
        title: "Ubuntu 10.04".into(),
        version: "20110201.1".into(),
        summary: String::new(),
        description_html: String::new(),
        icon_uri: None,
        provider: None,
        tags: Vec::new(),
        arch: "x86_64".into(),
        files: vec![file],
        virtualization,
        stream: Some(stream()),
        fields: Default::default(),
    }
}

/// `tar czf` of `members` (name, bytes) written into a directory, as UEC tarballs were made.
fn gnu_tarball(dir: &Path, members: &[(&str, &[u8])]) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    for (name, bytes) in members {
        std::fs::write(content.join(name), bytes).unwrap();
    }
    let tarball = dir.join("uec.tar.gz");
    let mut args = vec!["czf".to_string(), tarball.to_str().unwrap().to_string()];
    args.push("-C".into());
    args.push(content.to_str().unwrap().into());
    args.extend(members.iter().map(|(name, _)| name.to_string()));
    openssl::run(
        "tar",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    );
    tarball
}

fn uec_image(proxy: &Proxy, members: &[(&str, &[u8])]) -> Image {
    let tarball = gnu_tarball(proxy.data(), members);
    let mut file = proxy.cached(&tarball, FileKind::Image, Compression::Gzip, Packing::Tar);
    file.provides = vec![FileKind::Kernel, FileKind::Ramdisk, FileKind::Image];
    image(
        "http://upstream.invalid/lucid",
        file,
        Virtualization::Paravirtual,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uec_tarball_registers_its_kernel_ramdisk_and_image_linked_and_paravirtual() {
    let proxy = Proxy::start();
    let disk = crate::common::image_bytes(3, 700_000);
    let kernel = crate::common::noise(4, 40_000);
    let ramdisk = crate::common::noise(5, 90_000);
    let image = uec_image(
        &proxy,
        &[
            (
                "README.files",
                b"lucid-server-uec-amd64.img: the root file system\n",
            ),
            ("lucid-server-uec-amd64.img", &disk),
            ("lucid-server-uec-amd64-vmlinuz-virtual", &kernel),
            ("lucid-server-uec-amd64-initrd-virtual", &ramdisk),
        ],
    );
    let view = proxy.install(&image).await;
    assert_eq!(view.state, InstallState::Installed, "{:?}", view.error);
    let ids = &view.ids;
    let (eki, eri, emi) = (
        ids.eki.clone().unwrap(),
        ids.eri.clone().unwrap(),
        ids.emi.clone().unwrap(),
    );
    assert!(eki.starts_with("eki-") && eri.starts_with("eri-") && emi.starts_with("emi-"));

    let records = proxy.records();
    let names: Vec<&str> = records
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    let stem = "com.ubuntu.cloud-server-10.04-amd64-20110201.1";
    assert_eq!(
        names,
        [
            format!("{stem}-image"),
            format!("{stem}-kernel"),
            format!("{stem}-ramdisk")
        ]
    );
    let (machine, kernel_record, ramdisk_record) = (&records[0], &records[1], &records[2]);
    assert_eq!(machine["image_id"], emi.as_str());
    assert_eq!(machine["kernel_id"], eki.as_str());
    assert_eq!(machine["ramdisk_id"], eri.as_str());
    assert_eq!(kernel_record["image_id"], eki.as_str());
    assert_eq!(kernel_record["kind"], "kernel");
    assert_eq!(ramdisk_record["image_id"], eri.as_str());
    assert_eq!(ramdisk_record["kind"], "ramdisk");
    for record in &records {
        assert_eq!(record["virtualization_type"], "paravirtual", "{record}");
        assert_eq!(
            record["description"],
            stream().description().as_str(),
            "{record}"
        );
    }
    // Each registration holds its own member's bytes.
    assert!(proxy.bundled(machine) == disk, "the *.img member, bundled");
    assert!(
        proxy.bundled(kernel_record) == kernel,
        "the *vmlinuz* member"
    );
    assert!(
        proxy.bundled(ramdisk_record) == ramdisk,
        "the *initrd* member"
    );
}

/// A refused tarball: the install fails with one line naming what is wrong, the verified file
/// stays in the cache, and the fake cloud holds no object or registration.
async fn assert_refused_registering_nothing(members: &[(&str, &[u8])], expected: &str) {
    let proxy = Proxy::start();
    let image = uec_image(&proxy, members);
    let view = proxy.install(&image).await;
    assert_eq!(view.state, InstallState::Failed);
    let line = view.error.unwrap();
    assert!(!line.contains('\n'), "{line:?}");
    let tarball = proxy.cache.path(&image.files[0].sha256);
    let during = "Failure encountered while: Checking the tarball holds a kernel, a ramdisk and a \
                  machine image: ";
    let cause = format!(": the tarball {} {expected}", tarball.display());
    assert!(line.starts_with(during) && line.ends_with(&cause), "{line}");
    assert!(tarball.exists(), "the verified tarball is kept");
    assert!(proxy.records().is_empty(), "nothing registered");
    assert!(
        walk(&proxy.data().join("fake-cloud"))
            .iter()
            .all(|path| path.starts_with(FakeCloud::keys_dir(proxy.data()))),
        "nothing uploaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uec_tarball_with_a_kernel_but_no_initrd_fails_naming_it_and_registers_nothing() {
    assert_refused_registering_nothing(
        &[("disk.img", &[7; 5000]), ("vmlinuz-2.6.32", &[8; 3000])],
        "holds no regular *initrd* member: a paravirtual image needs a ramdisk to boot",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uec_tarball_with_two_vmlinuz_members_is_refused_and_registers_nothing() {
    assert_refused_registering_nothing(
        &[
            ("disk.img", &[7; 5000]),
            ("vmlinuz-virtual", &[8; 3000]),
            ("initrd-virtual", &[9; 3000]),
            ("vmlinuz-generic", &[10; 3000]),
        ],
        "is refused: it holds two *vmlinuz* files, \"vmlinuz-virtual\" and \"vmlinuz-generic\", \
         and which one to install is ambiguous",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hvm_qcow2_disk_registers_one_hvm_image_with_its_stream_identity_and_qemu_s_raw_disk() {
    let proxy = Proxy::start();
    let dir = proxy.data().join("disk");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("disk.raw");
    let mut bytes = crate::common::image_bytes(9, 3 << 20);
    bytes.extend(vec![0; 2 << 20]);
    bytes.extend(crate::common::noise(10, 300_000));
    std::fs::write(&raw, &bytes).unwrap();
    let qcow2 = dir.join("disk1.img");
    let converted = Command::new("qemu-img")
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
        .args([&raw, &qcow2])
        .status()
        .expect("qemu-img runs (Debian qemu-utils; test.sh installs it)");
    assert!(converted.success());
    let back = dir.join("qemu.raw");
    let converted = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .args([&qcow2, &back])
        .status()
        .unwrap();
    assert!(converted.success());
    let file = proxy.cached(&qcow2, FileKind::Image, Compression::None, Packing::Qcow2);
    let image = image("http://upstream.invalid/noble", file, Virtualization::Hvm);
    let view = proxy.install(&image).await;
    assert_eq!(view.state, InstallState::Installed, "{:?}", view.error);
    assert!(view.ids.eki.is_none() && view.ids.eri.is_none());
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["image_id"], view.ids.emi.clone().unwrap().as_str());
    assert_eq!(record["virtualization_type"], "hvm");
    assert_eq!(record["kernel_id"], Value::Null);
    assert_eq!(record["ramdisk_id"], Value::Null);
    assert_eq!(record["description"], stream().description().as_str());
    let opened = proxy.opened(record);
    assert!(
        opened.image == std::fs::read(&back).unwrap(),
        "the bundle holds qemu-img's raw disk"
    );
    // Spliced: the compressed clusters' own deflate bits are in the bundle's gzip stream.
    let heads = crate::qcow2::compressed_stream_heads(&qcow2);
    assert!(!heads.is_empty());
    for head in heads.iter().step_by(heads.len().div_ceil(6)) {
        assert!(crate::qcow2::holds_bits(&opened.compressed, head));
    }
}
