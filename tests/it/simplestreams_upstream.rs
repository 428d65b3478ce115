//! A simplestreams mirror as the daemon's upstream (issue 14), end to end: the real proxy binary
//! pointed with `--simplestreams` at fake-store's clear-signed tree, or at a copy of it that the
//! real `sstream-mirror` made and a plain static HTTP server (Python's `http.server`) serves.
//! An HVM disk installs into moto (the recorded `RegisterImage` says `VirtualizationType=hvm`,
//! no kernel); a UEC tarball installs paravirtual into the fake cloud. Each bad tree is refused
//! with one line on the dashboard, the last good catalog kept, and nothing registered.

use crate::common;

use common::TestEnv;
use common::moto::Moto;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "AKIDSIMPLESTREAMS";
const SECRET: &str = "simplestreams-test-secret-0123456789";

/// fake-store's simplestreams root beside its API (`http://ADDR/api`).
fn mirror_root(env: &TestEnv) -> String {
    let api = env
        .store_url
        .strip_suffix("/api")
        .expect("fake-store's API URL");
    format!("{api}{}", fake_store::SIMPLESTREAMS_ROOT_PATH)
}

/// fake-store's tree built (the first build compresses its disks for a second or two).
async fn build_tree(env: &TestEnv) -> Vec<fake_store::StreamItem> {
    let store = env.store.clone();
    tokio::task::spawn_blocking(move || store.simplestreams_items())
        .await
        .unwrap()
        .unwrap()
}

/// The proxy's next start reads `root` (and nothing else), trusting the test keyring, with
/// `more` flags.
fn on_mirror(env: &mut TestEnv, root: &str, more: &[&str]) {
    let mut args: Vec<String> = vec![
        "--simplestreams".into(),
        root.into(),
        "--simplestreams-keyring".into(),
        env.keyring.display().to_string(),
    ];
    args.extend(more.iter().map(|arg| arg.to_string()));
    env.upstream_args = Some(args);
}

/// The dashboard's images, by URI.
async fn offered(env: &TestEnv) -> Vec<String> {
    env.dashboard().await["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["uri"].as_str().unwrap().to_string())
        .collect()
}

/// The one offered image whose URI ends with `suffix` (`.img`: an HVM disk; `.tar.gz`: UEC).
async fn offered_ending(env: &TestEnv, suffix: &str) -> String {
    let uris: Vec<String> = offered(env)
        .await
        .into_iter()
        .filter(|uri| uri.ends_with(suffix))
        .collect();
    assert!(
        !uris.is_empty(),
        "no {suffix} offered; log:\n{}",
        env.proxy_log()
    );
    uris[0].clone()
}

/// A static HTTP server of `dir` (Python's `http.server`) on a free port: its URL.
struct StaticServer {
    child: Child,
    url: String,
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StaticServer {
    fn serve(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is installed");
        let url = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url }
    }
}

/// `sstream-mirror --keyring` of fake-store's tree into `dir`, as an operator would make a mirror.
async fn sstream_mirror(tool: PathBuf, env: &TestEnv, dir: &Path) {
    let index = format!(
        "{}{}",
        mirror_root(env),
        fake_store::SIMPLESTREAMS_INDEX_PATH
    );
    let gnupg = env.dir.path().join("gnupg-mirror");
    std::fs::create_dir_all(&gnupg).unwrap();
    let mut command = Command::new(tool);
    command
        .env("GNUPGHOME", &gnupg)
        .arg(format!("--keyring={}", env.keyring.display()))
        .args([&index, dir.to_str().unwrap()]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "sstream-mirror: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The dashboard's `error-message` once it says `what`, checked to be one line.
async fn dashboard_refusal(env: &TestEnv, what: &str) -> (String, usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dashboard = env.dashboard().await;
        let message = dashboard["error-message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if message.contains(what) {
            assert!(!message.contains('\n'), "{message:?}");
            return (message, dashboard["images"].as_array().unwrap().len());
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} on the dashboard: {dashboard}\nlog:\n{}",
            env.proxy_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nothing was registered in the fake cloud: no registration record under it.
fn nothing_registered(data_dir: &Path) {
    let cloud = data_dir.join("fake-cloud");
    let records: Vec<PathBuf> = std::fs::read_dir(&cloud)
        .into_iter()
        .flatten()
        .flat_map(|bucket| {
            std::fs::read_dir(bucket.unwrap().path())
                .into_iter()
                .flatten()
        })
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".registration.json"))
        .collect();
    assert!(records.is_empty(), "registered: {records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hvm_disk_from_a_mirror_made_by_sstream_mirror_lands_in_moto_registered_hvm() {
    let Some(tool) = common::simplestreams_tool("sstream-mirror") else {
        return;
    };
    let mut env = TestEnv::with_store().await;
    build_tree(&env).await;
    let copy = env.dir.path().join("mirror");
    sstream_mirror(tool, &env, &copy).await;
    // The operator's mirror is a directory on a plain web server; fake-store is gone.
    env.stop_store();
    let server = StaticServer::serve(&copy);
    let moto = Moto::start(env.dir.path());
    let config = moto.cloud_config(env.dir.path(), "toml", ACCESS_KEY, SECRET, "4");
    env.cloud = Some((config, SECRET.to_string()));
    on_mirror(&mut env, &server.url, &[]);
    env.start_proxy();
    let disk = offered_ending(&env, ".img").await;
    assert!(disk.starts_with(&server.url), "{disk}");
    env.act(&disk, "install").await;
    let installed = env.wait_for_status(&disk, "installed").await;

    let registrations = moto.registrations();
    let [registration] = registrations.as_slice() else {
        panic!("one RegisterImage: {registrations:?}");
    };
    let params = &registration["params"];
    assert_eq!(params["VirtualizationType"], "hvm", "{params}");
    assert!(params.get("KernelId").is_none(), "{params}");
    assert!(params.get("RamdiskId").is_none(), "{params}");
    let description = params["Description"].as_str().unwrap();
    assert!(
        description.starts_with("simplestreams com.ubuntu.cloud:released:download ")
            && description.ends_with(" disk1.img"),
        "{description}"
    );
    let (images, ids) = moto.images();
    assert_eq!(ids, [installed["emi"].clone()], "{images}");
    println!(
        "FIGURE hvm-from-sstream-mirror: {disk} installed as {} with {params}",
        installed["emi"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uec_tarball_installs_paravirtual_into_the_fake_cloud_with_its_kernel_and_ramdisk() {
    let mut env = TestEnv::with_store().await;
    build_tree(&env).await;
    let root = mirror_root(&env);
    on_mirror(&mut env, &root, &["--virtualization", "paravirtual"]);
    env.start_proxy();
    let tarball = offered_ending(&env, ".tar.gz").await;
    env.act(&tarball, "install").await;
    let installed = env.wait_for_status(&tarball, "installed").await;
    let (emi, eki, eri) = (&installed["emi"], &installed["eki"], &installed["eri"]);
    assert!(eki.as_str().unwrap().starts_with("eki-"), "{installed}");
    assert!(eri.as_str().unwrap().starts_with("eri-"), "{installed}");
    let bucket = common::fake_cloud_bucket(&env.data_dir);
    let records: Vec<Value> = std::fs::read_dir(&bucket)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".registration.json"))
        .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{records:?}");
    let image = records
        .iter()
        .find(|record| &record["image_id"] == emi)
        .unwrap();
    assert_eq!(image["virtualization_type"], "paravirtual", "{image}");
    assert_eq!((&image["kernel_id"], &image["ramdisk_id"]), (eki, eri));
    assert!(
        image["description"].as_str().unwrap().ends_with(" tar.gz"),
        "{image}"
    );
}

/// A proxy that accepted fake-store's good tree: its images.
async fn accepted(env: &mut TestEnv) -> usize {
    build_tree(env).await;
    let root = mirror_root(env);
    on_mirror(env, &root, &[]);
    env.start_proxy();
    let images = offered(env).await.len();
    assert!(images > 0, "log:\n{}", env.proxy_log());
    images
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_sjson_is_refused_and_the_last_good_catalog_kept() {
    let mut env = TestEnv::with_store().await;
    let images = accepted(&mut env).await;
    env.store.faults().simplestreams.tamper_signed = true;
    let (line, kept) = dashboard_refusal(&env, "its signature was refused: bad signature").await;
    assert_eq!(kept, images, "{line}");
    nothing_registered(&env.data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_signed_by_a_key_outside_the_upstream_s_keyring_is_refused() {
    let mut env = TestEnv::with_store().await;
    let images = accepted(&mut env).await;
    let gpg = common::Gpg::new();
    let other = gpg.generate("someone-else@image-store-proxy.invalid", "ed25519");
    env.store.faults().simplestreams.signed_by = Some(other);
    let (line, kept) = dashboard_refusal(&env, "made by a key not in the keyring").await;
    assert_eq!(kept, images, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_tree_is_refused_unless_allow_unsigned_and_then_the_dashboard_warns() {
    let mut env = TestEnv::with_store().await;
    build_tree(&env).await;
    env.store.faults().simplestreams.unsigned_only = true;
    let root = mirror_root(&env);
    on_mirror(&mut env, &root, &[]);
    env.start_proxy();
    let (line, images) = dashboard_refusal(&env, "unless its upstream sets allow-unsigned").await;
    assert_eq!(images, 0, "{line}");
    assert!(line.contains("index.sjson"), "{line}");

    on_mirror(&mut env, &root, &["--allow-unsigned"]);
    env.start_proxy();
    let (warning, images) = dashboard_refusal(&env, "is taken unsigned (allow-unsigned)").await;
    assert!(images > 0, "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_older_than_the_accepted_one_is_refused_as_a_rollback() {
    let mut env = TestEnv::with_store().await;
    let images = accepted(&mut env).await;
    env.store.faults().simplestreams.rolled_back = true;
    let (line, kept) = dashboard_refusal(&env, "refusing a rollback").await;
    assert_eq!(kept, images, "{line}");
    // Across a restart too: the watermark is in SQLite.
    env.start_proxy();
    let (_, kept) = dashboard_refusal(&env, "refusing a rollback").await;
    assert_eq!(kept, images);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_products_file_naming_another_content_id_is_refused() {
    let mut env = TestEnv::with_store().await;
    let images = accepted(&mut env).await;
    env.store.faults().simplestreams.content_id_mismatch = true;
    let (line, kept) = dashboard_refusal(&env, fake_store::MISMATCHED_CONTENT_ID).await;
    assert_eq!(kept, images, "{line}");
}

/// A path out of the mirror root is a hostile products file, not one bad entry: it is refused
/// whole, as a tampered one would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_path_that_leaves_the_mirror_root_refuses_its_products_file() {
    let mut env = TestEnv::with_store().await;
    let images = accepted(&mut env).await;
    env.store.faults().simplestreams.item_path_escapes = true;
    let (line, kept) = dashboard_refusal(&env, "has a \"..\" or \".\" segment").await;
    assert_eq!(kept, images, "{line}");
    assert!(line.contains("\"../server/releases/"), "{line}");
    nothing_registered(&env.data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_whose_size_or_sha256_is_wrong_fails_its_install_in_one_line() {
    for (fault, says) in [("size", "the transfer stopped at"), ("sha256", "SHA-256")] {
        let mut env = TestEnv::with_store().await;
        build_tree(&env).await;
        {
            let mut faults = env.store.faults();
            match fault {
                "size" => faults.simplestreams.wrong_item_size = true,
                _ => faults.simplestreams.wrong_item_sha256 = true,
            }
        }
        let root = mirror_root(&env);
        on_mirror(&mut env, &root, &[]);
        env.start_proxy();
        let disk = offered_ending(&env, ".img").await;
        env.act(&disk, "install").await;
        let failed = env.wait_for_failure(&disk).await;
        let error = failed["error-message"].as_str().unwrap();
        assert!(
            !error.contains('\n') && error.contains(says),
            "{fault}: {error}"
        );
        nothing_registered(&env.data_dir);
        println!("FIGURE wrong-item-{fault}: {error}");
    }
}

/// Both of fake-store's upstreams from a config file's `[[upstream]]` tables, each with its own
/// keyring: each shows in its own section, in the file's order; a refusal of one leaves the
/// other's images and says which upstream failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tables_show_in_their_own_sections_and_one_refusal_hides_nothing_of_the_other() {
    let mut env = TestEnv::with_store().await;
    build_tree(&env).await;
    let mirror_keyring = env.dir.path().join("mirror-keyring.gpg");
    std::fs::copy(&env.keyring, &mirror_keyring).unwrap();
    let config = env.dir.path().join("upstreams.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nsimplestreams = \"{}\"\nkeyring = \"{}\"\nsection-title = \"Mirrored Ubuntu\"\nmax-versions = 2\n\n\
             [[upstream]]\napi-url = \"{}\"\nkeyring = \"{}\"\n",
            mirror_root(&env),
            mirror_keyring.display(),
            env.store_url,
            env.keyring.display()
        ),
    )
    .unwrap();
    env.upstream_args = Some(vec!["--config".into(), config.display().to_string()]);
    env.start_proxy();
    let dashboard = env.dashboard().await;
    let sections: Vec<(&str, usize)> = dashboard["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["title"].as_str().unwrap(),
                s["image-uris"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(sections[0].0, "Mirrored Ubuntu", "{dashboard}");
    // max-versions 2: every serial of each product fake-store publishes for amd64.
    assert!(sections[0].1 >= 2, "{sections:?}");
    assert!(sections.len() >= 2, "{sections:?}");
    let image_store_images = sections[1..].iter().map(|(_, n)| n).sum::<usize>();
    assert!(image_store_images > 0, "{sections:?}");

    env.store.faults().simplestreams.tamper_signed = true;
    let (line, images) = dashboard_refusal(&env, "bad signature").await;
    assert!(line.contains(&mirror_root(&env)), "{line}");
    assert!(!line.contains(&format!("{} ", env.store_url)), "{line}");
    assert_eq!(images, sections.iter().map(|(_, n)| n).sum::<usize>());
}
