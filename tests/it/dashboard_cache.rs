//! The dashboard is rendered once and reused (`src/api/dashboard_cache.rs`): a reused reply must be
//! exactly what a fresh rendering would give. Each thing a reply shows is changed in turn and the
//! next dashboard must show it: an install's progress and end, the Host the UI used, a new catalog.

use crate::common;

use common::{TestEnv, state_in};
use image_store_proxy::client::ProxyClient;

fn install_status(dashboard: &serde_json::Value, uri: &str) -> String {
    state_in(dashboard, uri).unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_dashboard_is_never_stale() {
    let env = TestEnv::start().await;
    let karmic = env.image_uri("karmic");

    // Nothing changed: the same reply, byte for byte.
    let first = env.client().dashboard().await.unwrap().body;
    let second = env.client().dashboard().await.unwrap().body;
    assert_eq!(first, second);
    assert_eq!(install_status(&first, &karmic), "uninstalled");

    // Each install state the poll reports, the dashboard reports too, up to installed.
    env.act(&karmic, "install").await;
    let mut seen = Vec::new();
    loop {
        let dashboard = env.dashboard().await;
        let state = state_in(&dashboard, &karmic).unwrap();
        let status = state["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "installed" {
            assert!(state["emi"].as_str().is_some(), "{state}");
            assert!(state["actions"].as_object().unwrap().is_empty(), "{state}");
            break;
        }
        assert_ne!(status, "uninstalled", "{state}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen.last().map(String::as_str), Some("installed"));
    assert_eq!(env.state(&karmic).await["status"], "installed");

    // Another Host for the same proxy: action URIs follow it, not the cached reply's.
    let port = env.proxy_url().rsplit(':').next().unwrap().to_string();
    let by_name = ProxyClient::new(
        &format!("http://localhost:{port}"),
        common::SECRET,
        "WKy3rMzOWPouVOxK1p3Ar1C2uRBwa2FBXnCw",
    )
    .unwrap();
    let lucid = env.image_uri("lucid");
    for (client, host) in [
        (&by_name, format!("localhost:{port}")),
        (&env.client(), format!("127.0.0.1:{port}")),
    ] {
        let dashboard = client.dashboard().await.unwrap().body;
        let install = state_in(&dashboard, &lucid).unwrap()["actions"]["install"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(install.starts_with(&format!("http://{host}/")), "{install}");
    }

    // A new catalog (another image set upstream): the next dashboard lists it.
    let extra = env.images.join("maverick");
    std::fs::create_dir_all(&extra).unwrap();
    for name in ["kernel", "ramdisk.gz", "image.gz"] {
        std::fs::copy(env.images.join("karmic").join(name), extra.join(name)).unwrap();
    }
    env.store.reload().unwrap();
    env.store.set_updated("2026-11-21T10:00:00Z").unwrap();
    let images = env.dashboard().await["images"].as_array().unwrap().len();
    assert_eq!(images, 3, "log:\n{}", env.proxy_log());
}

/// A client that accepts gzip (a browser on the Store page) gets the same dashboard gzipped; one
/// that does not (the servlet's HTTP client) gets it plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_gzipped_only_for_who_accepts_it() {
    use std::io::Read;
    let env = TestEnv::start().await;
    let url = reqwest::Url::parse(&format!("{}/api/dashboard", env.proxy_url())).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut bodies = Vec::new();
    for accept in [None, Some("gzip, deflate, br"), Some("gzip;q=0")] {
        let signed = env.client().sign("GET", &url, Vec::new());
        let mut with_query = url.clone();
        with_query
            .query_pairs_mut()
            .extend_pairs(signed.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let mut request = http.get(with_query);
        if let Some(accept) = accept {
            request = request.header("accept-encoding", accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let gzipped = response
            .headers()
            .get("content-encoding")
            .is_some_and(|v| v == "gzip");
        assert_eq!(gzipped, accept == Some("gzip, deflate, br"), "{accept:?}");
        let raw = response.bytes().await.unwrap().to_vec();
        let body = if gzipped {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut plain)
                .unwrap();
            assert!(
                raw.len() * 2 < plain.len(),
                "{} -> {}",
                plain.len(),
                raw.len()
            );
            plain
        } else {
            raw
        };
        bodies.push(serde_json::from_slice::<serde_json::Value>(&body).unwrap());
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0], bodies[2]);
    assert_eq!(bodies[0]["images"].as_array().unwrap().len(), 2);
}
