//! The bundled Store page in a real browser (Debian's headless Chromium through chromedriver):
//! against the running demo, a wrong secret gets a clear message, the right one shows the
//! catalog, Install moves a progress bar to Installed, and Cancel stops another install; against a
//! proxy whose upstream went away, the stale-catalog banner and a failed install's one-line error
//! with Clear error. The page's own signer is checked against the servlet's test vectors.
//! Accessibility (issue 15): a keyboard alone signs in and installs, focus stays on the image's
//! button as Install becomes Cancel, each button names its image, text contrast is computed from
//! the page's styles, status changes are announced once through a small live region (not the
//! catalog), and axe-core finds no serious violation. Slow networks: a hung poll shows the
//! lost-contact notice and polling goes on, a signature expired on the way is signed again with
//! the re-learned clock (the secret kept), and the first load shows "Loading the catalog…".
//! Screenshots land in `target/test-artifacts/`.

use crate::common;
use crate::webdriver;

use common::demo::Demo;
use common::{SECRET, TestEnv};
use serde_json::{Value, json};
use webdriver::{Browser, ENTER, TAB, element_arg};

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

/// Wraps the page's `fetch` (once) to hold back requests whose URL contains one of `patterns`
/// until [`release`] (or until the page's own timeout aborts them), and logs each path asked.
async fn hold_requests(browser: &Browser, patterns: &[&str]) {
    wrap_fetch(browser).await;
    browser
        .eval("window.__held.patterns = arguments[0];", json!([patterns]))
        .await;
}

/// Fails at once, as a broken network does, the requests whose URL contains one of `patterns`.
async fn fail_requests(browser: &Browser, patterns: &[&str]) {
    wrap_fetch(browser).await;
    browser
        .eval("window.__held.failing = arguments[0];", json!([patterns]))
        .await;
}

async fn wrap_fetch(browser: &Browser) {
    let script = "
        if (!window.__held) {
            const held = window.__held = {patterns: [], failing: [], waiting: [], log: []};
            const real = window.fetch.bind(window);
            window.fetch = (input, init = {}) => {
                const url = new URL(String(input instanceof Request ? input.url : input), location.href);
                held.log.push(url.pathname);
                if (held.failing.some((p) => url.href.includes(p)))
                    return Promise.reject(new TypeError('Failed to fetch'));
                if (!held.patterns.some((p) => url.href.includes(p))) return real(input, init);
                return new Promise((resolve, reject) => {
                    held.waiting.push(() => real(input, init).then(resolve, reject));
                    if (init.signal) init.signal.addEventListener('abort',
                        () => reject(new DOMException('aborted', 'AbortError')));
                });
            };
        }";
    browser.eval(script, json!([])).await;
}

async fn release(browser: &Browser) {
    browser
        .eval(
            "const h = window.__held; h.patterns = []; h.waiting.splice(0).forEach((go) => go());",
            json!([]),
        )
        .await;
}

/// Presses Tab until the element matching `css` has the focus (at most 60 times).
async fn tab_to(browser: &Browser, css: &str) {
    for _ in 0..60 {
        if focused_is(browser, css).await {
            return;
        }
        browser.press(&TAB.to_string()).await;
    }
    panic!("Tab never reached {css}");
}

async fn focused_is(browser: &Browser, css: &str) -> bool {
    browser
        .eval(
            "return !!document.activeElement && document.activeElement.matches(arguments[0]);",
            json!([css]),
        )
        .await
        == json!(true)
}

/// `rgb(r, g, b)` or `rgba(r, g, b, a)` as computed styles give it: the channels and alpha.
fn parse_rgb(css: &str) -> [f64; 4] {
    let inner = css
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not an rgb() colour: {css}"));
    let parts: Vec<f64> = inner
        .split(',')
        .map(|p| p.trim().parse().unwrap())
        .collect();
    [
        parts[0],
        parts[1],
        parts[2],
        parts.get(3).copied().unwrap_or(1.0),
    ]
}

/// WCAG 2 relative luminance of an sRGB colour.
fn luminance([r, g, b, _]: [f64; 4]) -> f64 {
    let linear = |c: f64| {
        let c = c / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
}

/// The WCAG contrast ratio of an element's text on its background, both from the page's
/// computed styles (the background is the nearest opaque one up the tree; no opacity allowed).
async fn contrast(browser: &Browser, css: &str) -> f64 {
    let colours = browser
        .eval(
            "let e = document.querySelector(arguments[0]);
             if (!e) return null;
             const color = getComputedStyle(e).color;
             let opacity = 1, background = 'rgba(0, 0, 0, 0)';
             for (let n = e; n && n.nodeType === 1; n = n.parentElement) {
                 const style = getComputedStyle(n);
                 opacity *= Number(style.opacity);
                 if (background === 'rgba(0, 0, 0, 0)' && !style.backgroundColor.endsWith(', 0)'))
                     background = style.backgroundColor;
             }
             return {color, background, opacity};",
            json!([css]),
        )
        .await;
    assert!(!colours.is_null(), "no element {css}");
    assert_eq!(colours["opacity"], 1.0, "{css} is drawn faded: {colours}");
    let text = parse_rgb(colours["color"].as_str().unwrap());
    let background = parse_rgb(colours["background"].as_str().unwrap());
    assert_eq!(text[3], 1.0, "{css}: translucent text {colours}");
    assert_eq!(
        background[3], 1.0,
        "{css}: translucent background {colours}"
    );
    let (a, b) = (luminance(text), luminance(background));
    let ratio = (a.max(b) + 0.05) / (a.min(b) + 0.05);
    eprintln!("contrast of {css}: {ratio:.2}:1 ({colours})");
    ratio
}

/// The page's live regions: the catalog is not one and holds none, and the one that announces
/// status changes is a `role=status` outside it.
async fn check_live_regions(browser: &Browser) {
    let regions = browser
        .eval(
            "const catalog = document.getElementById('catalog');
             const announce = document.getElementById('announce');
             return {
                 catalogLive: catalog.getAttribute('aria-live'),
                 catalogRole: catalog.getAttribute('role'),
                 liveInCatalog: catalog.querySelectorAll(
                     '[aria-live], [role=status], [role=alert], [role=log], output').length,
                 announceRole: announce.getAttribute('role'),
                 announceInCatalog: catalog.contains(announce),
                 announceHidden: announce.getBoundingClientRect().width <= 1,
             };",
            json!([]),
        )
        .await;
    assert_eq!(
        regions,
        json!({
            "catalogLive": null, "catalogRole": null, "liveInCatalog": 0,
            "announceRole": "status", "announceInCatalog": false, "announceHidden": true,
        })
    );
    let announce = browser.find("#announce").await;
    assert_eq!(browser.accessible_role(&announce).await, "status");
}

/// Where `axe.min.js` is: `IMAGE_STORE_PROXY_TEST_AXE`, else where `./test.sh` installs it.
fn axe_script() -> String {
    let path = std::env::var_os("IMAGE_STORE_PROXY_TEST_AXE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("the target directory")
                .join("test-peers/axe-core/node_modules/axe-core/axe.min.js")
        });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: ./test.sh installs axe-core there with npm",
            path.display()
        )
    })
}

/// axe-core, injected through WebDriver (the page's CSP allows no script of ours), finds no
/// serious or critical violation in the page as it is now.
async fn check_axe(browser: &Browser, when: &str) {
    let loaded = browser
        .eval(
            &format!(
                "if (!window.axe) {{ {} }} return typeof window.axe;",
                axe_script()
            ),
            json!([]),
        )
        .await;
    assert_eq!(loaded, "object", "axe-core loaded");
    let violations = browser
        .eval_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, {resultTypes: ['violations']})
                 .then((r) => done(r.violations
                     .filter((v) => v.impact === 'serious' || v.impact === 'critical')
                     .map((v) => ({id: v.id, impact: v.impact, help: v.help,
                         nodes: v.nodes.map((n) => n.target.join(' ') + ': ' + n.failureSummary)}))))
                 .catch((e) => done('failed: ' + e));",
            json!([]),
        )
        .await;
    assert_eq!(violations, json!([]), "axe-core, {when}");
}

/// Records every sentence the status live region receives, from now on.
async fn record_announcements(browser: &Browser) {
    browser
        .eval(
            "window.__announced = [];
             const region = document.getElementById('announce');
             new MutationObserver(() => { if (region.textContent) window.__announced.push(region.textContent); })
                 .observe(region, {childList: true, characterData: true, subtree: true});",
            json!([]),
        )
        .await;
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

    check_axe(&browser, "the secret form").await;

    // The right secret, by keyboard alone: the form has the focus again; typing and Enter sign in.
    // The dashboard is held back a moment: "Loading the catalog…" shows at once, not a blank page.
    assert!(
        focused_is(&browser, "#secret").await,
        "the secret field has the focus"
    );
    hold_requests(&browser, &["/api/dashboard"]).await;
    browser.press(&format!("{DEMO_SECRET}{ENTER}")).await;
    let loading = browser
        .wait_for(
            "the loading state",
            "const c = document.getElementById('catalog'); \
             return {text: c.innerText, busy: c.getAttribute('aria-busy')};",
            json!([]),
            |c| c["text"] != "",
        )
        .await;
    assert_eq!(
        loading,
        json!({"text": "Loading the catalog\u{2026}", "busy": "true"})
    );
    release(&browser).await;

    // The catalog, each image with its facts, icon and state.
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

    check_live_regions(&browser).await;
    check_axe(&browser, "the catalog").await;
    let install = browser.find(&button("9.10", "install")).await;
    assert_eq!(
        browser.accessible_name(&install).await,
        "Install Ubuntu 9.10 Server (amd64)"
    );
    let install_contrast = contrast(&browser, &button("9.10", "install")).await;
    assert!(install_contrast >= 4.5, "Install: {install_contrast:.2}:1");

    // Install, by keyboard: Tab to the image's button, Enter. The bar moves, the status line says
    // what runs, and the state reaches Installed; the focus stays on that button as it becomes
    // Cancel, and each status change is announced once.
    record_announcements(&browser).await;
    tab_to(&browser, &button("9.10", "install")).await;
    browser.press(&ENTER.to_string()).await;
    let mut cancel_checked = false;
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
            if !cancel_checked && now["actions"] == json!(["cancel"]) {
                cancel_checked = true;
                assert!(
                    focused_is(&browser, &button("9.10", "cancel")).await,
                    "the focus stayed on the image's button as it became Cancel"
                );
                let cancel = browser.focused().await;
                assert_eq!(
                    browser.accessible_name(&cancel).await,
                    "Cancel Ubuntu 9.10 Server (amd64)"
                );
                let cancel_contrast = contrast(&browser, &button("9.10", "cancel")).await;
                assert!(cancel_contrast >= 4.5, "Cancel: {cancel_contrast:.2}:1");
                check_live_regions(&browser).await;
                check_axe(&browser, "during an install").await;
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
    assert!(cancel_checked, "Cancel was seen while it ran: {seen:?}");
    assert!(
        focused_is(&browser, "article.image[data-title*=\"9.10\"]").await,
        "with its last button gone, the focus is on the image's card"
    );
    let announced = browser
        .wait_for(
            "the installed announcement",
            "return window.__announced;",
            json!([]),
            |said| {
                said.as_array().is_some_and(|s| {
                    s.iter()
                        .any(|s| s == "Ubuntu 9.10 Server (amd64): installed")
                })
            },
        )
        .await;
    let announced: Vec<&str> = announced
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        announced
            .iter()
            .filter(|s| **s == "Ubuntu 9.10 Server (amd64): installed")
            .count(),
        1,
        "{announced:?}"
    );
    assert!(
        announced.windows(2).all(|w| w[0] != w[1]) && announced.len() <= 4,
        "one sentence per status change, not one per poll: {announced:?}"
    );
    assert!(
        announced
            .iter()
            .all(|s| s.starts_with("Ubuntu 9.10 Server (amd64): ")),
        "{announced:?}"
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

    // A signature that expires on the way (here: this computer's clock falls 2 minutes behind the
    // proxy's after the page learned it) is refused; the page re-learns the clock from /healthz
    // and signs once more, and neither blames nor forgets the secret.
    browser
        .eval(
            "window.__realNow = Date.now; Date.now = () => window.__realNow() - 120000; \
             window.__held.log.length = 0; \
             document.querySelectorAll('article.image').forEach((c) => c.dataset.drawnBefore = 'yes');",
            json!([]),
        )
        .await;
    browser.click("#refresh").await;
    let asked = browser
        .wait_for(
            "the refresh signed again",
            "return window.__held.log;",
            json!([]),
            |log| {
                log.as_array()
                    .is_some_and(|l| l.iter().filter(|p| *p == "/api/dashboard").count() == 2)
            },
        )
        .await;
    assert_eq!(
        asked,
        json!(["/api/dashboard", "/healthz", "/api/dashboard"])
    );
    let after = browser
        .wait_for(
            "the refreshed catalog",
            "return {login: document.getElementById('login').hidden, \
                     message: document.getElementById('message').hidden ? '' : document.getElementById('message').innerText, \
                     cards: document.querySelectorAll('article.image:not([data-drawn-before])').length, \
                     kept: sessionStorage.length};",
            json!([]),
            // The demo's four: two from fake-store's API, two from its simplestreams mirror.
            |page| page["cards"] == 4,
        )
        .await;
    assert_eq!(
        after,
        json!({"login": true, "message": "", "cards": 4, "kept": 1})
    );
    browser
        .eval("Date.now = window.__realNow;", json!([]))
        .await;

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

    // The state a button shows while its request runs (aria-disabled, so it keeps the focus).
    let pending = button("10.04", "install");
    browser
        .eval(
            "document.querySelector(arguments[0]).setAttribute('aria-disabled', 'true');",
            json!([pending]),
        )
        .await;
    let pending_contrast = contrast(&browser, &pending).await;
    browser
        .eval(
            "document.querySelector(arguments[0]).removeAttribute('aria-disabled');",
            json!([pending]),
        )
        .await;
    assert!(pending_contrast >= 4.5, "pending: {pending_contrast:.2}:1");

    // A poll that hangs: after the page's timeout the one-line notice says so, polling goes on,
    // and the notice goes once the proxy answers again.
    hold_requests(&browser, &["/api/states"]).await;
    let install = browser.find(&pending).await;
    browser
        .eval("arguments[0].focus();", json!([element_arg(&install)]))
        .await;
    browser.press(&ENTER.to_string()).await;
    let notice = browser
        .wait_for(
            "the lost-contact notice",
            "const n = document.getElementById('contact'); return n.hidden ? '' : n.innerText;",
            json!([]),
            |text| text != "",
        )
        .await;
    assert_eq!(
        notice,
        "Lost contact with the proxy, retrying (no answer within 10 s)."
    );
    release(&browser).await;
    browser
        .wait_for(
            "the notice gone and the install followed again",
            "const n = document.getElementById('contact'); \
             const c = document.querySelector('article.image[data-title*=\"10.04\"]'); \
             return {notice: n.hidden, status: c.dataset.status};",
            json!([]),
            |page| page["notice"] == true && page["status"] == "installed",
        )
        .await;
    demo.interrupt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_shows_a_stale_banner_and_a_failure_as_its_one_line() {
    let mut env = TestEnv::start().await;
    env.stop_store();
    let browser = Browser::start().await;
    browser.goto(&format!("{}/store/", env.proxy_url())).await;

    // The proxy out of reach at the first try: a transport failure, not a wrong secret; the
    // secret stays in the field, and Enter tries again.
    fail_requests(&browser, &["/healthz"]).await;
    sign_in(&browser, SECRET).await;
    let message = browser
        .wait_for(
            "the unreachable message",
            "const m = document.getElementById('message'); return m.hidden ? '' : m.innerText;",
            json!([]),
            |text| text != "",
        )
        .await;
    let message = message.as_str().unwrap();
    assert!(
        message.starts_with("Cannot reach the proxy at ") && !message.contains("secret is wrong"),
        "{message}"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('secret').value;", json!([]))
            .await,
        SECRET
    );
    fail_requests(&browser, &[]).await;
    assert!(focused_is(&browser, "#secret").await);
    browser.press(&ENTER.to_string()).await;
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
    check_live_regions(&browser).await;
    check_axe(&browser, "a stale catalog with a failed install").await;

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
