//! The test environment: a temp dir, a small image set, `fake-store` in-process on 127.0.0.1:0,
//! the real `image-store-proxy` binary as a child process on 127.0.0.1:0, a client that signs as
//! the Store servlet does, and GnuPG for keys and signatures. Tests wait on state, never on sleeps.
#![allow(dead_code)]

pub mod demo;
pub mod moto;
pub mod openssl;

use fake_store::{FakeStore, StoreConfig};
use flate2::Compression;
use flate2::write::GzEncoder;
use image_store_proxy::client::ProxyClient;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-0123456789";

/// Deterministic bytes: zero runs, text and noise, as disk images are.
pub fn image_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut noise = Xorshift::seeded(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match (out.len() / 4096) % 3 {
            0 => out.extend(std::iter::repeat_n(0u8, 4096)),
            1 => out.extend(
                b"ubuntu image-store-proxy test data line\n"
                    .iter()
                    .cycle()
                    .take(4096),
            ),
            _ => noise.fill(&mut out, 4096),
        }
    }
    out.truncate(len);
    out
}

/// Incompressible deterministic bytes (xorshift64): what deflate cannot shrink.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    Xorshift::seeded(seed).fill(&mut out, len);
    out.truncate(len);
    out
}

/// Marsaglia's xorshift64: fast, deterministic, and far from compressible.
struct Xorshift(u64);

impl Xorshift {
    fn seeded(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                | 1,
        )
    }

    /// Appends at least `len` bytes (whole 8-byte words) to `out`.
    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        for _ in 0..len.div_ceil(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            out.extend_from_slice(&self.0.to_le_bytes());
        }
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub fn tar_gz(member: &str, bytes: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    builder.append_data(&mut header, member, bytes).unwrap();
    gzip(&builder.into_inner().unwrap())
}

/// The raw bytes each test image installs, for byte-for-byte checks against the fake cloud.
pub struct Originals {
    pub kernel: Vec<u8>,
    pub ramdisk: Vec<u8>,
    pub karmic: Vec<u8>,
    pub lucid: Vec<u8>,
}

/// Two image sets sharing one kernel and ramdisk: `karmic` (image.gz) and `lucid` (image.tar.gz).
pub fn write_images(dir: &Path) -> Originals {
    let originals = Originals {
        kernel: image_bytes(1, 300 << 10),
        ramdisk: image_bytes(2, 100 << 10),
        karmic: image_bytes(3, 3 << 20),
        lucid: image_bytes(4, 2 << 20),
    };
    for (set, title, version, summary) in [
        ("karmic", "Ubuntu 9.10 Server", "9.10", "Karmic Koala"),
        (
            "lucid",
            "Ubuntu 10.04 LTS Server",
            "10.04",
            "Lucid Lynx \u{2014} long-term support",
        ),
    ] {
        let set_dir = dir.join(set);
        std::fs::create_dir_all(&set_dir).unwrap();
        std::fs::write(set_dir.join("kernel"), &originals.kernel).unwrap();
        std::fs::write(set_dir.join("ramdisk.gz"), gzip(&originals.ramdisk)).unwrap();
        let meta = serde_json::json!({"title": title, "version": version, "product": "ubuntu-server-amd64",
            "summary": summary, "tags": ["ubuntu", set], "arch": "x86_64"});
        std::fs::write(set_dir.join("meta.json"), meta.to_string()).unwrap();
    }
    std::fs::write(dir.join("karmic/image.gz"), gzip(&originals.karmic)).unwrap();
    std::fs::write(
        dir.join("lucid/image.tar.gz"),
        tar_gz("lucid-server-uec-amd64.img", &originals.lucid),
    )
    .unwrap();
    originals
}

pub struct TestEnv {
    pub dir: TempDir,
    pub images: PathBuf,
    pub data_dir: PathBuf,
    pub keyring: PathBuf,
    pub originals: Originals,
    pub store: FakeStore,
    pub store_url: String,
    store_shutdown: CancellationToken,
    pub proxy: Option<Proxy>,
    proxy_starts: usize,
    /// The pause before a failed download is retried, for the next proxy start.
    pub retry_delay_ms: u64,
    /// More flags for the next proxy start (e.g. `--stall-seconds 1`).
    pub extra_args: Vec<String>,
    /// Install into the cloud this `--cloud-config` names instead of the fake cloud; the UI's
    /// requests are then signed with its secret key.
    pub cloud: Option<(PathBuf, String)>,
    /// Extra environment for the next proxy start (e.g. the crash tests' pause hook).
    pub proxy_env: Vec<(String, String)>,
    /// The upstream flags of the next proxy start instead of `--api-url <fake-store>` (a
    /// `--simplestreams` mirror, say).
    pub upstream_args: Option<Vec<String>>,
    /// Where the next proxy start listens instead of `127.0.0.1:0` (a restart on the same port).
    pub listen: Option<String>,
    /// `--max-catalog-age` of the next proxy start: 0 (off) unless a test sets it, so the
    /// fixed dates of the fixtures never age into a refusal.
    pub max_catalog_age_days: u64,
}

pub struct Proxy {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Proxy {
    /// The proxy's process id, to signal it (`SIGHUP`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestEnv {
    /// Images and fake-store, but no proxy yet.
    pub async fn with_store() -> Self {
        image_store_proxy::fetch::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let originals = write_images(&images);
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let keyring = dir.path().join("keyring.gpg");
        std::fs::write(&keyring, fake_store::TEST_KEYRING).unwrap();
        let store = FakeStore::open(StoreConfig {
            dir: images.clone(),
            signing_key: None,
            updated: Some("2026-11-20T10:00:00Z".into()),
            public_url: None,
        })
        .unwrap();
        let mut env = TestEnv {
            dir,
            images,
            data_dir,
            keyring,
            originals,
            store,
            store_url: String::new(),
            store_shutdown: CancellationToken::new(),
            proxy: None,
            proxy_starts: 0,
            retry_delay_ms: 100,
            extra_args: Vec::new(),
            cloud: None,
            proxy_env: Vec::new(),
            upstream_args: None,
            listen: None,
            max_catalog_age_days: 0,
        };
        env.start_store().await;
        env
    }

    /// Images, fake-store and a proxy that has accepted the catalog.
    pub async fn start() -> Self {
        let mut env = Self::with_store().await;
        env.start_proxy();
        let images = env.dashboard().await["images"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(
            images,
            2,
            "the proxy accepted the catalog; log:\n{}",
            env.proxy_log()
        );
        env
    }

    pub async fn start_store(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The catalog's URLs must not change when the store restarts on another port.
        if self.store_url.is_empty() {
            self.store_url = format!("http://{addr}/api");
        }
        self.store_shutdown = CancellationToken::new();
        tokio::spawn(fake_store::serve(
            listener,
            self.store.clone(),
            self.store_shutdown.clone().cancelled_owned(),
        ));
    }

    /// Upstream goes away: connections are refused from now on.
    pub fn stop_store(&mut self) {
        self.store_shutdown.cancel();
    }

    pub fn start_proxy(&mut self) {
        self.proxy = None;
        self.proxy_starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("proxy-{}.log", self.proxy_starts));
        let mut child = Command::new(env!("CARGO_BIN_EXE_image-store-proxy"))
            .args(["--listen", self.listen.as_deref().unwrap_or("127.0.0.1:0")])
            .args(["--catalog-max-age", "0"])
            .args(["--max-catalog-age", &self.max_catalog_age_days.to_string()])
            .args(
                self.upstream_args
                    .clone()
                    .unwrap_or_else(|| vec!["--api-url".into(), self.store_url.clone()]),
            )
            .args(["--retry-delay-ms", &self.retry_delay_ms.to_string()])
            .args(&self.extra_args)
            .args(match &self.cloud {
                Some((config, _)) => vec!["--cloud-config".into(), config.clone().into_os_string()],
                None => vec!["--fake-eucalyptus".into(), SECRET.into()],
            })
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--keyring")
            .arg(&self.keyring)
            .env("RUST_LOG", "info,image_store_proxy=debug")
            .envs(self.proxy_env.iter().map(|(k, v)| (k, v)))
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the proxy binary starts");
        let url = listening_url(&mut child).unwrap_or_else(|line| {
            panic!(
                "unexpected first line {line:?}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        self.proxy = Some(Proxy { child, url, log });
    }

    pub fn kill_proxy(&mut self) {
        self.proxy = None;
    }

    pub fn proxy_log(&self) -> String {
        self.proxy
            .as_ref()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn client(&self) -> ProxyClient {
        let proxy = self.proxy.as_ref().expect("proxy running");
        let secret = self.cloud.as_ref().map_or(SECRET, |(_, secret)| secret);
        ProxyClient::new(&proxy.url, secret, "WKy3rMzOWPouVOxK1p3Ar1C2uRBwa2FBXnCw").unwrap()
    }

    /// `image_store_proxy_downloaded_bytes_total` from the proxy's `/metrics`.
    pub async fn downloaded_bytes(&self) -> u64 {
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{}/metrics", self.proxy_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("image_store_proxy_downloaded_bytes_total "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no downloaded bytes in {text}"))
    }

    pub fn proxy_url(&self) -> String {
        self.proxy.as_ref().expect("proxy running").url.clone()
    }

    pub fn image_uri(&self, set: &str) -> String {
        format!("{}/images/{set}", self.store_url)
    }

    pub async fn dashboard(&self) -> Value {
        let reply = self.client().dashboard().await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    }

    /// The state of `uri` as the 5-second poll reports it.
    pub async fn state(&self, uri: &str) -> Value {
        let reply = self.client().states(&[uri]).await.unwrap();
        state_in(&reply.body, uri).unwrap_or_else(|| panic!("no state for {uri} in {}", reply.body))
    }

    /// POSTs the state's `action` URI, signed; returns the reply's `state`.
    pub async fn act(&self, uri: &str, action: &str) -> Value {
        let state = self.state(uri).await;
        let target = state["actions"][action]
            .as_str()
            .unwrap_or_else(|| panic!("no {action} action in {state}"))
            .to_string();
        let reply = self
            .client()
            .call("POST", &target, Vec::new())
            .await
            .unwrap();
        assert!(reply.body["state"].is_object(), "{}", reply.body);
        reply.body["state"].clone()
    }

    /// Polls until `done` holds for the image's state; panics with the last state and the log.
    pub async fn wait_for(&self, uri: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        // Generous: a loaded CI machine runs the whole suite at once on two cores.
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            let state = self.state(uri).await;
            if done(&state) {
                return state;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last state {state}\nproxy log:\n{}",
                    self.proxy_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens the dashboard (which reconciles installs with the cloud's images in the background)
    /// until the image's state shows `status`.
    pub async fn reconcile_until(&self, uri: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.dashboard().await;
            let state = self.state(uri).await;
            if state["status"] == status {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "still {state} after reconciling; log:\n{}",
                self.proxy_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until the install of `uri` carries an `error-message`: it failed.
    pub async fn wait_for_failure(&self, uri: &str) -> Value {
        self.wait_for(uri, "the install to fail", |state| {
            state.get("error-message").is_some()
        })
        .await
    }

    pub async fn wait_for_status(&self, uri: &str, status: &str) -> Value {
        self.wait_for(uri, &format!("status {status}"), |state| {
            state["status"] == status
        })
        .await
    }

    /// Files the fake-store served for `path_part` (e.g. "files/karmic/kernel"), in order.
    pub fn served(&self, path_part: &str) -> Vec<fake_store::RequestRecord> {
        self.store
            .requests()
            .into_iter()
            .filter(|r| r.path.contains(path_part) && !r.path.ends_with(".asc"))
            .collect()
    }

    pub fn cache_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let root = self.data_dir.join("cache/sha256");
        for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for file in std::fs::read_dir(prefix.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                found.push(file.path());
            }
        }
        found.sort();
        found
    }
}

/// The proxy's base URL from the line it prints on stdout once it listens
/// (`image-store-proxy listening on http://ADDR/api`); the line itself when it printed another.
pub fn listening_url(child: &mut Child) -> Result<String, String> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("image-store-proxy listening on ")
        .and_then(|u| u.strip_suffix("/api"))
        .map(str::to_string)
        .ok_or(line)
}

/// The install bucket the fake cloud under `data_dir` holds (`image-store-<unix seconds>`).
pub fn fake_cloud_bucket(data_dir: &Path) -> PathBuf {
    std::fs::read_dir(data_dir.join("fake-cloud"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("image-store-"))
        })
        .expect("the fake cloud holds an install's bucket")
}

pub fn state_in(body: &Value, uri: &str) -> Option<Value> {
    body["states"]
        .as_array()?
        .iter()
        .find(|s| s["image-uri"] == uri)
        .cloned()
}

/// GnuPG in a throwaway home: the real tool makes the keys and signatures the proxy must judge.
pub struct Gpg {
    home: TempDir,
}

impl Gpg {
    pub fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        Self { home }
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let output = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .expect("gpg is installed (the test command installs it)");
        assert!(
            output.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// A new signing key (ed25519 or rsa3072); returns its armored secret key.
    pub fn generate(&self, uid: &str, algorithm: &str) -> String {
        self.run(&["--quick-gen-key", uid, algorithm, "sign", "never"]);
        String::from_utf8(self.run(&["--armor", "--export-secret-keys", uid])).unwrap()
    }

    pub fn import_secret(&self, armored: &str) {
        let path = self.home.path().join("import.asc");
        std::fs::write(&path, armored).unwrap();
        self.run(&["--import", path.to_str().unwrap()]);
    }

    /// `gpg --detach-sign --armor` of `file` by `uid`.
    pub fn detach_sign(&self, uid: &str, file: &Path, out: &Path) {
        self.run(&[
            "--local-user",
            uid,
            "--armor",
            "--output",
            out.to_str().unwrap(),
            "--detach-sign",
            file.to_str().unwrap(),
        ]);
    }

    pub fn public_keyring(&self, uid: &str) -> Vec<u8> {
        self.run(&["--export", uid])
    }

    /// Revokes `uid`'s key as superseded (a soft revocation: what it signed before stays
    /// good) with `gpg --gen-revoke`, imports the revocation, and returns the key's certificate
    /// as exported then, carrying it: how a keyring publishes a revocation.
    pub fn revoke(&self, uid: &str) -> Vec<u8> {
        let revocation = self.home.path().join("revocation.asc");
        let mut child = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--yes", "--no-tty", "--pinentry-mode", "loopback"])
            .args(["--passphrase", "", "--command-fd", "0", "--output"])
            .arg(&revocation)
            .args(["--gen-revoke", uid])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gpg runs");
        // Revoke it? yes; reason 2, "Key is superseded"; no description; is this okay? yes.
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"y\n2\n\ny\n").unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "gpg --gen-revoke: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.run(&["--import", revocation.to_str().unwrap()]);
        self.public_keyring(uid)
    }
}

/// The uid of the committed test key (keyrings/make-test-key.sh).
pub const TEST_KEY_UID: &str = "test-only@image-store-proxy.invalid";

/// The offset a `Range: bytes=N-` request resumed from.
pub fn resumed_from(request: &fake_store::RequestRecord) -> u64 {
    let range = request
        .range
        .as_deref()
        .unwrap_or_else(|| panic!("no Range in {request:?}"));
    range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Sends signal `name` (TERM, INT, HUP) to process `pid` with the shell's `kill` builtin: a bare
/// machine may have no procps.
pub fn signal(pid: u32, name: &str) {
    let kill = format!("kill -{name} {pid}");
    assert!(
        Command::new("sh")
            .args(["-c", &kill])
            .status()
            .unwrap()
            .success(),
        "{kill}"
    );
}

/// A file to stand for the journal's stream on a child's stderr, and the `JOURNAL_STREAM`
/// value (`device:inode`) that names it, as systemd sets it.
pub fn journal_stream(path: &Path) -> (std::fs::File, String) {
    use std::os::unix::fs::MetadataExt;
    let stream = std::fs::File::create(path).unwrap();
    let meta = stream.metadata().unwrap();
    let identity = format!("{}:{}", meta.dev(), meta.ino());
    (stream, identity)
}

/// Makes every file in `dir` readable by its owner only (0600), as credentials are kept.
pub fn close_to_others(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

/// `bin/<name>` of python-simplestreams' venv (`$IMAGE_STORE_PROXY_SIMPLESTREAMS_VENV`, else
/// `$IMAGE_STORE_PROXY_TEST_VENV`, else `target/test-peers/venv`). Under `./test.sh`, which
/// installs it and sets `IMAGE_STORE_PROXY_TEST_VENV`, a missing tool fails the test; a bare
/// `cargo test` elsewhere says so and the caller skips.
pub fn simplestreams_tool(name: &str) -> Option<PathBuf> {
    let promised = std::env::var_os("IMAGE_STORE_PROXY_TEST_VENV").is_some();
    let venv = std::env::var_os("IMAGE_STORE_PROXY_SIMPLESTREAMS_VENV")
        .or_else(|| std::env::var_os("IMAGE_STORE_PROXY_TEST_VENV"))
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-peers/venv"));
    let tool = venv.join("bin").join(name);
    if tool.exists() {
        return Some(tool);
    }
    let missing = format!(
        "python-simplestreams is not installed ({} is missing): `python3 -m venv V && \
         V/bin/pip install python-simplestreams==0.1.0.post59`, then \
         IMAGE_STORE_PROXY_SIMPLESTREAMS_VENV=V",
        tool.display()
    );
    assert!(!promised, "{missing}");
    eprintln!("SKIPPED: {missing}");
    None
}

/// Bundles `image` into `out` at level 1 on 2 threads with `keys` (spliced, or with
/// `--recompress`), telling nobody of its steps.
pub fn bundle_at_level_1(
    image: &image_store_proxy::bundle::SourceImage<'_>,
    keys: &image_store_proxy::bundle::keys::BundleKeys,
    out: &Path,
    recompress: bool,
) -> image_store_proxy::bundle::Bundle {
    struct Quiet;
    impl image_store_proxy::bundle::BundleSink for Quiet {
        fn step(&self, _: image_store_proxy::status::Step) {}
    }
    let gzip = image_store_proxy::bundle::gzip::GzipSettings {
        level: 1,
        threads: 2,
        recompress,
    };
    image_store_proxy::bundle::bundle_artifact(
        image,
        keys,
        out,
        gzip,
        &Quiet,
        &CancellationToken::new(),
    )
    .unwrap()
}
