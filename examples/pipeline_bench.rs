//! The install pipeline against the shell pipeline it replaces (issue 9); run by `bench/pipeline`.
//!
//! Usage: pipeline_bench WORK_DIR MIB RUNS LEVELS...
//!
//! 1. Writes an image set into WORK_DIR/store (kept for the next run): a MIB MiB disk image of
//!    zero runs, text-like and random stretches, gzipped as upstreams serve it, with a small
//!    kernel and ramdisk; and serves it with `fake-store` (release build, test signing key).
//! 2. Alternates RUNS times: (a) the proxy (`--fake-eucalyptus`, fresh data dir) installing the
//!    set, timed from the install request to `installed`; (b) the shell pipeline doing the same
//!    work on the same upstream: curl, gpgv, sha256sum, gunzip, then
//!    `tar | tee >(sha1sum) | gzip -6 | openssl enc -aes-128-cbc | split -b 10M` per file.
//! 3. Times each stage of the pipeline alone on one core, on the same bytes (the deflate limit).
//! 4. Installs once more at each further level of LEVELS for the level table, and once with one
//!    deflate thread.
//!
//! Prints medians, the ratio a/b, the install's input rate as a percentage of single-core deflate,
//! the proxy's peak RSS (VmHWM) and CPU time, and the per-stage table.

use aes::Aes128;
use cbc::cipher::{BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
use flate2::{Compress, Compression, FlushCompress};
use image_store_proxy::bundle::gzip::{GzipSettings, GzipWriter};
use image_store_proxy::client::ProxyClient;
use image_store_proxy::trust::Keyring;
use serde_json::Value;
use sha1::{Digest, Sha1};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret";
const TITLE: &str = "Pipeline Bench Image";
const MIB: f64 = (1 << 20) as f64;

fn main() {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(args.next().expect("WORK_DIR"));
    let mib: u64 = args.next().map_or(1024, |m| m.parse().expect("MIB"));
    let runs: usize = args.next().map_or(3, |r| r.parse().expect("RUNS"));
    let mut levels: Vec<u32> = args.map(|l| l.parse().expect("LEVEL")).collect();
    if levels.is_empty() {
        levels = vec![6, 1];
    }
    let root = std::env::current_dir().unwrap();
    let bin = root.join("target/release");
    let keyring = root.join("keyrings/test-keyring.gpg");
    std::fs::create_dir_all(&work).unwrap();

    let store = work.join("store");
    let set = store.join("bench");
    prepare_set(&set, mib);
    let raw_total = raw_sizes(&set);
    let (mut fake_store, api) = start_fake_store(&bin, &store);
    println!(
        "image: {mib} MiB raw ({:.0} MiB gzipped), kernel and ramdisk {:.1} MiB raw; upstream {api}",
        file_len(&set.join("image.gz")) as f64 / MIB,
        (raw_total - (mib << 20)) as f64 / MIB
    );
    let files = catalog_files(&api);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    image_store_proxy::fetch::install_crypto_provider();

    let level = levels[0];
    let mut proxy_times = Vec::new();
    let mut shell_times = Vec::new();
    let mut first: Option<Install> = None;
    for run in 1..=runs {
        let install =
            runtime.block_on(install_with_proxy(&bin, &keyring, &api, &work, level, None));
        println!(
            "run {run}: (a) proxy {:.2} s (CPU {:.1} s, peak RSS {:.1} MiB)",
            install.seconds,
            install.cpu_seconds,
            install.peak_rss_kib as f64 / 1024.0
        );
        proxy_times.push(install.seconds);
        first.get_or_insert(install);
        let shell = shell_pipeline(&work, &files, &keyring, level);
        println!("run {run}: (b) shell pipeline {shell:.2} s");
        shell_times.push(shell);
    }
    let a = median(&mut proxy_times);
    let b = median(&mut shell_times);
    let first = first.expect("at least one run");

    println!("\nsingle-core stages on the same bytes (level {level}):");
    let stages = stage_breakdown(&set, &keyring, &files, level);
    let deflate_rate = mib as f64 / stages.deflate_seconds;

    let mut table = vec![(level, a, first.bundled_bytes)];
    for &other in &levels[1..] {
        let install =
            runtime.block_on(install_with_proxy(&bin, &keyring, &api, &work, other, None));
        println!(
            "level {other}: proxy {:.2} s, bundle {:.0} MiB",
            install.seconds,
            install.bundled_bytes as f64 / MIB
        );
        table.push((other, install.seconds, install.bundled_bytes));
    }
    let single = runtime.block_on(install_with_proxy(
        &bin,
        &keyring,
        &api,
        &work,
        level,
        Some(1),
    ));
    println!(
        "level {level}, one deflate thread: proxy {:.2} s",
        single.seconds
    );
    let _ = fake_store.kill();

    println!("\nlevel  install time  bundle size (all three files)");
    for (level, seconds, bytes) in &table {
        println!(
            "{level:>5}  {seconds:>10.2} s  {:>8.1} MiB",
            *bytes as f64 / MIB
        );
    }
    let input_rate = raw_total as f64 / MIB / a;
    println!(
        "\nproxy peak RSS {:.1} MiB, CPU {:.1} s for one install ({} MiB image)",
        first.peak_rss_kib as f64 / 1024.0,
        first.cpu_seconds,
        mib
    );
    println!(
        "install input rate {input_rate:.1} MiB/s = {:.0} % of single-core deflate at level {level} ({deflate_rate:.1} MiB/s)",
        100.0 * input_rate / deflate_rate
    );
    println!(
        "one deflate thread (--compression-threads 1): {:.2} s, ratio {:.2}",
        single.seconds,
        single.seconds / b
    );
    println!("median (a) proxy {a:.2} s, median (b) shell pipeline {b:.2} s");
    println!("ratio a/b = {:.2}", a / b);
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Deterministic disk-like bytes: per 64 KiB, zeros (35 %), text-like lines of words (40 %) or
/// noise (25 %, as already-compressed files are).
struct DiskBytes {
    state: u64,
}

impl DiskBytes {
    const WORDS: [&'static str; 24] = [
        "root",
        "usr",
        "lib",
        "x86_64-linux-gnu",
        "libc.so.6",
        "GLIBC_2.10",
        "the",
        "kernel",
        "module",
        "eth0",
        "dhcp",
        "ubuntu",
        "karmic",
        "grub",
        "menu.lst",
        "#",
        "include",
        "void",
        "return",
        "0",
        "static",
        "int",
        "=",
        "if",
    ];

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn fill(&mut self, chunk: &mut Vec<u8>) {
        chunk.clear();
        let kind = self.next() % 100;
        if kind < 35 {
            chunk.resize(64 << 10, 0);
        } else if kind < 75 {
            while chunk.len() < 64 << 10 {
                let r = self.next();
                chunk.extend_from_slice(Self::WORDS[(r % 24) as usize].as_bytes());
                chunk.push(if r >> 60 == 0 { b'\n' } else { b' ' });
            }
            chunk.truncate(64 << 10);
        } else {
            while chunk.len() < 64 << 10 {
                let r = self.next();
                chunk.extend_from_slice(&r.to_le_bytes());
            }
        }
    }
}

fn write_gzipped(path: &Path, bytes: u64, seed: u64) {
    let file = std::fs::File::create(path).unwrap();
    let mut gz = GzipWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, file),
        GzipSettings::default_for_this_machine(),
    );
    let mut source = DiskBytes { state: seed };
    let mut chunk = Vec::with_capacity(64 << 10);
    let mut left = bytes;
    while left > 0 {
        source.fill(&mut chunk);
        let n = left.min(chunk.len() as u64) as usize;
        gz.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    gz.finish().unwrap().flush().unwrap();
}

fn prepare_set(set: &Path, mib: u64) {
    let marker = set.join(format!(".made-{mib}"));
    if marker.exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(set);
    std::fs::create_dir_all(set).unwrap();
    println!(
        "writing a {mib} MiB image (once; kept in {})",
        set.display()
    );
    write_gzipped(&set.join("kernel.gz"), 4 << 20, 7);
    write_gzipped(&set.join("ramdisk.gz"), 8 << 20, 11);
    write_gzipped(&set.join("image.gz"), mib << 20, 0x2545_F491_4F6C_DD1D);
    std::fs::write(
        set.join("meta.json"),
        format!(
            r#"{{"title": "{TITLE}", "version": "{mib}", "product": "bench", "arch": "x86_64"}}"#
        ),
    )
    .unwrap();
    std::fs::write(marker, b"").unwrap();
}

fn raw_sizes(set: &Path) -> u64 {
    ["kernel.gz", "ramdisk.gz", "image.gz"]
        .iter()
        .map(|name| {
            let mut decoder = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(set.join(name)).unwrap(),
            ));
            std::io::copy(&mut decoder, &mut std::io::sink()).unwrap()
        })
        .sum()
}

/// Starts a program that prints `… http://ADDR/api …` first on stdout; returns it and the URL.
fn start_and_read_url(command: &mut Command, log: &Path) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    // Keep reading: a closed pipe would kill the program at its next line.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}; see {}", log.display()))
        .to_string();
    (child, url)
}

fn start_fake_store(bin: &Path, store: &Path) -> (Child, String) {
    start_and_read_url(
        Command::new(bin.join("fake-store"))
            .arg(store)
            .args(["--listen", "127.0.0.1:0"]),
        &store.with_extension("log"),
    )
}

/// The file URLs, signature URLs and SHA-256s of the bench set, as the signed catalog states them.
fn catalog_files(api: &str) -> Vec<(String, String, String, String)> {
    let catalog: Value = serde_json::from_slice(&get(&format!("{api}/dashboard"))).unwrap();
    let image = catalog["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["title"] == TITLE)
        .expect("the bench image in the catalog");
    let base = reqwest::Url::parse(&format!("{api}/")).unwrap();
    image["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let url = |key: &str| base.join(f[key].as_str().unwrap()).unwrap().to_string();
            (
                f["kind"].as_str().unwrap().to_string(),
                url("url"),
                url("signature-url"),
                f["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

struct Install {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    bundled_bytes: u64,
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process and its threads so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

async fn install_with_proxy(
    bin: &Path,
    keyring: &Path,
    api: &str,
    work: &Path,
    level: u32,
    threads: Option<usize>,
) -> Install {
    let data = work.join("proxy-data");
    let _ = std::fs::remove_dir_all(&data);
    let (mut proxy, url) = start_and_read_url(
        Command::new(bin.join("image-store-proxy"))
            .args(["--api-url", api, "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--keyring")
            .arg(keyring)
            .arg(format!("--fake-eucalyptus={SECRET}"))
            .arg(format!("--compression-level={level}"))
            .args(threads.map(|n| format!("--compression-threads={n}"))),
        &work.join("proxy.log"),
    );
    let base = url.trim_end_matches("/api");
    let client = ProxyClient::new(base, SECRET, "bench").unwrap();
    let uri = loop {
        if let Ok(uris) = client.image_uris(&[TITLE.to_string()]).await {
            break uris[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu_before = cpu_seconds(proxy.id());
    let started = Instant::now();
    let reply = client.act(&uri, "install").await.unwrap();
    assert!(reply.error_message().is_none(), "{:?}", reply.body);
    loop {
        let reply = client.states(&[&uri]).await.unwrap();
        let state = &reply.body["states"][0];
        if state["status"] == "installed" {
            break;
        }
        if let Some(error) = state["error-message"].as_str() {
            panic!("the install failed: {error}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let install = Install {
        seconds,
        cpu_seconds: cpu_seconds(proxy.id()) - cpu_before,
        peak_rss_kib: proc_field(proxy.id(), "status", "VmHWM:"),
        bundled_bytes: bundled_bytes(&data.join("fake-cloud")),
    };
    let _ = proxy.kill();
    let _ = proxy.wait();
    install
}

fn bundled_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += bundled_bytes(&path);
        } else if path.to_string_lossy().contains(".part.") {
            total += file_len(&path);
        }
    }
    total
}

/// What the original proxy did per file, then `euca-bundle-image`'s pipeline.
fn shell_pipeline(
    work: &Path,
    files: &[(String, String, String, String)],
    keyring: &Path,
    level: u32,
) -> f64 {
    let dir = work.join("shell");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut script = String::from("set -euo pipefail\n");
    for (kind, url, signature_url, sha256) in files {
        script.push_str(&format!(
            "curl -sSf -o {kind}.gz '{url}'\n\
             curl -sSf -o {kind}.gz.asc '{signature_url}'\n\
             gpgv -q --keyring '{keyring}' {kind}.gz.asc {kind}.gz 2>/dev/null\n\
             echo '{sha256}  {kind}.gz' | sha256sum -c --quiet\n\
             gunzip -c {kind}.gz > {kind}\n\
             mkdir -p {kind}.bundle\n\
             tar -cf - {kind} | tee >(sha1sum > {kind}.bundle/sha1) | gzip -{level} \
             | openssl enc -e -aes-128-cbc -K \"$(openssl rand -hex 16)\" -iv \"$(openssl rand -hex 16)\" \
             | split -a 3 -d -b 10M - {kind}.bundle/{kind}.part.\n",
            keyring = keyring.display()
        ));
    }
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .status()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(status.success(), "the shell pipeline failed");
    let _ = std::fs::remove_dir_all(&dir);
    seconds
}

struct Stages {
    deflate_seconds: f64,
}

/// Each stage of the install alone, on one core, over the image's bytes in 1 MiB steps.
fn stage_breakdown(
    set: &Path,
    keyring: &Path,
    files: &[(String, String, String, String)],
    level: u32,
) -> Stages {
    let gz_path = set.join("image.gz");
    let gz_len = file_len(&gz_path);
    let (_, url, signature_url, _) = files.iter().find(|f| f.0 == "image").unwrap();
    let mut rows: Vec<(&str, f64, u64)> = Vec::new();

    let started = Instant::now();
    let fetched = get(url).len() as u64;
    rows.push((
        "fetch (HTTP GET, loopback, wall)",
        started.elapsed().as_secs_f64(),
        fetched,
    ));

    let signature = get(signature_url);
    let started = thread_cpu();
    Keyring::load(keyring)
        .unwrap()
        .verify_reader(
            BufReader::with_capacity(1 << 20, std::fs::File::open(&gz_path).unwrap()),
            &signature,
        )
        .unwrap();
    rows.push(("OpenPGP signature", thread_cpu() - started, gz_len));

    let mut gz = std::fs::File::open(&gz_path).unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    let mut sha256 = Sha256::new();
    let mut digest_time = 0.0;
    loop {
        let n = gz.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        let t = thread_cpu();
        sha256.update(&buffer[..n]);
        digest_time += thread_cpu() - t;
    }
    rows.push(("SHA-256 (catalog digest)", digest_time, gz_len));

    let mut decoder = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(&gz_path).unwrap(),
    ));
    let mut tar_stream = vec![0u8; 1 << 20];
    let mut compress = Compress::new(Compression::new(level), false);
    let mut compressed = Vec::with_capacity(2 << 20);
    let mut cipher = cbc::Encryptor::<Aes128>::new(&[7u8; 16].into(), &[9u8; 16].into());
    let mut tar_sha1 = Sha1::new();
    let mut part_sha1 = Sha1::new();
    let parts_path = set.with_extension("stage-parts");
    let mut parts = std::fs::File::create(&parts_path).unwrap();
    let mut times = [0.0f64; 7];
    let (mut raw, mut out) = (0u64, 0u64);
    loop {
        let t = thread_cpu();
        let n = read_full(&mut decoder, &mut buffer);
        times[0] += thread_cpu() - t;
        if n == 0 {
            break;
        }
        raw += n as u64;
        let t = thread_cpu();
        tar_stream[..n].copy_from_slice(&buffer[..n]);
        times[1] += thread_cpu() - t;
        let t = thread_cpu();
        tar_sha1.update(&tar_stream[..n]);
        times[2] += thread_cpu() - t;
        let t = thread_cpu();
        compressed.clear();
        let before = compress.total_in();
        while ((compress.total_in() - before) as usize) < n {
            let used = (compress.total_in() - before) as usize;
            compressed.reserve(n);
            compress
                .compress_vec(&tar_stream[used..n], &mut compressed, FlushCompress::None)
                .unwrap();
        }
        times[3] += thread_cpu() - t;
        let whole = compressed.len() - compressed.len() % 16;
        let t = thread_cpu();
        for block in compressed[..whole].chunks_exact_mut(16) {
            cipher.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        times[4] += thread_cpu() - t;
        let t = thread_cpu();
        part_sha1.update(&compressed[..whole]);
        times[5] += thread_cpu() - t;
        let t = thread_cpu();
        parts.write_all(&compressed[..whole]).unwrap();
        times[6] += thread_cpu() - t;
        out += whole as u64;
    }
    let t = thread_cpu();
    parts.sync_all().unwrap();
    times[6] += thread_cpu() - t;
    drop(parts);
    let _ = std::fs::remove_file(&parts_path);
    let names = [
        "gunzip",
        "tar framing (copy)",
        "SHA-1 of the tar stream",
        "deflate",
        "AES-128-CBC",
        "SHA-1 of the parts",
        "writing the parts (+fsync)",
    ];
    for (i, name) in names.iter().enumerate() {
        let bytes = if i < 4 { raw } else { out };
        rows.push((name, times[i], bytes));
    }
    println!(
        "{:<30} {:>9} {:>10} {:>12}",
        "stage", "CPU s", "MiB in", "MiB/s"
    );
    for (name, seconds, bytes) in &rows {
        println!(
            "{name:<30} {seconds:>9.2} {:>10.0} {:>12.1}",
            *bytes as f64 / MIB,
            *bytes as f64 / MIB / seconds
        );
    }
    let sum: f64 = rows[1..].iter().map(|r| r.1).sum();
    println!(
        "{:<30} {sum:>9.2}   (every stage but the fetch, one core)",
        "sum"
    );
    Stages {
        deflate_seconds: times[3],
    }
}

/// GETs a whole body (a catalog, a signature, the image for the fetch stage).
fn get(url: &str) -> Vec<u8> {
    image_store_proxy::fetch::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let response = reqwest::get(url).await.unwrap().error_for_status().unwrap();
            response.bytes().await.unwrap().to_vec()
        })
}

/// CPU seconds this thread has run: the stages are timed in CPU, not wall, time, so the figures
/// hold on a busy machine too.
fn thread_cpu() -> f64 {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos: u64 = schedstat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    nanos as f64 / 1e9
}

fn read_full(reader: &mut dyn Read, buffer: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]).unwrap() {
            0 => break,
            n => filled += n,
        }
    }
    filled
}
