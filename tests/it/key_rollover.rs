//! Key rollover through the daemon (issue 17, point 5): fake-store publishes a keyring beside its
//! catalog (`/api/keyring.gpg` beside `/api/dashboard`; the mirror's `streams/v1/keyring.gpg`
//! beside `index.sjson`) with a detached signature at `keyring.gpg.asc`. Signed by the key the
//! proxy trusts now, its keys are trusted from then on, also after a restart; signed by anyone
//! else it is refused in one line and changes nothing; a revocation in it refuses what the
//! revoked key signs afterwards. Keys, signatures and the revocation are made by GnuPG.

use crate::common;

use common::{Gpg, TEST_KEY_UID, TestEnv};
use fake_store::PublishedKeyring;
use serde_json::Value;

const NEW_UID: &str = "Rolled <rolled@example.invalid>";

fn error_of(body: &Value) -> Option<String> {
    body["error-message"].as_str().map(str::to_owned)
}

/// Whether fake-store answered `path` with 200.
fn fetched(env: &TestEnv, path: &str) -> bool {
    env.store
        .requests()
        .iter()
        .any(|request| request.path == path && request.status == 200)
}

fn images_in(body: &Value) -> usize {
    body["images"].as_array().map_or(0, Vec::len)
}

/// `keyring` as fake-store is to publish it, signed (detached, armored) by `signer` in `gpg`.
fn published(env: &TestEnv, gpg: &Gpg, keyring: &[u8], signer: &str) -> PublishedKeyring {
    let file = env.dir.path().join("offered-keyring.gpg");
    let signature = env.dir.path().join("offered-keyring.gpg.asc");
    std::fs::write(&file, keyring).unwrap();
    gpg.detach_sign(signer, &file, &signature);
    PublishedKeyring {
        keyring: keyring.to_vec(),
        signature: std::fs::read(&signature).unwrap(),
    }
}

/// A GnuPG home holding the key the proxy trusts (the committed test key) and a new one;
/// returns it with the new key's armored secret key.
fn current_and_new_key() -> (Gpg, String) {
    let gpg = Gpg::new();
    gpg.import_secret(fake_store::TEST_SIGNING_KEY);
    let new = gpg.generate(NEW_UID, "ed25519");
    (gpg, new)
}

/// The dashboard accepted a catalog just now: no error, both images.
async fn assert_accepted(env: &TestEnv, when: &str) {
    let dashboard = env.dashboard().await;
    assert_eq!(
        error_of(&dashboard),
        None,
        "{when}; log:\n{}",
        env.proxy_log()
    );
    assert_eq!(images_in(&dashboard), 2, "{when}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_signed_by_the_current_key_rolls_over_and_outlives_a_restart() {
    let mut env = TestEnv::start().await;
    let (gpg, new) = current_and_new_key();

    // Signed only by the new key, and nothing published: the proxy does not know that key.
    env.store.set_signing_key(&new).unwrap();
    let refused = error_of(&env.dashboard().await).expect("a stranger's catalog is refused");
    assert!(
        refused.contains("made by a key not in the keyring (0x"),
        "{refused}"
    );

    // The new key published beside the catalog, signed by the key trusted now.
    let offer = published(&env, &gpg, &gpg.public_keyring(NEW_UID), TEST_KEY_UID);
    env.store.faults().published_keyring = Some(offer);
    assert_accepted(&env, "the rollover is accepted, then the new key's catalog").await;
    assert!(
        env.proxy_log().contains("accepted the keyring offered at "),
        "{}",
        env.proxy_log()
    );
    assert!(
        fetched(&env, "/api/keyring.gpg.asc"),
        "the signature was fetched"
    );

    // The files are signed by the new key too: an install verifies them with it.
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    env.wait_for_status(&karmic, "installed").await;

    // Upstream stops publishing the keyring; a restart still trusts the new key.
    env.store.faults().published_keyring = None;
    env.start_proxy();
    assert_accepted(&env, "after a restart, the rolled key's catalog").await;
    assert!(
        env.proxy_log()
            .contains("trusting the keys rolled over to in-band too"),
        "{}",
        env.proxy_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_signed_by_an_unknown_key_is_refused_and_changes_nothing() {
    let mut env = TestEnv::start().await;
    let gpg = Gpg::new();
    gpg.generate("Stranger <stranger@example.invalid>", "ed25519");
    let planted = gpg.generate(NEW_UID, "ed25519");
    let offer = published(
        &env,
        &gpg,
        &gpg.public_keyring(NEW_UID),
        "stranger@example.invalid",
    );
    env.store.faults().published_keyring = Some(offer);

    let dashboard = env.dashboard().await;
    let line = error_of(&dashboard).expect("the rollover is refused");
    assert!(
        line.starts_with(&format!(
            "Refused the image catalog from {}: the keyring offered at {}/keyring.gpg was refused, nothing of it is trusted: made by a key not in the keyring (0x",
            env.store_url, env.store_url
        )),
        "{line}"
    );
    assert!(
        line.ends_with("; showing the catalog of 2026-11-20T10:00:00Z"),
        "{line}"
    );
    assert!(!line.contains('\n'), "one line: {line}");
    assert_eq!(images_in(&dashboard), 2, "the last good catalog is kept");

    // Nothing of it was trusted, now or after a restart: the planted key's catalog is refused.
    env.store.faults().published_keyring = None;
    env.store.set_signing_key(&planted).unwrap();
    for when in ["at once", "after a restart"] {
        if when == "after a restart" {
            env.start_proxy();
        }
        let line = error_of(&env.dashboard().await).expect("the planted key is not trusted");
        assert!(
            line.contains("its signature was refused: made by a key not in the keyring (0x"),
            "{when}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_newer_signatures_are_refused() {
    let env = TestEnv::start().await;
    let (gpg, new) = current_and_new_key();

    // First the new key, signed by the current one; the catalog then signed by the new key.
    let offer = published(&env, &gpg, &gpg.public_keyring(NEW_UID), TEST_KEY_UID);
    env.store.faults().published_keyring = Some(offer);
    env.store.set_signing_key(&new).unwrap();
    assert_accepted(&env, "the new key rolled in").await;

    // Then the old key's revocation (superseded), published in its certificate, signed by the
    // new key: accepted, and the catalog signed by the new key still is.
    let revoked = gpg.revoke(TEST_KEY_UID);
    let mut keyring = revoked;
    keyring.extend(gpg.public_keyring(NEW_UID));
    let offer = published(&env, &gpg, &keyring, NEW_UID);
    env.store.faults().published_keyring = Some(offer);
    assert_accepted(&env, "the revocation is accepted").await;

    // What the revoked key signs from now on is refused, naming the key.
    env.store
        .set_signing_key(fake_store::TEST_SIGNING_KEY)
        .unwrap();
    let line = error_of(&env.dashboard().await).expect("the revoked key's catalog is refused");
    assert!(
        line.contains("its signature was refused: the signing key 0x"),
        "{line}"
    );
    assert!(line.contains("is not valid: "), "{line}");
    assert!(line.to_lowercase().contains("revoked"), "{line}");
    assert!(!line.contains('\n'), "one line: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_rolls_over_with_the_keyring_beside_its_index() {
    let mut env = TestEnv::with_store().await;
    let root = format!(
        "{}{}",
        env.store_url.strip_suffix("/api").unwrap(),
        fake_store::SIMPLESTREAMS_ROOT_PATH
    );
    env.upstream_args = Some(vec![
        "--simplestreams".into(),
        root.clone(),
        "--simplestreams-keyring".into(),
        env.keyring.display().to_string(),
    ]);
    env.start_proxy();
    let first = env.dashboard().await;
    assert_eq!(error_of(&first), None, "log:\n{}", env.proxy_log());
    let offered = images_in(&first);
    assert!(offered > 0);

    let (gpg, new) = current_and_new_key();
    env.store.set_signing_key(&new).unwrap();
    let line = error_of(&env.dashboard().await).expect("the new key is not trusted yet");
    assert!(
        line.contains("made by a key not in the keyring (0x"),
        "{line}"
    );

    let offer = published(&env, &gpg, &gpg.public_keyring(NEW_UID), TEST_KEY_UID);
    env.store.faults().published_keyring = Some(offer);
    let dashboard = env.dashboard().await;
    assert_eq!(error_of(&dashboard), None, "log:\n{}", env.proxy_log());
    assert_eq!(images_in(&dashboard), offered);
    assert!(fetched(&env, "/simplestreams/streams/v1/keyring.gpg.asc"));
}

/// `SIGHUP` reads the keyring file again even when nothing about the file shows a change (the
/// same inode, length and modification time, rewritten in place): the check at each refresh
/// cannot tell, the operator's reload can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_a_keyring_rewritten_with_the_same_stamp() {
    let mut env = TestEnv::with_store().await;
    // Two keys whose certificates export to the same length (EdDSA signatures may differ by a
    // byte now and then: try again).
    let (first, second) = (0..10)
        .map(|_| {
            let gpg = Gpg::new();
            let first = gpg.generate("First <first@example.invalid>", "ed25519");
            let second = gpg.generate("Other <other@example.invalid>", "ed25519");
            let certs = (
                gpg.public_keyring("first@example.invalid"),
                gpg.public_keyring("other@example.invalid"),
            );
            ((first, certs.0), (second, certs.1))
        })
        .find(|((_, a), (_, b))| a.len() == b.len())
        .expect("two certificates of one length");
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let keyring = env.keyring.clone();
    let rewrite = |cert: &[u8]| {
        let mut file = std::fs::File::options()
            .write(true)
            .truncate(true)
            .open(&keyring)
            .unwrap();
        std::io::Write::write_all(&mut file, cert).unwrap();
        file.set_modified(long_ago).unwrap();
    };
    rewrite(&first.1);
    env.store.set_signing_key(&first.0).unwrap();
    env.start_proxy();
    assert_accepted(&env, "the first key's catalog").await;

    let inode = |path: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).unwrap();
        (metadata.ino(), metadata.len(), metadata.modified().unwrap())
    };
    let stamp = inode(&env.keyring);
    rewrite(&second.1);
    assert_eq!(inode(&env.keyring), stamp, "nothing shows the change");
    env.store.set_signing_key(&second.0).unwrap();
    let line = error_of(&env.dashboard().await).expect("the old keyring is still loaded");
    assert!(
        line.contains("made by a key not in the keyring (0x"),
        "{line}"
    );

    common::signal(env.proxy.as_ref().unwrap().pid(), "HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !env.proxy_log().contains("reloaded the configuration") {
        assert!(std::time::Instant::now() < deadline, "{}", env.proxy_log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_accepted(&env, "after SIGHUP, the rewritten keyring").await;
}
