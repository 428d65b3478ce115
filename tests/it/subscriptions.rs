//! Subscriptions and the cache budget (issue 17, points 1 and 2), through the proxy binary:
//! fake-store publishes a new version of one product between refreshes (its image directory
//! written, then `FakeStore::reload`), the proxy installs each by itself, keeps the newest two it
//! installed and retires the first (deregistered, its bundle deleted) in the fake cloud and in
//! moto, never touching the operator's own install of the same product; `plan` says so
//! beforehand and changes nothing; the cache budget evicts least recently used files, keeps the
//! pinned ones, and refuses at once an install that cannot fit.

use crate::common;

use common::moto::Moto;
use common::{SECRET, TestEnv, gzip, image_bytes};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const PRODUCT: &str = "sub-server";

/// Publishes version `version` of the subscribed product as the image set `set`: a kernel and
/// ramdisk shared by every version, and an image of its own.
fn publish(env: &TestEnv, set: &str, version: &str, seed: u64, updated: &str) {
    let dir = env.images.join(set);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kernel"), image_bytes(50, 96 << 10)).unwrap();
    std::fs::write(dir.join("ramdisk.gz"), gzip(&image_bytes(51, 48 << 10))).unwrap();
    std::fs::write(dir.join("image.gz"), gzip(&image_bytes(seed, 512 << 10))).unwrap();
    let meta = serde_json::json!({"title": format!("Sub Server {version}"), "version": version,
        "product": PRODUCT, "summary": "subscribed", "arch": "x86_64"});
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
    env.store.reload().unwrap();
    env.store.set_updated(updated).unwrap();
}

/// The proxy's flags for `plan`, as `TestEnv::start_proxy` gives them to the daemon.
fn plan(env: &TestEnv, more: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_image-store-proxy"));
    command
        .arg("plan")
        .args(["--api-url", &env.store_url])
        .args(&env.extra_args)
        .args(more)
        .args(match &env.cloud {
            Some((config, _)) => vec!["--cloud-config".into(), config.clone().into_os_string()],
            None => vec!["--fake-eucalyptus".into(), SECRET.into()],
        })
        .arg("--data-dir")
        .arg(&env.data_dir)
        .arg("--keyring")
        .arg(&env.keyring)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY");
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Everything `plan` could change: every row of the database, and every file of the data dir
/// (the fake cloud, the cache, bundles) with its size, content and time.
fn snapshot(data_dir: &Path) -> String {
    let mut out = String::new();
    let conn = rusqlite::Connection::open(data_dir.join("state.sqlite")).unwrap();
    for table in [
        "installs",
        "files",
        "cloud_objects",
        "events",
        "catalogs",
        "catalog_documents",
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
            .unwrap();
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                Ok((0..columns)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap();
        for row in rows {
            out.push_str(&format!("{table}: {}\n", row.unwrap()));
        }
    }
    drop(conn);
    let mut files = Vec::new();
    walk(data_dir, &mut files);
    for path in files {
        let name = path.strip_prefix(data_dir).unwrap().display().to_string();
        if name.starts_with("state.sqlite") {
            continue;
        }
        let meta = std::fs::metadata(&path).unwrap();
        let digest = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
        out.push_str(&format!(
            "{name} {} {digest} {:?}\n",
            meta.len(),
            meta.modified().unwrap()
        ));
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The fake cloud's registration records: (bucket directory, record).
fn fake_registrations(data_dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    walk(&data_dir.join("fake-cloud"), &mut files);
    files
        .into_iter()
        .filter(|path| path.to_string_lossy().ends_with(".registration.json"))
        .map(|path| {
            let record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            (path.parent().unwrap().to_owned(), record)
        })
        .collect()
}

/// Every object in the fake cloud's buckets, as `bucket/key`.
fn fake_objects(data_dir: &Path) -> BTreeSet<String> {
    let root = data_dir.join("fake-cloud");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .map(|path| path.strip_prefix(&root).unwrap().display().to_string())
        .filter(|name| !name.starts_with("keys/"))
        .collect()
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
}

async fn metrics(env: &TestEnv) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/metrics", env.proxy_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// What the three-version run leaves, for the cloud's own checks.
struct Run {
    /// The registered ids of the operator's install and of versions 1, 2 and 3.
    operator: Value,
    first: Value,
    second: Value,
    third: Value,
}

/// The run the issue asks for: versions 1.0, 2.0 and 3.0 published between refreshes with
/// `--keep 2`, and the operator's own install of version 0.9 beside them.
/// `cloud_state` reads what the cloud holds (its images and objects), to show `plan` changes
/// none of it; the fake cloud's is under the data dir, which `snapshot` reads.
async fn three_versions(env: &mut TestEnv, cloud_state: &dyn Fn() -> String) -> Run {
    env.extra_args = [
        "--subscribe",
        "product=sub-server arch=x86_64",
        "--keep",
        "2",
    ]
    .map(String::from)
    .to_vec();
    env.extra_args
        .extend(["--cache-max-bytes".to_string(), "64M".to_string()]);
    publish(env, "sub-0", "0.9", 60, "2026-11-20T10:00:00Z");
    publish(env, "sub-1", "1.0", 61, "2026-11-20T11:00:00Z");
    let (v0, v1, v2, v3) = (
        env.image_uri("sub-0"),
        env.image_uri("sub-1"),
        env.image_uri("sub-2"),
        env.image_uri("sub-3"),
    );
    env.start_proxy();
    env.dashboard().await;
    // The start's refresh: the subscription installs the newest version, 1.0, by itself; the
    // operator presses Install on 0.9.
    let first = env.wait_for_status(&v1, "installed").await;
    env.act(&v0, "install").await;
    let operator = env.wait_for_status(&v0, "installed").await;
    assert!(
        first["status-detail"]
            .as_str()
            .unwrap()
            .ends_with("by a subscription"),
        "{first}"
    );
    assert!(
        !operator["status-detail"]
            .as_str()
            .unwrap()
            .contains("subscription"),
        "{operator}"
    );

    publish(env, "sub-2", "2.0", 62, "2026-11-20T12:00:00Z");
    env.dashboard().await; // a refresh
    let second = env.wait_for_status(&v2, "installed").await;
    assert_eq!(env.state(&v1).await["status"], "installed");

    // Version 3.0 is published; before the next refresh, `plan` says what it will do, and
    // changes nothing.
    publish(env, "sub-3", "3.0", 63, "2026-11-20T13:00:00Z");
    env.kill_proxy();
    let before = snapshot(&env.data_dir);
    let cloud_before = cloud_state();
    let planned = plan(env, &[]);
    eprintln!("--- plan before the third refresh ---\n{planned}");
    assert!(
        planned.contains(&format!(
            "  install Sub Server 3.0 ({v3}), {} bytes",
            sizes(env, "sub-3")
        )),
        "{planned}"
    );
    assert!(
        planned.contains("for subscription \"product=sub-server arch=x86_64\""),
        "{planned}"
    );
    assert!(
        planned.contains("Would deregister nothing (keep 2)."),
        "{planned}"
    );
    assert!(
        planned.contains("budget 67108864 bytes (64 MiB)"),
        "{planned}"
    );
    assert_eq!(snapshot(&env.data_dir), before, "plan changed the data dir");
    assert_eq!(cloud_state(), cloud_before, "plan changed the cloud");

    // The third refresh (at the start): 3.0 installed, then 1.0 retired.
    env.start_proxy();
    env.dashboard().await;
    let third = env.wait_for_status(&v3, "installed").await;
    let retired = env.wait_for_status(&v1, "uninstalled").await;
    assert_eq!(
        retired["status-detail"],
        "Deregistered by its subscription: the newest 2 versions are kept",
        "{retired}"
    );
    assert!(retired["actions"]["install"].is_string(), "{retired}");
    for (uri, what) in [(&v0, "the operator's"), (&v2, "2.0"), (&v3, "3.0")] {
        assert_eq!(
            env.state(uri).await["status"],
            "installed",
            "{what} install stays"
        );
    }
    // A refresh later, nothing more happens: 1.0 is not installed again.
    env.dashboard().await;
    assert_eq!(env.state(&v1).await["status"], "uninstalled");

    let text = metrics(env).await;
    let cache = metric(&text, "image_store_proxy_cache_bytes").unwrap();
    let budget = metric(&text, "image_store_proxy_cache_max_bytes").unwrap();
    assert_eq!(budget, 64 << 20);
    assert!(cache > 0 && cache <= budget, "{text}");
    eprintln!(
        "--- after three versions ---\ninstalled by the subscription: 1.0 {}, 2.0 {}, 3.0 {}\n\
         the operator's: 0.9 {}\nkept: 2.0, 3.0 (and the operator's 0.9); deregistered: 1.0 {}\n\
         cache {cache} bytes of a {budget}-byte budget",
        first["emi"], second["emi"], third["emi"], operator["emi"], first["emi"]
    );

    env.kill_proxy();
    let before = snapshot(&env.data_dir);
    let cloud_before = cloud_state();
    let daemon_args = env.extra_args.clone();
    env.extra_args = [
        "--subscribe",
        "product=sub-server arch=x86_64",
        "--keep",
        "1",
        "--cache-max-bytes",
        "64M",
    ]
    .map(String::from)
    .to_vec();
    let planned = plan(env, &[]);
    env.extra_args = daemon_args;
    eprintln!("--- plan with --keep 1 ---\n{planned}");
    assert!(planned.contains("Would install nothing."), "{planned}");
    assert!(
        planned.contains(&format!(
            "  deregister Sub Server 2.0 ({v2}), {} bytes",
            sizes(env, "sub-2")
        )),
        "{planned}"
    );
    // Its machine image alone: the kernel and ramdisk are 3.0's and the operator's too.
    assert!(
        planned.contains(&format!(
            "): {} and the bundles",
            second["emi"].as_str().unwrap()
        )),
        "{planned}"
    );
    assert!(!planned.contains("deregister Sub Server 0.9"), "{planned}");
    assert_eq!(snapshot(&env.data_dir), before, "plan changed the data dir");
    assert_eq!(cloud_state(), cloud_before, "plan changed the cloud");
    Run {
        operator,
        first,
        second,
        third,
    }
}

/// The bytes of a set's files as the catalog lists them.
fn sizes(env: &TestEnv, set: &str) -> u64 {
    ["kernel", "ramdisk.gz", "image.gz"]
        .iter()
        .map(|name| {
            std::fs::metadata(env.images.join(set).join(name))
                .unwrap()
                .len()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_three_versions_retires_the_first_in_the_fake_cloud() {
    let mut env = TestEnv::with_store().await;
    let run = three_versions(&mut env, &String::new).await;
    let ids: BTreeSet<String> = fake_registrations(&env.data_dir)
        .into_iter()
        .map(|(_, record)| record["image_id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.contains(run.first["emi"].as_str().unwrap()), "{ids:?}");
    for kept in [&run.operator, &run.second, &run.third] {
        assert!(ids.contains(kept["emi"].as_str().unwrap()), "{ids:?}");
    }
    // The kernel and ramdisk every version shares stay registered.
    assert!(
        ids.contains(run.operator["eki"].as_str().unwrap()),
        "{ids:?}"
    );
    assert!(
        ids.contains(run.operator["eri"].as_str().unwrap()),
        "{ids:?}"
    );
    let objects = fake_objects(&env.data_dir);
    assert!(
        !objects.iter().any(|o| o.contains("sub-server-1.0-image.")),
        "the retired image's bundle is gone: {objects:?}"
    );
    for kept in ["0.9", "2.0", "3.0"] {
        assert!(
            objects
                .iter()
                .any(|o| o.ends_with(&format!("sub-server-{kept}-image.manifest.xml"))),
            "{kept}: {objects:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_three_versions_retires_the_first_in_moto() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let mut env = TestEnv::with_store().await;
    let config = moto.cloud_config(env.dir.path(), "toml", "AKIDPROXYTEST", SECRET, "2");
    env.cloud = Some((config, SECRET.to_string()));
    let run = three_versions(&mut env, &|| moto_state(&moto)).await;
    let (_, ids) = moto.images();
    let ids: BTreeSet<String> = ids
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert!(!ids.contains(run.first["emi"].as_str().unwrap()), "{ids:?}");
    for kept in [&run.operator, &run.second, &run.third] {
        assert!(ids.contains(kept["emi"].as_str().unwrap()), "{ids:?}");
    }
    assert!(
        ids.contains(run.operator["eki"].as_str().unwrap()),
        "{ids:?}"
    );
    // moto received the DeregisterImage for 1.0's machine image alone.
    let deregistered: Vec<String> = moto
        .requests()
        .into_iter()
        .filter(|r| r["params"]["Action"] == "DeregisterImage")
        .map(|r| r["params"]["ImageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deregistered, [run.first["emi"].as_str().unwrap()]);
    // Its bundle objects are gone from its bucket; the others' are there.
    let keys = moto_keys(&moto);
    assert!(
        !keys.iter().any(|k| k.contains("/sub-server-1.0-image.")),
        "{keys:?}"
    );
    for kept in ["0.9", "2.0", "3.0"] {
        assert!(
            keys.iter()
                .any(|k| k.contains(&format!("/sub-server-{kept}-image.manifest.xml "))),
            "{kept}: {keys:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_and_sizes_are_refused_at_start_in_one_line() {
    for (args, expected) in [
        (
            vec!["--subscribe", "product"],
            "subscription \"product\": filter \"product\" is not key=value, key!=value, key~regex or key!~regex",
        ),
        (vec!["--keep", "0"], "keep must be at least 1"),
        (
            vec!["--cache-max-bytes", "lots"],
            "cache-max-bytes: \"lots\" is not a size: give bytes, or a number with K, M or G",
        ),
        (
            vec!["--min-free-bytes", "1.5G"],
            "min-free-bytes: \"1.5G\" is not a size: give bytes, or a number with K, M or G",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_image-store-proxy"))
            .args([
                "--api-url",
                "http://127.0.0.1:9/api",
                "--fake-eucalyptus",
                SECRET,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = format!("image-store-proxy: {expected}");
        assert!(
            stderr.lines().any(|l| l.ends_with(&line)),
            "{args:?}: {stderr}"
        );
        assert_eq!(output.stdout, b"", "nothing listened");
    }
}

/// Every key in the buckets moto's registrations name.
fn moto_keys(moto: &Moto) -> Vec<String> {
    let mut buckets = BTreeSet::new();
    for registration in moto.registrations() {
        let location = registration["params"]["ImageLocation"].as_str().unwrap();
        buckets.insert(location.split_once('/').unwrap().0.to_string());
    }
    let mut keys = Vec::new();
    for bucket in &buckets {
        for object in moto.check(&["objects", bucket]).as_array().unwrap() {
            keys.push(format!(
                "{bucket}/{} {}",
                object["key"].as_str().unwrap(),
                object["etag"]
            ));
        }
    }
    keys
}

/// What moto holds: its images and every object of the install buckets.
fn moto_state(moto: &Moto) -> String {
    format!("{}\n{:?}", moto.images().0, moto_keys(moto))
}

/// Files the `files` table records, and the cache directory's files: the two agree.
fn cache_agrees(env: &TestEnv) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(env.data_dir.join("state.sqlite")).unwrap();
    let recorded: BTreeSet<String> = conn
        .prepare("SELECT sha256 FROM files")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let on_disk: BTreeSet<String> = env
        .cache_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| !name.contains('.'))
        .collect();
    assert_eq!(
        recorded, on_disk,
        "the files table and the cache directory agree"
    );
    recorded
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_budget_evicts_the_least_recently_used_file_and_keeps_the_pinned() {
    let mut env = TestEnv::with_store().await;
    let size = |path: &str| std::fs::metadata(env.images.join(path)).unwrap().len();
    let (kernel, ramdisk) = (size("karmic/kernel"), size("karmic/ramdisk.gz"));
    let (karmic, lucid) = (size("karmic/image.gz"), size("lucid/image.tar.gz"));
    // Room for the shared kernel and ramdisk and one machine image, not two.
    let budget = kernel + ramdisk + karmic.max(lucid) + 1024;
    assert!(kernel + ramdisk + karmic + lucid > budget);
    env.extra_args = vec!["--cache-max-bytes".into(), budget.to_string()];
    env.start_proxy();
    env.dashboard().await;
    let (karmic_uri, lucid_uri) = (env.image_uri("karmic"), env.image_uri("lucid"));
    env.act(&karmic_uri, "install").await;
    env.wait_for_status(&karmic_uri, "installed").await;
    let before = cache_agrees(&env);
    assert_eq!(before.len(), 3);
    // lucid needs the kernel and ramdisk karmic used (pinned: lucid is in flight) and its own
    // image: karmic's image, used least recently and pinned by nothing, makes room.
    env.act(&lucid_uri, "install").await;
    env.wait_for_status(&lucid_uri, "installed").await;
    let after = cache_agrees(&env);
    let karmic_image = sha256_of(&env.images.join("karmic/image.gz"));
    let lucid_image = sha256_of(&env.images.join("lucid/image.tar.gz"));
    let shared: Vec<String> = ["karmic/kernel", "karmic/ramdisk.gz"]
        .iter()
        .map(|p| sha256_of(&env.images.join(p)))
        .collect();
    assert!(!after.contains(&karmic_image), "evicted: {after:?}");
    assert!(after.contains(&lucid_image));
    for kept in &shared {
        assert!(after.contains(kept), "pinned and kept: {after:?}");
    }
    let text = metrics(&env).await;
    assert_eq!(
        metric(&text, "image_store_proxy_cache_evictions_total"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "image_store_proxy_cache_evicted_bytes_total"),
        Some(karmic),
        "{text}"
    );
    assert_eq!(
        metric(&text, "image_store_proxy_cache_max_bytes"),
        Some(budget)
    );
    assert_eq!(
        metric(&text, "image_store_proxy_cache_bytes"),
        Some(kernel + ramdisk + lucid),
        "{text}"
    );
    // karmic stays installed: evicting its file takes nothing from the cloud.
    assert_eq!(env.state(&karmic_uri).await["status"], "installed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_cut_short_by_a_crash_leaves_the_db_and_the_cache_in_agreement() {
    let mut env = TestEnv::with_store().await;
    let size = |path: &str| std::fs::metadata(env.images.join(path)).unwrap().len();
    let budget = size("karmic/kernel")
        + size("karmic/ramdisk.gz")
        + size("karmic/image.gz").max(size("lucid/image.tar.gz"))
        + 1024;
    env.extra_args = vec!["--cache-max-bytes".into(), budget.to_string()];
    env.proxy_env = vec![(
        image_store_proxy::pause::PAUSE_AT.to_string(),
        "evict".to_string(),
    )];
    env.start_proxy();
    env.dashboard().await;
    let (karmic, lucid) = (env.image_uri("karmic"), env.image_uri("lucid"));
    env.act(&karmic, "install").await;
    env.wait_for_status(&karmic, "installed").await;
    env.act(&lucid, "install").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !env.proxy_log().contains("paused at evict") {
        assert!(std::time::Instant::now() < deadline, "{}", env.proxy_log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    env.kill_proxy();
    // Killed between the two: the record is gone, the file is still there.
    let karmic_image = sha256_of(&env.images.join("karmic/image.gz"));
    let conn = rusqlite::Connection::open(env.data_dir.join("state.sqlite")).unwrap();
    let recorded: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM files WHERE sha256 = ?1",
            [&karmic_image],
            |row| row.get(0),
        )
        .unwrap();
    drop(conn);
    assert_eq!(recorded, 0);
    assert!(env.cache_files().iter().any(|p| p.ends_with(&karmic_image)));
    // The next start sweeps it, and lucid's install resumes and fits.
    env.proxy_env.clear();
    env.start_proxy();
    env.dashboard().await;
    env.wait_for_status(&lucid, "installed").await;
    let after = cache_agrees(&env);
    assert!(!after.contains(&karmic_image));
    assert!(
        env.proxy_log()
            .contains("cache files without a record removed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_that_cannot_fit_the_cache_budget_refuses_at_once_with_the_numbers() {
    let mut env = TestEnv::with_store().await;
    env.extra_args = vec!["--cache-max-bytes".into(), "1M".into()];
    env.start_proxy();
    env.dashboard().await;
    let karmic = env.image_uri("karmic");
    let needed: u64 = ["kernel", "ramdisk.gz", "image.gz"]
        .iter()
        .map(|name| {
            std::fs::metadata(env.images.join("karmic").join(name))
                .unwrap()
                .len()
        })
        .sum();
    assert!(needed > 1 << 20);
    env.act(&karmic, "install").await;
    let failed = env.wait_for_failure(&karmic).await;
    let message = failed["error-message"].as_str().unwrap();
    assert!(
        message.ends_with(&format!(
            "the image does not fit in the cache: it needs {needed} bytes and --cache-max-bytes 1048576 allows 1048576 bytes (0 bytes are held by files in use and bundles)"
        )),
        "{message}"
    );
    assert!(
        env.served("files/karmic/").is_empty(),
        "nothing was downloaded"
    );
    assert!(env.cache_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_free_bytes_refuses_an_install_that_would_leave_less_free() {
    let mut env = TestEnv::with_store().await;
    // More than any test machine's disk has free: no install may start.
    env.extra_args = vec!["--min-free-bytes".into(), "1048576G".into()];
    env.start_proxy();
    env.dashboard().await;
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    let failed = env.wait_for_failure(&karmic).await;
    let message = failed["error-message"].as_str().unwrap();
    assert!(
        message.contains("the image does not fit in the cache: it needs ")
            && message.contains(" bytes and --min-free-bytes 1125899906842624 allows 0 bytes"),
        "{message}"
    );
    assert!(env.served("files/karmic/").is_empty());
    let text = metrics(&env).await;
    assert_eq!(
        metric(&text, "image_store_proxy_cache_min_free_bytes"),
        Some(1 << 50)
    );
}
