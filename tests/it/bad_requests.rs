//! Requests the proxy must refuse, each with "Bad request signature" and no state change, and the
//! JSON every reply carries, errors included (the servlet ignores status codes).

use crate::common;

use common::{SECRET, TestEnv, state_in};
use image_store_proxy::api::signature;
use image_store_proxy::client::ProxyClient;
use reqwest::Url;

async fn assert_refused(env: &TestEnv, method: &str, url: &Url, params: &[(String, String)]) {
    let reply = env
        .client()
        .send(method, url.clone(), params)
        .await
        .unwrap();
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(
        reply.error_message(),
        Some("Bad request signature"),
        "{}",
        reply.body
    );
    assert_eq!(reply.body.as_object().unwrap().len(), 1, "{}", reply.body);
}

fn replace(params: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(n, v)| {
            if n == name {
                (n.clone(), value.to_string())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect()
}

/// A proxy offering karmic, uninstalled, with its install action's URL and that action signed
/// correctly: each forgery below starts from it, in a proxy of its own, so that a failure names it.
struct Install {
    env: TestEnv,
    karmic: String,
    url: Url,
    signed: Vec<(String, String)>,
}

impl Install {
    async fn start() -> Self {
        let env = TestEnv::start().await;
        let karmic = env.image_uri("karmic");
        let url = Url::parse(
            state_in(&env.dashboard().await, &karmic).unwrap()["actions"]["install"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let signed = env.client().sign("POST", &url, Vec::new());
        Self {
            env,
            karmic,
            url,
            signed,
        }
    }

    /// `params` sent to `url` are refused, and none of that installed anything.
    async fn refused(&self, method: &str, url: &Url, params: &[(String, String)]) {
        assert_refused(&self.env, method, url, params).await;
        assert_eq!(self.env.state(&self.karmic).await["status"], "uninstalled");
        assert!(self.env.served("/files/").is_empty());
    }

    /// The install action signed correctly but expiring at `expires`.
    fn expiring_at(&self, expires: i64) -> Vec<(String, String)> {
        let mut params = Vec::new();
        let host = signature::signing_host(self.url.host_str().unwrap(), self.url.port());
        let stamp = signature::Stamp {
            client_id: "c",
            expires,
            nonce: "77",
        };
        signature::sign_request(
            SECRET.as_bytes(),
            "POST",
            &host,
            self.url.path(),
            &mut params,
            &stamp,
        );
        params
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_no_signature_at_all_changes_nothing() {
    let install = Install::start().await;
    install.refused("POST", &install.url, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_without_its_signature_changes_nothing() {
    let install = Install::start().await;
    let unsigned: Vec<_> = install
        .signed
        .iter()
        .filter(|(n, _)| n != "Signature")
        .cloned()
        .collect();
    install.refused("POST", &install.url, &unsigned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_signed_with_another_secret_changes_nothing() {
    let install = Install::start().await;
    let forger = ProxyClient::new(&install.env.proxy_url(), "not-the-secret", "x").unwrap();
    let forged = forger.sign("POST", &install.url, Vec::new());
    install.refused("POST", &install.url, &forged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_changed_after_signing_changes_nothing() {
    let install = Install::start().await;
    let tampered = replace(&install.signed, "ClientId", "someone-else");
    install.refused("POST", &install.url, &tampered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_with_another_method_than_signed_changes_nothing() {
    let install = Install::start().await;
    let states = Url::parse(&format!("{}/api/states", install.env.proxy_url())).unwrap();
    let signed_as_post = install.env.client().sign("POST", &states, Vec::new());
    install.refused("GET", &states, &signed_as_post).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_another_signature_method_changes_nothing() {
    let install = Install::start().await;
    let other_method = replace(&install.signed, "SignatureMethod", "HmacSHA1");
    install.refused("POST", &install.url, &other_method).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_changes_nothing() {
    let install = Install::start().await;
    let expired = install.expiring_at(image_store_proxy::db::now_unix() - 1);
    install.refused("POST", &install.url, &expired).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_expiring_too_far_in_the_future_changes_nothing() {
    let install = Install::start().await;
    let too_late = install.expiring_at(image_store_proxy::db::now_unix() + 3600);
    install.refused("POST", &install.url, &too_late).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_genuine_request_works_once_and_replayed_is_refused() {
    let install = Install::start().await;
    let reply = install
        .env
        .client()
        .send("POST", install.url.clone(), &install.signed)
        .await
        .unwrap();
    assert!(reply.body["state"].is_object(), "{}", reply.body);
    assert_refused(&install.env, "POST", &install.url, &install.signed).await;
    install
        .env
        .wait_for_status(&install.karmic, "installed")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_is_an_ascii_json_object_even_errors() {
    let env = TestEnv::start().await;
    let client = env.client();
    let base = env.proxy_url();

    let unknown_image = client
        .call(
            "POST",
            &format!("{base}/api/images/0123456789abcdef/install"),
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(unknown_image.status, 404);
    assert_eq!(
        unknown_image.error_message(),
        Some("Unknown image: 0123456789abcdef")
    );

    let key = image_store_proxy::catalog::model::image_key(&env.image_uri("karmic"));
    let unknown_action = client
        .call(
            "POST",
            &format!("{base}/api/images/{key}/explode"),
            Vec::new(),
        )
        .await
        .unwrap();
    assert!(
        unknown_action
            .error_message()
            .unwrap()
            .starts_with("Unknown action \"explode\""),
        "{}",
        unknown_action.body
    );

    let no_route = client
        .call("GET", "/api/nothing-here", Vec::new())
        .await
        .unwrap();
    assert_eq!(no_route.status, 404);
    assert!(
        no_route
            .error_message()
            .unwrap()
            .contains("/api/nothing-here")
    );
    let wrong_method = client
        .call(
            "GET",
            &format!("{base}/api/images/{key}/install"),
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.body);

    // Raw bytes: the em dash in the lucid summary travels as \u2014.
    let raw = reqwest::get(format!("{base}/api/dashboard"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(raw.is_ascii());
    let url = Url::parse(&format!("{base}/api/dashboard")).unwrap();
    let signed = client.sign("GET", &url, Vec::new());
    let mut with_query = url.clone();
    with_query
        .query_pairs_mut()
        .extend_pairs(signed.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let raw = reqwest::get(with_query)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(raw.is_ascii());
    let text = String::from_utf8(raw.to_vec()).unwrap();
    assert!(
        text.contains(r"Lucid Lynx \u2014 long-term support"),
        "{text}"
    );
    assert!(text.contains("\"sections\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_and_states_answer_from_the_cache() {
    let env = TestEnv::start().await;
    let results = env.client().search("LUCID lts").await.unwrap().body;
    let uris: Vec<_> = results["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["uri"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uris, vec![env.image_uri("lucid")]);
    assert_eq!(results["sections"][0]["title"], "Search results");
    assert_eq!(
        results["sections"][0]["image-uris"][0],
        env.image_uri("lucid").as_str()
    );
    assert_eq!(results["states"][0]["status"], "uninstalled");

    // A states poll never carries sections, and answers for each asked image.
    let states = env
        .client()
        .states(&[&env.image_uri("karmic"), &env.image_uri("lucid")])
        .await
        .unwrap()
        .body;
    assert!(states.get("sections").is_none());
    assert_eq!(states["states"].as_array().unwrap().len(), 2);
    let empty = env.client().states(&[]).await.unwrap().body;
    assert_eq!(empty["states"].as_array().unwrap().len(), 0, "{empty}");
}
