//! Upstream input the proxy must refuse, keeping what it had: catalogs with bad signatures, signed
//! by strangers or older than the last one; files whose size, bytes or signature do not match; and
//! an upstream that is gone. Keys and signatures are made by GnuPG.

use crate::common;

use common::{Gpg, TEST_KEY_UID, TestEnv, state_in};
use serde_json::Value;

fn error_of(body: &Value) -> String {
    body["error-message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error-message in {body}"))
        .to_string()
}

/// After a refused refresh the last good catalog is still served, with the reason beside it.
async fn assert_catalog_kept(env: &TestEnv, reason: &str) {
    let dashboard = env.dashboard().await;
    let error = error_of(&dashboard);
    assert!(error.contains(reason), "{error:?} should say {reason:?}");
    assert!(
        error.contains("showing the catalog of 2026-11-20T10:00:00Z"),
        "{error}"
    );
    assert_eq!(
        dashboard["images"].as_array().unwrap().len(),
        2,
        "the last good catalog is kept"
    );
}

/// A proxy that accepted the catalog of 2026-11-20 without complaint; each bad catalog below gets
/// one of its own, so that a failure names it.
async fn with_a_good_catalog() -> TestEnv {
    let env = TestEnv::start().await;
    assert!(env.dashboard().await.get("error-message").is_none());
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_with_a_bad_signature_is_refused() {
    let env = with_a_good_catalog().await;
    env.store.faults().tamper_catalog = true;
    assert_catalog_kept(&env, "bad signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_signed_by_a_strange_key_is_refused() {
    let env = with_a_good_catalog().await;
    let gpg = Gpg::new();
    let stranger = gpg.generate("Stranger <stranger@example.invalid>", "rsa3072");
    env.store.set_signing_key(&stranger).unwrap();
    assert_catalog_kept(&env, "made by a key not in the keyring (0x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_catalog_is_refused_and_a_newer_one_accepted_again() {
    let env = with_a_good_catalog().await;
    env.store.set_updated("2026-11-19T10:00:00Z").unwrap();
    assert_catalog_kept(
        &env,
        "older (2026-11-19T10:00:00Z) than the catalog already accepted",
    )
    .await;

    // A newer, properly signed catalog is accepted again and the error goes away.
    env.store.set_updated("2026-11-22T10:00:00Z").unwrap();
    assert!(env.dashboard().await.get("error-message").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_good_catalog_the_dashboard_says_why() {
    let mut env = TestEnv::with_store().await;
    env.store.faults().tamper_catalog = true;
    env.start_proxy();
    let dashboard = env.dashboard().await;
    assert!(
        error_of(&dashboard).contains("no catalog has been accepted yet"),
        "{dashboard}"
    );
    assert_eq!(dashboard["images"].as_array().unwrap().len(), 0);
    assert!(dashboard["sections"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_upstream_down_dashboard_and_search_are_served_from_the_cache() {
    let mut env = TestEnv::start().await;
    assert_eq!(env.dashboard().await["images"].as_array().unwrap().len(), 2);
    env.stop_store();
    let dashboard = env.dashboard().await;
    let error = error_of(&dashboard);
    assert!(
        error.starts_with("Image store unreachable: GET "),
        "{error}"
    );
    assert_eq!(dashboard["images"].as_array().unwrap().len(), 2);
    let search = env.client().search("karmic").await.unwrap().body;
    assert_eq!(search["images"].as_array().unwrap().len(), 1);
    // A restarted proxy still has the catalog it accepted before.
    env.kill_proxy();
    env.start_proxy();
    assert_eq!(env.dashboard().await["images"].as_array().unwrap().len(), 2);
}

/// Installs `set` and waits for the failure; checks the UI contract of a failed install.
async fn failed_install(env: &TestEnv, set: &str) -> String {
    let uri = env.image_uri(set);
    env.dashboard().await;
    env.act(&uri, "install").await;
    let state = env.wait_for_failure(&uri).await;
    assert_eq!(state["status"], "uninstalled", "{state}");
    assert!(
        state["actions"]["install"].is_string() && state["actions"]["clear-error"].is_string(),
        "{state}"
    );
    assert!(state.get("progress-percentage").is_none());
    let error = error_of(&state);
    assert!(error.starts_with("Failure encountered while: "), "{error}");
    error
}

fn no_cached_copy_of(env: &TestEnv, bytes: &[u8]) {
    for file in env.cache_files() {
        assert_ne!(
            std::fs::read(&file).unwrap(),
            bytes,
            "{} holds the bad bytes",
            file.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_bytes_do_not_match_fails_the_install_and_is_not_kept() {
    let env = TestEnv::start().await;
    // Same size, other bytes: the SHA-256 in the signed catalog no longer matches.
    let path = env.images.join("karmic/image.gz");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let error = failed_install(&env, "karmic").await;
    assert!(
        error.starts_with("Failure encountered while: Downloading machine image: "),
        "{error}"
    );
    assert!(error.contains(": SHA-256 mismatch for "), "{error}");
    no_cached_copy_of(&env, &bytes);
    assert_eq!(
        env.cache_files().len(),
        2,
        "kernel and ramdisk verified and kept: {:?}",
        env.cache_files()
    );

    // clear-error leaves a plain uninstalled image; once upstream is fixed, install works.
    let uri = env.image_uri("karmic");
    let cleared = env.act(&uri, "clear-error").await;
    assert!(cleared.get("error-message").is_none(), "{cleared}");
    assert_eq!(cleared["status"], "uninstalled");
    assert!(cleared["actions"].get("clear-error").is_none());
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    env.act(&uri, "install").await;
    env.wait_for_status(&uri, "installed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_signed_is_cut_off_and_fails() {
    let env = TestEnv::start().await;
    let path = env.images.join("karmic/kernel");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"a trailer nobody signed");
    std::fs::write(&path, &bytes).unwrap();
    let error = failed_install(&env, "karmic").await;
    assert!(
        error.starts_with("Failure encountered while: Downloading kernel: "),
        "{error}"
    );
    assert!(
        error.contains("more than the signed size of 307200 bytes"),
        "{error}"
    );
    assert!(env.cache_files().is_empty(), "{:?}", env.cache_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_signed_by_a_stranger_or_with_a_bad_signature_fails_and_gpg_signatures_are_accepted()
{
    let env = TestEnv::start().await;
    let gpg = Gpg::new();
    gpg.generate("Stranger <stranger@example.invalid>", "ed25519");
    gpg.import_secret(fake_store::TEST_SIGNING_KEY);
    let kernel = env.images.join("karmic/kernel");
    let ramdisk = env.images.join("karmic/ramdisk.gz");
    let image = env.images.join("karmic/image.gz");

    // A GnuPG signature by a key the keyring does not hold.
    gpg.detach_sign(
        "stranger@example.invalid",
        &kernel,
        &env.images.join("karmic/kernel.asc"),
    );
    let error = failed_install(&env, "karmic").await;
    assert!(error.starts_with("Failure encountered while: Verifying kernel signature: made by a key not in the keyring (0x"), "{error}");
    assert!(
        env.cache_files().is_empty(),
        "the unverified kernel is not kept: {:?}",
        env.cache_files()
    );

    // A GnuPG signature by the right key over other bytes.
    let elsewhere = env.dir.path().join("other");
    std::fs::write(&elsewhere, b"not the kernel").unwrap();
    gpg.detach_sign(
        TEST_KEY_UID,
        &elsewhere,
        &env.images.join("karmic/kernel.asc"),
    );
    let uri = env.image_uri("karmic");
    env.act(&uri, "clear-error").await;
    let error = failed_install(&env, "karmic").await;
    assert!(
        error.starts_with("Failure encountered while: Verifying kernel signature: bad signature"),
        "{error}"
    );

    // GnuPG's own signatures by the trusted key are accepted (interoperability, not just our signer).
    for file in [&kernel, &ramdisk, &image] {
        let asc = file.with_file_name(format!(
            "{}.asc",
            file.file_name().unwrap().to_str().unwrap()
        ));
        gpg.detach_sign(TEST_KEY_UID, file, &asc);
    }
    env.act(&uri, "install").await;
    let state = env
        .wait_for(&uri, "installed", |s| {
            s["status"] == "installed" || s.get("error-message").is_some()
        })
        .await;
    assert_eq!(state["status"], "installed", "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_in_flight_show_up_in_states_polls_unasked() {
    let env = TestEnv::start().await;
    let karmic = env.image_uri("karmic");
    env.dashboard().await;
    let path = env.images.join("karmic/ramdisk.gz");
    std::fs::write(&path, b"corrupt").unwrap();
    env.act(&karmic, "install").await;
    env.wait_for_failure(&karmic).await;
    // An old tab that knows no image still hears about the failed install.
    let poll = env.client().states(&[]).await.unwrap().body;
    let state = state_in(&poll, &karmic).expect("failed installs are reported unasked");
    assert!(
        state["error-message"]
            .as_str()
            .unwrap()
            .contains("Downloading ramdisk"),
        "{state}"
    );
    assert_eq!(poll["images"][0]["uri"], karmic.as_str());
}
