//! Crash at any step (issue 6, part 1): the real proxy binary, installing from fake-store into moto,
//! is SIGKILLed at each point of an install and started again on the same data dir. Each time the
//! install completes, and the peers' own records show that nothing was done twice: fake-store's
//! request log (a resumed download asks only for the bytes it lacks), moto's request recorder (no
//! object PUT twice, no second RegisterImage) and moto's image list. After every kill the state
//! database, opened read-only here, passes `PRAGMA integrity_check`, is in WAL mode, and every
//! install's state is the one its last event recorded (a state change and its event commit
//! together).
//!
//! Kill points held by a peer: a download throttled by fake-store; a part PUT and a RegisterImage
//! reply held by moto's fault injector (`tests/peers/moto_peer.py`). Points no peer can hold use
//! the proxy's `IMAGE_STORE_PROXY_PAUSE_AT` hook (`src/install/pause.rs`).
//!
//! Each test prints a `FIGURE` line: the figures of the closing note.

use crate::common;

use common::moto::Moto;
use common::{TestEnv, resumed_from};
use image_store_proxy::pause::PAUSE_AT;
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "AKIDCRASHTEST";
const SECRET: &str = "crash-test-secret-0123456789";

/// The image of the between-parts test: 25 MiB of noise, so its bundle is three 10 MiB parts.
const BIG_SET: &str = "big";
const BIG_SIZE: usize = 25 << 20;
const BIG_PREFIX: &str = "crash-test-1-image";

/// moto, and fake-store with a proxy installing into moto; `pause` sets the proxy's pause hook and
/// `big` adds the 25 MiB image set to the catalog.
async fn start(dir: &Path, pause: Option<&str>, big: bool) -> (Moto, TestEnv) {
    let moto = Moto::start(dir);
    let mut env = TestEnv::with_store().await;
    if big {
        let set = env.images.join(BIG_SET);
        std::fs::create_dir_all(&set).unwrap();
        std::fs::write(
            set.join("image"),
            common::noise(0x9E37_79B9_7F4A_7C15, BIG_SIZE),
        )
        .unwrap();
        let meta = json!({"title": "Crash test", "version": "1", "product": "crash-test",
            "summary": "incompressible", "tags": ["test"], "arch": "x86_64"});
        std::fs::write(set.join("meta.json"), meta.to_string()).unwrap();
        env.store.reload().unwrap();
    }
    let config = moto.cloud_config(env.dir.path(), "toml", ACCESS_KEY, SECRET, "2");
    env.cloud = Some((config, SECRET.to_string()));
    if let Some(point) = pause {
        env.proxy_env = vec![(PAUSE_AT.to_string(), point.to_string())];
    }
    env.start_proxy();
    let images = env.dashboard().await["images"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(images, 2 + big as usize, "log:\n{}", env.proxy_log());
    (moto, env)
}

/// SIGKILLs the proxy, checks the database it left, and starts it again without the pause hook.
fn kill_and_restart(env: &mut TestEnv) -> Vec<(String, String)> {
    env.kill_proxy();
    let states = check_database(&env.data_dir);
    env.proxy_env.clear();
    env.start_proxy();
    states
}

/// The state database as a SIGKILL left it, opened read-only: intact, in WAL mode, and every
/// install in the state its last event names. Returns (image uri, state) of each install.
fn check_database(data_dir: &Path) -> Vec<(String, String)> {
    let db = Connection::open_with_flags(
        data_dir.join("state.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let mut stmt = db
        .prepare(
            "SELECT image_uri, state, (SELECT state FROM events WHERE events.image_uri = installs.image_uri
                 ORDER BY id DESC LIMIT 1) FROM installs",
        )
        .unwrap();
    let rows: Vec<(String, String, Option<String>)> = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (uri, state, last_event) in &rows {
        assert_eq!(
            Some(state),
            last_event.as_ref(),
            "{uri}: its state and its last event"
        );
    }
    rows.into_iter()
        .map(|(uri, state, _)| (uri, state))
        .collect()
}

/// The registrations committed in the database: (artifact identity, image id).
fn committed_registrations(data_dir: &Path) -> Vec<(String, String)> {
    let db = Connection::open_with_flags(
        data_dir.join("state.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare("SELECT artifact, image_id FROM cloud_objects")
        .unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Waits until the proxy's log holds `text` (the pause hook's line).
async fn wait_for_log(env: &TestEnv, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.proxy_log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            env.proxy_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How often each object was PUT; panics unless each was PUT exactly once.
fn assert_each_put_once(puts: &[String]) -> usize {
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for put in puts {
        *seen.entry(put).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "objects PUT more than once: {twice:?}");
    seen.len()
}

/// The big image's bundle, as moto holds it in `bucket`, opens with the standard tools to the
/// image fake-store serves: every part is of the bundle its manifest describes.
fn assert_bucket_holds_the_big_image(moto: &Moto, env: &TestEnv, bucket: &str, dir: &Path) {
    let opened = moto.open_bundle(
        bucket,
        BIG_PREFIX,
        &env.dir.path().join("credentials/user-pk.pem"),
        dir,
    );
    assert!(
        opened.image == std::fs::read(env.images.join(BIG_SET).join("image")).unwrap(),
        "the registered bundle holds the image"
    );
}

/// How many times fake-store served each of karmic's files (signatures excluded).
fn karmic_fetches(env: &TestEnv) -> [usize; 3] {
    [
        "/files/karmic/kernel",
        "/files/karmic/ramdisk.gz",
        "/files/karmic/image.gz",
    ]
    .map(|file| env.served(file).len())
}

/// Installed, with each registration once in moto and its ids the ones moto lists.
async fn assert_installed_once(moto: &Moto, env: &TestEnv, uri: &str, artifacts: usize) -> Value {
    let installed = env.wait_for_status(uri, "installed").await;
    let registrations = moto.registrations();
    let mut names: Vec<&str> = registrations
        .iter()
        .map(|r| r["params"]["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), artifacts, "RegisterImage calls: {names:?}");
    names.dedup();
    assert_eq!(names.len(), artifacts, "registered twice: {names:?}");
    let (images, ids) = moto.images();
    assert_eq!(ids.len(), artifacts, "{images}");
    assert!(ids.contains(&installed["emi"]), "{installed} in {images}");
    installed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_downloading_the_install_resumes_the_file_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), None, true).await;
    let big = env.image_uri(BIG_SET);
    // 25 MiB at 8 MiB/s: the kill lands mid-file, 4.5 MiB in, by the proxy's own count of bytes
    // received (its detached signature, < 1 KiB, included).
    env.store.faults().bytes_per_second = Some(8 << 20);
    let downloaded_before = env.downloaded_bytes().await;
    env.act(&big, "install").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let received = loop {
        let received = env.downloaded_bytes().await - downloaded_before;
        if received >= (9 << 20) / 2 {
            break received;
        }
        assert!(Instant::now() < deadline, "only {received} bytes arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    env.kill_proxy();
    let partial: Vec<_> = env
        .cache_files()
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "part"))
        .collect();
    assert_eq!(partial.len(), 1, "one partial download: {partial:?}");
    let had = std::fs::metadata(&partial[0]).unwrap().len();
    let size = BIG_SIZE as u64;
    assert!(had > 0 && had < size, "{had} of {size} bytes at the kill");
    // What had arrived but was still in the proxy's write buffer (64 KiB, and tokio's file
    // buffer behind it) dies with the process, to be fetched again: a little, never a megabyte.
    let unwritten = received.saturating_sub(had);
    assert!(
        unwritten <= (128 << 10) + 1024,
        "{received} bytes received, {had} on disk"
    );
    env.store.faults().bytes_per_second = None;
    let states = kill_and_restart(&mut env);
    assert_eq!(states, vec![(big.clone(), "downloading".to_string())]);

    assert_installed_once(&moto, &env, &big, 1).await;
    let requests = env.served("/files/big/image");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    let resumed = resumed_from(&requests[1]);
    assert_eq!(resumed, had, "resumed where the partial file ends");
    let objects = assert_each_put_once(&moto.object_puts());
    println!(
        "FIGURE downloading: killed with {received} bytes received (metrics, signature \
         included) and {had} of {size} bytes on disk; after the restart fake-store got Range: \
         bytes={resumed}- (2 requests in all), so {} bytes on disk were fetched again, {unwritten} \
         received but unwritten bytes were, and {} were fetched after the restart; {objects} \
         objects each PUT once; {} RegisterImage",
        had - resumed,
        size - resumed,
        moto.registrations().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_a_download_before_its_verification_the_file_is_not_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), Some("verify"), false).await;
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    wait_for_log(&env, "paused at verify").await;
    let at_kill = env.state(&karmic).await;
    assert!(
        at_kill["status-detail"]
            .as_str()
            .unwrap()
            .starts_with("Verifying kernel"),
        "{at_kill}"
    );
    assert_eq!(karmic_fetches(&env), [1, 0, 0]);
    let states = kill_and_restart(&mut env);
    assert_eq!(states, vec![(karmic.clone(), "verifying".to_string())]);

    assert_installed_once(&moto, &env, &karmic, 3).await;
    assert_eq!(
        karmic_fetches(&env),
        [1, 1, 1],
        "the downloaded kernel is verified from disk, not fetched again"
    );
    let objects = assert_each_put_once(&moto.object_puts());
    let signatures = env
        .store
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/files/karmic/kernel.asc"))
        .count();
    println!(
        "FIGURE after-download-before-verification: killed at {}; files fetched [kernel, ramdisk, \
         image] = {:?} requests (the kernel 1: 0 bytes fetched again; its detached signature, \
         not kept, {signatures} times); {objects} objects each PUT once; {} RegisterImage",
        at_kill["status-detail"],
        karmic_fetches(&env),
        moto.registrations().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_bundling_the_install_bundles_again_and_uploads_each_part_once() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), Some("bundling"), true).await;
    let big = env.image_uri(BIG_SET);
    env.act(&big, "install").await;
    wait_for_log(&env, "paused at bundling").await;
    // The bundle is made as the file downloads (the overlapped install): the download goes on
    // past the parked bundler, to its verification.
    let at_kill = env.wait_for_status(&big, "installing").await;
    assert_eq!(
        at_kill["status-detail"], "Installing Crash test",
        "{at_kill}"
    );
    assert!(moto.object_puts().is_empty(), "nothing uploaded yet");
    let bundle_dir = std::fs::read_dir(env.data_dir.join("bundles"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join(BIG_PREFIX);
    let mut on_disk: Vec<(String, u64)> = std::fs::read_dir(&bundle_dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.metadata().unwrap().len())
        })
        .collect();
    on_disk.sort();
    assert!(
        !on_disk
            .iter()
            .any(|(name, _)| name.ends_with(".manifest.xml")),
        "the bundle is part-way: no manifest yet: {on_disk:?}"
    );
    let states = kill_and_restart(&mut env);
    assert_eq!(states, vec![(big.clone(), "installing".to_string())]);

    assert_installed_once(&moto, &env, &big, 1).await;
    let fetched = env.served("/files/big/image").len();
    assert_eq!(fetched, 1, "the image is not fetched again");
    let objects = assert_each_put_once(&moto.object_puts());
    println!(
        "FIGURE while-bundling: killed at {} with {on_disk:?} (name, bytes) in the bundle dir; \
         image fetched {fetched} time; {objects} objects each PUT once; {} RegisterImage",
        at_kill["status-detail"],
        moto.registrations().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_part_uploads_the_parts_already_uploaded_are_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), None, true).await;
    let big = env.image_uri(BIG_SET);
    moto.faults(json!({"s3_hold_put": format!("{BIG_PREFIX}.part.01")}))
        .await;
    env.act(&big, "install").await;
    let held = moto.wait_until_held().await;
    // Parts go up several at a time: part 3 lands beside the held part 2.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let puts = moto.object_puts();
        if puts.len() == 2 {
            break puts;
        }
        assert!(Instant::now() < deadline, "{puts:?} beside the held part");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let at_kill = env.state(&big).await;
    assert_eq!(
        at_kill["status-detail"], "Uploading machine image bundle: 2 of 3 parts sent",
        "{at_kill}"
    );
    let bucket = bucket_of(&before[0]);
    let mut landed = before.clone();
    landed.sort();
    assert_eq!(
        landed,
        vec![
            format!("/{bucket}/{BIG_PREFIX}.part.00"),
            format!("/{bucket}/{BIG_PREFIX}.part.02"),
        ],
        "parts 1 and 3 landed, part 2 is held before moto"
    );
    let states = kill_and_restart(&mut env);
    assert_eq!(states, vec![(big.clone(), "installing".to_string())]);
    moto.faults(json!({})).await;

    assert_installed_once(&moto, &env, &big, 1).await;
    let puts = moto.object_puts();
    assert_eq!(
        puts[2..],
        [
            format!("/{bucket}/{BIG_PREFIX}.part.01"),
            format!("/{bucket}/{BIG_PREFIX}.manifest.xml"),
        ],
        "after the restart only part 2 and then the manifest: {puts:?}"
    );
    assert_each_put_once(&puts);
    // Only what was read back from disk after the restart is looked for first: the part the
    // kill left unsent and the manifest. The parts sent before have records; none was looked for
    // before its first PUT (the bundle was this run's own).
    let heads: Vec<String> = moto
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "HEAD")
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        heads,
        [
            format!("/{bucket}/{BIG_PREFIX}.part.01"),
            format!("/{bucket}/{BIG_PREFIX}.manifest.xml"),
        ]
    );
    let heads = heads.len();
    assert_bucket_holds_the_big_image(&moto, &env, &bucket, dir.path());
    let fetched = env.served("/files/big/image").len();
    assert_eq!(fetched, 1, "the image is not fetched again");
    println!(
        "FIGURE between-part-uploads: killed at {} with {held:?} held; object PUTs in all: {} \
         (part.00 1, part.02 1 before the kill; part.01 1, manifest 1 after), HEAD checks {heads}; image fetched \
         {fetched} time; {} RegisterImage",
        at_kill["status-detail"],
        puts.len(),
        moto.registrations().len()
    );
}

/// Waits until moto has received PUTs of at least `parts` of the big image's parts.
async fn parts_put(moto: &Moto, parts: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let puts = moto.object_puts();
        if puts.iter().filter(|p| p.contains(".part.")).count() >= parts {
            return puts;
        }
        assert!(
            Instant::now() < deadline,
            "{puts:?}: fewer than {parts} parts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Inside the overlap: killed mid-download while the bundle's first part is in the bucket. The
/// download resumes where the file on disk ends; the bundle cut by the kill is made again (its
/// parts sent again under the new bundle's key: a half-made gzip and AES stream cannot be taken
/// up); the manifest goes up once and the image is registered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_download_while_parts_go_up_the_download_resumes_and_registers_once() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), None, true).await;
    let big = env.image_uri(BIG_SET);
    // The download is cut once at 15 MiB and waits a minute to resume: the first part goes up
    // in that pause (held by the peer, not by a pace).
    env.kill_proxy();
    env.retry_delay_ms = 60_000;
    env.start_proxy();
    env.store.inject(
        "files/big/image",
        fake_store::Fault::DropAfter(15 << 20),
        Some(1),
    );
    env.act(&big, "install").await;
    // The proxy's one line says a part is in (moto answered its PUT) while the file downloads.
    let at_kill = env
        .wait_for(&big, "a part sent mid-download", |state| {
            state["status-detail"].as_str().is_some_and(|detail| {
                detail.starts_with("Downloading machine image: ")
                    && detail.ends_with(" sent")
                    && !detail.ends_with(", 0 parts sent")
            })
        })
        .await;
    env.kill_proxy();
    let before = parts_put(&moto, 1).await;
    let partial: Vec<_> = env
        .cache_files()
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "part"))
        .collect();
    assert_eq!(partial.len(), 1, "one partial download: {partial:?}");
    let had = std::fs::metadata(&partial[0]).unwrap().len();
    assert!(had < BIG_SIZE as u64, "{had} bytes on disk at the kill");
    let states = check_database(&env.data_dir);
    assert_eq!(states, vec![(big.clone(), "downloading".to_string())]);
    env.retry_delay_ms = 100;
    env.start_proxy();

    assert_installed_once(&moto, &env, &big, 1).await;
    let requests = env.served("/files/big/image");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        resumed_from(&requests[1]),
        had,
        "resumed where the file ends"
    );
    let puts = moto.object_puts();
    let manifests = puts.iter().filter(|p| p.ends_with(".manifest.xml")).count();
    assert_eq!(manifests, 1, "{puts:?}");
    assert!(puts.last().unwrap().ends_with(".manifest.xml"), "{puts:?}");
    // Every part in the bucket is the new bundle's: none is left from the bundle the kill cut.
    assert_bucket_holds_the_big_image(&moto, &env, &bucket_of(&puts[0]), dir.path());
    println!(
        "FIGURE overlap-mid-download: killed at {} with {before:?} in moto and {had} of {BIG_SIZE} bytes on disk; resumed with Range: bytes={had}-; object PUTs in all {} (the cut bundle's parts sent again), the manifest once; {} RegisterImage",
        at_kill["status-detail"],
        puts.len(),
        moto.registrations().len()
    );
}

/// Inside the overlap: every part is in the bucket and the file is downloaded, its signature not
/// yet checked (`verify`): no manifest is there. After the restart the file is verified from
/// disk, the finished bundle's parts are found in the bucket (not sent again), and only then
/// does the manifest go up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_last_part_before_verification_nothing_is_fetched_or_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), Some("verify"), true).await;
    let big = env.image_uri(BIG_SET);
    env.act(&big, "install").await;
    wait_for_log(&env, "paused at verify").await;
    let before = parts_put(&moto, 3).await;
    assert!(
        !before.iter().any(|p| p.ends_with(".manifest.xml")),
        "no manifest before verification: {before:?}"
    );
    assert!(moto.registrations().is_empty());
    let at_kill = env.state(&big).await;
    assert_eq!(
        at_kill["status-detail"], "Verifying machine image signature",
        "{at_kill}"
    );
    let states = kill_and_restart(&mut env);
    assert_eq!(states, vec![(big.clone(), "verifying".to_string())]);

    assert_installed_once(&moto, &env, &big, 1).await;
    let puts = moto.object_puts();
    assert_each_put_once(&puts);
    assert_eq!(puts[..3], before[..3]);
    assert!(puts[3].ends_with(".manifest.xml"), "{puts:?}");
    let fetched = env.served("/files/big/image").len();
    assert_eq!(fetched, 1, "the image is not fetched again");
    println!(
        "FIGURE overlap-after-last-part: killed at {} with {before:?} in moto and no manifest; after the restart object PUTs in all {} (the manifest only); image fetched {fetched} time; {} RegisterImage",
        at_kill["status-detail"],
        puts.len(),
        moto.registrations().len()
    );
}

/// The bucket of an object PUT's path `/bucket/key`.
fn bucket_of(path: &str) -> String {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_register_image_before_its_id_is_committed_nothing_is_registered_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), None, false).await;
    let karmic = env.image_uri("karmic");
    moto.faults(json!({"ec2": "hold-register", "register_name": "-image"}))
        .await;
    env.act(&karmic, "install").await;
    let held = moto.wait_until_held().await;
    assert_eq!(held, vec!["RegisterImage ubuntu-server-amd64-9.10-image"]);
    assert_eq!(
        moto.registrations().len(),
        3,
        "moto registered the machine image"
    );
    let committed_before = committed_registrations(&env.data_dir).len();
    assert_eq!(
        committed_before, 2,
        "kernel and ramdisk committed, not the machine image"
    );
    let states = kill_and_restart(&mut env);
    assert_eq!(states, vec![(karmic.clone(), "installing".to_string())]);
    moto.faults(json!({})).await;

    let installed = assert_installed_once(&moto, &env, &karmic, 3).await;
    let images = moto.check(&["images"]);
    let registered_image = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "ubuntu-server-amd64-9.10-image")
        .unwrap();
    assert_eq!(installed["emi"], registered_image["id"]);
    let objects = assert_each_put_once(&moto.object_puts());
    assert_eq!(karmic_fetches(&env), [1, 1, 1]);
    println!(
        "FIGURE after-register-before-commit: killed with {held:?} held ({committed_before} of 3 \
         ids committed); RegisterImage calls in all: {}; images in moto: {}; the install's emi {} \
         is the one moto registered before the kill; {objects} objects each PUT once",
        moto.registrations().len(),
        images.as_array().unwrap().len(),
        installed["emi"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_a_registration_and_the_bundle_s_removal_nothing_is_bundled_or_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), Some("registered"), false).await;
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    wait_for_log(&env, "paused at registered").await;
    assert_eq!(moto.registrations().len(), 1, "the kernel is registered");
    assert!(committed_registrations(&env.data_dir).is_empty());
    // The first registration comes once the image too has verified (the overlapped install):
    // every bundle but the image's manifest is up.
    let puts_before = moto.object_puts();
    assert!(
        !puts_before
            .iter()
            .any(|p| p.ends_with("-image.manifest.xml")),
        "{puts_before:?}"
    );
    let kernel_before = puts_before
        .iter()
        .filter(|p| p.contains("-kernel."))
        .count();
    let states = kill_and_restart(&mut env);
    assert_eq!(states, vec![(karmic.clone(), "installing".to_string())]);

    assert_installed_once(&moto, &env, &karmic, 3).await;
    let puts = moto.object_puts();
    let objects = assert_each_put_once(&puts);
    let kernel_puts = puts.iter().filter(|p| p.contains("-kernel.")).count();
    assert_eq!(
        kernel_puts, kernel_before,
        "the kernel's bundle is not sent again"
    );
    let puts_before = puts_before.len();
    println!(
        "FIGURE after-register-and-cleanup-before-commit: killed with the kernel registered \
         (after the image verified; {puts_before} objects uploaded, all but the image's \
         manifest) and its bundle removed, its id not committed; kernel objects PUT in all: \
         {kernel_puts} ({kernel_before} before the kill); {objects} objects each PUT once; \
         RegisterImage calls: {}",
        moto.registrations().len()
    );
}

/// A paravirtual image whose kernel and ramdisk are new (karmic): killed once their bundles are
/// in the bucket, manifests too, and nothing is registered (`ahead-staged`). After the restart
/// their bundles are found on disk and in the bucket (nothing sent again), the image overlaps,
/// and each artifact is registered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_the_kernel_and_ramdisk_bundles_up_and_nothing_registered_nothing_is_sent_or_registered_twice()
 {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), Some("ahead-staged"), false).await;
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    wait_for_log(&env, "paused at ahead-staged").await;
    let before = moto.object_puts();
    for bundle in ["kernel", "ramdisk"] {
        assert!(
            before
                .iter()
                .any(|p| p.ends_with(&format!("-{bundle}.manifest.xml"))),
            "the {bundle}'s manifest is up: {before:?}"
        );
    }
    assert!(!before.iter().any(|p| p.contains("-image.")), "{before:?}");
    assert!(moto.registrations().is_empty(), "nothing registered");
    assert!(committed_registrations(&env.data_dir).is_empty());
    let at_kill = env.state(&karmic).await;
    let states = kill_and_restart(&mut env);
    assert_eq!(states, vec![(karmic.clone(), "verifying".to_string())]);

    assert_installed_once(&moto, &env, &karmic, 3).await;
    let puts = moto.object_puts();
    let objects = assert_each_put_once(&puts);
    assert_eq!(puts[..before.len()], before[..]);
    assert_eq!(karmic_fetches(&env), [1, 1, 1]);
    println!(
        "FIGURE ahead-staged: killed at {} with {before:?} in moto and nothing registered; after \
         the restart {objects} objects each PUT once (none of the kernel's or ramdisk's again); \
         files fetched {:?}; {} RegisterImage",
        at_kill["status-detail"],
        karmic_fetches(&env),
        moto.registrations().len()
    );
}

/// Killed after the image verified, its parts up, with the kernel and ramdisk registered and
/// their ids committed, before the image's manifest is written (`ahead-registered`). After the
/// restart the image's bundle, waiting on disk for those ids, gets its manifest: its parts are
/// not sent again, and nothing is registered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_kernel_s_registration_and_the_image_s_nothing_is_sent_or_registered_twice()
 {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), Some("ahead-registered"), false).await;
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    wait_for_log(&env, "paused at ahead-registered").await;
    let registered: Vec<String> = moto
        .registrations()
        .iter()
        .map(|r| r["params"]["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        registered,
        [
            "ubuntu-server-amd64-9.10-kernel",
            "ubuntu-server-amd64-9.10-ramdisk"
        ]
    );
    assert_eq!(committed_registrations(&env.data_dir).len(), 2);
    let before = moto.object_puts();
    assert!(
        before.iter().any(|p| p.contains("-image.part.")),
        "{before:?}"
    );
    assert!(
        !before.iter().any(|p| p.ends_with("-image.manifest.xml")),
        "{before:?}"
    );
    let states = kill_and_restart(&mut env);
    assert_eq!(states, vec![(karmic.clone(), "installing".to_string())]);

    let installed = assert_installed_once(&moto, &env, &karmic, 3).await;
    let puts = moto.object_puts();
    let objects = assert_each_put_once(&puts);
    assert_eq!(puts[..before.len()], before[..]);
    assert_eq!(
        puts[before.len()..],
        [format!(
            "/{}/ubuntu-server-amd64-9.10-image.manifest.xml",
            bucket_of(&before[0])
        )],
        "after the restart only the image's manifest"
    );
    let image = moto
        .registrations()
        .into_iter()
        .find(|r| r["params"]["Name"] == "ubuntu-server-amd64-9.10-image")
        .unwrap();
    assert_eq!(image["params"]["KernelId"], installed["eki"]);
    assert_eq!(karmic_fetches(&env), [1, 1, 1]);
    println!(
        "FIGURE ahead-registered: killed with {registered:?} registered and committed and \
         {} objects in moto, no image manifest; after the restart {objects} objects each PUT \
         once (the image's manifest only, new); {} RegisterImage",
        before.len(),
        moto.registrations().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_again_and_again_at_moments_nobody_chose_the_install_completes_and_registers_once() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, mut env) = start(dir.path(), None, false).await;
    let karmic = env.image_uri("karmic");
    // Slow enough that some kills land in the downloads too.
    env.store.faults().bytes_per_second = Some(1 << 20);
    env.act(&karmic, "install").await;
    let mut kills = Vec::new();
    // Fixed pseudo-random pauses (40..600 ms) between a start and its kill.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    while kills.len() < 30 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(40 + seed % 560)).await;
        let state = env.state(&karmic).await;
        if state["status"] == "installed" {
            break;
        }
        kills.push(state["status-detail"].as_str().unwrap_or("").to_string());
        kill_and_restart(&mut env);
    }
    assert!(kills.len() >= 3, "too few kills landed: {kills:?}");
    env.store.faults().bytes_per_second = None;

    assert_installed_once(&moto, &env, &karmic, 3).await;
    check_database(&env.data_dir);
    // Every download went forward: no request started lower than the one before it.
    let mut refetched_requests = 0;
    for file in [
        "/files/karmic/kernel",
        "/files/karmic/ramdisk.gz",
        "/files/karmic/image.gz",
    ] {
        let starts: Vec<u64> = env
            .served(file)
            .iter()
            .map(|r| r.range.as_ref().map_or(0, |_| resumed_from(r)))
            .collect();
        assert!(
            starts.windows(2).all(|w| w[0] <= w[1]),
            "{file} fetched from {starts:?}"
        );
        refetched_requests += starts.len() - 1;
    }
    let puts = moto.object_puts();
    let mut distinct = puts.clone();
    distinct.sort();
    distinct.dedup();
    println!(
        "FIGURE repeated-kills: {} kills, at {kills:?}; then installed with {} RegisterImage \
         ({} images in moto); {refetched_requests} resumed file requests, none starting below \
         the one before; object PUTs {} for {} objects",
        kills.len(),
        moto.registrations().len(),
        moto.check(&["images"]).as_array().unwrap().len(),
        puts.len(),
        distinct.len()
    );
}
