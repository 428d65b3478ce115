//! The bundled Store page in a real browser (Debian's headless Chromium through chromedriver):
//! against the running demo, a wrong secret gets a clear message, the right one shows the
//! catalog, Install moves a progress bar to Installed, and Cancel stops another install; against a
//! proxy whose upstream went away, the stale-catalog banner and a failed install's one-line error
//! with Clear error. The page's own signer is checked against the servlet's test vectors.
//! Screenshots land in `target/test-artifacts/`.

use crate::common;
use crate::webdriver;

use common::demo::Demo;
use common::{SECRET, TestEnv};
use serde_json::{Value, json};
use webdriver::Browser;

/// The demo's secret (the original proxy's README), as the demo prints it.
const DEMO_SECRET: &str = "Wbh3dvZwRiqYiX6VtOeBycxGjJhShWORy6r0ng";

/// A card's state as the page shows it: status, progress bar, lines and buttons.
const CARD_PROBE: &str = "
    const card = [...document.querySelectorAll('article.image')]
        .find(c => c.dataset.title.includes(arguments[0]));
    if (!card) return null;
    const shown = (sel) => { const e = card.querySelector(sel); return e && !e.hidden ? e.innerText : null; };
    const bar = card.querySelector('progress');
    return {
        status: card.dataset.status || null,
        label: card.querySelector('.status').innerText,
        progress: bar.closest('.progress').hidden ? null : bar.value,
        detail: shown('.detail'),
        error: shown('.error-line'),
        ids: shown('.ids'),
        actions: [...card.querySelectorAll('.actions button')].map(b => b.dataset.action),
    };";

fn button(title: &str, action: &str) -> String {
    format!("article.image[data-title*=\"{title}\"] button[data-action=\"{action}\"]")
}

async fn card(browser: &Browser, title: &str) -> Value {
    browser.eval(CARD_PROBE, json!([title])).await
}

/// The page's signer (signing.js, WebCrypto) against the Store servlet's own test vectors.
async fn check_signer(browser: &Browser) {
    let script = "
        const done = arguments[arguments.length - 1];
        import('/store/signing.js').then(async (m) => {
            const stamp = {clientId: 'WKy3rMzOWPouVOxK1p3Ar1C2uRBwa2FBXnCw', expires: 1262304030, nonce: '1234567890123'};
            const secret = 'Wbh3dvZwRiqYiX6VtOeBycxGjJhShWORy6r0ng';
            const last = (params) => params[params.length - 1];
            const url = (path) => new URL('http://localhost:52780' + path);
            done({
                search: last(await m.sign(secret, 'GET', url('/api/search'), [['q', 'ubuntu 9.10']], stamp)),
                states: last(await m.sign(secret, 'POST', url('/api/states'), [
                    ['image-uri', 'http://localhost:52781/api/images/2'],
                    ['image-uri', 'http://localhost:52781/api/images/1']], stamp)),
                dashboard: last(await m.sign(secret, 'GET', url('/api/dashboard'), [], stamp)),
                port80: m.stringToSign('GET', m.signingHost(new URL('http://LocalHost:80/api/search')),
                    '/api/search', [['q', 'caf\\u00e9 ~x*']]),
                port80Signature: await m.hmac('k', 'GET\\nlocalhost\\n/api/search\\nq=caf%C3%A9%20~x%2A'),
                hosts: ['http://127.0.0.1:52780/', 'https://proxy.example/', 'http://[::1]:9/']
                    .map((u) => m.signingHost(new URL(u))),
            });
        }).catch((e) => done('failed: ' + e));";
    let got = browser.eval_async(script, json!([])).await;
    assert_eq!(
        got,
        json!({
            "search": ["Signature", "tTZbJbkIy9d7dsZRp6UoVve71zsMFl9CWIyQymBuhMM="],
            "states": ["Signature", "papSDLgieLuBfxN0u4UeqAbdxC4qf9+ssx2OA4whcJQ="],
            "dashboard": ["Signature", "zwnGBdQ4U0HINmJKP+IHc0RTGv2twjBzvuKG474TqpY="],
            "port80": "GET\nlocalhost\n/api/search\nq=caf%C3%A9%20~x%2A",
            "port80Signature": "uDsIZGt1rcqtfPoH65nuvj8resFT+M+wwDzwVkEnyC0=",
            "hosts": ["127.0.0.1:52780", "proxy.example", "[::1]:9"],
        })
    );
}

async fn sign_in(browser: &Browser, secret: &str) {
    browser.type_into("#secret", secret).await;
    browser.click("#connect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_installs_an_image_from_the_demo_by_clicking() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    assert!(
        demo.store_page.ends_with("/store/"),
        "the demo prints the Store page address: {:?}",
        demo.store_page
    );
    let browser = Browser::start().await;
    browser.goto(&demo.store_page).await;
    check_signer(&browser).await;

    // A wrong secret: a clear message, and the form to try again; not a blank page.
    sign_in(&browser, "not-the-secret").await;
    let message = browser
        .wait_for(
            "the wrong-secret message",
            "const m = document.getElementById('message'); return m.hidden ? '' : m.innerText;",
            json!([]),
            |text| text.as_str().is_some_and(|t| !t.is_empty()),
        )
        .await;
    assert!(
        message.as_str().unwrap().contains("the secret is wrong"),
        "{message}"
    );
    browser.find("#secret").await;
    assert_eq!(browser.text("#catalog").await, "");
    browser.screenshot("store-page-wrong-secret.png").await;

    // The right secret: the catalog, each image with its facts, icon and state.
    sign_in(&browser, DEMO_SECRET).await;
    browser.find("article.image").await;
    let karmic = card(&browser, "9.10").await;
    assert_eq!(karmic["status"], "uninstalled", "{karmic}");
    assert_eq!(karmic["label"], "Not installed");
    assert_eq!(karmic["actions"], json!(["install"]));
    let text = browser.text("#catalog").await;
    for expected in [
        "Ubuntu 9.10 Server (amd64)",
        "Ubuntu 10.04 LTS Server (amd64)",
        "Version 9.10",
        "Version 10.04",
        "by Canonical (demo)",
        "Lucid Lynx \u{2014} long-term support",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    assert!(text.contains(" MB"), "sizes shown:\n{text}");
    let icons = browser
        .wait_for(
            "the icons from the store",
            "return [...document.querySelectorAll('img.icon')].map(i => i.complete && i.naturalWidth);",
            json!([]),
            |widths| widths.as_array().is_some_and(|w| w.len() == 2 && w.iter().all(|w| w == 64)),
        )
        .await;
    assert_eq!(icons, json!([64, 64]));
    assert!(
        browser
            .eval("return sessionStorage.length", json!([]))
            .await
            == 1
    );

    // Install: the bar moves, the status line says what runs, and the state reaches Installed.
    browser.click(&button("9.10", "install")).await;
    let mut seen: Vec<u64> = Vec::new();
    let mut details: Vec<String> = Vec::new();
    let mut progress_shot = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let installed = loop {
        let now = card(&browser, "9.10").await;
        if now["status"] == "installed" {
            break now;
        }
        assert!(now["error"].is_null(), "{now}");
        if let Some(value) = now["progress"].as_u64() {
            if seen.last() != Some(&value) {
                seen.push(value);
            }
            if let Some(detail) = now["detail"].as_str()
                && details.last().map(String::as_str) != Some(detail)
            {
                details.push(detail.to_string());
            }
            if progress_shot.is_none() && value > 0 && value < 100 {
                assert_eq!(now["actions"], json!(["cancel"]), "{now}");
                progress_shot = Some(browser.screenshot("store-page-downloading.png").await);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not installed in time: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let moving: Vec<u64> = seen
        .iter()
        .copied()
        .filter(|v| *v > 0 && *v < 100)
        .collect();
    assert!(
        moving.len() >= 2,
        "the progress bar moved through several values: {seen:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("Downloading kernel: ")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("Downloading machine image: ")),
        "{details:?}"
    );
    assert_eq!(installed["label"], "Installed");
    assert_eq!(installed["actions"], json!([]));
    let ids = installed["ids"].as_str().unwrap();
    assert!(ids.starts_with("Registered: machine image emi-"), "{ids}");
    let emi = ids.split_whitespace().nth(3).unwrap().trim_end_matches(',');
    let registration = std::fs::read_dir(dir.path().join("demo-data/proxy/fake-cloud"))
        .unwrap()
        .flatten()
        .map(|bucket| {
            bucket
                .path()
                .join("ubuntu-server-amd64-9.10-image.registration.json")
        })
        .find(|path| path.exists())
        .expect("the machine image reached the fake cloud");
    let registration: Value =
        serde_json::from_slice(&std::fs::read(registration).unwrap()).unwrap();
    assert_eq!(registration["image_id"], emi);
    let shot = browser.screenshot("store-page-installed.png").await;
    assert!(progress_shot.is_some() && shot.exists());

    // Cancel: another install, stopped while it downloads.
    browser.click(&button("10.04", "install")).await;
    browser.click(&button("10.04", "cancel")).await;
    let cancelled = browser
        .wait_for(
            "the cancelled install",
            CARD_PROBE,
            json!(["10.04"]),
            |card| card["status"] == "uninstalled",
        )
        .await;
    assert_eq!(cancelled["actions"], json!(["install"]), "{cancelled}");
    assert!(cancelled["error"].is_null(), "{cancelled}");
    demo.interrupt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_shows_a_stale_banner_and_a_failure_as_its_one_line() {
    let mut env = TestEnv::start().await;
    env.stop_store();
    let browser = Browser::start().await;
    browser.goto(&format!("{}/store/", env.proxy_url())).await;
    sign_in(&browser, SECRET).await;
    browser.find("article.image").await;
    let banner = browser.text("#stale").await;
    assert!(
        banner.starts_with("The image store could not be refreshed")
            && banner.contains("Image store unreachable"),
        "{banner}"
    );

    browser.click(&button("9.10", "install")).await;
    let failed = browser
        .wait_for("the failed install", CARD_PROBE, json!(["9.10"]), |card| {
            !card["error"].is_null()
        })
        .await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("Failure encountered while: ") && !error.contains('\n'),
        "{error}"
    );
    assert_eq!(failed["status"], "uninstalled");
    assert_eq!(failed["actions"], json!(["install", "clear-error"]));
    browser.screenshot("store-page-failed.png").await;

    browser.click(&button("9.10", "clear-error")).await;
    let cleared = browser
        .wait_for("the cleared error", CARD_PROBE, json!(["9.10"]), |card| {
            card["error"].is_null()
        })
        .await;
    assert_eq!(cleared["actions"], json!(["install"]), "{cleared}");
    assert_eq!(
        env.state(&env.image_uri("karmic")).await["status"],
        "uninstalled"
    );
}
