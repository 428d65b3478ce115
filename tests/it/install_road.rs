//! The whole road on the embedded defaults: dashboard, install through the signed action URI,
//! progress, installed in the fake cloud, and everything kept across a restart.

use crate::common;

use common::openssl::{self, WrappedFor};
use common::{TestEnv, resumed_from, state_in};
use serde_json::Value;

fn is_id(value: &Value, prefix: &str) -> bool {
    value.as_str().is_some_and(|id| {
        id.len() == prefix.len() + 9
            && id.starts_with(prefix)
            && id[prefix.len() + 1..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_goes_from_uninstalled_to_installed_and_stays_installed_after_a_restart() {
    let mut env = TestEnv::start().await;
    let karmic = env.image_uri("karmic");

    let dashboard = env.dashboard().await;
    assert!(dashboard.get("error-message").is_none(), "{dashboard}");
    let images = dashboard["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let info = images.iter().find(|i| i["uri"] == karmic.as_str()).unwrap();
    assert_eq!(info["title"], "Ubuntu 9.10 Server");
    assert_eq!(info["version"], "9.10");
    assert!(info["size-in-mb"].as_u64().unwrap() >= 1);
    let sections = dashboard["sections"].as_array().unwrap();
    assert!(sections.iter().any(|s| {
        s["image-uris"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == karmic.as_str())
    }));
    let state = state_in(&dashboard, &karmic).unwrap();
    assert_eq!(state["status"], "uninstalled");
    let install_uri = state["actions"]["install"].as_str().unwrap();
    assert_eq!(
        install_uri,
        format!(
            "{}/api/images/{}/install",
            env.proxy_url(),
            install_uri.split('/').nth(5).unwrap()
        )
    );

    let after_press = env.act(&karmic, "install").await;
    assert!(
        ["downloading", "installing", "installed"]
            .contains(&after_press["status"].as_str().unwrap()),
        "{after_press}"
    );
    let installed = env.wait_for_status(&karmic, "installed").await;
    assert!(is_id(&installed["emi"], "emi"), "{installed}");
    assert!(is_id(&installed["eki"], "eki"), "{installed}");
    assert!(is_id(&installed["eri"], "eri"), "{installed}");
    assert_eq!(
        installed["status-detail"],
        format!("Installed as {}", installed["emi"].as_str().unwrap())
    );
    assert!(installed.get("progress-percentage").is_none());
    assert!(installed["actions"].as_object().unwrap().is_empty());

    // The fake cloud holds an EC2 bundle of each (the same bundle code a real cloud gets), which
    // openssl, gzip and tar open with the fake cloud's user key, registered with their links.
    let cloud = env.data_dir.join("fake-cloud");
    let bucket = common::fake_cloud_bucket(&env.data_dir);
    let user_key = cloud.join("keys/user-pk.pem");
    for (prefix, original) in [
        ("ubuntu-server-amd64-9.10-kernel", &env.originals.kernel),
        ("ubuntu-server-amd64-9.10-ramdisk", &env.originals.ramdisk),
        ("ubuntu-server-amd64-9.10-image", &env.originals.karmic),
    ] {
        let manifest = bucket.join(format!("{prefix}.manifest.xml"));
        let opened = openssl::open_bundle(
            &manifest,
            &user_key,
            WrappedFor::User,
            &env.dir.path().join(prefix),
        );
        assert_eq!(opened.member, prefix);
        assert!(
            &opened.image == original,
            "{prefix} differs from what upstream served"
        );
    }
    let registration: Value = serde_json::from_slice(
        &std::fs::read(bucket.join("ubuntu-server-amd64-9.10-image.registration.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(registration["image_id"], installed["emi"]);
    assert_eq!(registration["kernel_id"], installed["eki"]);
    assert_eq!(registration["ramdisk_id"], installed["eri"]);
    assert_eq!(registration["architecture"], "x86_64");
    assert!(
        registration["location"]
            .as_str()
            .unwrap()
            .ends_with("/ubuntu-server-amd64-9.10-image.manifest.xml"),
        "{registration}"
    );
    assert_eq!(env.cache_files().len(), 3, "{:?}", env.cache_files());

    // Restart on the same data dir: the state and the cache are kept, nothing is fetched again.
    let file_requests = env.served("/files/").len();
    env.kill_proxy();
    env.start_proxy();
    let dashboard = env.dashboard().await;
    let state = state_in(&dashboard, &karmic).unwrap();
    assert_eq!(state["status"], "installed");
    assert_eq!(state["emi"], installed["emi"]);
    // Pressing install on an installed image answers its current state.
    let install_again = format!(
        "{}/api/images/{}/install",
        env.proxy_url(),
        image_store_proxy::catalog::model::image_key(&karmic)
    );
    let again = env
        .client()
        .call("POST", &install_again, Vec::new())
        .await
        .unwrap();
    assert_eq!(again.body["state"]["status"], "installed", "{}", again.body);
    assert_eq!(
        env.served("/files/").len(),
        file_requests,
        "nothing is downloaded again"
    );
    assert_eq!(env.cache_files().len(), 3);

    // The second image shares the kernel and ramdisk: fetched once, registered once.
    let lucid = env.image_uri("lucid");
    let lucid_state = state_in(&env.dashboard().await, &lucid).unwrap();
    assert_eq!(
        lucid_state["is-upgrade"], true,
        "an older version of the product is installed: {lucid_state}"
    );
    env.act(&lucid, "install").await;
    let lucid_installed = env.wait_for_status(&lucid, "installed").await;
    assert_eq!(lucid_installed["eki"], installed["eki"]);
    assert_eq!(lucid_installed["eri"], installed["eri"]);
    assert_ne!(lucid_installed["emi"], installed["emi"]);
    assert!(
        env.served("/files/lucid/kernel").is_empty(),
        "the shared kernel comes from the cache"
    );
    let lucid_bucket = std::fs::read_dir(&cloud)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.join("ubuntu-server-amd64-10.04-image.manifest.xml")
                .exists()
        })
        .unwrap();
    assert!(
        !lucid_bucket
            .join("ubuntu-server-amd64-10.04-kernel.manifest.xml")
            .exists(),
        "the shared kernel is bundled once"
    );
    let opened = openssl::open_bundle(
        &lucid_bucket.join("ubuntu-server-amd64-10.04-image.manifest.xml"),
        &user_key,
        WrappedFor::User,
        &env.dir.path().join("lucid"),
    );
    assert_eq!(opened.member, "ubuntu-server-amd64-10.04-image");
    assert!(
        opened.image == env.originals.lucid,
        "the tarball's image, bundled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_status_detail_move_while_bytes_flow_and_a_dropped_download_resumes_with_range()
 {
    let mut env = TestEnv::with_store().await;
    env.retry_delay_ms = 1500;
    env.start_proxy();
    let karmic = env.image_uri("karmic");
    env.dashboard().await;
    let cut = 512 << 10;
    env.store.faults().drop_file_after = Some(cut);
    env.act(&karmic, "install").await;
    // The kernel (300 KiB) and ramdisk arrive whole; the machine image is cut at 512 KiB, then
    // resumed after the retry pause: in that pause the poll shows where it stands.
    let midway = env
        .wait_for(
            &karmic,
            "a partial machine image download",
            partial_image_download,
        )
        .await;
    // The image overlaps its download: its line counts the parts sent beside it (none yet: its
    // one part closes with the bundle).
    assert!(
        midway["status-detail"]
            .as_str()
            .unwrap()
            .ends_with(" of 1.1 MiB, 0 parts sent"),
        "{midway}"
    );
    assert_eq!(midway["status"], "downloading");
    let percent = midway["progress-percentage"].as_u64().unwrap();
    assert!(percent > 0 && percent < 100, "{midway}");
    assert!(midway["actions"]["cancel"].is_string(), "{midway}");
    env.wait_for_status(&karmic, "installed").await;
    let image_requests = env.served("/files/karmic/image.gz");
    assert_eq!(image_requests.len(), 2, "{image_requests:?}");
    assert_eq!(image_requests[0].range, None);
    let resumed_at = resumed_from(&image_requests[1]);
    assert!(
        resumed_at > 0 && resumed_at <= cut,
        "resumed at {resumed_at}, cut at {cut}"
    );
}

/// The machine image is part-way down: the poll shows it in the status line and the percentage.
fn partial_image_download(state: &Value) -> bool {
    let detail = state["status-detail"].as_str().unwrap_or("");
    detail.starts_with("Downloading machine image: ")
        && !detail.starts_with("Downloading machine image: 0.0 of")
        && {
            let (done, total) = detail
                .trim_start_matches("Downloading machine image: ")
                .split_once(" of ")
                .unwrap();
            done != total.trim_end_matches(" MiB")
        }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_an_install_and_a_new_install_resumes_the_partial_download() {
    let mut env = TestEnv::with_store().await;
    env.retry_delay_ms = 60_000;
    env.start_proxy();
    let karmic = env.image_uri("karmic");
    env.dashboard().await;
    env.store.faults().drop_file_after = Some(512 << 10);
    env.act(&karmic, "install").await;
    env.wait_for(&karmic, "the cut download", partial_image_download)
        .await;
    let cancelled = env.act(&karmic, "cancel").await;
    assert!(
        cancelled["status"] == "downloading" || cancelled["status"] == "uninstalled",
        "{cancelled}"
    );
    let state = env.wait_for_status(&karmic, "uninstalled").await;
    assert!(
        state.get("error-message").is_none(),
        "a cancel is not an error: {state}"
    );
    assert!(state["actions"]["install"].is_string());

    env.kill_proxy();
    env.retry_delay_ms = 100;
    env.start_proxy();
    env.act(&karmic, "install").await;
    env.wait_for_status(&karmic, "installed").await;
    let image_requests = env.served("/files/karmic/image.gz");
    assert_eq!(image_requests.len(), 2, "{image_requests:?}");
    assert!(resumed_from(&image_requests[1]) > 0, "{image_requests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_deregistered_in_the_cloud_shows_uninstalled_and_installs_again() {
    let env = TestEnv::start().await;
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    let installed = env.wait_for_status(&karmic, "installed").await;
    let emi = installed["emi"].as_str().unwrap().to_string();

    // An operator deregisters the machine image (in the fake cloud: its registration record goes).
    let bucket = common::fake_cloud_bucket(&env.data_dir);
    let record = bucket.join("ubuntu-server-amd64-9.10-image.registration.json");
    std::fs::remove_file(&record).unwrap();

    let state = env.reconcile_until(&karmic, "uninstalled").await;
    assert_eq!(
        state["status-detail"],
        format!("No longer in the cloud: machine image {emi} deregistered"),
        "{state}"
    );
    assert!(state.get("emi").is_none(), "{state}");
    assert!(state["actions"]["install"].is_string(), "{state}");
    assert!(state.get("error-message").is_none(), "{state}");

    // Installing again registers the machine image anew; the kernel and ramdisk are still there.
    let kernel_record =
        std::fs::metadata(bucket.join("ubuntu-server-amd64-9.10-kernel.registration.json"))
            .unwrap()
            .modified()
            .unwrap();
    env.act(&karmic, "install").await;
    let again = env.wait_for_status(&karmic, "installed").await;
    assert_eq!(again["emi"], emi.as_str());
    assert_eq!(again["eki"], installed["eki"]);
    assert!(record.exists(), "registered again");
    assert_eq!(
        std::fs::metadata(bucket.join("ubuntu-server-amd64-9.10-kernel.registration.json"))
            .unwrap()
            .modified()
            .unwrap(),
        kernel_record,
        "the kernel, still registered, is not published again"
    );
}

/// karmic and lucid share their kernel and ramdisk: installed at the same moment, the shared files
/// are downloaded once (the second install waits for the first, then finds them cached) and
/// registered once, and both installs complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installs_sharing_a_kernel_download_and_register_it_once() {
    let env = TestEnv::start().await;
    let karmic = env.image_uri("karmic");
    let lucid = env.image_uri("lucid");
    // Slow enough that both installs reach the shared kernel while it is still downloading.
    env.store.faults().bytes_per_second = Some(400 << 10);
    env.act(&karmic, "install").await;
    env.act(&lucid, "install").await;
    let mut waited = false;
    for _ in 0..200 {
        let state = env.state(&lucid).await;
        waited |= state["status-detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("Waiting for another install of the same"));
        if waited || state["status"] == "installed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(waited, "one install waited for the other's download");
    env.store.faults().bytes_per_second = None;
    for uri in [&karmic, &lucid] {
        env.wait_for_status(uri, "installed").await;
    }
    let mut shared_downloads = Vec::new();
    for name in ["kernel", "ramdisk"] {
        for set in ["karmic", "lucid"] {
            shared_downloads.extend(env.served(&format!("files/{set}/{name}")));
        }
    }
    assert_eq!(shared_downloads.len(), 2, "{shared_downloads:?}");
    let mut kinds = Vec::new();
    for entry in walk(&env.data_dir.join("fake-cloud")) {
        if entry.to_string_lossy().ends_with(".registration.json") {
            let record: Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
            kinds.push(record["kind"].as_str().unwrap().to_string());
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["kernel", "machine image", "machine image", "ramdisk"],
        "{kinds:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Everything the proxy writes under its data directory is closed to other users whatever umask
/// it was started with (here the common 022): the directory 0750, the database, the fake cloud's
/// private keys and the bundles 0640 at most; the listing is printed for the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_hold_secrets_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // The usual login umask, so the proxy started below inherits it (it is the default anyway).
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o022));
    let env = TestEnv::start().await;
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    env.wait_for_status(&karmic, "installed").await;

    let mut listing = Vec::new();
    let mut pending = vec![env.data_dir.clone()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        listing.push(format!("{mode:04o} {}", path.display()));
        assert_eq!(
            mode & 0o007,
            0,
            "{} is open to others: {mode:04o}",
            path.display()
        );
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    listing.sort();
    eprintln!("{}", listing.join("\n"));
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.data_dir), 0o750);
    let database = env.data_dir.join("state.sqlite");
    assert_eq!(
        mode(&database) & 0o137,
        0,
        "0640 at most: {:04o}",
        mode(&database)
    );
    let keys = env.data_dir.join("fake-cloud/keys");
    let private_keys: Vec<_> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-pk.pem"))
        .collect();
    assert!(
        !private_keys.is_empty(),
        "the fake cloud made its keys in {}",
        keys.display()
    );
    for key in private_keys {
        assert_eq!(
            mode(&key),
            0o600,
            "a private key is the daemon's alone: {}: {:04o}",
            key.display(),
            mode(&key)
        );
    }
}
