//! Issue 17 point 6: the nonce book outlives the process. A signed request accepted, the proxy
//! killed and started again on the same address (the signature covers `Host`), the very same
//! request is still a replay.

use crate::common::TestEnv;
use reqwest::Url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_accepted_before_a_restart_is_refused_after_it() {
    let mut env = TestEnv::start().await;
    let karmic = env.image_uri("karmic");
    let url = Url::parse(&format!("{}/api/states", env.proxy_url())).unwrap();
    let signed = env.client().sign(
        "POST",
        &url,
        vec![("image-uri".to_string(), karmic.clone())],
    );
    let first = env
        .client()
        .send("POST", url.clone(), &signed)
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{}", first.body);

    // Killed, not stopped: nothing gets a chance to be written on the way out.
    let addr = url.host_str().unwrap().to_string() + ":" + &url.port().unwrap().to_string();
    env.kill_proxy();
    env.listen = Some(addr);
    env.start_proxy();
    assert_eq!(
        env.proxy_url(),
        url.as_str().trim_end_matches("/api/states")
    );

    let replayed = env
        .client()
        .send("POST", url.clone(), &signed)
        .await
        .unwrap();
    assert_eq!(replayed.status, 401, "{}", replayed.body);
    assert_eq!(replayed.error_message(), Some("Bad request signature"));
    assert!(
        env.proxy_log().contains("replayed"),
        "the log says why: {}",
        env.proxy_log()
    );
    // A fresh signature on the same address is served: the refusal was the nonce's.
    let fresh = env.client().states(&[&karmic]).await.unwrap();
    assert_eq!(fresh.status, 200, "{}", fresh.body);
}
