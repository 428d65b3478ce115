//! What an operator watches without the Store tab: `client watch` (the real binary, URL and secret
//! from the environment) following an install to its ids or its error, and `/metrics` and
//! `/healthz` counting what really happened.

use crate::common;

use common::{SECRET, TestEnv};
use std::collections::HashMap;
use std::process::{Command, Output};

/// Runs `image-store-proxy client ARGS` with the proxy's URL and secret in the environment only.
fn client(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_image-store-proxy"))
        .arg("client")
        .args(args)
        .env("IMAGE_STORE_PROXY_URL", env.proxy_url())
        .env("IMAGE_STORE_PROXY_SECRET", SECRET)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `name{labels} value` lines of the Prometheus text exposition.
async fn scrape(env: &TestEnv) -> HashMap<String, f64> {
    let response = reqwest::get(format!("{}/metrics", env.proxy_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    response
        .text()
        .await
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn metric(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    metrics.get(name).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_with_the_ids_and_metrics_count_the_install() {
    let env = TestEnv::start().await;
    let unwatched = client(&env, &["watch", "Ubuntu 9.10"]);
    assert_eq!(unwatched.status.code(), Some(1));
    assert!(
        text(&unwatched.stderr).contains("\"Ubuntu 9.10 Server\" is not being installed"),
        "{}",
        text(&unwatched.stderr)
    );

    env.store.faults().bytes_per_second = Some(1 << 20);
    let install = client(&env, &["install", "Ubuntu 9.10"]);
    assert!(install.status.success(), "{}", text(&install.stderr));
    let watched = client(&env, &["watch", "Ubuntu 9.10"]);
    let (stdout, stderr) = (text(&watched.stdout), text(&watched.stderr));
    assert!(watched.status.success(), "{stderr}");
    // Without a terminal the bars are hidden and each new status line is printed instead.
    assert!(
        stderr.contains("downloading") && stderr.contains("% Downloading machine image: "),
        "{stderr}"
    );
    let state = env.state(&env.image_uri("karmic")).await;
    assert_eq!(
        stdout.trim(),
        format!(
            "Installed Ubuntu 9.10 Server: machine image {}, kernel {}, ramdisk {}",
            state["emi"].as_str().unwrap(),
            state["eki"].as_str().unwrap(),
            state["eri"].as_str().unwrap()
        )
    );

    let metrics = scrape(&env).await;
    let served: u64 = ["kernel", "ramdisk.gz", "image.gz"]
        .iter()
        .map(|f| {
            std::fs::metadata(env.images.join("karmic").join(f))
                .unwrap()
                .len()
        })
        .sum::<u64>();
    assert!(
        metric(&metrics, "image_store_proxy_downloaded_bytes_total") >= served as f64,
        "{metrics:?}"
    );
    // What a real cloud would have been sent: every bundle part and manifest the fake cloud holds.
    let mut bundled = 0u64;
    for bucket in std::fs::read_dir(env.data_dir.join("fake-cloud"))
        .unwrap()
        .flatten()
    {
        for file in std::fs::read_dir(bucket.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.contains(".part.") || name.ends_with(".manifest.xml") {
                bundled += file.metadata().unwrap().len();
            }
        }
    }
    assert!(bundled > 0);
    assert_eq!(
        metric(&metrics, "image_store_proxy_uploaded_bytes_total"),
        bundled as f64,
        "each bundle byte counted once"
    );
    assert_eq!(
        metric(&metrics, "image_store_proxy_installs{state=\"installed\"}"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "image_store_proxy_installs{state=\"failed\"}"),
        0.0
    );
    assert!(
        metric(
            &metrics,
            "image_store_proxy_api_requests_total{endpoint=\"install\",status=\"200\"}"
        ) == 1.0
    );
    assert!(
        metric(
            &metrics,
            "image_store_proxy_api_requests_total{endpoint=\"states\",status=\"200\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            &metrics,
            "image_store_proxy_api_request_duration_seconds_count{endpoint=\"states\"}"
        ) >= 2.0
    );
    assert_eq!(metric(&metrics, "image_store_proxy_catalog_images"), 2.0);
    assert_eq!(metric(&metrics, "image_store_proxy_catalog_stale"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fails_with_the_error_and_metrics_count_upstream_errors() {
    let env = TestEnv::start().await;
    // Upstream answers 404 from now on: the catalog refresh and the download both fail.
    env.store.faults().status = Some(404);
    let install = client(&env, &["install", "Ubuntu 10.04"]);
    assert!(install.status.success(), "{}", text(&install.stderr));
    let watched = client(&env, &["watch", "Ubuntu 10.04"]);
    assert_eq!(watched.status.code(), Some(1));
    let stderr = text(&watched.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("image-store-proxy: Failure encountered while: ")
            && last.contains("HTTP 404"),
        "{stderr}"
    );

    let metrics = scrape(&env).await;
    assert!(
        metric(
            &metrics,
            "image_store_proxy_upstream_errors_total{kind=\"http-status\"}"
        ) >= 2.0,
        "the catalog and the file: {metrics:?}"
    );
    assert_eq!(metric(&metrics, "image_store_proxy_catalog_stale"), 1.0);
    assert_eq!(
        metric(&metrics, "image_store_proxy_installs{state=\"failed\"}"),
        1.0
    );

    // A catalog whose signature does not verify is counted by kind; health stays ok.
    env.store.faults().status = None;
    env.store.faults().tamper_catalog = true;
    env.client().dashboard().await.unwrap();
    let metrics = scrape(&env).await;
    assert_eq!(
        metric(
            &metrics,
            "image_store_proxy_upstream_errors_total{kind=\"catalog-signature\"}"
        ),
        1.0
    );
    let health: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("{}/healthz", env.proxy_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["db"], "ok");
    assert!(
        health["catalog-error"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_unavailable_when_the_database_is_gone() {
    let env = TestEnv::start().await;
    let healthy = reqwest::get(format!("{}/healthz", env.proxy_url()))
        .await
        .unwrap();
    assert_eq!(healthy.status(), 200);
    // The installs table vanishes under the running proxy (another process drops it).
    let other = rusqlite::Connection::open(env.data_dir.join("state.sqlite")).unwrap();
    other.execute_batch("DROP TABLE installs").unwrap();
    let sick = reqwest::get(format!("{}/healthz", env.proxy_url()))
        .await
        .unwrap();
    assert_eq!(sick.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&sick.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "unavailable");
    assert!(body["db"].as_str().unwrap().contains("installs"), "{body}");
}

/// Scripts read `$?`: a refused call (a wrong secret) exits 1 with the proxy's line, a proxy that
/// is not there exits 3, and a dashboard that answers exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_exit_codes_tell_refusals_and_unreachable_proxies_apart() {
    let env = TestEnv::start().await;
    let answered = client(&env, &["dashboard"]);
    assert_eq!(
        answered.status.code(),
        Some(0),
        "{}",
        text(&answered.stderr)
    );

    let refused = Command::new(env!("CARGO_BIN_EXE_image-store-proxy"))
        .args(["client", "--url", &env.proxy_url(), "--secret", "WRONG"])
        .arg("dashboard")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("Bad request signature"),
        "{}",
        text(&refused.stderr)
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = Command::new(env!("CARGO_BIN_EXE_image-store-proxy"))
        .args(["client", "--url", &nobody, "--secret", SECRET, "dashboard"])
        .output()
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(3),
        "{}",
        text(&unreachable.stderr)
    );
}
