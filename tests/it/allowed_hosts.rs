//! Issue 17 point 8: an image-store/1 catalog's files come only from its own host or an
//! `--allow-host`, and never from a link-local or metadata address unless listed. fake-store
//! writes absolute file URLs under another base (`set_files_base`): `localhost` is the same
//! server by another name, so only the proxy's policy tells the cases apart.

use crate::common::TestEnv;

/// fake-store naming its files under `files_base`; the proxy started with `extra_args`.
async fn store_with_files_at(files_base: &str, extra_args: &[&str]) -> TestEnv {
    let mut env = TestEnv::with_store().await;
    let base = files_base.replace("PORT", &port(&env));
    env.store.set_files_base(Some(&base)).unwrap();
    env.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
    env.start_proxy();
    let dashboard = env.dashboard().await;
    assert_eq!(
        dashboard["images"].as_array().unwrap().len(),
        2,
        "{dashboard}"
    );
    env
}

fn port(env: &TestEnv) -> String {
    reqwest::Url::parse(&env.store_url)
        .unwrap()
        .port()
        .unwrap()
        .to_string()
}

/// The install of karmic fails; returns its one line, having checked nothing was fetched.
async fn install_refused(env: &TestEnv) -> String {
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    let state = env.wait_for_failure(&karmic).await;
    assert!(
        env.served("files/").is_empty(),
        "nothing downloaded: {:?}",
        env.store.requests()
    );
    assert!(env.cache_files().is_empty(), "{:?}", env.cache_files());
    let line = state["error-message"].as_str().unwrap().to_string();
    eprintln!("refused: {line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_url_on_another_host_than_the_catalog_s_is_refused_and_nothing_downloaded() {
    let env = store_with_files_at("http://localhost:PORT/api", &[]).await;
    let line = install_refused(&env).await;
    assert!(
        line.contains(&format!("GET http://localhost:{}/api/files/karmic/", port(&env)))
            && line.ends_with(
                "localhost is not the host of a configured upstream; add --allow-host localhost to fetch files from it"
            ),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_host_lets_files_come_from_another_host() {
    let env =
        store_with_files_at("http://localhost:PORT/api", &["--allow-host", "LocalHost"]).await;
    let karmic = env.image_uri("karmic");
    env.act(&karmic, "install").await;
    env.wait_for_status(&karmic, "installed").await;
    assert!(!env.served("files/karmic/image.gz").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_local_metadata_file_url_is_refused_before_any_connection() {
    let env = store_with_files_at("http://169.254.169.254/latest", &[]).await;
    let line = install_refused(&env).await;
    assert!(
        line.contains("GET http://169.254.169.254/latest/files/karmic/")
            && line.ends_with(
                "169.254.169.254 is a link-local or cloud metadata address; add --allow-host 169.254.169.254 if it really serves images"
            ),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_link_local_file_url_is_refused() {
    let env = store_with_files_at("http://[fe80::a9fe:a9fe]:80/api", &[]).await;
    let line = install_refused(&env).await;
    assert!(
        line.ends_with("fe80::a9fe:a9fe is a link-local or cloud metadata address; add --allow-host fe80::a9fe:a9fe if it really serves images"),
        "{line}"
    );
}
