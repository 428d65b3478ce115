//! A broken or hostile upstream, through real installs from fake-store's fault modes: what may
//! recover (5xx, cuts, short bodies, a trickle) is retried with a doubling pause and resumed with
//! `Range` until the install completes; what cannot (4xx, bodies announced or sent past the signed
//! size, endless bodies, corrupted bytes, a trickle that never ends) fails with one clear line, in
//! bounded time, with nothing past the signed size on disk. Catalogs replayed from the past or
//! signed by a stranger are refused, and the last good one is kept, across restarts too.
//! (tests/it/bad_upstream.rs covers files changed at the source and tampered catalogs.)

use crate::common;

use common::{Gpg, TestEnv};
use fake_store::{Fault, RequestRecord};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The stall rule the tests run with: under 64 KiB/s over 1 s is a stall.
const STALL_RATE: u64 = 64 << 10;

async fn env_with_stall_rule() -> TestEnv {
    let mut env = TestEnv::with_store().await;
    env.retry_delay_ms = 100;
    env.extra_args = vec![
        "--stall-bytes-per-second".into(),
        STALL_RATE.to_string(),
        "--stall-seconds".into(),
        "1".into(),
    ];
    env.start_proxy();
    env.dashboard().await;
    env
}

/// The `Range: bytes=N-` start of a request, 0 without one.
fn range_start(request: &RequestRecord) -> u64 {
    request.range.as_deref().map_or(0, |range| {
        range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected Range {range:?}"))
    })
}

/// Each retry resumed past where the one before it started: nothing is fetched twice.
fn assert_resumed_forward(requests: &[RequestRecord]) {
    for pair in requests.windows(2) {
        assert!(
            range_start(&pair[1]) > range_start(&pair[0]),
            "a retry that does not resume forward: {requests:?}"
        );
    }
}

/// The pauses between successive requests grow (100, 200, 400 ms…): backoff, not a hot loop.
fn assert_backoff(requests: &[RequestRecord], first_delay_ms: u64) {
    for (n, pair) in requests.windows(2).enumerate() {
        let pause = pair[1].at.duration_since(pair[0].at);
        let floor = Duration::from_millis(first_delay_ms << n);
        assert!(
            pause >= floor,
            "pause {n} was {pause:?}, less than {floor:?}: {requests:?}"
        );
    }
}

/// The signed size of each file in the catalog, by SHA-256.
fn signed_sizes(env: &TestEnv) -> HashMap<String, u64> {
    let catalog: Value = serde_json::from_slice(&env.store.catalog_json()).unwrap();
    catalog["images"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|image| image["files"].as_array().unwrap().clone())
        .map(|file| {
            (
                file["sha256"].as_str().unwrap().to_string(),
                file["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Every file in the cache, partial or whole, is one the catalog signed and no larger.
fn assert_nothing_past_the_signed_size(env: &TestEnv) {
    let sizes = signed_sizes(env);
    for path in env.cache_files() {
        let name = path.file_name().unwrap().to_str().unwrap();
        let hex = name.trim_end_matches(".part");
        let signed = sizes
            .get(hex)
            .unwrap_or_else(|| panic!("{} is no file the catalog signed", path.display()));
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            len <= *signed,
            "{} holds {len} bytes, more than the signed {signed}",
            path.display()
        );
    }
}

/// Presses install and waits for the failure; returns its one-line error and clears it.
async fn install_fails(env: &TestEnv, uri: &str) -> String {
    env.act(uri, "install").await;
    let state = env.wait_for_failure(uri).await;
    let error = state["error-message"].as_str().unwrap().to_string();
    assert!(!error.contains('\n'), "one line: {error:?}");
    assert!(
        error.starts_with("Failure encountered while: Downloading machine image: "),
        "{error}"
    );
    env.act(uri, "clear-error").await;
    error
}

fn requests_since(env: &TestEnv, path: &str, mark: usize) -> Vec<RequestRecord> {
    env.served(path).into_iter().skip(mark).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_with_backoff_and_resumed_until_the_install_completes() {
    let env = env_with_stall_rule().await;
    let karmic = env.image_uri("karmic");
    let image_size = std::fs::metadata(env.images.join("karmic/image.gz"))
        .unwrap()
        .len();
    // The kernel: three 500s; its signature: two 503s; the ramdisk: cut twice part-way; the
    // machine image: a Content-Length short of the body twice, then a 8 KiB/s trickle.
    env.store
        .inject("files/karmic/kernel", Fault::Status(500), Some(3));
    env.store
        .inject("files/karmic/kernel.asc", Fault::Status(503), Some(2));
    env.store
        .inject("files/karmic/ramdisk.gz", Fault::DropAfter(4_000), Some(2));
    for short_by in [image_size / 2, image_size / 8] {
        env.store.inject(
            "files/karmic/image.gz",
            Fault::ShortContentLength(short_by),
            Some(1),
        );
    }
    env.store.inject(
        "files/karmic/image.gz",
        Fault::Trickle {
            bytes_per_second: 8 << 10,
        },
        Some(1),
    );
    env.act(&karmic, "install").await;
    let state = env
        .wait_for(&karmic, "the install to end", |s| {
            s["status"] == "installed" || s.get("error-message").is_some()
        })
        .await;
    assert_eq!(state["status"], "installed", "{state}");

    let kernel = env.served("files/karmic/kernel");
    assert_eq!(
        kernel.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    assert_backoff(&kernel, env.retry_delay_ms);
    let signature: Vec<u16> = env
        .store
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("files/karmic/kernel.asc"))
        .map(|r| r.status)
        .collect();
    assert_eq!(signature, [503, 503, 200]);

    let ramdisk = env.served("files/karmic/ramdisk.gz");
    assert_eq!(ramdisk.len(), 3, "{ramdisk:?}");
    assert_resumed_forward(&ramdisk);
    assert_eq!(range_start(&ramdisk[1]), 4_000);

    let image = env.served("files/karmic/image.gz");
    assert_eq!(
        image.len(),
        4,
        "two short, one stalled, one whole: {image:?}"
    );
    assert_resumed_forward(&image);
    assert_backoff(&image, env.retry_delay_ms);
    let log = env.proxy_log();
    assert!(log.contains("the response ended early"), "{log}");
    assert!(
        log.contains("stalled at ") && log.contains("less than 65536 bytes/s for 1s"),
        "{log}"
    );
    assert_nothing_past_the_signed_size(&env);
    assert_eq!(env.cache_files().len(), 3, "{:?}", env.cache_files());
}

/// The machine image's path on fake-store, where each permanent fault below is injected.
const IMAGE_PATH: &str = "files/karmic/image.gz";

/// A proxy with the stall rule, karmic's URI and its machine image's signed size: each permanent
/// fault gets a proxy of its own, so that a failure (an install that never fails, say) names it.
async fn karmic_with_stall_rule() -> (TestEnv, String, u64) {
    let env = env_with_stall_rule().await;
    let karmic = env.image_uri("karmic");
    let image_size = std::fs::metadata(env.images.join("karmic/image.gz"))
        .unwrap()
        .len();
    (env, karmic, image_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_fails_the_install_at_once_without_a_retry() {
    let (env, karmic, _) = karmic_with_stall_rule().await;
    let path = IMAGE_PATH;
    let mark = env.served(path).len();
    env.store.inject(path, Fault::Status(404), None);
    let error = install_fails(&env, &karmic).await;
    assert!(error.ends_with("the server answered HTTP 404"), "{error}");
    assert_eq!(requests_since(&env, path, mark).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_forever_is_tried_five_times_with_backoff_and_the_last_status_is_the_line() {
    let (env, karmic, _) = karmic_with_stall_rule().await;
    let path = IMAGE_PATH;
    let mark = env.served(path).len();
    env.store.inject(path, Fault::Status(500), None);
    let error = install_fails(&env, &karmic).await;
    assert!(error.ends_with("the server answered HTTP 500"), "{error}");
    let tries = requests_since(&env, path, mark);
    assert_eq!(tries.len(), 5, "{tries:?}");
    assert_backoff(&tries, env.retry_delay_ms);
    env.store.faults().paths.clear();
    assert_nothing_past_the_signed_size(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_past_the_signed_size_is_refused_before_a_byte_is_written() {
    let (env, karmic, image_size) = karmic_with_stall_rule().await;
    let path = IMAGE_PATH;
    env.store.inject(path, Fault::LongContentLength(1000), None);
    let error = install_fails(&env, &karmic).await;
    assert!(
        error.ends_with(&format!(
            "the server announced {} bytes, more than the signed size of {image_size} bytes",
            image_size + 1000
        )),
        "{error}"
    );
    env.store.faults().paths.clear();
    assert_nothing_past_the_signed_size(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_cut_off_at_the_signed_size_and_the_partial_file_thrown_away() {
    let (env, karmic, image_size) = karmic_with_stall_rule().await;
    let path = IMAGE_PATH;
    let mark = env.served(path).len();
    env.store.inject(path, Fault::Endless, None);
    let error = install_fails(&env, &karmic).await;
    assert!(
        error.ends_with(&format!(
            "the server sent more than the signed size of {image_size} bytes"
        )),
        "{error}"
    );
    assert_eq!(requests_since(&env, path, mark).len(), 1, "not retried");
    env.store.faults().paths.clear();
    assert_nothing_past_the_signed_size(&env);
    assert_eq!(env.cache_files().len(), 2, "kernel and ramdisk only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_that_never_ends_fails_the_install_after_five_stalled_tries_in_bounded_time() {
    let (env, karmic, image_size) = karmic_with_stall_rule().await;
    let path = IMAGE_PATH;
    // Each try stalls, resumes where it stopped, and after five the install fails instead of
    // hanging.
    let mark = env.served(path).len();
    env.store.inject(
        path,
        Fault::Trickle {
            bytes_per_second: 8 << 10,
        },
        None,
    );
    let started = Instant::now();
    let error = install_fails(&env, &karmic).await;
    let took = started.elapsed();
    assert!(
        error.contains(": the transfer stalled at ")
            && error.ends_with(&format!(
                " of {image_size} bytes: less than 65536 bytes/s for 1s"
            )),
        "{error}"
    );
    let tries = requests_since(&env, path, mark);
    assert_eq!(tries.len(), 5, "{tries:?}");
    assert_resumed_forward(&tries);
    // Five one-second windows and four pauses (0.1 + 0.2 + 0.4 + 0.8 s), plus slack.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    eprintln!("a never-ending trickle failed the install after {took:?}");
    env.store.faults().paths.clear();
    assert_nothing_past_the_signed_size(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_corrupted_in_flight_are_refused_and_the_next_install_downloads_afresh() {
    let (env, karmic, _) = karmic_with_stall_rule().await;
    let path = IMAGE_PATH;
    // The checksum refuses them and the partial file goes; the next install downloads afresh (no
    // Range) and completes.
    let mark = env.served(path).len();
    env.store
        .inject(path, Fault::Corrupt { offset: 1000 }, Some(1));
    let error = install_fails(&env, &karmic).await;
    assert!(error.contains(": SHA-256 mismatch for "), "{error}");
    assert!(
        !env.cache_files()
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".part")),
        "the corrupt partial file is gone: {:?}",
        env.cache_files()
    );
    env.act(&karmic, "install").await;
    env.wait_for_status(&karmic, "installed").await;
    let tries = requests_since(&env, path, mark);
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!(tries[1].range, None, "downloaded afresh");
    assert_nothing_past_the_signed_size(&env);
}

/// The catalog's `updated` time as stored in SQLite: what a restart starts from.
fn stored_catalog_time(env: &TestEnv) -> String {
    let db = rusqlite::Connection::open(env.data_dir.join("state.sqlite")).unwrap();
    db.query_row(
        "SELECT updated FROM catalogs WHERE upstream = ?1",
        [&env.store_url],
        |row| row.get(0),
    )
    .unwrap()
}

async fn dashboard_error(env: &TestEnv) -> (String, usize) {
    let dashboard = env.dashboard().await;
    (
        dashboard["error-message"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        dashboard["images"].as_array().unwrap().len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_old_catalogs_and_foreign_signatures_are_refused_and_the_last_good_one_kept_across_restarts()
 {
    let mut env = TestEnv::start().await;
    let old = env.store.signed_catalog();
    env.store.set_updated("2026-11-21T10:00:00Z").unwrap();
    assert_eq!(dashboard_error(&env).await, (String::new(), 2));
    assert_eq!(stored_catalog_time(&env), "2026-11-21T10:00:00Z");

    // Someone in the middle replays the older catalog with its genuine signature.
    env.store.faults().replay_catalog = Some(old);
    let kept = "showing the catalog of 2026-11-21T10:00:00Z";
    let (error, images) = dashboard_error(&env).await;
    assert!(
        error.contains("older (2026-11-20T10:00:00Z) than the catalog already accepted (2026-11-21T10:00:00Z): refusing a rollback") && error.ends_with(kept),
        "{error}"
    );
    assert_eq!(images, 2);
    // A restarted proxy remembers what it accepted and still refuses the replay.
    env.kill_proxy();
    env.start_proxy();
    let (error, images) = dashboard_error(&env).await;
    assert!(error.contains("refusing a rollback"), "{error}");
    assert_eq!(images, 2);
    assert_eq!(stored_catalog_time(&env), "2026-11-21T10:00:00Z");
    env.store.faults().replay_catalog = None;

    // A newer catalog re-signed by a key the keyring does not hold.
    let gpg = Gpg::new();
    let stranger = gpg.generate("Stranger <stranger@example.invalid>", "ed25519");
    env.store.set_updated("2026-11-22T10:00:00Z").unwrap();
    env.store.faults().catalog_signed_by = Some(stranger.clone());
    let (error, _) = dashboard_error(&env).await;
    assert!(
        error.contains("made by a key not in the keyring (0x") && error.ends_with(kept),
        "{error}"
    );
    // An endless catalog is cut off at the cap; one with a byte flipped in flight fails its
    // signature; a 500: each time the last good catalog stays.
    env.store.faults().catalog_signed_by = None;
    env.store.inject("dashboard", Fault::Endless, Some(1));
    let (error, _) = dashboard_error(&env).await;
    assert!(
        error.starts_with("Refused the image catalog from ")
            && error.contains("/dashboard: the answer is larger than the 16777216 bytes accepted")
            && error.ends_with(kept),
        "{error}"
    );
    env.store
        .inject("dashboard", Fault::Corrupt { offset: 200 }, Some(1));
    let (error, _) = dashboard_error(&env).await;
    assert!(
        error.contains("its signature was refused: bad signature") && error.ends_with(kept),
        "{error}"
    );
    env.store.inject("dashboard", Fault::Status(500), Some(1));
    let (error, images) = dashboard_error(&env).await;
    assert!(
        error.starts_with("Image store unreachable: GET ")
            && error.contains("HTTP 500")
            && error.ends_with(kept),
        "{error}"
    );
    assert_eq!(images, 2);
    assert_eq!(stored_catalog_time(&env), "2026-11-21T10:00:00Z");

    // Installs keep working from the last good catalog meanwhile.
    env.store.faults().catalog_signed_by = Some(stranger);
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    env.wait_for_status(&karmic, "installed").await;

    // The right key again: the newer catalog is accepted.
    env.store.faults().catalog_signed_by = None;
    assert_eq!(dashboard_error(&env).await, (String::new(), 2));
    assert_eq!(stored_catalog_time(&env), "2026-11-22T10:00:00Z");
}
