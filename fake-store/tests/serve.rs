//! fake-store over real HTTP on 127.0.0.1:0: the catalog it builds, Range answers, and signatures
//! that GnuPG's own `gpgv` accepts (and refuses once tampered with).

use fake_store::{FakeStore, StoreConfig};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

struct Served {
    store: FakeStore,
    base: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn serve(dir: &Path) -> Served {
    let store = FakeStore::open(StoreConfig {
        dir: dir.to_owned(),
        signing_key: None,
        updated: None,
        public_url: None,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(fake_store::serve(listener, store.clone(), async {
        let _ = rx.await;
    }));
    Served {
        store,
        base,
        _shutdown: tx,
    }
}

async fn get(url: &str, range: Option<&str>) -> reqwest::Response {
    // The workspace builds reqwest with rustls and no default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut request = reqwest::Client::new().get(url);
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    request.send().await.unwrap()
}

/// The image set a top-level directory serves: its own name.
fn set_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_str().unwrap().to_string()
}

/// `gpgv` with the committed test keyring: did GnuPG accept `signature` over `data`?
fn gpgv_accepts(data: &[u8], signature: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data"), data).unwrap();
    std::fs::write(dir.path().join("data.asc"), signature).unwrap();
    let keyring = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keyrings/test-keyring.gpg");
    Command::new("gpgv")
        .arg("--homedir")
        .arg(dir.path())
        .arg("--keyring")
        .arg(keyring)
        .arg(dir.path().join("data.asc"))
        .arg(dir.path().join("data"))
        .output()
        .expect("gpgv is installed (the test command installs it)")
        .status
        .success()
}

#[tokio::test]
async fn a_single_set_directory_becomes_a_one_image_catalog_with_relative_urls_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("my-images");
    std::fs::create_dir(&set).unwrap();
    std::fs::write(set.join("kernel"), b"kernel bytes").unwrap();
    std::fs::write(set.join("image.gz"), b"not really gzip").unwrap();
    let served = serve(&set).await;
    let body = get(&format!("{}/dashboard", served.base), None)
        .await
        .bytes()
        .await
        .unwrap();
    let catalog: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(catalog["format"], "image-store/1");
    let image = &catalog["images"][0];
    assert_eq!(image["uri"], format!("{}/images/my-images", served.base));
    assert_eq!(image["title"], "my-images");
    assert_eq!(image["version"], "1.0");
    assert_eq!(image["arch"], "x86_64");
    assert_eq!(catalog["sections"][0]["image-uris"][0], image["uri"]);
    let files = image["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["kind"], "kernel");
    assert_eq!(files[0]["url"], "files/my-images/kernel");
    assert_eq!(files[0]["size"], 12);
    // sha256 of "kernel bytes", as `sha256sum` prints it.
    assert_eq!(
        files[0]["sha256"],
        "8daf3e4f39d310222b89e05b97f1aa56319811c728a147e8c6c86448f534194f"
    );
    assert_eq!(files[0]["compression"], "none");
    assert_eq!(files[1]["kind"], "image");
    assert_eq!(files[1]["compression"], "gzip");
    assert_eq!(files[1]["format"], "raw");
    assert_eq!(
        served.store.catalog_json(),
        serde_json::to_vec_pretty(&catalog).unwrap()
    );
}

#[tokio::test]
async fn ranges_are_served_as_http_says() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    std::fs::write(dir.path().join("image"), &bytes).unwrap();
    let served = serve(dir.path()).await;
    let name = set_name(dir.path());
    let url = format!("{}/files/{name}/image", served.base);

    let whole = get(&url, None).await;
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.content_length(), Some(1000));
    assert_eq!(whole.bytes().await.unwrap(), bytes);

    let middle = get(&url, Some("bytes=10-19")).await;
    assert_eq!(middle.status(), 206);
    assert_eq!(middle.headers()["content-range"], "bytes 10-19/1000");
    assert_eq!(middle.bytes().await.unwrap(), bytes[10..20]);

    let tail = get(&url, Some("bytes=-5")).await;
    assert_eq!(tail.headers()["content-range"], "bytes 995-999/1000");
    assert_eq!(tail.bytes().await.unwrap(), bytes[995..]);

    let past = get(&url, Some("bytes=1000-")).await;
    assert_eq!(past.status(), 416);
    assert_eq!(past.headers()["content-range"], "bytes */1000");

    assert_eq!(
        get(
            &format!("{}/files/{name}/../../etc/passwd", served.base),
            None
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        get(&format!("{}/files/{name}/meta.json", served.base), None)
            .await
            .status(),
        404
    );
    let log = served.store.requests();
    assert_eq!(log[1].range.as_deref(), Some("bytes=10-19"));
    assert_eq!(log[1].status, 206);
}

#[tokio::test]
async fn gnupg_accepts_the_catalog_and_file_signatures_and_refuses_tampered_ones() {
    let dir = tempfile::tempdir().unwrap();
    fake_store::demo::write_demo_images(dir.path()).unwrap();
    let served = serve(dir.path()).await;
    let catalog = get(&format!("{}/dashboard", served.base), None)
        .await
        .bytes()
        .await
        .unwrap();
    let signature = get(&format!("{}/dashboard.asc", served.base), None)
        .await
        .bytes()
        .await
        .unwrap();
    assert!(signature.starts_with(b"-----BEGIN PGP SIGNATURE-----"));
    assert!(gpgv_accepts(&catalog, &signature));

    let document: Value = serde_json::from_slice(&catalog).unwrap();
    assert_eq!(document["images"].as_array().unwrap().len(), 2);
    let lucid = document["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|image| image["version"] == "10.04")
        .expect("the demo's Ubuntu 10.04 set");
    let file = &lucid["files"][2];
    assert_eq!(file["format"], "tar");
    let data = get(
        &format!("{}/{}", served.base, file["url"].as_str().unwrap()),
        None,
    )
    .await
    .bytes()
    .await
    .unwrap();
    let file_signature = get(
        &format!(
            "{}/{}",
            served.base,
            file["signature-url"].as_str().unwrap()
        ),
        None,
    )
    .await
    .bytes()
    .await
    .unwrap();
    assert_eq!(data.len() as u64, file["size"].as_u64().unwrap());
    assert!(gpgv_accepts(&data, &file_signature));

    served.store.faults().tamper_catalog = true;
    let tampered = get(&format!("{}/dashboard", served.base), None)
        .await
        .bytes()
        .await
        .unwrap();
    assert_ne!(tampered, catalog);
    serde_json::from_slice::<Value>(&tampered).expect("still valid JSON");
    assert!(!gpgv_accepts(&tampered, &signature));
}

#[tokio::test]
async fn a_signature_file_on_disk_is_served_as_is_and_faults_apply() {
    let dir = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("image"), &image).unwrap();
    std::fs::write(dir.path().join("image.asc"), b"whatever the test put here").unwrap();
    let served = serve(dir.path()).await;
    let name = set_name(dir.path());
    let asc = get(&format!("{}/files/{name}/image.asc", served.base), None)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&asc[..], b"whatever the test put here");

    served.store.faults().status = Some(503);
    assert_eq!(
        get(&format!("{}/dashboard", served.base), None)
            .await
            .status(),
        503
    );
    served.store.faults().status = None;

    served.store.faults().drop_file_after = Some(300 << 10);
    let mut cut = get(&format!("{}/files/{name}/image", served.base), None).await;
    assert_eq!(cut.content_length(), Some(1 << 20));
    let mut received = 0;
    let ended = loop {
        match cut.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    assert!(ended.is_err(), "the body is cut short");
    assert_eq!(received, 300 << 10, "every byte before the cut arrives");
    assert_eq!(
        served.store.faults().drop_file_after,
        None,
        "the fault is used once"
    );
}

#[tokio::test]
async fn a_rate_limit_slows_file_bodies_and_keeps_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..=255u8).cycle().take(512 << 10).collect();
    std::fs::write(dir.path().join("image"), &bytes).unwrap();
    let served = serve(dir.path()).await;
    let url = format!("{}/files/{}/image", served.base, set_name(dir.path()));
    served.store.faults().bytes_per_second = Some(1 << 20);
    let started = std::time::Instant::now();
    assert_eq!(get(&url, None).await.bytes().await.unwrap(), bytes);
    let slow = started.elapsed();
    // 512 KiB at 1 MiB/s: half a second at least (the last chunk waits for its due time).
    assert!(slow >= std::time::Duration::from_millis(450), "{slow:?}");

    served.store.faults().bytes_per_second = None;
    let started = std::time::Instant::now();
    assert_eq!(get(&url, None).await.bytes().await.unwrap(), bytes);
    assert!(started.elapsed() < slow, "unthrottled is faster");
}

/// `gpgv` with the committed test keyring over a clear-signed message.
fn gpgv_accepts_clearsigned(message: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.sjson"), message).unwrap();
    let keyring = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keyrings/test-keyring.gpg");
    Command::new("gpgv")
        .arg("--homedir")
        .arg(dir.path())
        .arg("--keyring")
        .arg(keyring)
        .arg(dir.path().join("index.sjson"))
        .output()
        .expect("gpgv is installed (the test command installs it)")
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simplestreams_tree_is_served_beside_the_api_with_range_faults_and_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("noble");
    std::fs::create_dir(&set).unwrap();
    std::fs::write(set.join("kernel"), b"kernel bytes").unwrap();
    std::fs::write(set.join("ramdisk"), b"ramdisk bytes").unwrap();
    let image: Vec<u8> = b"a filesystem block. "
        .iter()
        .cycle()
        .take(1 << 20)
        .copied()
        .collect();
    std::fs::write(set.join("image"), &image).unwrap();
    let served = serve(&set).await;
    let root = format!(
        "{}{}",
        served.base.trim_end_matches("/api"),
        fake_store::SIMPLESTREAMS_ROOT_PATH
    );
    let store = served.store.clone();
    let items = tokio::task::spawn_blocking(move || store.simplestreams_items())
        .await
        .unwrap()
        .unwrap();
    let ftypes: Vec<&str> = items.iter().map(|i| i.ftype.as_str()).collect();
    assert_eq!(ftypes, ["disk1.img", "tar.gz"]);

    let index = get(
        &format!("{root}{}", fake_store::SIMPLESTREAMS_INDEX_PATH),
        None,
    )
    .await;
    assert_eq!(index.status(), 200);
    let index = index.bytes().await.unwrap();
    assert!(gpgv_accepts_clearsigned(&index));
    served.store.faults().simplestreams.tamper_signed = true;
    let tampered = get(
        &format!("{root}{}", fake_store::SIMPLESTREAMS_INDEX_PATH),
        None,
    )
    .await;
    assert!(!gpgv_accepts_clearsigned(&tampered.bytes().await.unwrap()));
    served.store.faults().simplestreams = fake_store::StreamFaults {
        unsigned_only: true,
        ..Default::default()
    };
    let signed = get(
        &format!("{root}{}", fake_store::SIMPLESTREAMS_INDEX_PATH),
        None,
    )
    .await;
    assert_eq!(signed.status(), 404);
    assert_eq!(
        get(&format!("{root}streams/v1/index.json"), None)
            .await
            .status(),
        200
    );

    let disk = &items[0];
    let whole = served
        .store
        .simplestreams_file(&disk.path)
        .unwrap()
        .unwrap();
    assert_eq!(whole.len() as u64, disk.size);
    let url = format!("{root}{}", disk.path);
    let part = get(&url, Some("bytes=10-19")).await;
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), whole[10..20]);
    served.store.inject(
        &format!("simplestreams/{}", disk.path),
        fake_store::Fault::Corrupt { offset: 4 },
        Some(1),
    );
    let corrupt = get(&url, None).await.bytes().await.unwrap();
    assert_eq!(corrupt.len(), whole.len());
    assert_eq!(corrupt[4], whole[4] ^ 0xff);
    assert_eq!(get(&url, None).await.bytes().await.unwrap(), whole);
    served.store.faults().status = Some(503);
    assert_eq!(get(&url, None).await.status(), 503);
    served.store.faults().status = None;
    assert_eq!(
        get(&format!("{root}server/nothing.img"), None)
            .await
            .status(),
        404
    );
}
