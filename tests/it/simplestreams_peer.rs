//! fake-store's simplestreams tree against the real library (issue 14 §6): python-simplestreams'
//! `sstream-query` and `sstream-mirror`, with `--keyring` the keyring the proxy's tests trust,
//! verify fake-store's clear-signed tree with `gpgv` and agree with it on every item; the mirror
//! downloads every item and checks its checksums; and where the tools can judge a bad tree (a
//! tampered `.sjson`, a key outside the keyring, a wrong checksum, a path out of the mirror),
//! they refuse it. The proxy's own reader (`image_store_proxy::simplestreams`) reads the same
//! tree and offers what the default filters keep, refuses the bad trees the tools let through, and
//! its qcow2 reader reads every `disk1.img` as `qemu-img` does.
//!
//! The peer is found by `common::simplestreams_tool`: under `./test.sh` a missing tool fails.

use fake_store::{FakeStore, StoreConfig, StreamFaults, StreamItem};
use image_store_proxy::simplestreams::{
    Checksum, DEFAULT_CONTENT_ID, Index, InstalledVersions, ItemFilter, Products, Selection,
    Virtualization,
};
use image_store_proxy::trust::Keyring;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tokio_util::sync::CancellationToken;

use crate::common::simplestreams_tool;

/// fake-store on the demo image sets, on loopback, with the keyring that trusts it.
struct Mirror {
    dir: tempfile::TempDir,
    store: FakeStore,
    /// `http://ADDR/simplestreams/`
    root: String,
    keyring: PathBuf,
    /// The items as fake-store built them.
    items: Vec<StreamItem>,
    shutdown: CancellationToken,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Mirror {
    async fn start() -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        fake_store::demo::write_demo_images(&images).unwrap();
        let keyring = dir.path().join("keyring.gpg");
        std::fs::write(&keyring, fake_store::TEST_KEYRING).unwrap();
        std::fs::create_dir(dir.path().join("gnupg")).unwrap();
        let store = FakeStore::open(StoreConfig {
            dir: images,
            signing_key: None,
            updated: Some("2026-11-20T10:00:00Z".into()),
            public_url: None,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let root = fake_store::simplestreams_root(listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(fake_store::serve(
            listener,
            store.clone(),
            shutdown.clone().cancelled_owned(),
        ));
        let built = store.clone();
        let items = tokio::task::spawn_blocking(move || built.simplestreams_items())
            .await
            .unwrap()
            .unwrap();
        Mirror {
            dir,
            store,
            root,
            keyring,
            items,
            shutdown,
        }
    }

    fn index_url(&self) -> String {
        format!("{}{}", self.root, fake_store::SIMPLESTREAMS_INDEX_PATH)
    }

    /// Runs a tool with `--keyring` and `args`, in a GnuPG home of its own (gpgv is told the
    /// keyring; nothing of the user's is read or written).
    async fn run(&self, tool: &Path, args: &[&str]) -> Output {
        let mut command = Command::new(tool);
        command
            .env("GNUPGHOME", self.dir.path().join("gnupg"))
            .arg(format!("--keyring={}", self.keyring.display()))
            .args(args);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    fn faults(&self, change: impl FnOnce(&mut StreamFaults)) {
        change(&mut self.store.faults().simplestreams);
    }
}

/// What identifies an item, and what a client must find for it.
type ItemKey = (String, String, String);
type ItemFacts = BTreeMap<&'static str, String>;

fn facts_of_store(items: &[StreamItem]) -> BTreeMap<ItemKey, ItemFacts> {
    items
        .iter()
        .map(|item| {
            let key = (
                item.product_name.clone(),
                item.version_name.clone(),
                item.item_name.clone(),
            );
            let facts = BTreeMap::from([
                ("path", item.path.clone()),
                ("size", item.size.to_string()),
                ("sha256", item.sha256.clone()),
                ("md5", item.md5.clone()),
                ("arch", item.arch.clone()),
                ("ftype", item.ftype.clone()),
                ("release", item.release.clone()),
            ]);
            (key, facts)
        })
        .collect()
}

fn failure(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sstream_query_verifies_the_tree_and_lists_every_item_as_fake_store_has_it() {
    let Some(query) = simplestreams_tool("sstream-query") else {
        return;
    };
    let mirror = Mirror::start().await;
    let output = mirror.run(&query, &["--json", &mirror.index_url()]).await;
    assert!(output.status.success(), "{}", failure(&output));
    let listed: Vec<BTreeMap<String, Value>> = serde_json::from_slice(&output.stdout).unwrap();
    let text = |item: &BTreeMap<String, Value>, key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };

    let (downloads, image_ids): (Vec<_>, Vec<_>) = listed
        .iter()
        .partition(|item| text(item, "content_id") == fake_store::DOWNLOAD_CONTENT_ID);
    let mut theirs = BTreeMap::new();
    for item in &downloads {
        let key = (
            text(item, "product_name"),
            text(item, "version_name"),
            text(item, "item_name"),
        );
        let facts: ItemFacts = ["path", "size", "sha256", "md5", "arch", "ftype", "release"]
            .into_iter()
            .map(|field| (field, text(item, field)))
            .collect();
        assert_eq!(
            text(item, "item_url"),
            format!("{}{}", mirror.root, text(item, "path"))
        );
        assert_eq!(text(item, "updated"), "Fri, 20 Nov 2026 10:00:00 +0000");
        assert_eq!(text(item, "datatype"), "image-downloads");
        assert!(theirs.insert(key, facts).is_none(), "an item listed twice");
    }
    assert_eq!(theirs, facts_of_store(&mirror.items));
    assert!(mirror.items.iter().any(|item| item.arch == "arm64"));
    let lucid = mirror
        .items
        .iter()
        .filter(|item| item.product_name == "com.ubuntu.cloud:server:10.04:amd64")
        .map(|item| item.version_name.as_str())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(lucid.len(), 2, "one product has two serials: {lucid:?}");

    // The image-ids stream: one registration per version, its region from `_aliases`.
    let versions: std::collections::BTreeSet<(String, String)> = mirror
        .items
        .iter()
        .map(|item| (item.product_name.clone(), item.version_name.clone()))
        .collect();
    assert_eq!(image_ids.len(), versions.len(), "{image_ids:?}");
    for item in image_ids {
        assert_eq!(text(item, "content_id"), fake_store::IMAGE_IDS_CONTENT_ID);
        assert_eq!(text(item, "datatype"), "image-ids");
        assert_eq!(
            text(item, "region"),
            "us-east-1",
            "expanded from its crsn alias"
        );
        assert!(text(item, "id").starts_with("ami-"), "{item:?}");
        let version = (text(item, "product_name"), text(item, "version_name"));
        assert!(versions.contains(&version), "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sstream_mirror_copies_every_item_and_the_copy_hashes_as_the_products_file_says() {
    let Some(tool) = simplestreams_tool("sstream-mirror") else {
        return;
    };
    let mirror = Mirror::start().await;
    let copy = mirror.dir.path().join("copy");
    let output = mirror
        .run(
            &tool,
            &["--max=2", &mirror.index_url(), copy.to_str().unwrap()],
        )
        .await;
    assert!(output.status.success(), "{}", failure(&output));
    for item in &mirror.items {
        let bytes = std::fs::read(copy.join(&item.path))
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", item.path, failure(&output)));
        assert_eq!(bytes.len() as u64, item.size, "{}", item.path);
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            item.sha256,
            "{}",
            item.path
        );
    }
    // The copy keeps the signed documents: what a static server of it serves verifies as well.
    let keyring = Keyring::from_bytes(fake_store::TEST_KEYRING).unwrap();
    let products = std::fs::read(copy.join(format!(
        "streams/v1/{}.sjson",
        fake_store::DOWNLOAD_CONTENT_ID
    )))
    .unwrap();
    let products = Products::parse(&keyring.verify_inline(&products).unwrap()).unwrap();
    assert_eq!(products.items().count(), mirror.items.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_reader_verifies_the_tree_and_offers_the_newest_amd64_versions() {
    let mirror = Mirror::start().await;
    let keyring = Keyring::from_bytes(fake_store::TEST_KEYRING).unwrap();
    let verified = |path: &str| {
        let signed = mirror.store.simplestreams_file(path).unwrap().unwrap();
        keyring.verify_inline(&signed).unwrap()
    };
    let index = Index::parse(&verified(fake_store::SIMPLESTREAMS_INDEX_PATH)).unwrap();
    let entries = index.downloads(&[DEFAULT_CONTENT_ID.to_owned()]).unwrap();
    assert_eq!(entries.len(), 1);
    let products = Products::parse(&verified(entries[0].path.as_str())).unwrap();
    products.check_entry(&entries[0]).unwrap();

    let newest = |max_versions, installed: &InstalledVersions| {
        let selection = Selection {
            filters: vec![ItemFilter::for_cloud_architecture("x86_64").unwrap()],
            max_versions,
            virtualization: Virtualization::Hvm,
        };
        selection.offers(&products, installed)
    };
    let offers = newest(1, &InstalledVersions::default());
    assert_eq!(offers.passed_over, Vec::<String>::new());
    let mut expected: Vec<&StreamItem> = mirror
        .items
        .iter()
        .filter(|item| item.arch == "amd64" && item.ftype == "disk1.img")
        .collect();
    // the newest serial of each product: the store's items come oldest first
    expected.reverse();
    expected.dedup_by(|a, b| a.product_name == b.product_name);
    let mut offered: Vec<_> = offers
        .offers
        .iter()
        .map(|offer| {
            let Checksum::Sha256(sha256) = &offer.checksum else {
                panic!("{offer:?} has no SHA-256")
            };
            (
                offer.identity.product_name.clone(),
                offer.identity.version_name.clone(),
                offer.path.to_string(),
                offer.size,
                sha256.as_str().to_owned(),
            )
        })
        .collect();
    offered.sort();
    let mut expected: Vec<_> = expected
        .iter()
        .map(|item| {
            (
                item.product_name.clone(),
                item.version_name.clone(),
                item.path.clone(),
                item.size,
                item.sha256.clone(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(offered, expected);

    // With the older lucid serial installed, the newer one is an upgrade.
    let lucid = "com.ubuntu.cloud:server:10.04:amd64";
    let mut installed = InstalledVersions::default();
    installed.insert(lucid, "20100427");
    let offers = newest(1, &installed);
    let upgrades: Vec<_> = offers
        .offers
        .iter()
        .filter(|offer| offer.is_upgrade(&installed))
        .map(|offer| (offer.identity.product_name.as_str(), offer.version.as_str()))
        .collect();
    assert_eq!(upgrades, [(lucid, "20101020")]);
    assert_eq!(
        offers.offers.len(),
        3,
        "the installed version is offered too"
    );
}

/// Asserts a tool refused the tree: a failed exit, and `expected` in what it said.
fn assert_refused(output: &Output, expected: &str) {
    assert!(!output.status.success(), "{}", failure(output));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains(expected),
        "{expected:?} not said: {}",
        failure(output)
    );
}

/// What python-simplestreams says when gpgv refuses a clear-signed document.
const GPGV_REFUSED: &str = "returned non-zero exit status";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_tools_refuse_a_tampered_sjson() {
    let (Some(query), Some(mirror_tool)) = (
        simplestreams_tool("sstream-query"),
        simplestreams_tool("sstream-mirror"),
    ) else {
        return;
    };
    let mirror = Mirror::start().await;
    mirror.faults(|faults| faults.tamper_signed = true);
    let output = mirror.run(&query, &["--json", &mirror.index_url()]).await;
    assert_refused(&output, GPGV_REFUSED);
    assert!(
        output.stderr.windows(4).any(|w| w == b"gpgv"),
        "{}",
        failure(&output)
    );
    let copy = mirror.dir.path().join("copy");
    let output = mirror
        .run(&mirror_tool, &[&mirror.index_url(), copy.to_str().unwrap()])
        .await;
    assert_refused(&output, GPGV_REFUSED);
    assert!(!copy.join("server").exists(), "nothing was copied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_tools_refuse_a_tree_signed_by_a_key_outside_the_keyring() {
    let Some(query) = simplestreams_tool("sstream-query") else {
        return;
    };
    let mirror = Mirror::start().await;
    let gpg = crate::common::Gpg::new();
    let other = gpg.generate("someone-else@image-store-proxy.invalid", "ed25519");
    mirror.faults(|faults| faults.signed_by = Some(other));
    let output = mirror.run(&query, &["--json", &mirror.index_url()]).await;
    assert_refused(&output, GPGV_REFUSED);
    // The same tree, honestly signed again, is read: the key was the only fault.
    mirror.faults(|faults| faults.signed_by = None);
    let output = mirror.run(&query, &["--json", &mirror.index_url()]).await;
    assert!(output.status.success(), "{}", failure(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sstream_mirror_refuses_an_item_whose_sha256_is_wrong() {
    let Some(tool) = simplestreams_tool("sstream-mirror") else {
        return;
    };
    let mirror = Mirror::start().await;
    mirror.faults(|faults| faults.wrong_item_sha256 = true);
    let copy = mirror.dir.path().join("copy");
    let output = mirror
        .run(&tool, &[&mirror.index_url(), copy.to_str().unwrap()])
        .await;
    assert_refused(&output, "InvalidChecksum: Invalid sha256 Checksum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sstream_mirror_refuses_an_item_path_out_of_the_mirror() {
    let Some(tool) = simplestreams_tool("sstream-mirror") else {
        return;
    };
    let mirror = Mirror::start().await;
    mirror.faults(|faults| faults.item_path_escapes = true);
    let copy = mirror.dir.path().join("copy");
    let output = mirror
        .run(&tool, &[&mirror.index_url(), copy.to_str().unwrap()])
        .await;
    assert_refused(&output, "starts with '../'");
    assert!(
        !mirror.dir.path().join("server").exists(),
        "nothing was written outside"
    );
}

/// The bad trees the real tools accept (their judgement stops at signatures, checksums and
/// paths) are still bad inputs for the proxy: its reader refuses each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_reader_refuses_a_mismatched_content_id_and_a_rolled_back_tree() {
    let mirror = Mirror::start().await;
    let keyring = Keyring::from_bytes(fake_store::TEST_KEYRING).unwrap();
    let products_path = format!("streams/v1/{}.sjson", fake_store::DOWNLOAD_CONTENT_ID);
    let read = || {
        let verified = |path: &str| {
            let signed = mirror.store.simplestreams_file(path).unwrap().unwrap();
            keyring.verify_inline(&signed).unwrap()
        };
        let index = Index::parse(&verified(fake_store::SIMPLESTREAMS_INDEX_PATH)).unwrap();
        let entry = index.downloads(&[DEFAULT_CONTENT_ID.to_owned()]).unwrap()[0].clone();
        (
            index,
            entry,
            Products::parse(&verified(&products_path)).unwrap(),
        )
    };
    let (index, entry, products) = read();
    products.check_entry(&entry).unwrap();

    mirror.faults(|faults| faults.content_id_mismatch = true);
    let (_, entry, mismatched) = read();
    let error = mismatched.check_entry(&entry).unwrap_err().to_string();
    assert!(error.contains(fake_store::MISMATCHED_CONTENT_ID), "{error}");

    mirror.faults(|faults| {
        *faults = StreamFaults {
            rolled_back: true,
            ..StreamFaults::default()
        }
    });
    let (old_index, _, old_products) = read();
    for (document, accepted, offered) in [
        ("index", index.updated, old_index.updated),
        ("products file", products.updated, old_products.updated),
    ] {
        let refusal =
            image_store_proxy::simplestreams::refuse_rollback(document, accepted, offered);
        let error = refusal.unwrap_err().to_string();
        assert!(error.contains("before the"), "{document}: {error}");
    }

    mirror.faults(|faults| {
        *faults = StreamFaults {
            unsigned_only: true,
            ..StreamFaults::default()
        }
    });
    let store = &mirror.store;
    assert_eq!(
        store
            .simplestreams_file(fake_store::SIMPLESTREAMS_INDEX_PATH)
            .unwrap(),
        None
    );
    let unsigned = store
        .simplestreams_file("streams/v1/index.json")
        .unwrap()
        .unwrap();
    assert!(
        keyring.verify_inline(&unsigned).is_err(),
        "an unsigned index is no signed one"
    );
}

/// Every `disk1.img` of the tree reads through the proxy's qcow2 reader as the raw disk
/// `qemu-img convert` makes of it, with compressed clusters among its clusters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_qcow2_reader_and_qemu_img_read_every_disk1_img_as_the_same_disk() {
    use image_store_proxy::unpack::qcow2::{ClusterKind, Qcow2Image};
    use std::io::Read;
    let mirror = Mirror::start().await;
    for item in mirror.items.iter().filter(|item| item.ftype == "disk1.img") {
        let bytes = mirror
            .store
            .simplestreams_file(&item.path)
            .unwrap()
            .unwrap();
        let qcow2 = mirror.dir.path().join("disk1.img");
        let raw = mirror.dir.path().join("disk.raw");
        std::fs::write(&qcow2, &bytes).unwrap();
        let convert = Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .args([&qcow2, &raw])
            .output()
            .expect("qemu-img is installed (the test command installs it)");
        assert!(convert.status.success(), "{}", failure(&convert));
        let theirs = std::fs::read(&raw).unwrap();

        let mut image = Qcow2Image::open(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!(image.version(), 3);
        assert_eq!(image.virtual_size(), theirs.len() as u64);
        let compressed = image
            .clusters()
            .filter(|cluster| matches!(cluster.as_ref().unwrap().kind, ClusterKind::Compressed(_)))
            .count();
        assert!(compressed > 0, "{}: no compressed cluster", item.path);
        let mut ours = Vec::new();
        image.into_reader().read_to_end(&mut ours).unwrap();
        assert!(
            ours == theirs,
            "{}: the proxy reads another disk",
            item.path
        );
    }
}
