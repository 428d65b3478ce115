//! The overlapped install (issue 16, point 2), through the real binary into moto: a raw image's
//! bundle is made from the file as it downloads and its parts go up beside the download; the
//! manifest goes up and the image is registered only once the file's size, SHA-256 and signature
//! have verified, and a file that fails takes its parts back out of the bucket. Each test reads
//! the peers' records: fake-store throttled (`bytes_per_second`) so the download lasts, moto's
//! request recorder and its object listing; none waits on a timing threshold.
//!
//! The kill points inside the overlap are in `crash_safety.rs`.

use crate::common;

use common::moto::Moto;
use common::{Gpg, TestEnv};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "AKIDOVERLAPTEST";
const SECRET: &str = "overlap-test-secret-0123456789";

/// 25 MiB of noise, raw: a bundle of three 10 MiB parts.
const SET: &str = "big";
const SIZE: usize = 25 << 20;
const PREFIX: &str = "overlap-test-1-image";
/// The download's pace while parts are to go up beside it: 25 MiB take about 25 s, and the
/// bundler (even a debug build on a loaded machine) closes its first part well before.
const SLOW: u64 = 1 << 20;

/// moto, and fake-store holding the 25 MiB set beside its own, with a proxy installing into moto
/// (`retry_delay_ms`: its pause before a download's retry, when not the tests' default).
async fn start(dir: &Path, retry_delay_ms: Option<u64>) -> (Moto, TestEnv) {
    start_with(dir, retry_delay_ms, false).await
}

/// [`start`], the image raw or, `gzipped`, as `image.gz` made by `gzip -6`.
async fn start_with(dir: &Path, retry_delay_ms: Option<u64>, gzipped: bool) -> (Moto, TestEnv) {
    let moto = Moto::start(dir);
    let mut env = TestEnv::with_store().await;
    let set = env.images.join(SET);
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(
        set.join("image"),
        common::noise(0x243F_6A88_85A3_08D3, SIZE),
    )
    .unwrap();
    if gzipped {
        let status = std::process::Command::new("gzip")
            .arg("-6")
            .arg(set.join("image"))
            .status()
            .unwrap();
        assert!(status.success(), "gzip -6");
    }
    let meta = json!({"title": "Overlap test", "version": "1", "product": "overlap-test",
        "summary": "incompressible", "tags": ["test"], "arch": "x86_64"});
    std::fs::write(set.join("meta.json"), meta.to_string()).unwrap();
    env.store.reload().unwrap();
    let config = moto.cloud_config(env.dir.path(), "toml", ACCESS_KEY, SECRET, "2");
    env.cloud = Some((config, SECRET.to_string()));
    if let Some(delay) = retry_delay_ms {
        env.retry_delay_ms = delay;
    }
    env.start_proxy();
    env.dashboard().await;
    (moto, env)
}

/// Waits until moto has received a PUT of one of the bundle's parts; returns moto's PUTs.
async fn first_part_put(moto: &Moto, env: &TestEnv) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let puts = moto.object_puts();
        if puts.iter().any(|p| p.contains(".part.")) {
            return puts;
        }
        assert!(
            Instant::now() < deadline,
            "no part went up; log:\n{}",
            env.proxy_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the proxy (cheap, unlike moto's recorder) until its one overlapped line says a part was
/// sent (moto answered its PUT); returns that state.
async fn first_part_sent(env: &TestEnv, uri: &str) -> Value {
    env.wait_for(uri, "a part sent beside the download", |state| {
        state["status-detail"].as_str().is_some_and(|detail| {
            detail.starts_with("Downloading machine image: ")
                && !detail.ends_with(", 0 parts sent")
                && detail.ends_with(" sent")
        })
    })
    .await
}

/// The bucket of an object PUT's path `/bucket/key`.
fn bucket_of(path: &str) -> String {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// What moto holds after a failed overlap: parts were PUT (and, each, DELETEd), no manifest went
/// up, nothing is registered, and the bucket is empty.
fn assert_taken_back(moto: &Moto) -> (usize, usize) {
    let puts = moto.object_puts();
    assert!(!puts.is_empty(), "parts went up before the failure");
    assert!(
        puts.iter().all(|p| p.contains(&format!("{PREFIX}.part."))),
        "only parts, no manifest: {puts:?}"
    );
    assert!(moto.registrations().is_empty(), "nothing registered");
    let deletes: Vec<String> = moto
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "DELETE")
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    let mut put = puts.clone();
    put.sort();
    put.dedup();
    for part in &put {
        assert!(deletes.contains(part), "{part} not deleted: {deletes:?}");
    }
    let bucket = bucket_of(&puts[0]);
    let objects = moto.check(&["objects", &bucket]);
    assert_eq!(objects, json!([]), "the bucket holds nothing");
    (puts.len(), deletes.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_part_goes_up_before_the_download_ends_and_the_manifest_after_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, env) = start(dir.path(), None).await;
    let uri = env.image_uri(SET);
    env.store.faults().bytes_per_second = Some(SLOW);
    let before = env.downloaded_bytes().await;
    env.act(&uri, "install").await;
    let state = first_part_sent(&env, &uri).await;
    // Read after the proxy had moto's answer to the PUT: the download was no further along then.
    let received = env.downloaded_bytes().await - before;
    let detail = state["status-detail"].as_str().unwrap().to_string();
    assert!(
        received < SIZE as u64,
        "{received} of {SIZE} bytes downloaded when {detail:?}"
    );
    assert_eq!(state["status"], "downloading", "{state}");
    let puts = first_part_put(&moto, &env).await;
    assert!(
        !puts.iter().any(|p| p.ends_with(".manifest.xml")),
        "{puts:?}"
    );
    env.store.faults().bytes_per_second = None;

    env.wait_for_status(&uri, "installed").await;
    let puts = moto.object_puts();
    let bucket = bucket_of(&puts[0]);
    let mut parts: Vec<String> = puts[..3].to_vec();
    parts.sort();
    assert_eq!(
        parts,
        (0..3)
            .map(|n| format!("/{bucket}/{PREFIX}.part.{n:02}"))
            .collect::<Vec<_>>(),
        "{puts:?}"
    );
    assert_eq!(
        puts[3..],
        [format!("/{bucket}/{PREFIX}.manifest.xml")],
        "the manifest last, once"
    );
    assert_eq!(moto.registrations().len(), 1);
    assert_eq!(env.served("/files/big/image").len(), 1);
    println!(
        "FIGURE overlap: the first part PUT with {received} of {SIZE} bytes downloaded, status \
         {detail:?}; then {} object PUTs, each once, the manifest last; 1 RegisterImage",
        puts.len()
    );
}

/// The failed install's error line.
async fn failure(env: &TestEnv, uri: &str) -> String {
    let state = env.wait_for_failure(uri).await;
    state["error-message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_signature_fails_after_its_parts_were_uploaded_leaves_no_manifest_no_registration_and_no_parts()
 {
    let dir = tempfile::tempdir().unwrap();
    let (moto, env) = start(dir.path(), None).await;
    let uri = env.image_uri(SET);
    let gpg = Gpg::new();
    gpg.generate("Stranger <stranger@example.invalid>", "ed25519");
    let image = env.images.join(SET).join("image");
    gpg.detach_sign(
        "stranger@example.invalid",
        &image,
        &env.images.join(SET).join("image.asc"),
    );
    env.store.faults().bytes_per_second = Some(SLOW);
    env.act(&uri, "install").await;
    first_part_put(&moto, &env).await;
    env.store.faults().bytes_per_second = None;
    let error = failure(&env, &uri).await;
    assert!(
        error.starts_with(
            "Failure encountered while: Verifying machine image signature: made by a key not in the keyring"
        ),
        "{error}"
    );
    let (puts, deletes) = assert_taken_back(&moto);
    println!(
        "FIGURE overlap-bad-signature: {error:?}; {puts} part PUTs before the verdict, {deletes} \
         DELETEs after; no manifest, no RegisterImage, the bucket empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_with_the_wrong_sha256_during_the_overlap_leaves_nothing_registered_and_no_parts()
 {
    let dir = tempfile::tempdir().unwrap();
    let (moto, env) = start(dir.path(), None).await;
    let uri = env.image_uri(SET);
    // One byte flipped in flight, past the first part.
    env.store.inject(
        "files/big/image",
        fake_store::Fault::Corrupt { offset: 20 << 20 },
        None,
    );
    env.store.faults().bytes_per_second = Some(SLOW);
    env.act(&uri, "install").await;
    first_part_put(&moto, &env).await;
    env.store.faults().bytes_per_second = None;
    let error = failure(&env, &uri).await;
    assert!(error.contains("SHA-256 mismatch"), "{error}");
    let (puts, deletes) = assert_taken_back(&moto);
    println!(
        "FIGURE overlap-bad-sha256: {error:?}; {puts} part PUTs, {deletes} DELETEs; nothing left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_comes_up_short_during_the_overlap_leaves_nothing_registered_and_no_parts()
{
    let dir = tempfile::tempdir().unwrap();
    let (moto, env) = start(dir.path(), None).await;
    let uri = env.image_uri(SET);
    // The file upstream loses its last 3 MiB after the catalog was signed.
    let image = env.images.join(SET).join("image");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    file.set_len((SIZE - (3 << 20)) as u64).unwrap();
    env.store.faults().bytes_per_second = Some(SLOW);
    env.act(&uri, "install").await;
    first_part_put(&moto, &env).await;
    env.store.faults().bytes_per_second = None;
    let error = failure(&env, &uri).await;
    assert!(error.contains("Downloading machine image"), "{error}");
    let (puts, deletes) = assert_taken_back(&moto);
    println!("FIGURE overlap-short: {error:?}; {puts} part PUTs, {deletes} DELETEs; nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_during_the_overlap_nothing_is_registered_and_the_next_install_completes() {
    let dir = tempfile::tempdir().unwrap();
    // The download is cut once at 15 MiB and waits a minute before it resumes: the first part
    // goes up in that pause, held by the peer, not by a pace.
    let (moto, env) = start(dir.path(), Some(60_000)).await;
    let uri = env.image_uri(SET);
    env.store.inject(
        "files/big/image",
        fake_store::Fault::DropAfter(15 << 20),
        Some(1),
    );
    env.act(&uri, "install").await;
    first_part_sent(&env, &uri).await;
    env.act(&uri, "cancel").await;
    let state: Value = env.wait_for_status(&uri, "uninstalled").await;
    assert!(state.get("error-message").is_none(), "{state}");
    let puts = moto.object_puts();
    assert!(
        !puts.iter().any(|p| p.ends_with(".manifest.xml")),
        "{puts:?}"
    );
    assert!(moto.registrations().is_empty());

    env.act(&uri, "install").await;
    env.wait_for_status(&uri, "installed").await;
    assert_eq!(moto.registrations().len(), 1);
    let requests = env.served("/files/big/image");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        common::resumed_from(&requests[1]) > 0,
        "the download resumed: {requests:?}"
    );
}

/// A gzipped raw image overlaps its download too: its bundle's tar header needs the image's
/// size, which only the gzip trailer says, and the proxy reads that trailer ahead with a range
/// request instead of waiting for the download to reach it; the bundle is spliced from the
/// arriving file (`bundle_format.rs` opens a spliced bundle the way the cloud does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzipped_image_sends_parts_before_its_download_ends_and_registers_once_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, env) = start_with(dir.path(), None, true).await;
    let uri = env.image_uri(SET);
    env.store.faults().bytes_per_second = Some(SLOW);
    let before = env.downloaded_bytes().await;
    env.act(&uri, "install").await;
    let state = first_part_sent(&env, &uri).await;
    let received = env.downloaded_bytes().await - before;
    let gzipped = std::fs::metadata(env.images.join(SET).join("image.gz"))
        .unwrap()
        .len();
    assert!(
        received < gzipped,
        "{received} of {gzipped} bytes downloaded when {state}"
    );
    env.store.faults().bytes_per_second = None;
    env.wait_for_status(&uri, "installed").await;
    assert_eq!(moto.registrations().len(), 1);
    let puts = moto.object_puts();
    assert!(puts.last().unwrap().ends_with(".manifest.xml"), "{puts:?}");
}
