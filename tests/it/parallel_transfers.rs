//! Parallel transfers (issue 16, point 3): a large file downloaded over several ranged
//! connections, each range resumed on its own, and bundle parts uploaded several at a time. The
//! peers' own records are the evidence: fake-store's request log (which ranges were asked for,
//! and that together they cover the file once) and moto's request recorder (each object PUT
//! once, the manifest after its parts).

use crate::common;

use common::TestEnv;
use common::moto::Moto;
use image_store_proxy::fetch::{Fetcher, RetryPolicy};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A file past `limits::PARALLEL_DOWNLOAD_MIN_BYTES`: downloaded in ranges.
const LARGE: usize = 72 << 20;
/// `limits::DOWNLOAD_PIECE_BYTES`: the large file is five pieces, four of 16 MiB and one of 8.
const PIECE: u64 = 16 << 20;
const PIECES: usize = 5;

/// Adds the set `large` (one raw image of `size` bytes of noise) to the store; returns the bytes.
fn add_large_set(env: &TestEnv, product: &str, size: usize) -> Vec<u8> {
    let set = env.images.join("large");
    std::fs::create_dir_all(&set).unwrap();
    let bytes = common::noise(0x5EED_0016, size);
    std::fs::write(set.join("image"), &bytes).unwrap();
    let meta = json!({"title": "Large", "version": "1", "product": product,
        "summary": "incompressible", "tags": ["test"], "arch": "x86_64"});
    std::fs::write(set.join("meta.json"), meta.to_string()).unwrap();
    env.store.reload().unwrap();
    bytes
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        first_delay: Duration::from_millis(50),
        ..RetryPolicy::default()
    }
}

/// Downloads the large file with `connections` into `partial`; returns its SHA-256 (hex).
async fn download(env: &TestEnv, connections: usize, partial: &Path) -> String {
    let fetcher = Fetcher::new(quick_retries())
        .unwrap()
        .with_connections(connections);
    let url = format!("{}/files/large/image", env.store_url);
    fetcher
        .download(
            &url,
            partial,
            LARGE as u64,
            &|_| {},
            &CancellationToken::new(),
        )
        .await
        .unwrap()
        .to_string()
}

/// `bytes=S-E` as (S, E + 1).
fn range_of(record: &fake_store::RequestRecord) -> (u64, u64) {
    let range = record
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .unwrap_or_else(|| panic!("no closed range in {record:?}"));
    let (start, end) = range.split_once('-').unwrap();
    (start.parse().unwrap(), end.parse::<u64>().unwrap() + 1)
}

/// Sorted ranges that must follow each other from 0 to `len` with no gap and no overlap.
fn assert_cover(mut ranges: Vec<(u64, u64)>, len: u64) {
    ranges.sort();
    let mut next = 0;
    for (start, end) in &ranges {
        assert_eq!(*start, next, "a gap or an overlap in {ranges:?}");
        next = *end;
    }
    assert_eq!(next, len, "{ranges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_comes_in_pieces_asked_in_file_order_that_cover_it_once_and_hash_right() {
    let env = TestEnv::with_store().await;
    let bytes = add_large_set(&env, "large", LARGE);
    let partial = env.dir.path().join("large.part");
    let digest = download(&env, 4, &partial).await;
    assert_eq!(digest, hex::encode(Sha256::digest(&bytes)));
    assert!(
        std::fs::read(&partial).unwrap() == bytes,
        "the file as served"
    );
    assert!(
        !partial.with_extension("part.ranges").exists(),
        "the range record goes once the file is whole"
    );
    let requests = env.served("/files/large/image");
    assert_eq!(requests.len(), PIECES, "{requests:?}");
    assert!(requests.iter().all(|r| r.status == 206), "{requests:?}");
    let asked: Vec<_> = requests.iter().map(range_of).collect();
    let piece = |n: u64| (n * PIECE, ((n + 1) * PIECE).min(LARGE as u64));
    // The probe is the first piece; the other three connections take the next three at once
    // (they may arrive in any order); the last piece goes to whichever connection is free first.
    let mut middle = asked[1..4].to_vec();
    middle.sort();
    assert_eq!(
        (asked[0], middle, asked[4]),
        (piece(0), vec![piece(1), piece(2), piece(3)], piece(4)),
        "the pieces are taken in file order: {asked:?}"
    );
    assert_cover(asked, LARGE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_cut_mid_way_is_resumed_alone_from_where_it_stopped() {
    let env = TestEnv::with_store().await;
    let bytes = add_large_set(&env, "large", LARGE);
    // The first ranged request is sent alone (its answer says whether ranges work): it is the
    // one cut, 5 MiB in.
    let cut = 5u64 << 20;
    env.store.inject(
        "files/large/image",
        fake_store::Fault::DropAfter(cut),
        Some(1),
    );
    let partial = env.dir.path().join("large.part");
    let digest = download(&env, 4, &partial).await;
    assert_eq!(digest, hex::encode(Sha256::digest(&bytes)));
    let requests = env.served("/files/large/image");
    assert_eq!(
        requests.len(),
        PIECES + 1,
        "five pieces and one resume: {requests:?}"
    );
    let first = range_of(&requests[0]);
    assert_eq!(first.0, 0);
    let resumes: Vec<_> = requests[1..]
        .iter()
        .map(range_of)
        .filter(|(start, _)| *start == cut)
        .collect();
    assert_eq!(
        resumes,
        [(cut, first.1)],
        "only the cut range is asked again, for what it lacks"
    );
    let whole: Vec<_> = requests
        .iter()
        .map(range_of)
        .filter(|range| *range != (cut, first.1))
        .collect();
    assert_cover(whole, LARGE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_range_with_the_whole_file_is_read_as_one_stream() {
    let env = TestEnv::with_store().await;
    let bytes = add_large_set(&env, "large", LARGE);
    env.store.faults().ignore_range = true;
    let partial = env.dir.path().join("large.part");
    let digest = download(&env, 4, &partial).await;
    assert_eq!(digest, hex::encode(Sha256::digest(&bytes)));
    let requests = env.served("/files/large/image");
    let asked: Vec<_> = requests
        .iter()
        .map(|r| (r.range.is_some(), r.status))
        .collect();
    assert_eq!(
        asked,
        [(true, 200), (false, 200)],
        "one ranged probe answered whole, then one stream: {requests:?}"
    );
    assert!(!partial.with_extension("part.ranges").exists());
}

/// The range record a parallel download keeps: (start, end, written up to) of each range.
fn read_record(path: &Path) -> Vec<(u64, u64, u64)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(2)
        .map(|line| {
            let n: Vec<u64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
            (n[0], n[1], n[2])
        })
        .collect()
}

/// SIGKILLed mid-download over four connections, the proxy starts again and asks each range only
/// for the bytes its record lacks: what the record claims was written is not fetched again, and
/// what was received but unwritten at the kill is little (a write buffer per range).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_parallel_download_each_range_resumes_from_its_record() {
    let mut env = TestEnv::with_store().await;
    let bytes = add_large_set(&env, "large", LARGE);
    env.extra_args = vec![
        "--download-connections".into(),
        "4".into(),
        "--compression-level".into(),
        "0".into(),
    ];
    env.start_proxy();
    assert_eq!(env.dashboard().await["images"].as_array().unwrap().len(), 3);
    let uri = env.image_uri("large");
    // 4 MiB/s on each connection: 16 MiB/s in all, the kill lands at about 20 of 72 MiB.
    env.store.faults().bytes_per_second = Some(4 << 20);
    let before = env.downloaded_bytes().await;
    env.act(&uri, "install").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let received = loop {
        let received = env.downloaded_bytes().await - before;
        if received >= 20 << 20 {
            break received;
        }
        assert!(Instant::now() < deadline, "only {received} bytes arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    env.kill_proxy();
    let asked_before = env.served("/files/large/image").len();
    assert_eq!(asked_before, 4, "four ranges before the kill");
    let record_path = env
        .cache_files()
        .into_iter()
        .find(|path| path.to_string_lossy().ends_with(".part.ranges"))
        .expect("a range record beside the partial file");
    let record = read_record(&record_path);
    let claimed: u64 = record.iter().map(|(start, _, at)| at - start).sum();
    assert!(claimed > 0 && claimed < LARGE as u64, "{record:?}");
    let unwritten = received.saturating_sub(claimed);
    assert!(
        unwritten <= 4 * (128 << 10) + 1024,
        "{received} received, {claimed} recorded as written"
    );
    env.store.faults().bytes_per_second = None;
    env.start_proxy();
    env.wait_for_status(&uri, "installed").await;

    let after: Vec<_> = env.served("/files/large/image")[asked_before..]
        .iter()
        .map(range_of)
        .collect();
    let mut lacking: Vec<_> = record
        .iter()
        .filter(|(_, end, at)| at < end)
        .map(|(_, end, at)| (*at, *end))
        .collect();
    let mut asked = after.clone();
    asked.sort();
    lacking.sort();
    assert_eq!(asked, lacking, "each range asked for what it lacked, once");
    let bucket = common::fake_cloud_bucket(&env.data_dir);
    assert!(bucket.join("large-1-image.registration.json").exists());
    let cached = env
        .cache_files()
        .into_iter()
        .find(|path| path.extension().is_none())
        .expect("the verified file in the cache");
    assert!(std::fs::read(cached).unwrap() == bytes);
    println!(
        "FIGURE parallel-download-kill: {received} bytes received, {claimed} recorded written at \
         the kill ({unwritten} unwritten); after the restart {} ranged requests for {} bytes",
        after.len(),
        after.iter().map(|(s, e)| e - s).sum::<u64>()
    );
}

/// The image of the upload tests: 45 MiB of noise, so its bundle is five 10 MiB parts.
const FIVE_PARTS: usize = 45 << 20;
const PREFIX: &str = "transfer-test-1-image";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_go_up_four_at_a_time_while_one_is_held_each_once_and_the_manifest_last() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let mut env = TestEnv::with_store().await;
    add_large_set(&env, "transfer-test", FIVE_PARTS);
    let config = moto.cloud_config(env.dir.path(), "toml", "AKIDPARALLEL", common::SECRET, "2");
    env.cloud = Some((config, common::SECRET.to_string()));
    env.extra_args = vec![
        "--upload-concurrency".into(),
        "4".into(),
        "--compression-level".into(),
        "0".into(),
    ];
    env.start_proxy();
    let uri = env.image_uri("large");
    moto.faults(json!({"s3_hold_put": format!("{PREFIX}.part.00")}))
        .await;
    env.act(&uri, "install").await;
    let held = moto.wait_until_held().await;
    assert_eq!(held.len(), 1, "{held:?}");
    // With part 1 held before moto, parts 2, 3 and 4 are in the air beside it and land.
    let deadline = Instant::now() + Duration::from_secs(60);
    let beside = loop {
        let puts = moto.object_puts();
        if puts.len() >= 3 {
            break puts;
        }
        assert!(
            Instant::now() < deadline,
            "only {puts:?} while part 1 is held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        beside.iter().all(|put| !put.ends_with(".part.00")),
        "{beside:?}"
    );
    let detail = env.state(&uri).await["status-detail"].clone();
    assert!(
        detail
            .as_str()
            .unwrap()
            .starts_with("Uploading machine image bundle: "),
        "{detail}"
    );
    assert!(
        detail.as_str().unwrap().ends_with(" of 5 parts sent"),
        "{detail}"
    );
    // The held part is let go with a 500, and the next PUT fails too: both are retried.
    moto.faults(json!({"s3_put_500": 1})).await;
    env.wait_for_status(&uri, "installed").await;

    let puts = moto.object_puts();
    let bucket = puts[0]
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut parts = puts[..5].to_vec();
    parts.sort();
    let expected: Vec<String> = (0..5)
        .map(|n| format!("/{bucket}/{PREFIX}.part.{n:02}"))
        .collect();
    assert_eq!(parts, expected, "each part PUT once: {puts:?}");
    assert_eq!(
        puts[5..],
        [format!("/{bucket}/{PREFIX}.manifest.xml")],
        "the manifest once, after every part"
    );
    assert_eq!(moto.registrations().len(), 1);
}
