//! A small W3C WebDriver client over HTTP (reqwest, no extra crates): Debian's `chromedriver`
//! drives Debian's headless `chromium` (the test command installs both). Each [`Browser`] has its
//! own chromedriver on a free port, its own fresh profile directory, no background networking,
//! and is torn down with its whole process group, even when a test panics.
#![allow(dead_code)]

use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key under which an element reference travels.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// WebDriver's Tab and Enter keys, for [`Browser::press`].
pub const TAB: char = '\u{E004}';
pub const ENTER: char = '\u{E007}';

/// An element reference as a script argument (it arrives in the page as the element itself).
pub fn element_arg(element: &str) -> Value {
    json!({ ELEMENT: element })
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the browsers it started share its process group: end them together.
        let group = format!("kill -TERM -{} 2>/dev/null", self.driver.id());
        let _ = Command::new("sh").args(["-c", &group]).status();
        let _ = self.driver.wait();
    }
}

/// Where screenshots go: `target/test-artifacts/`, kept after the test for a person to look at.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    pub async fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: ./test.sh installs Debian's chromium and chromium-driver"
            );
        }
        let profile = tempfile::tempdir().unwrap();
        let mut driver = Command::new(CHROMEDRIVER);
        driver.arg("--port=0");
        if let Some(log) = std::env::var_os("WEBDRIVER_LOG") {
            // chromedriver's own log, for a person debugging a failure.
            driver
                .arg("--verbose")
                .arg(format!("--log-path={}", log.to_string_lossy()));
        }
        let mut driver = driver
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let mut stdout = BufReader::new(driver.stdout.take().unwrap());
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert_ne!(
                stdout.read_line(&mut line).unwrap(),
                0,
                "chromedriver ended"
            );
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim().trim_end_matches('.').to_string();
            }
        };
        // Keep reading its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let base = format!("http://127.0.0.1:{port}");
        // The crate's reqwest has no default TLS provider; a test that starts no TestEnv has none.
        image_store_proxy::fetch::install_crypto_provider();
        // Every command answers within seconds; a hung browser fails the test instead of stalling it.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--disable-sync",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--window-size=1100,1000",
                ],
            },
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let created = browser.command("POST", "/session", capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session in {created}"))
            .to_string();
        browser
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        };
        if std::env::var_os("WEBDRIVER_TRACE").is_some() {
            eprintln!("webdriver: {method} {path} {body}");
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap();
        let reply: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert!(status.is_success(), "{method} {path}: {status}: {reply}");
        reply["value"].clone()
    }

    fn session_path(&self, tail: &str) -> String {
        format!("/session/{}{tail}", self.session)
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", &self.session_path("/url"), json!({"url": url}))
            .await;
    }

    /// Runs `body` as a function in the page (`arguments` holds `args`) and returns its result.
    pub async fn eval(&self, body: &str, args: Value) -> Value {
        self.command(
            "POST",
            &self.session_path("/execute/sync"),
            json!({"script": body, "args": args}),
        )
        .await
    }

    /// Like [`eval`](Self::eval) for a body that awaits: it resolves through `arguments[last]`.
    pub async fn eval_async(&self, body: &str, args: Value) -> Value {
        self.command(
            "POST",
            &self.session_path("/execute/async"),
            json!({"script": body, "args": args}),
        )
        .await
    }

    /// The first element matching `css`, waiting for it to exist and be displayed.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let shown = self
                .eval(
                    "const e = document.querySelector(arguments[0]); \
                     return !!e && e.getClientRects().length > 0;",
                    json!([css]),
                )
                .await;
            if shown == json!(true) {
                let found = self
                    .command(
                        "POST",
                        &self.session_path("/element"),
                        json!({"using": "css selector", "value": css}),
                    )
                    .await;
                return found[ELEMENT].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no visible element {css:?}; page text:\n{}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{element}/click")),
            json!({}),
        )
        .await;
    }

    /// Types `text` into the field, as keystrokes.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{element}/clear")),
            json!({}),
        )
        .await;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{element}/value")),
            json!({"text": text}),
        )
        .await;
    }

    /// Presses each key of `keys` in turn (a character, or [`TAB`] / [`ENTER`]) through the W3C
    /// actions API: what a keyboard does, to whichever element has the focus.
    pub async fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|key| {
                let key = key.to_string();
                [
                    json!({"type": "keyDown", "value": key}),
                    json!({"type": "keyUp", "value": key}),
                ]
            })
            .collect();
        self.command(
            "POST",
            &self.session_path("/actions"),
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await;
    }

    /// The reference of the element that has the focus.
    pub async fn focused(&self) -> String {
        let found = self
            .command("GET", &self.session_path("/element/active"), Value::Null)
            .await;
        found[ELEMENT].as_str().unwrap().to_string()
    }

    /// The browser's accessible name for an element (what a screen reader says).
    pub async fn accessible_name(&self, element: &str) -> String {
        self.element_string(element, "computedlabel").await
    }

    /// The browser's computed ARIA role for an element.
    pub async fn accessible_role(&self, element: &str) -> String {
        self.element_string(element, "computedrole").await
    }

    /// A string the browser computes for an element (`/element/{id}/{what}`).
    async fn element_string(&self, element: &str, what: &str) -> String {
        let value = self
            .command(
                "GET",
                &self.session_path(&format!("/element/{element}/{what}")),
                Value::Null,
            )
            .await;
        value.as_str().unwrap_or_default().to_string()
    }

    /// The rendered text of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        self.eval(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Polls `probe` (a script body returning a value) until `done` holds; panics at the deadline
    /// with the last value and the page's text.
    pub async fn wait_for(
        &self,
        what: &str,
        probe: &str,
        args: Value,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.eval(probe, args.clone()).await;
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last {value}; page text:\n{}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the window under `target/test-artifacts/` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let encoded = self
            .command("GET", &self.session_path("/screenshot"), Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = artifacts_dir().join(name);
        std::fs::write(&path, png).unwrap();
        // Straight to stderr, past the test harness's capture: the path shows in every run's log.
        let _ = writeln!(std::io::stderr(), "screenshot: {}", path.display());
        path
    }
}
