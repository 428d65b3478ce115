//! Parallel transfers (issue 16, point 3); run by `bench/transfers`.
//!
//! Usage: transfers_bench WORK_DIR [DOWNLOAD_MIB] [KIB_PER_CONNECTION] [UPLOAD_MIB] [RUNS]
//! (defaults 256, 16384, 100, 3)
//!
//! 1. Download: a DOWNLOAD_MIB MiB file served by `fake-store --kib-per-second`, which holds each
//!    response (each connection) to that rate on its own: a link where one TCP stream is slower
//!    than the pipe. The proxy's own download (`Fetcher::download`, the install's road to the
//!    `.part` file and its SHA-256) is timed with 1, 2, 4 and 8 connections, alternating, RUNS
//!    rounds; the SHA-256 is checked each time.
//! 2. Upload: the proxy binary installs an UPLOAD_MIB MiB image of noise (`--compression-level 0`,
//!    so the bundle is as large) into moto (`tests/peers/moto_peer.py`, a fresh one per run),
//!    with `--upload-concurrency` 1 and 4, alternating; timed from the first part sent (beside
//!    the download when the install overlaps it, or "Uploading ..." after it) to "Registering
//!    ...", with the proxy's peak RSS (VmHWM).
//!
//! Prints each run and the medians.

mod support;

use image_store_proxy::client::ProxyClient;
use image_store_proxy::fetch::{Fetcher, RetryPolicy};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{cloud_config, median, proc_status_kib, start_and_read_url, start_moto};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret-0123456789";
const UPLOAD_TITLE: &str = "Transfers Bench Upload";

fn main() {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(args.next().expect("WORK_DIR"));
    let mut number = |default: u64| {
        args.next()
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let download_mib = number(256);
    let kib_per_connection = number(16384);
    let upload_mib = number(100);
    let runs = number(3) as usize;
    let root = std::env::current_dir().unwrap();
    let bin = root.join("target/release");
    let keyring = root.join("keyrings/test-keyring.gpg");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    let store = work.join("store");
    let download_bytes = write_set(
        &store.join("download"),
        "Transfers Bench Download",
        download_mib,
    );
    write_set(&store.join("upload"), UPLOAD_TITLE, upload_mib);
    let digest = hex::encode(Sha256::digest(&download_bytes));
    drop(download_bytes);
    let (mut fake_store, api) = start_and_read_url(
        Command::new(bin.join("fake-store"))
            .arg(&store)
            .args(["--listen", "127.0.0.1:0"])
            .arg(format!("--kib-per-second={kib_per_connection}")),
        &work.join("fake-store.log"),
    );
    image_store_proxy::fetch::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    println!(
        "download: {download_mib} MiB from fake-store at {kib_per_connection} KiB/s per connection"
    );
    let connections = [1usize, 2, 4, 8];
    let mut times = vec![Vec::new(); connections.len()];
    for run in 1..=runs {
        for (n, &count) in connections.iter().enumerate() {
            let seconds =
                runtime.block_on(download(&api, &work, download_mib << 20, count, &digest));
            println!("run {run}: {count} connection(s) {seconds:.2} s");
            times[n].push(seconds);
        }
    }
    println!("\nconnections  median download  rate");
    for (n, &count) in connections.iter().enumerate() {
        let median = median(&mut times[n]);
        println!(
            "{count:>11}  {median:>13.2} s  {:>6.1} MiB/s",
            download_mib as f64 / median
        );
    }

    // Upload: full speed from the store, so the download is not what is timed.
    let _ = fake_store.kill();
    let _ = fake_store.wait();
    let (mut fake_store, api) = start_and_read_url(
        Command::new(bin.join("fake-store"))
            .arg(&store)
            .args(["--listen", "127.0.0.1:0"]),
        &work.join("fake-store.log"),
    );
    println!("\nupload: {upload_mib} MiB of noise into moto, bundled at level 0");
    let concurrencies = [1usize, 4];
    let mut uploads = vec![Vec::new(); concurrencies.len()];
    let mut peaks = vec![Vec::new(); concurrencies.len()];
    for run in 1..=runs {
        for (n, &concurrency) in concurrencies.iter().enumerate() {
            let (seconds, peak_kib) =
                runtime.block_on(upload(&bin, &root, &keyring, &api, &work, concurrency));
            println!(
                "run {run}: --upload-concurrency {concurrency}: upload {seconds:.2} s, proxy peak RSS {:.1} MiB",
                peak_kib as f64 / 1024.0
            );
            uploads[n].push(seconds);
            peaks[n].push(peak_kib as f64 / 1024.0);
        }
    }
    println!("\nconcurrency  median upload  rate          median peak RSS");
    for (n, &concurrency) in concurrencies.iter().enumerate() {
        let median_upload = median(&mut uploads[n]);
        println!(
            "{concurrency:>11}  {median_upload:>11.2} s  {:>6.1} MiB/s  {:>8.1} MiB",
            upload_mib as f64 / median_upload,
            median(&mut peaks[n])
        );
    }
    let _ = fake_store.kill();
    let _ = fake_store.wait();
}

/// An image set of one raw image of `mib` MiB of noise (xorshift64); returns the bytes.
fn write_set(dir: &Path, title: &str, mib: u64) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ mib;
    let mut bytes = Vec::with_capacity((mib << 20) as usize);
    while bytes.len() < (mib << 20) as usize {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::write(dir.join("image"), &bytes).unwrap();
    let product = dir.file_name().unwrap().to_string_lossy();
    let meta = serde_json::json!({"title": title, "version": "1", "product": format!("bench-{product}"),
        "summary": "noise", "tags": ["bench"], "arch": "x86_64"});
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
    bytes
}

/// Seconds for the proxy's download of the bench file over `connections`; checks the SHA-256.
async fn download(api: &str, work: &Path, size: u64, connections: usize, digest: &str) -> f64 {
    let partial = work.join("download.part");
    let _ = std::fs::remove_file(&partial);
    let fetcher = Fetcher::new(RetryPolicy::default())
        .unwrap()
        .with_connections(connections);
    let url = format!("{api}/files/download/image");
    let started = Instant::now();
    let got = fetcher
        .download(&url, &partial, size, &|_| {}, &CancellationToken::new())
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(got.to_string(), digest, "the download hashes as the file");
    std::fs::remove_file(&partial).unwrap();
    seconds
}

/// A fresh moto, and the proxy installing the upload set into it: seconds from the first
/// upload status line to registering, and the proxy's peak RSS in KiB.
async fn upload(
    bin: &Path,
    root: &Path,
    keyring: &Path,
    api: &str,
    work: &Path,
    concurrency: usize,
) -> (f64, u64) {
    let run = work.join("upload-run");
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run).unwrap();
    let moto = start_moto(root, &run);
    let config = cloud_config(&run, &moto, SECRET);
    let (mut proxy, url) = start_and_read_url(
        Command::new(bin.join("image-store-proxy"))
            .args(["--api-url", api, "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(run.join("data"))
            .arg("--keyring")
            .arg(keyring)
            .arg("--cloud-config")
            .arg(&config)
            .arg("--compression-level=0")
            .arg(format!("--upload-concurrency={concurrency}"))
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY"),
        &run.join("proxy.log"),
    );
    let client = ProxyClient::new(url.trim_end_matches("/api"), SECRET, "bench").unwrap();
    let uri = loop {
        if let Ok(uris) = client.image_uris(&[UPLOAD_TITLE.to_string()]).await {
            break uris[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reply = client.act(&uri, "install").await.unwrap();
    assert!(reply.error_message().is_none(), "{:?}", reply.body);
    let mut uploading = None;
    let seconds = loop {
        let reply = client.states(&[&uri]).await.unwrap();
        let state = &reply.body["states"][0];
        if let Some(error) = state["error-message"].as_str() {
            panic!("the install failed: {error}");
        }
        let detail = state["status-detail"].as_str().unwrap_or("");
        // The upload begins beside the download when the install overlaps it ("Downloading
        // machine image: ..., 1 part sent"), or after it ("Uploading machine image bundle ...").
        let sending = detail.starts_with("Uploading machine image bundle")
            || (detail.starts_with("Downloading machine image")
                && detail.ends_with(" sent")
                && !detail.ends_with(", 0 parts sent"));
        if uploading.is_none() && sending {
            uploading = Some(Instant::now());
        }
        if let Some(since) = uploading
            && (detail.starts_with("Registering") || state["status"] == "installed")
        {
            break since.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let peak = proc_status_kib(proxy.id(), "VmHWM:");
    let _ = proxy.kill();
    let _ = proxy.wait();
    drop(moto);
    let _ = std::fs::remove_dir_all(&run);
    (seconds, peak)
}
