//! The overlapped install (issue 16, point 2), through the real binary into moto: a raw image's
//! bundle is made from the file as it downloads and its parts go up beside the download; the
//! manifest goes up and the image is registered only once the file's size, SHA-256 and signature
//! have verified, and a file that fails takes its parts back out of the bucket. Each test reads
//! the peers' records: fake-store throttled (`bytes_per_second`) so the download lasts, moto's
//! request recorder and its object listing; none waits on a timing threshold.
//!
//! A paravirtual image whose kernel and ramdisk are new overlaps too: they download and verify
//! first, their bundles go up (parts and manifests) unregistered, the image overlaps, and only
//! once it has verified are the kernel, the ramdisk and then the image registered; the image's
//! manifest, which names their ids, goes up last.
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

/// A paravirtual set: a kernel and a ramdisk of noise, then the 25 MiB raw image.
const PV_SET: &str = "pv";
/// The bundle prefixes' stem: `overlap-pv-1-kernel`, `-ramdisk`, `-image`.
const PV: &str = "overlap-pv-1";
const BOOT_SIZE: usize = 1 << 20;

/// Writes the paravirtual set into fake-store's `images` (the caller reloads it).
fn add_pv_set(images: &Path) {
    let set = images.join(PV_SET);
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(set.join("kernel"), common::noise(0x1357_9BDF, BOOT_SIZE)).unwrap();
    std::fs::write(set.join("ramdisk"), common::noise(0x2468_ACE0, BOOT_SIZE)).unwrap();
    std::fs::write(set.join("image"), common::noise(0x0F1E_2D3C, SIZE)).unwrap();
    let meta = json!({"title": "Overlap PV test", "version": "1", "product": "overlap-pv",
        "summary": "incompressible, with a kernel and a ramdisk", "tags": ["test"],
        "arch": "x86_64"});
    std::fs::write(set.join("meta.json"), meta.to_string()).unwrap();
}

/// Signs the paravirtual set's image with a key the proxy does not trust; returns the
/// signature's path (removed, fake-store signs it again with its own key).
fn sign_pv_image_with_a_stranger_s_key(env: &TestEnv) -> std::path::PathBuf {
    let gpg = Gpg::new();
    gpg.generate("Stranger <stranger@example.invalid>", "ed25519");
    let image = env.images.join(PV_SET).join("image");
    let signature = env.images.join(PV_SET).join("image.asc");
    gpg.detach_sign("stranger@example.invalid", &image, &signature);
    signature
}

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
    add_pv_set(&env.images);
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

/// Installs `uri` slowly enough that a part goes up into moto before the download ends, then at
/// full speed to its end; returns the error the install failed with.
async fn failure_after_a_part_went_up(moto: &Moto, env: &TestEnv, uri: &str) -> String {
    env.store.faults().bytes_per_second = Some(SLOW);
    env.act(uri, "install").await;
    first_part_put(moto, env).await;
    env.store.faults().bytes_per_second = None;
    failure(env, uri).await
}

/// Installs `uri` with its image file (`file`) cut once at 15 MiB (the proxy's retry delay makes
/// the pause in which a part goes up, held by the peer, not by a pace), cancels once a part is
/// sent, and waits until the install is back to uninstalled with no error.
async fn cancel_once_a_part_is_sent(env: &TestEnv, uri: &str, file: &str) {
    env.store
        .inject(file, fake_store::Fault::DropAfter(15 << 20), Some(1));
    env.act(uri, "install").await;
    first_part_sent(env, uri).await;
    env.act(uri, "cancel").await;
    let state: Value = env.wait_for_status(uri, "uninstalled").await;
    assert!(state.get("error-message").is_none(), "{state}");
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
    let error = failure_after_a_part_went_up(&moto, &env, &uri).await;
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
    let error = failure_after_a_part_went_up(&moto, &env, &uri).await;
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
    let error = failure_after_a_part_went_up(&moto, &env, &uri).await;
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
    cancel_once_a_part_is_sent(&env, &uri, "files/big/image").await;
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

/// The object PUTs of one bundle (`{PV}-kernel.`, ...) among moto's.
fn puts_of(puts: &[String], bundle: &str) -> Vec<String> {
    puts.iter()
        .filter(|p| p.contains(&format!("/{bundle}.")))
        .cloned()
        .collect()
}

/// Where in moto's request log the first request matching `what` is.
fn position(requests: &[Value], what: impl Fn(&Value) -> bool) -> usize {
    requests
        .iter()
        .position(what)
        .unwrap_or_else(|| panic!("not in moto's log: {requests:#?}"))
}

/// The first install of a paravirtual image whose kernel and ramdisk are new: they go first
/// (bundled and sent, manifests too, not registered), the image's parts go up while it still
/// downloads, and once it has verified the kernel, the ramdisk and the image are registered, once
/// each and in that order, the image's manifest (naming their ids, signed) last of all objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_paravirtual_install_sends_image_parts_before_its_download_ends_and_registers_all_three_once()
 {
    let dir = tempfile::tempdir().unwrap();
    let (moto, env) = start(dir.path(), None).await;
    let uri = env.image_uri(PV_SET);
    env.store.faults().bytes_per_second = Some(SLOW);
    let before = env.downloaded_bytes().await;
    env.act(&uri, "install").await;
    let state = first_part_sent(&env, &uri).await;
    let received = env.downloaded_bytes().await - before;
    let whole = (2 * BOOT_SIZE + SIZE) as u64;
    let detail = state["status-detail"].as_str().unwrap().to_string();
    assert!(
        received < whole,
        "{received} of {whole} bytes downloaded when {detail:?}"
    );
    assert_eq!(state["status"], "downloading", "{state}");
    let puts = first_part_put(&moto, &env).await;
    assert!(moto.registrations().is_empty(), "nothing registered yet");
    for boot in ["kernel", "ramdisk"] {
        assert!(
            puts.iter()
                .any(|p| p.ends_with(&format!("/{PV}-{boot}.manifest.xml"))),
            "the {boot}'s manifest is up before the image is in: {puts:?}"
        );
    }
    assert!(
        !puts
            .iter()
            .any(|p| p.contains(&format!("/{PV}-image.manifest"))),
        "{puts:?}"
    );
    env.store.faults().bytes_per_second = None;

    let installed = env.wait_for_status(&uri, "installed").await;
    let registrations = moto.registrations();
    let names: Vec<&str> = registrations
        .iter()
        .map(|r| r["params"]["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            format!("{PV}-kernel"),
            format!("{PV}-ramdisk"),
            format!("{PV}-image")
        ],
        "each once, the image last"
    );
    assert_eq!(registrations[2]["params"]["KernelId"], installed["eki"]);
    assert_eq!(registrations[2]["params"]["RamdiskId"], installed["eri"]);
    let puts = moto.object_puts();
    let mut distinct = puts.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), puts.len(), "each object PUT once: {puts:?}");
    assert_eq!(puts_of(&puts, &format!("{PV}-image")).len(), 3 + 1);
    // The image's manifest after the ramdisk's registration, and its registration after that.
    let requests = moto.requests();
    let image_manifest = position(&requests, |r| {
        r["method"] == "PUT"
            && r["path"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{PV}-image.manifest.xml"))
    });
    let ramdisk_registered = position(&requests, |r| {
        r["params"]["Action"] == "RegisterImage"
            && r["params"]["Name"] == format!("{PV}-ramdisk").as_str()
    });
    let last_image_part = requests
        .iter()
        .rposition(|r| {
            r["method"] == "PUT"
                && r["path"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("/{PV}-image.part."))
        })
        .unwrap();
    assert!(
        last_image_part < ramdisk_registered && ramdisk_registered < image_manifest,
        "the last image part at {last_image_part}, the ramdisk registered at \
         {ramdisk_registered}, the image's manifest at {image_manifest}"
    );
    // The manifest written after the bundle names the ids, is signed, and opens into the image.
    let bucket = bucket_of(&puts[0]);
    let landed = dir.path().join("landed");
    moto.check(&["download", &bucket, landed.to_str().unwrap()]);
    let manifest = landed.join(format!("{PV}-image.manifest.xml"));
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(
        common::openssl::element(&text, "kernel_id"),
        installed["eki"].as_str().unwrap()
    );
    assert_eq!(
        common::openssl::element(&text, "ramdisk_id"),
        installed["eri"].as_str().unwrap()
    );
    common::openssl::verify_manifest_signature(
        &manifest,
        &env.dir.path().join("credentials/user-cert.pem"),
        &dir.path().join("signature"),
    );
    let opened = common::openssl::open_bundle(
        &manifest,
        &env.dir.path().join("credentials/user-pk.pem"),
        common::openssl::WrappedFor::User,
        &dir.path().join("opened"),
    );
    assert!(
        opened.image == std::fs::read(env.images.join(PV_SET).join("image")).unwrap(),
        "the image as it landed"
    );
    assert_eq!(env.served("/files/pv/image").len(), 1);
    println!(
        "FIGURE overlap-first-paravirtual: the first image part sent with {received} of {whole} \
         bytes downloaded (kernel and ramdisk included), status {detail:?}, kernel and ramdisk \
         manifests up, nothing registered; then RegisterImage {names:?}; {} object PUTs, each \
         once; the image's manifest (naming {} and {}) PUT after the ramdisk's registration",
        puts.len(),
        installed["eki"],
        installed["eri"]
    );
}

/// A paravirtual image whose signature fails after its parts went up: no registration at all
/// (neither the kernel nor the ramdisk, which verified), no image manifest, its parts deleted.
/// The kernel's and ramdisk's bundles stay in the bucket for the retry, which registers all
/// three and sends neither of them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paravirtual_image_whose_signature_fails_after_its_parts_went_up_registers_nothing_in_moto()
 {
    let dir = tempfile::tempdir().unwrap();
    let (moto, env) = start(dir.path(), None).await;
    let uri = env.image_uri(PV_SET);
    let signature = sign_pv_image_with_a_stranger_s_key(&env);
    env.store.faults().bytes_per_second = Some(SLOW);
    env.act(&uri, "install").await;
    first_part_sent(&env, &uri).await;
    env.store.faults().bytes_per_second = None;
    let error = failure(&env, &uri).await;
    assert!(
        error.starts_with(
            "Failure encountered while: Verifying machine image signature: made by a key not in the keyring"
        ),
        "{error}"
    );
    assert!(moto.registrations().is_empty(), "nothing registered");
    let puts = moto.object_puts();
    let image_puts = puts_of(&puts, &format!("{PV}-image"));
    assert!(!image_puts.is_empty(), "image parts went up: {puts:?}");
    assert!(
        image_puts.iter().all(|p| p.contains(".part.")),
        "no image manifest: {image_puts:?}"
    );
    let deletes: Vec<String> = moto
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "DELETE")
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    for part in &image_puts {
        assert!(deletes.contains(part), "{part} not deleted: {deletes:?}");
    }
    let bucket = bucket_of(&puts[0]);
    let objects = moto.check(&["objects", &bucket]);
    let mut keys: Vec<String> = objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{PV}-kernel.manifest.xml"),
            format!("{PV}-kernel.part.00"),
            format!("{PV}-ramdisk.manifest.xml"),
            format!("{PV}-ramdisk.part.00"),
        ],
        "only the kernel's and ramdisk's bundles stay"
    );

    // Upstream fixes its signature: the retry finds the kernel's and ramdisk's bundles.
    std::fs::remove_file(&signature).unwrap();
    env.act(&uri, "install").await;
    env.wait_for_status(&uri, "installed").await;
    assert_eq!(moto.registrations().len(), 3);
    let after = moto.object_puts();
    for boot in ["kernel", "ramdisk"] {
        let bundle = format!("{PV}-{boot}");
        assert_eq!(
            puts_of(&after, &bundle),
            puts_of(&puts, &bundle),
            "the {boot}'s bundle is not sent again"
        );
    }
    println!(
        "FIGURE overlap-paravirtual-bad-signature: {error:?}; {} image part PUTs before the \
         verdict, each DELETEd; no RegisterImage; left in the bucket: {keys:?}; the retry \
         registered 3 and sent no kernel or ramdisk object again",
        image_puts.len()
    );
}

/// The same failure into the fake cloud: its bucket keeps the kernel's and ramdisk's bundles,
/// and holds no registration record and nothing of the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paravirtual_image_whose_signature_fails_after_its_parts_went_up_registers_nothing_in_the_fake_cloud()
 {
    let mut env = TestEnv::with_store().await;
    add_pv_set(&env.images);
    env.store.reload().unwrap();
    env.start_proxy();
    env.dashboard().await;
    let uri = env.image_uri(PV_SET);
    sign_pv_image_with_a_stranger_s_key(&env);
    env.store.faults().bytes_per_second = Some(SLOW);
    env.act(&uri, "install").await;
    let state = first_part_sent(&env, &uri).await;
    let bucket = common::fake_cloud_bucket(&env.data_dir);
    let held = |bucket: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(bucket)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let during = held(&bucket);
    assert!(
        during
            .iter()
            .any(|name| name.starts_with(&format!("{PV}-image.part."))),
        "an image part is in the bucket at {state}: {during:?}"
    );
    env.store.faults().bytes_per_second = None;
    let error = failure(&env, &uri).await;
    assert!(
        error.starts_with("Failure encountered while: Verifying machine image signature: "),
        "{error}"
    );
    let after = held(&bucket);
    assert_eq!(
        after,
        [
            format!("{PV}-kernel.manifest.xml"),
            format!("{PV}-kernel.part.00"),
            format!("{PV}-ramdisk.manifest.xml"),
            format!("{PV}-ramdisk.part.00"),
        ],
        "no registration record, nothing of the image"
    );
    println!(
        "FIGURE overlap-paravirtual-bad-signature-fake-cloud: {during:?} in the bucket while the \
         image downloaded; after {error:?}: {after:?}"
    );
}

/// Cancelled while a paravirtual image's parts go up beside its download: nothing is registered
/// (not the kernel nor the ramdisk either) and no image manifest is sent; the next install
/// completes without sending the kernel's or ramdisk's bundle again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paravirtual_install_cancelled_during_the_overlap_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, env) = start(dir.path(), Some(60_000)).await;
    let uri = env.image_uri(PV_SET);
    cancel_once_a_part_is_sent(&env, &uri, "files/pv/image").await;
    assert!(moto.registrations().is_empty(), "nothing registered");
    let puts = moto.object_puts();
    assert!(
        !puts
            .iter()
            .any(|p| p.ends_with(&format!("/{PV}-image.manifest.xml"))),
        "{puts:?}"
    );

    env.act(&uri, "install").await;
    let installed = env.wait_for_status(&uri, "installed").await;
    assert_eq!(moto.registrations().len(), 3, "{installed}");
    let after = moto.object_puts();
    for boot in ["kernel", "ramdisk"] {
        let bundle = format!("{PV}-{boot}");
        assert_eq!(puts_of(&after, &bundle), puts_of(&puts, &bundle));
    }
    let requests = env.served("/files/pv/image");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(common::resumed_from(&requests[1]) > 0, "{requests:?}");
}
