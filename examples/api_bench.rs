//! The UI API's benchmarks, run by `bench/load` and `bench/api` (one command each; timing claims
//! live here, not in timed tests). Both start fake-store in this process and the release proxy
//! binary (`--fake-eucalyptus`) as a child, on loopback, and sign every request as the Store
//! servlet does, with the nonce check on.
//!
//! - `load`: two concurrent installs, alone and under 1,000 pollers of `POST /api/states`,
//!   alternated for a few rounds: errors, install times, and the slowdown ratio.
//! - `api`: `wrk` against `GET /api/dashboard` with a cached catalog of 200 images (requests/s),
//!   then against `POST /api/states` for 20 images while an install runs (p99). wrk cannot sign,
//!   so requests are minted here beforehand, each with its own nonce, into a file that
//!   `bench/api-signed.lua` walks, sending each once.

use clap::{Parser, Subcommand};
use flate2::Compression;
use flate2::write::GzEncoder;
use image_store_proxy::api::signature::{self, Stamp};
use image_store_proxy::client::ProxyClient;
use image_store_proxy::db::now_unix;
use reqwest::Url;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret-0123456789";
const CLIENT_ID: &str = "bench";
/// `--proxy`, when given.
static PROXY_BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

#[derive(Parser)]
struct Cli {
    /// Where images, state and request files go [default: a temporary directory]
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
    /// The proxy binary to measure [default: the release build beside this example]
    #[arg(long, global = true)]
    proxy: Option<PathBuf>,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Two installs alone, then under pollers, alternated: errors and the slowdown
    Load {
        #[arg(long, default_value_t = 1000)]
        pollers: usize,
        /// Each poller's pause between polls: the Store tab's own cadence by default
        #[arg(long, default_value_t = 5000)]
        poll_every_ms: u64,
        /// Size of each installed image (raw MiB)
        #[arg(long, default_value_t = 256)]
        image_mib: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// wrk on the dashboard (200 images), then on states polls while an install runs
    Api {
        /// The wrk Lua script that walks a file of minted requests
        #[arg(long, default_value = "bench/api-signed.lua")]
        lua: PathBuf,
        #[arg(long, default_value_t = 200)]
        images: usize,
        /// Size of the image installed during the states run (raw MiB): it must outlast the run
        #[arg(long, default_value_t = 1024)]
        install_mib: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Dashboard requests minted (each is sent once): more than the run can send
        #[arg(long, default_value_t = 600_000)]
        dashboard_requests: usize,
        #[arg(long, default_value_t = 8)]
        states_connections: usize,
        #[arg(long, default_value_t = 5)]
        states_seconds: u64,
        #[arg(long, default_value_t = 300_000)]
        states_requests: usize,
    },
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".into())
}

/// Disk-like bytes (zero runs, text, noise in 4 KiB blocks), gzipped fast as upstreams serve them.
fn image_gz(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005) | 1;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let mut block = [0u8; 4096];
    let text = b"bench image-store-proxy filesystem block, text-like data\n";
    for n in 0..len.div_ceil(4096) {
        match n % 3 {
            0 => block.fill(0),
            1 => block
                .iter_mut()
                .zip(text.iter().cycle())
                .for_each(|(b, t)| *b = *t),
            _ => {
                for chunk in block.chunks_mut(8) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    chunk.copy_from_slice(&state.to_le_bytes());
                }
            }
        }
        let take = (len - n * 4096).min(4096);
        encoder.write_all(&block[..take]).unwrap();
    }
    encoder.finish().unwrap()
}

/// One image set for fake-store: kernel, ramdisk, image.gz and meta.json.
fn write_set(dir: &Path, name: &str, meta: Value, image_mib_or_kib: (usize, u64)) {
    let set = dir.join(name);
    std::fs::create_dir_all(&set).unwrap();
    let (len, seed) = image_mib_or_kib;
    // Each set its own kernel: concurrent installs of one file collide in the cache (a known bug).
    std::fs::write(set.join("kernel"), image_gz(seed ^ 2, 64 << 10)).unwrap();
    std::fs::write(set.join("ramdisk.gz"), image_gz(seed ^ 1, 32 << 10)).unwrap();
    std::fs::write(set.join("image.gz"), image_gz(seed, len)).unwrap();
    std::fs::write(set.join("meta.json"), meta.to_string()).unwrap();
}

fn meta(i: usize, title: &str) -> Value {
    json!({
        "title": title,
        "version": format!("{}.{:02}", 8 + i / 12, 4 + (i % 12)),
        "product": format!("bench-linux-{}", i % 25),
        "summary": format!("Bench Linux {i}: a server image for the API benchmark"),
        "description-html": "<p>A generated image set.</p><ul><li>kernel and ramdisk</li><li>small root disk</li></ul>",
        "tags": ["bench", "server", format!("n{i}")],
        "arch": "x86_64",
        "provider": {"title": "Bench (generated)", "uri": "https://example.org/"},
        "section": format!("Section {}", i / 20),
    })
}

struct Upstream {
    store_url: String,
    keyring: PathBuf,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn start_upstream(work: &Path, images: &Path) -> Upstream {
    let keyring = work.join("keyring.gpg");
    std::fs::write(&keyring, fake_store::TEST_KEYRING).unwrap();
    let store = fake_store::FakeStore::open(fake_store::StoreConfig {
        dir: images.to_path_buf(),
        signing_key: None,
        updated: Some("2026-11-20T10:00:00Z".into()),
        public_url: None,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store_url = format!("http://{}/api", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(fake_store::serve(
        listener,
        store,
        shutdown.clone().cancelled_owned(),
    ));
    Upstream {
        store_url,
        keyring,
        _shutdown: shutdown.drop_guard(),
    }
}

struct Proxy {
    child: Child,
    url: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release proxy binary beside this example (`target/release/examples/..` -> `target/release`).
fn proxy_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("image-store-proxy");
    assert!(
        binary.exists(),
        "{} is missing: build it first",
        binary.display()
    );
    binary
}

fn start_proxy(upstream: &Upstream, data_dir: &Path) -> Proxy {
    std::fs::create_dir_all(data_dir).unwrap();
    let binary = PROXY_BINARY.get().cloned().unwrap_or_else(proxy_binary);
    let log = std::fs::File::create(data_dir.join("proxy.log")).unwrap();
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--api-url", &upstream.store_url])
        .args(["--catalog-max-age", "3600", "--workers", "2"])
        // The fixture's catalog has a fixed date: never too old for the bench.
        .args(["--max-catalog-age", "0"])
        .args(["--fake-eucalyptus", SECRET])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--keyring")
        .arg(&upstream.keyring)
        .env("RUST_LOG", "warn")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("the proxy starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("image-store-proxy listening on ")
        .and_then(|u| u.strip_suffix("/api"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Proxy { child, url }
}

fn client(proxy: &Proxy) -> ProxyClient {
    ProxyClient::new(&proxy.url, SECRET, CLIENT_ID).unwrap()
}

/// Waits until the proxy serves a catalog of `count` images; returns their URIs by title.
async fn wait_for_catalog(proxy: &Proxy, count: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(reply) = client(proxy).dashboard().await {
            let images = reply.body["images"].as_array().cloned().unwrap_or_default();
            if images.len() == count {
                return images
                    .iter()
                    .map(|i| {
                        (
                            i["title"].as_str().unwrap().to_string(),
                            i["uri"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the proxy never served the catalog"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn state_of<'a>(body: &'a Value, uri: &str) -> Option<&'a Value> {
    body["states"]
        .as_array()?
        .iter()
        .find(|s| s["image-uri"] == uri)
}

/// Starts the install of `uri` by POSTing its `install` action, signed.
async fn start_install(proxy: &Proxy, uri: &str) {
    let client = client(proxy);
    let reply = client.states(&[uri]).await.unwrap();
    let action = state_of(&reply.body, uri).unwrap()["actions"]["install"]
        .as_str()
        .unwrap_or_else(|| panic!("no install action in {}", reply.body))
        .to_string();
    let reply = client.call("POST", &action, Vec::new()).await.unwrap();
    assert!(reply.body["state"].is_object(), "{}", reply.body);
}

/// Polls (every 50 ms) until `uri` is installed; panics on failure.
async fn wait_installed(proxy: &Proxy, uri: &str) {
    let client = client(proxy);
    loop {
        let reply = client.states(&[uri]).await.unwrap();
        let state = state_of(&reply.body, uri).unwrap();
        if let Some(error) = state.get("error-message") {
            panic!("the install of {uri} failed: {error}");
        }
        if state["status"] == "installed" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds from `started` until `uri`, whose install this starts, is installed.
async fn time_install(proxy: &Proxy, uri: &str, started: Instant) -> f64 {
    start_install(proxy, uri).await;
    wait_installed(proxy, uri).await;
    started.elapsed().as_secs_f64()
}

/// What the pollers saw.
#[derive(Default)]
struct PollTally {
    polls: AtomicUsize,
    errors: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
}

impl PollTally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(what);
    }
}

/// One Store tab: polls the two images' states every `every` (first poll at a random offset, so
/// the pollers do not march in step), checks each answer, until `stop`.
async fn poller(
    client: ProxyClient,
    uris: [String; 2],
    every: Duration,
    offset: Duration,
    tally: Arc<PollTally>,
    stop: CancellationToken,
) {
    tokio::select! {
        () = tokio::time::sleep(offset) => {}
        () = stop.cancelled() => return,
    }
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        tally.polls.fetch_add(1, Ordering::Relaxed);
        match client.states(&[&uris[0], &uris[1]]).await {
            Err(error) => tally.error(format!("request failed: {error}")),
            Ok(reply) if reply.status != 200 => {
                tally.error(format!("status {}: {}", reply.status, reply.body))
            }
            Ok(reply) => {
                let right = uris.iter().all(|uri| {
                    state_of(&reply.body, uri).is_some_and(|state| {
                        state.get("error-message").is_none()
                            && ["uninstalled", "downloading", "installing", "installed"]
                                .contains(&state["status"].as_str().unwrap_or(""))
                    })
                });
                if !right {
                    tally.error(format!("wrong answer: {}", reply.body));
                }
            }
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn bench_load(
    work: &Path,
    pollers: usize,
    poll_every_ms: u64,
    image_mib: usize,
    rounds: usize,
) -> bool {
    let images = work.join("images");
    println!("writing two image sets of {image_mib} MiB each...");
    for (i, name) in ["alpha", "beta"].iter().enumerate() {
        write_set(
            &images,
            name,
            meta(i, &format!("Bench {name}")),
            (image_mib << 20, 100 + i as u64),
        );
    }
    let upstream = start_upstream(work, &images).await;
    let every = Duration::from_millis(poll_every_ms);
    let (mut quiet, mut loaded) = (Vec::new(), Vec::new());
    let (mut polls, mut errors) = (0, 0);
    let mut first_error = None;
    // Round 0 warms the page cache and the binaries up and is not counted.
    for round in 0..=rounds {
        // Alternate which goes first, so drift in the machine's load hits both alike.
        let order: &[bool] = match round {
            0 => &[false],
            _ if round % 2 == 1 => &[false, true],
            _ => &[true, false],
        };
        for &with_pollers in order {
            let data_dir = work.join(format!("proxy-{round}-{with_pollers}"));
            let proxy = start_proxy(&upstream, &data_dir);
            let catalog = wait_for_catalog(&proxy, 2).await;
            let uris = [catalog[0].1.clone(), catalog[1].1.clone()];
            let tally = Arc::new(PollTally::default());
            let stop = CancellationToken::new();
            let mut tasks = Vec::new();
            if with_pollers {
                for n in 0..pollers {
                    let offset = every.mul_f64(n as f64 / pollers as f64);
                    tasks.push(tokio::spawn(poller(
                        client(&proxy),
                        uris.clone(),
                        every,
                        offset,
                        tally.clone(),
                        stop.clone(),
                    )));
                }
                // Let every poller reach its stride before the installs start.
                tokio::time::sleep(every + Duration::from_millis(200)).await;
            }
            let load_before = load_average();
            let started = Instant::now();
            let (a, b) = tokio::join!(
                time_install(&proxy, &uris[0], started),
                time_install(&proxy, &uris[1], started)
            );
            stop.cancel();
            for task in tasks {
                task.await.unwrap();
            }
            let slowest = a.max(b);
            println!(
                "round {} {:<13} installs {a:6.2}s {b:6.2}s   polls {:6}  errors {}   load average {load_before} -> {}",
                if round == 0 {
                    "0 (warm-up)".to_string()
                } else {
                    round.to_string()
                },
                if with_pollers {
                    "with pollers"
                } else {
                    "alone"
                },
                tally.polls.load(Ordering::Relaxed),
                tally.errors.load(Ordering::Relaxed),
                load_average()
            );
            if round == 0 {
            } else if with_pollers {
                loaded.push(slowest);
                polls += tally.polls.load(Ordering::Relaxed);
                errors += tally.errors.load(Ordering::Relaxed);
                if first_error.is_none() {
                    first_error = tally.first_error.lock().unwrap().take();
                }
            } else {
                quiet.push(slowest);
            }
            drop(proxy);
            let _ = std::fs::remove_dir_all(&data_dir);
        }
    }
    let (quiet, loaded) = (median(&mut quiet), median(&mut loaded));
    let ratio = loaded / quiet;
    println!(
        "\n{pollers} pollers every {poll_every_ms} ms, two installs of {image_mib} MiB, {rounds} rounds"
    );
    println!("polls {polls}, errors {errors}");
    if let Some(error) = first_error {
        println!("first error: {error}");
    }
    println!("median time to both installed: alone {quiet:.2}s, with pollers {loaded:.2}s");
    println!("ratio with/without pollers: {ratio:.3} (target <= 1.20)");
    errors == 0 && ratio <= 1.20
}

/// Mints `count` signed requests into `path`, one a line: for GET the path and query, for POST the
/// form body. Returns one more, not in the file, to check before the run.
fn mint(
    path: &Path,
    proxy: &Proxy,
    method: &str,
    target: &str,
    params: &[(String, String)],
    count: usize,
) -> String {
    let url = Url::parse(&format!("{}{target}", proxy.url)).unwrap();
    let host = signature::signing_host(url.host_str().unwrap(), url.port());
    // The UI's signature lives 30 s; these must also outlive minting and wrk's start, so 60 s
    // (the proxy accepts up to 15 minutes). Short enough that one run's nonces have expired, and
    // can be swept from the proxy's bounded nonce book, by the time the next run needs room.
    // Everything else is as the UI signs.
    let expires = now_unix() + 60;
    let run = now_unix();
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut check = String::new();
    for n in 0..=count {
        let mut signed = params.to_vec();
        signature::sign_request(
            SECRET.as_bytes(),
            method,
            &host,
            url.path(),
            &mut signed,
            &Stamp {
                client_id: CLIENT_ID,
                expires,
                nonce: &format!("{run}{n:09}"),
            },
        );
        let encoded = signed
            .iter()
            .map(|(n, v)| format!("{}={}", signature::encode(n), signature::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let line = if method == "GET" {
            format!("{}?{encoded}", url.path())
        } else {
            encoded
        };
        if n == count {
            check = line;
        } else {
            writeln!(out, "{line}").unwrap();
        }
    }
    out.flush().unwrap();
    check
}

/// What wrk reported.
struct WrkRun {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: String,
    output: String,
}

fn millis(text: &str) -> f64 {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let number: f64 = number.parse().unwrap();
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => panic!("unit {unit}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_wrk(
    lua: &Path,
    url: &str,
    file: &Path,
    method: &str,
    threads: usize,
    connections: usize,
    seconds: u64,
    gzip: bool,
) -> WrkRun {
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(lua)
        .arg(url)
        .arg("--")
        .arg(file)
        .arg(threads.to_string())
        .arg(method)
        .args(gzip.then_some("gzip"))
        .output()
        .expect("wrk runs (bench/api installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "wrk failed:\n{text}");
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let percentile = |p: &str| -> f64 {
        text.lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(p)).then(|| words.next().map(millis))?
            })
            .unwrap_or(f64::NAN)
    };
    WrkRun {
        requests_per_second: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: percentile("50%"),
        p99_ms: percentile("99%"),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        socket_errors: field("Socket errors:").unwrap_or("none").to_string(),
        output: text,
    }
}

/// Sends one minted request (`line`, not in wrk's file) to check the minting before the run.
async fn check_minted(proxy: &Proxy, method: &str, target: &str, line: String) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = if method == "GET" {
        http.get(format!("{}{line}", proxy.url)).send().await
    } else {
        http.post(format!("{}{target}", proxy.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(line)
            .send()
            .await
    }
    .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success(), "a minted request was refused: {body}");
    println!(
        "{method} {target}: a reply is {} bytes; sizing the run...",
        body.len()
    );
}

#[allow(clippy::too_many_arguments)]
async fn bench_api(
    work: &Path,
    lua: &Path,
    images: usize,
    install_mib: usize,
    threads: usize,
    connections: usize,
    seconds: u64,
    dashboard_requests: usize,
    states_connections: usize,
    states_seconds: u64,
    states_requests: usize,
) -> bool {
    let dir = work.join("images");
    println!("writing {images} image sets (one of {install_mib} MiB, to install)...");
    for i in 0..images - 1 {
        write_set(
            &dir,
            &format!("set-{i:03}"),
            meta(i, &format!("Bench Linux {i}")),
            (16 << 10, i as u64),
        );
    }
    write_set(
        &dir,
        "zz-install",
        meta(images, "Bench install"),
        (install_mib << 20, 7),
    );
    let upstream = start_upstream(work, &dir).await;
    let proxy = start_proxy(&upstream, &work.join("proxy"));
    let catalog = wait_for_catalog(&proxy, images).await;
    println!("the proxy serves a catalog of {} images", catalog.len());

    // As the servlet asks (no compression), then as a browser on the Store page asks (gzip).
    let mut dashboard_rates = Vec::new();
    for gzip in [false, true] {
        let dashboard_file = work.join("dashboard.requests");
        let check = mint(
            &dashboard_file,
            &proxy,
            "GET",
            "/api/dashboard",
            &[],
            dashboard_requests,
        );
        check_minted(&proxy, "GET", "/api/dashboard", check).await;
        let load = load_average();
        let dashboard = run_wrk(
            lua,
            &format!("{}/api/dashboard", proxy.url),
            &dashboard_file,
            "GET",
            threads,
            connections,
            seconds,
            gzip,
        );
        println!("{}", dashboard.output);
        let encoding = if gzip { "gzip" } else { "identity" };
        println!(
            "GET /api/dashboard ({images} images, {encoding}): {:.0} requests/s (target >= 20000), p50 {:.2} ms, p99 {:.2} ms, non-2xx {}, socket errors {}; load average before {load}\n",
            dashboard.requests_per_second,
            dashboard.p50_ms,
            dashboard.p99_ms,
            dashboard.non_2xx,
            dashboard.socket_errors
        );
        dashboard_rates.push((encoding, dashboard));
    }

    // States polls for 20 images, the one being installed among them, while its install runs.
    let install_uri = catalog
        .iter()
        .find(|(title, _)| title == "Bench install")
        .unwrap()
        .1
        .clone();
    let mut asked: Vec<(String, String)> = catalog
        .iter()
        .filter(|(_, uri)| *uri != install_uri)
        .take(19)
        .map(|(_, uri)| ("image-uri".to_string(), uri.clone()))
        .collect();
    asked.push(("image-uri".to_string(), install_uri.clone()));
    let states_file = work.join("states.requests");
    let check = mint(
        &states_file,
        &proxy,
        "POST",
        "/api/states",
        &asked,
        states_requests,
    );
    check_minted(&proxy, "POST", "/api/states", check).await;
    start_install(&proxy, &install_uri).await;
    // Wait for the bytes to flow, so the whole run overlaps real install work.
    let client = client(&proxy);
    loop {
        let reply = client.states(&[&install_uri]).await.unwrap();
        let state = state_of(&reply.body, &install_uri).unwrap().clone();
        if state.get("error-message").is_some() {
            panic!("the install failed: {state}");
        }
        if state["progress-percentage"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let load = load_average();
    let states = run_wrk(
        lua,
        &format!("{}/api/states", proxy.url),
        &states_file,
        "POST",
        threads,
        states_connections,
        states_seconds,
        false,
    );
    let after = client.states(&[&install_uri]).await.unwrap();
    let install_state = state_of(&after.body, &install_uri).unwrap().clone();
    let install_ran_throughout = install_state["status"] != "installed";
    println!("{}", states.output);
    println!(
        "POST /api/states (20 images) during an install: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms (target < 20), non-2xx {}, socket errors {}; load average before {load}",
        states.requests_per_second,
        states.p50_ms,
        states.p99_ms,
        states.non_2xx,
        states.socket_errors
    );
    if !install_ran_throughout {
        println!(
            "WARNING: the install finished before the run did; raise --install-mib to cover it"
        );
    } else {
        println!(
            "the install was still running at the end ({}, {}%)",
            install_state["status"], install_state["progress-percentage"]
        );
    }
    for (encoding, run) in &dashboard_rates {
        println!(
            "dashboard, {encoding}: {:.0} requests/s, non-2xx {}",
            run.requests_per_second, run.non_2xx
        );
    }
    // The servlet's own requests are the target; gzip is what a browser gets.
    let dashboard = &dashboard_rates[0].1;
    let dashboard_ok = dashboard.non_2xx == 0 && dashboard.requests_per_second >= 20_000.0;
    let states_ok = states.non_2xx == 0 && states.p99_ms < 20.0 && install_ran_throughout;
    println!(
        "\ndashboard {}; states {}",
        if dashboard_ok { "MET" } else { "NOT MET" },
        if states_ok { "MET" } else { "NOT MET" }
    );
    dashboard_ok && states_ok
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(proxy) = cli.proxy.clone() {
        PROXY_BINARY.set(proxy).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    image_store_proxy::fetch::install_crypto_provider();
    let temp;
    let work = match cli.work_dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir().unwrap();
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&work).unwrap();
    println!(
        "{} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let met = runtime.block_on(async {
        match cli.bench {
            Bench::Load {
                pollers,
                poll_every_ms,
                image_mib,
                rounds,
            } => bench_load(&work, pollers, poll_every_ms, image_mib, rounds).await,
            Bench::Api {
                lua,
                images,
                install_mib,
                threads,
                connections,
                seconds,
                dashboard_requests,
                states_connections,
                states_seconds,
                states_requests,
            } => {
                bench_api(
                    &work,
                    &lua,
                    images,
                    install_mib,
                    threads,
                    connections,
                    seconds,
                    dashboard_requests,
                    states_connections,
                    states_seconds,
                    states_requests,
                )
                .await
            }
        }
    });
    if met {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
