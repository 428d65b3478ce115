//! Issue 17 point 4 (TUF's freeze attack): a catalog older than `--max-catalog-age` is shown,
//! with a banner naming its age, but not installed from; a newer one lifts the refusal.

use crate::common::TestEnv;
use time::format_description::well_known::Rfc3339;

fn days_ago(days: i64) -> String {
    (time::OffsetDateTime::now_utc() - time::Duration::days(days))
        .replace_nanosecond(0)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

/// fake-store serving a catalog dated `days` ago, and the proxy with `--max-catalog-age limit`.
async fn old_catalog(days: i64, limit: u64) -> TestEnv {
    let mut env = TestEnv::with_store().await;
    env.store.set_updated(&days_ago(days)).unwrap();
    env.max_catalog_age_days = limit;
    env.start_proxy();
    env
}

/// POSTs the install action of `uri` (from its state), returning the whole reply.
async fn ask_to_install(env: &TestEnv, uri: &str) -> image_store_proxy::client::Reply {
    let state = env.state(uri).await;
    let target = state["actions"]["install"].as_str().unwrap().to_string();
    env.client()
        .call("POST", &target, Vec::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_older_than_max_catalog_age_is_shown_but_not_installed_from() {
    let env = old_catalog(45, 30).await;
    let dashboard = env.dashboard().await;
    assert_eq!(
        dashboard["images"].as_array().unwrap().len(),
        2,
        "{dashboard}"
    );
    let banner = dashboard["error-message"].as_str().unwrap_or_default();
    assert!(
        banner.contains("was last updated")
            && banner.contains(", 45 days ago (max-catalog-age is 30)"),
        "{dashboard}"
    );

    let karmic = env.image_uri("karmic");
    let refused = ask_to_install(&env, &karmic).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let line = refused.error_message().unwrap();
    assert!(
        line.starts_with(&format!(
            "The image catalog of {} was last updated",
            env.store_url
        )) && line.contains("45 days ago")
            && line.ends_with("not installed until the upstream publishes a newer one"),
        "{line}"
    );
    assert_eq!(env.state(&karmic).await["status"], "uninstalled");
    assert!(env.served("files/").is_empty(), "nothing was downloaded");

    // The upstream publishes again: the banner goes and the install runs.
    env.store.set_updated(&days_ago(1)).unwrap();
    let dashboard = env.dashboard().await;
    assert!(dashboard.get("error-message").is_none(), "{dashboard}");
    let accepted = ask_to_install(&env, &karmic).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    env.wait_for_status(&karmic, "installed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_catalog_age_zero_installs_from_a_catalog_of_any_age() {
    let env = old_catalog(400, 0).await;
    let dashboard = env.dashboard().await;
    assert!(dashboard.get("error-message").is_none(), "{dashboard}");
    let karmic = env.image_uri("karmic");
    let accepted = ask_to_install(&env, &karmic).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    env.wait_for_status(&karmic, "installed").await;
}

/// The limit reads the stored catalog's date too: a restart does not forget how old it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_limit_of_30_days_refuses_a_stored_catalog_after_a_restart() {
    let mut env = old_catalog(31, 30).await;
    assert_eq!(env.dashboard().await["images"].as_array().unwrap().len(), 2);
    env.kill_proxy();
    env.stop_store();
    env.max_catalog_age_days = image_store_proxy::config::DEFAULT_MAX_CATALOG_AGE_DAYS;
    env.start_proxy();
    let karmic = env.image_uri("karmic");
    let refused = ask_to_install(&env, &karmic).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.error_message().unwrap().contains("31 days ago"),
        "{}",
        refused.body
    );
}

/// A simplestreams mirror's age is its documents' `updated` (RFC 2822): an old tree is shown
/// with the banner and not installed from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_simplestreams_tree_is_shown_but_not_installed_from() {
    let mut env = TestEnv::with_store().await;
    env.store.set_updated(&days_ago(40)).unwrap();
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
    env.max_catalog_age_days = 30;
    env.start_proxy();
    let dashboard = env.dashboard().await;
    let images = dashboard["images"].as_array().unwrap();
    assert!(!images.is_empty(), "{dashboard}");
    let banner = dashboard["error-message"].as_str().unwrap_or_default();
    assert!(
        banner.starts_with(&format!("The image catalog of {root}"))
            && banner.contains(", 40 days ago (max-catalog-age is 30)"),
        "{dashboard}"
    );
    let uri = images[0]["uri"].as_str().unwrap().to_string();
    let refused = ask_to_install(&env, &uri).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.error_message(), Some(banner));
    assert!(
        env.served("server/releases").is_empty(),
        "nothing was downloaded"
    );
}

/// A subscription is held to `--max-catalog-age` like the Install button: a stale catalog's
/// images are not installed by it, and a fresh one's are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_installs_nothing_from_a_catalog_past_max_catalog_age() {
    let mut env = TestEnv::with_store().await;
    env.store.set_updated(&days_ago(45)).unwrap();
    env.max_catalog_age_days = 30;
    env.extra_args = ["--subscribe", "arch=x86_64"].map(String::from).to_vec();
    env.start_proxy();
    // Karmic and lucid are one product: the subscription's choice is lucid, the newest.
    let (karmic, lucid) = (env.image_uri("karmic"), env.image_uri("lucid"));
    // Refreshes run the subscriptions; give them a few, then nothing may have started.
    for _ in 0..3 {
        env.dashboard().await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    for uri in [&karmic, &lucid] {
        assert_eq!(env.state(uri).await["status"], "uninstalled");
    }
    assert!(env.served("files/").is_empty(), "nothing was downloaded");

    env.store.set_updated(&days_ago(1)).unwrap();
    env.dashboard().await;
    env.wait_for_status(&lucid, "installed").await;
}
