//! An install against the work it replaces (issue 16's benches); run by `bench/pipeline`.
//!
//! Usage: pipeline_bench WORK_DIR MODE MIB RUNS
//!
//! MODE, each with its target:
//! - `gzip` (a): a MIB MiB raw disk image gzipped by `gzip -6`, as upstreams ship it, with a
//!   small kernel and ramdisk, from fake-store into the fake cloud; against the shell pipeline
//!   on the same upstream (curl, gpgv, sha256sum, gunzip, then `tar | tee >(sha1sum) | gzip -6 |
//!   openssl enc -aes-128-cbc | split -b 10M` per file). Target: ≤ 0.10×.
//! - `uec` (a): the same image as a UEC `.tar.gz` (GNU tar + `gzip -6`, with `vmlinuz` and
//!   `initrd` members); the shell pipeline extracts it and bundles each member. Target: ≤ 0.15×.
//! - `throttled` (b): the `gzip` set from fake-store held to 40 MiB/s in all (`--store-kib-per-second`, one link however many connections);
//!   against `curl` downloading the same files through the same throttle. Target: ≤ 1.15×.
//! - `moto` (c): the `gzip` set into moto over loopback; against the slowest stage alone: the
//!   download (curl), the download and bundle (an install into the fake cloud), the upload
//!   (boto3 putting that bundle into a fresh moto, 4 at a time). Target: ≤ 1.25×.
//! - `qcow2` (d): the image as a `qemu-img convert -c` qcow2 from a clear-signed simplestreams
//!   mirror (served by `python3 -m http.server`), registered HVM; against `qemu-img convert -O
//!   raw` followed by the shell pipeline. Target: ≤ 0.15×.
//! - `raw` (d): the image uncompressed: it must be deflated, so the install's input rate against
//!   single-core `deflate -6` on the same bytes. Target: ≥ 140 %.
//!
//! Before each timed run, the install's and its baseline's alike, the machine is settled: `sync`,
//! and the upstream's files read into the page cache (`Upstream::settle`).
//! Alternates RUNS times the install and its baseline and prints each run, the medians and the
//! ratio, the install's status-line timeline, the proxy's CPU seconds per GiB of image and its
//! peak RSS (VmHWM), and a table of what each stage alone costs on one core. RUNS 0 installs once
//! and prints the peak RSS only (for 4 GiB). `PROXY_ARGS` (whitespace-separated) is appended to
//! the proxy's arguments, e.g. `PROXY_ARGS=--recompress` for the before figures.
//!
//! The image bytes (`WORK_DIR/disk-MIB.raw`) and each mode's upstream set are made once and kept.

mod support;

use aes::Aes128;
use cbc::cipher::{BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
use flate2::{Compress, Compression, FlushCompress};
use image_store_proxy::trust::Keyring;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use support::{DiskBytes, Install, MIB, bash, file_len, median};

const SECRET: &str = "bench-secret-0123456789";
const TITLE: &str = "Pipeline Bench Image";
const QCOW2_TITLE: &str = "99.04";
const THROTTLE_KIB: u64 = 40 << 10;
const LEVEL: u32 = 6;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Gzip,
    Uec,
    Throttled,
    Moto,
    Qcow2,
    Raw,
}

impl Mode {
    fn parse(name: &str) -> Mode {
        match name {
            "gzip" => Mode::Gzip,
            "uec" => Mode::Uec,
            "throttled" => Mode::Throttled,
            "moto" => Mode::Moto,
            "qcow2" => Mode::Qcow2,
            "raw" => Mode::Raw,
            other => panic!("unknown mode {other:?}: gzip, uec, throttled, moto, qcow2 or raw"),
        }
    }

    /// The upstream set this mode installs; `throttled` and `moto` share `gzip`'s.
    fn set_name(self) -> &'static str {
        match self {
            Mode::Gzip | Mode::Throttled | Mode::Moto => "gzip",
            Mode::Uec => "uec",
            Mode::Qcow2 => "qcow2",
            Mode::Raw => "raw",
        }
    }
}

/// A file of the upstream set, as its signed catalog states it.
struct UpstreamFile {
    /// The local name the shell pipeline saves it under (`image.tar.gz`, `kernel.gz`, ...).
    name: String,
    url: String,
    signature_url: Option<String>,
    sha256: String,
}

/// A running upstream: what the proxy is pointed at and what it serves.
struct Upstream {
    child: Child,
    proxy_args: Vec<OsString>,
    title: &'static str,
    files: Vec<UpstreamFile>,
    /// Clear-signed documents the shell pipeline checks (the simplestreams mirror's).
    signed_documents: Vec<String>,
    /// The directory it serves.
    set: PathBuf,
}

impl Upstream {
    /// Run before each timed run, the install's and its baseline's alike, so that neither pays
    /// for the other: `sync` writes back what the last run left dirty (an install's fsyncs would
    /// otherwise wait on the shell pipeline's gigabytes), and the files served are read once,
    /// so that each run fetches them from the page cache, not from the disk.
    fn settle(&self) {
        write_back();
        let mut dirs = vec![self.set.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    std::io::copy(
                        &mut std::fs::File::open(&path).unwrap(),
                        &mut std::io::sink(),
                    )
                    .unwrap();
                }
            }
        }
    }
}

/// `sync`: what earlier runs left dirty goes to disk now, not during the next timing.
fn write_back() {
    assert!(Command::new("sync").status().unwrap().success());
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    root: PathBuf,
    bin: PathBuf,
    keyring: PathBuf,
    work: PathBuf,
    mib: u64,
    runtime: tokio::runtime::Runtime,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let root = std::env::current_dir().unwrap();
    // Absolute: the shell pipelines run in directories of their own.
    let work = root.join(args.next().expect("WORK_DIR"));
    let mode = Mode::parse(&args.next().expect("MODE"));
    let mib: u64 = args.next().map_or(1024, |m| m.parse().expect("MIB"));
    let runs: usize = args.next().map_or(3, |r| r.parse().expect("RUNS"));
    std::fs::create_dir_all(&work).unwrap();
    image_store_proxy::fetch::install_crypto_provider();
    let bench = Bench {
        bin: root.join("target/release"),
        keyring: root.join("keyrings/test-keyring.gpg"),
        root,
        work,
        mib,
        runtime: tokio::runtime::Runtime::new().unwrap(),
    };
    let set = bench.prepare_set(mode);
    let upstream = bench.start_upstream(mode, &set, 0);
    println!(
        "mode {}: {mib} MiB image; upstream files {}",
        mode.set_name(),
        upstream
            .files
            .iter()
            .map(|f| format!(
                "{} {:.1} MiB",
                f.name,
                file_len(&set.join(local_path(mode, &f.name))) as f64 / MIB
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if runs == 0 {
        let install = bench.install(&upstream, None, "only");
        println!(
            "one install: {:.2} s, CPU {:.1} s, peak RSS {:.1} MiB",
            install.seconds,
            install.cpu_seconds,
            install.peak_rss_kib as f64 / 1024.0
        );
        return;
    }
    match mode {
        Mode::Gzip | Mode::Uec | Mode::Qcow2 | Mode::Raw => {
            bench.against_shell(mode, &set, &upstream, runs)
        }
        Mode::Throttled => bench.against_curl(&set, &upstream, runs),
        Mode::Moto => bench.against_slowest_stage(&set, &upstream, runs),
    }
}

/// Where a served file lives in the set (the qcow2 mirror keeps its disk under `server/`).
fn local_path(mode: Mode, name: &str) -> PathBuf {
    match mode {
        Mode::Qcow2 => Path::new("mirror/server/bench").join(name),
        _ => Path::new("bench").join(name),
    }
}

impl Bench {
    fn raw_disk(&self) -> PathBuf {
        let path = self.work.join(format!("disk-{}.raw", self.mib));
        if file_len(&path) != self.mib << 20 {
            println!("writing a {} MiB disk image (once; kept)", self.mib);
            DiskBytes::write(0x2545_F491_4F6C_DD1D, &path, self.mib << 20);
        }
        path
    }

    /// Makes (once) the upstream set of `mode` under WORK_DIR/sets/.
    fn prepare_set(&self, mode: Mode) -> PathBuf {
        let set = self
            .work
            .join("sets")
            .join(format!("{}-{}", mode.set_name(), self.mib));
        if set.join(".made").exists() {
            return set;
        }
        let raw = self.raw_disk();
        let _ = std::fs::remove_dir_all(&set);
        let dir = set.join("bench");
        std::fs::create_dir_all(&dir).unwrap();
        println!(
            "making the {} set (once; kept in {})",
            mode.set_name(),
            set.display()
        );
        let kernel = set.join("vmlinuz");
        let ramdisk = set.join("initrd");
        DiskBytes::write(7, &kernel, 4 << 20);
        DiskBytes::write(11, &ramdisk, 8 << 20);
        let meta = json!({"title": TITLE, "version": self.mib.to_string(), "product": "bench",
            "arch": "x86_64"});
        let raw = raw.display();
        match mode.set_name() {
            "gzip" => {
                bash(
                    &set,
                    &format!(
                        "gzip -{LEVEL} -c vmlinuz > bench/kernel.gz\n\
                         gzip -{LEVEL} -c initrd > bench/ramdisk.gz\n\
                         gzip -{LEVEL} -c '{raw}' > bench/image.gz"
                    ),
                );
            }
            "uec" => {
                bash(
                    &set,
                    &format!(
                        "mkdir members && ln '{raw}' members/bench.img\n\
                         mv vmlinuz members/bench-vmlinuz && mv initrd members/bench-initrd\n\
                         tar -C members -cf - bench-vmlinuz bench-initrd bench.img \
                         | gzip -{LEVEL} > bench/image.tar.gz\n\
                         rm -r members"
                    ),
                );
            }
            "raw" => {
                bash(
                    &set,
                    &format!(
                        "mv vmlinuz bench/kernel && mv initrd bench/ramdisk\n\
                         ln '{raw}' bench/image"
                    ),
                );
            }
            _ => {
                std::fs::remove_dir_all(&dir).unwrap();
                self.write_mirror(&set, &raw.to_string());
            }
        }
        let _ = std::fs::remove_file(&kernel);
        let _ = std::fs::remove_file(&ramdisk);
        if mode != Mode::Qcow2 {
            std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
        }
        std::fs::write(set.join(".made"), b"").unwrap();
        set
    }

    /// A clear-signed simplestreams mirror of one product whose one version has a `disk1.img`
    /// made by `qemu-img convert -c`, signed with the test key by GnuPG.
    fn write_mirror(&self, set: &Path, raw: &str) {
        let mirror = set.join("mirror");
        std::fs::create_dir_all(mirror.join("server/bench")).unwrap();
        std::fs::create_dir_all(mirror.join("streams/v1")).unwrap();
        bash(
            &mirror,
            &format!("qemu-img convert -c -O qcow2 '{raw}' server/bench/disk1.img"),
        );
        let disk = mirror.join("server/bench/disk1.img");
        let sha256 = hex::encode(sha256_file(&disk));
        let updated = String::from_utf8(Command::new("date").arg("-R").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let content_id = "com.ubuntu.cloud:released:download";
        let product = "com.ubuntu.cloud:server:99.04:amd64";
        let products_path = format!("streams/v1/{content_id}.json");
        let products = json!({
            "content_id": content_id, "datatype": "image-downloads", "format": "products:1.0",
            "updated": updated,
            "products": {product: {
                "arch": "amd64", "os": "ubuntu", "release": "bench", "release_title": "99.04",
                "release_codename": "Bench Bird", "version": "99.04",
                "versions": {"20261201": {"items": {"disk1.img": {
                    "ftype": "disk1.img", "path": "server/bench/disk1.img",
                    "sha256": sha256, "size": file_len(&disk)}}}}}}
        });
        let index = json!({
            "format": "index:1.0", "updated": updated,
            "index": {content_id: {
                "datatype": "image-downloads", "format": "products:1.0", "path": products_path,
                "products": [product], "updated": updated}}
        });
        let gnupg = set.join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        let key = self.root.join("keyrings/test-signing-key.asc");
        let mut script = format!(
            "export GNUPGHOME='{}'\nchmod 700 \"$GNUPGHOME\"\ngpg -q --batch --import '{}'\n",
            gnupg.display(),
            key.display()
        );
        for (path, document) in [
            ("streams/v1/index.json".to_string(), &index),
            (products_path.clone(), &products),
        ] {
            std::fs::write(
                mirror.join(&path),
                serde_json::to_string_pretty(document).unwrap(),
            )
            .unwrap();
            let signed = path.replace(".json", ".sjson");
            script.push_str(&format!(
                "gpg -q --batch --yes --pinentry-mode loopback --passphrase '' --clearsign \
                 -o '{signed}' '{path}'\n"
            ));
        }
        bash(&mirror, &script);
        std::fs::remove_dir_all(&gnupg).unwrap();
    }

    /// Serves `set`: fake-store (held to `kib_per_second` when not 0), or for the qcow2 mirror
    /// `python3 -m http.server`.
    fn start_upstream(&self, mode: Mode, set: &Path, kib_per_second: u64) -> Upstream {
        if mode == Mode::Qcow2 {
            let mut child = Command::new("python3")
                .args([
                    "-u",
                    "-m",
                    "http.server",
                    "0",
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                ])
                .arg(set.join("mirror"))
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(set.with_extension("http.log")).unwrap())
                .spawn()
                .unwrap();
            let mut line = String::new();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            stdout.read_line(&mut line).unwrap();
            std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
            let port = line
                .split("port ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("http.server said {line:?}"));
            let base = format!("http://127.0.0.1:{port}");
            let disk = set.join("mirror/server/bench/disk1.img");
            return Upstream {
                child,
                proxy_args: vec![
                    "--simplestreams".into(),
                    format!("{base}/").into(),
                    "--simplestreams-keyring".into(),
                    self.keyring.clone().into(),
                ],
                title: QCOW2_TITLE,
                files: vec![UpstreamFile {
                    name: "disk1.img".into(),
                    url: format!("{base}/server/bench/disk1.img"),
                    signature_url: None,
                    sha256: hex::encode(sha256_file(&disk)),
                }],
                signed_documents: vec![
                    format!("{base}/streams/v1/index.sjson"),
                    format!("{base}/streams/v1/com.ubuntu.cloud:released:download.sjson"),
                ],
                set: set.to_owned(),
            };
        }
        let (child, api) = support::start_and_read_url(
            Command::new(self.bin.join("fake-store"))
                .arg(set)
                .args(["--listen", "127.0.0.1:0"])
                .arg(format!("--store-kib-per-second={kib_per_second}")),
            &set.with_extension(format!("fake-store-{kib_per_second}.log")),
        );
        let files = catalog_files(&api);
        Upstream {
            child,
            proxy_args: vec![
                "--api-url".into(),
                api.into(),
                "--keyring".into(),
                self.keyring.clone().into(),
            ],
            title: TITLE,
            files,
            signed_documents: Vec::new(),
            set: set.to_owned(),
        }
    }

    /// The proxy installing `upstream`'s image into the fake cloud, or into the cloud `config`
    /// names; its data dir is WORK_DIR/proxy-NAME, left in place for the caller to read. The fake
    /// cloud's RSA keys are made once (WORK_DIR/fake-cloud-keys) and given to each run: making
    /// two 2048-bit keys costs about 0.8 CPU s, once per data dir, and is no stage of an install.
    fn install(&self, upstream: &Upstream, config: Option<&Path>, name: &str) -> Install {
        let data = self.work.join(format!("proxy-{name}"));
        let _ = std::fs::remove_dir_all(&data);
        upstream.settle();
        let kept_keys = self.work.join("fake-cloud-keys");
        if config.is_none() {
            if !kept_keys.exists() {
                let made = self.work.join("fake-cloud-keys.incoming");
                let _ = std::fs::remove_dir_all(&made);
                image_store_proxy::bundle::keys::fake_cloud_keys(&made).unwrap();
                std::fs::rename(&made, &kept_keys).unwrap();
            }
            let keys = data.join("fake-cloud/keys");
            std::fs::create_dir_all(&keys).unwrap();
            for entry in std::fs::read_dir(&kept_keys).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), keys.join(entry.file_name())).unwrap();
            }
        }
        let mut command = Command::new(self.bin.join("image-store-proxy"));
        command
            .args(&upstream.proxy_args)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .arg(format!("--compression-level={LEVEL}"));
        match config {
            Some(config) => command.arg("--cloud-config").arg(config),
            None => command.arg(format!("--fake-eucalyptus={SECRET}")),
        };
        command.args(
            std::env::var("PROXY_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        );
        let (mut proxy, url) =
            support::start_and_read_url(&mut command, &self.work.join(format!("proxy-{name}.log")));
        let install = self
            .runtime
            .block_on(support::install(&proxy, &url, SECRET, upstream.title));
        let _ = proxy.kill();
        let _ = proxy.wait();
        install
    }

    fn report_install(&self, what: &str, install: &Install) {
        println!(
            "{what}: {:.2} s (CPU {:.1} s = {:.1} s per GiB of image, peak RSS {:.1} MiB)",
            install.seconds,
            install.cpu_seconds,
            install.cpu_seconds * 1024.0 / self.mib as f64,
            install.peak_rss_kib as f64 / 1024.0
        );
    }

    fn print_timeline(install: &Install) {
        println!("status lines of the first install (seconds from the request):");
        for (stage, at) in &install.timeline {
            println!("  {at:>7.2}  {stage}");
        }
    }

    /// (a) and (d): the install against the shell pipeline, alternating.
    fn against_shell(&self, mode: Mode, set: &Path, upstream: &Upstream, runs: usize) {
        let mut proxy_times = Vec::new();
        let mut shell_times = Vec::new();
        let mut first = None;
        for run in 1..=runs {
            let install = self.install(upstream, None, "fake");
            self.report_install(&format!("run {run}: install"), &install);
            proxy_times.push(install.seconds);
            first.get_or_insert(install);
            let shell = self.shell_pipeline(mode, upstream);
            println!("run {run}: shell pipeline {shell:.2} s");
            shell_times.push(shell);
        }
        let first = first.expect("one run");
        Self::print_timeline(&first);
        let a = median(&mut proxy_times);
        let b = median(&mut shell_times);
        println!("\nwhat each stage costs alone, on one core:");
        let stages = self.stage_table(mode, set, upstream);
        println!(
            "\nmedian install {a:.2} s, median shell pipeline {b:.2} s, ratio {:.3}",
            a / b
        );
        if mode == Mode::Raw {
            let input = self.raw_total(set) as f64 / MIB;
            let deflate_rate = input / stages.deflate_seconds;
            println!(
                "install input rate {:.1} MiB/s = {:.0} % of single-core deflate -{LEVEL} ({deflate_rate:.1} MiB/s)",
                input / a,
                100.0 * input / a / deflate_rate
            );
        }
    }

    /// (b): the install through the throttle against curl downloading the same files through it.
    fn against_curl(&self, set: &Path, unthrottled: &Upstream, runs: usize) {
        let throttled = self.start_upstream(Mode::Throttled, set, THROTTLE_KIB);
        let mut proxy_times = Vec::new();
        let mut curl_times = Vec::new();
        let mut first = None;
        for run in 1..=runs {
            let install = self.install(&throttled, None, "fake");
            self.report_install(&format!("run {run}: install at 40 MiB/s"), &install);
            proxy_times.push(install.seconds);
            first.get_or_insert(install);
            let curl = self.curl_all(&throttled);
            println!("run {run}: curl at 40 MiB/s {curl:.2} s");
            curl_times.push(curl);
        }
        Self::print_timeline(&first.expect("one run"));
        let alone = self.install(unthrottled, None, "fake");
        let a = median(&mut proxy_times);
        let b = median(&mut curl_times);
        println!("\nwhat each stage costs alone:");
        println!("  download through the throttle (curl, median)  {b:>7.2} s");
        println!(
            "  the whole install unthrottled                 {:>7.2} s",
            alone.seconds
        );
        println!(
            "\nmedian install {a:.2} s, median curl {b:.2} s, ratio {:.3}",
            a / b
        );
    }

    /// (c): the install into moto against the slowest of its stages alone.
    fn against_slowest_stage(&self, set: &Path, upstream: &Upstream, runs: usize) {
        let run_dir = self.work.join("moto-run");
        let mut proxy_times = Vec::new();
        let mut first = None;
        let mut download = Vec::new();
        let mut bundle = Vec::new();
        let mut upload = Vec::new();
        for run in 1..=runs {
            let _ = std::fs::remove_dir_all(&run_dir);
            std::fs::create_dir_all(&run_dir).unwrap();
            let moto = support::start_moto(&self.root, &run_dir);
            let config = support::cloud_config(&run_dir, &moto, SECRET);
            let moto_before = support::cpu_seconds(moto.child.id());
            let install = self.install(upstream, Some(&config), "moto");
            let moto_cpu = support::cpu_seconds(moto.child.id()) - moto_before;
            self.report_install(&format!("run {run}: install into moto"), &install);
            println!("run {run}: moto's CPU over the install {moto_cpu:.1} s");
            proxy_times.push(install.seconds);
            first.get_or_insert(install);
            drop(moto);
            download.push(self.curl_all(upstream));
            let into_fake = self.install(upstream, None, "fake");
            bundle.push(into_fake.seconds);
            let moto = support::start_moto(&self.root, &run_dir);
            upload.push(self.boto3_upload(&moto, &self.work.join("proxy-fake/fake-cloud")));
            println!(
                "run {run}: alone: download {:.2} s, download + bundle (fake cloud) {:.2} s \
                 (CPU {:.1} s), upload (boto3) {:.2} s",
                download[run - 1],
                bundle[run - 1],
                into_fake.cpu_seconds,
                upload[run - 1]
            );
        }
        Self::print_timeline(&first.expect("one run"));
        let a = median(&mut proxy_times);
        let stages = [
            ("download (curl)", median(&mut download)),
            (
                "download + bundle (install into the fake cloud)",
                median(&mut bundle),
            ),
            (
                "upload of the same bundle (boto3, 4 at a time)",
                median(&mut upload),
            ),
        ];
        println!("\nwhat each stage costs alone (medians):");
        for (name, seconds) in &stages {
            println!("  {name:<50} {seconds:>7.2} s");
        }
        let slowest = stages.iter().map(|s| s.1).fold(0.0, f64::max);
        println!(
            "\nmedian install into moto {a:.2} s, slowest stage alone {slowest:.2} s, ratio {:.3}",
            a / slowest
        );
        let _ = std::fs::remove_dir_all(&run_dir);
        let _ = set;
    }

    /// boto3 putting every file of `dir` (a fake cloud's bundle) into a new bucket of `moto`, 4
    /// at a time; seconds timed inside Python, from the first PUT to the last answer.
    fn boto3_upload(&self, moto: &support::Moto, dir: &Path) -> f64 {
        // As `Upstream::settle`: the bundle the install just wrote goes to disk before the timing.
        write_back();
        let script = r#"
import os, sys, time, boto3
from concurrent.futures import ThreadPoolExecutor
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id="test", aws_secret_access_key="test",
    config=Config(s3={"addressing_style": "path"}, max_pool_connections=8))
s3.create_bucket(Bucket="bench-upload")
paths = [os.path.join(d, f) for d, _, fs in os.walk(sys.argv[2]) for f in fs
         if ".part." in f or f.endswith(".manifest.xml")]
def put(path):
    with open(path, "rb") as body:
        s3.put_object(Bucket="bench-upload", Key=os.path.basename(path), Body=body)
started = time.monotonic()
with ThreadPoolExecutor(4) as pool:
    list(pool.map(put, paths))
print(time.monotonic() - started)
"#;
        let out = Command::new(support::venv_python(&self.root))
            .arg("-c")
            .arg(script)
            .arg(&moto.s3)
            .arg(dir)
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// curl downloading every file of `upstream` one after another, as the install does.
    fn curl_all(&self, upstream: &Upstream) -> f64 {
        let script: String = upstream
            .files
            .iter()
            .map(|f| format!("curl -sSf -o /dev/null '{}'\n", f.url))
            .collect();
        upstream.settle();
        bash(&self.work, &script)
    }

    /// What the original proxy did per file, then `euca-bundle-image`'s pipeline per image.
    fn shell_pipeline(&self, mode: Mode, upstream: &Upstream) -> f64 {
        let dir = self.work.join("shell");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        upstream.settle();
        let keyring = self.keyring.display();
        let bundle = |name: &str| {
            format!(
                "mkdir -p {name}.bundle\n\
                 tar -cf - {name} | tee >(sha1sum > {name}.bundle/sha1) | gzip -{LEVEL} \
                 | openssl enc -e -aes-128-cbc -K \"$(openssl rand -hex 16)\" -iv \"$(openssl rand -hex 16)\" \
                 | split -a 3 -d -b 10M - {name}.bundle/{name}.part.\n"
            )
        };
        let mut script = String::new();
        for (i, url) in upstream.signed_documents.iter().enumerate() {
            script.push_str(&format!(
                "curl -sSf -o doc{i}.sjson '{url}'\ngpgv -q --keyring '{keyring}' doc{i}.sjson 2>/dev/null\n"
            ));
        }
        for file in &upstream.files {
            let name = &file.name;
            script.push_str(&format!("curl -sSf -o {name} '{}'\n", file.url));
            if let Some(signature) = &file.signature_url {
                script.push_str(&format!(
                    "curl -sSf -o {name}.asc '{signature}'\n\
                     gpgv -q --keyring '{keyring}' {name}.asc {name} 2>/dev/null\n"
                ));
            }
            script.push_str(&format!(
                "echo '{}  {name}' | sha256sum -c --quiet\n",
                file.sha256
            ));
            match mode {
                Mode::Uec => {
                    script.push_str(&format!("tar -xzf {name} && rm {name}\n"));
                    for member in ["bench-vmlinuz", "bench-initrd", "bench.img"] {
                        script.push_str(&bundle(member));
                    }
                }
                Mode::Qcow2 => {
                    script.push_str(&format!("qemu-img convert -O raw {name} disk.raw\n"));
                    script.push_str(&bundle("disk.raw"));
                }
                Mode::Raw => script.push_str(&bundle(name)),
                _ => {
                    let stem = name.trim_end_matches(".gz");
                    script.push_str(&format!("gunzip -c {name} > {stem}\n"));
                    script.push_str(&bundle(stem));
                }
            }
        }
        let seconds = bash(&dir, &script);
        let _ = std::fs::remove_dir_all(&dir);
        seconds
    }

    /// The raw bytes of the set's images, as bundled.
    fn raw_total(&self, set: &Path) -> u64 {
        ["kernel", "ramdisk", "image"]
            .iter()
            .map(|name| file_len(&set.join("bench").join(name)))
            .sum()
    }

    /// Each stage of the install alone, on one core, over the main image's bytes in 1 MiB steps.
    fn stage_table(&self, mode: Mode, set: &Path, upstream: &Upstream) -> Stages {
        let file = upstream
            .files
            .iter()
            .find(|f| f.name.starts_with("image") || f.name == "disk1.img")
            .expect("the image file");
        let path = set.join(local_path(mode, &file.name));
        let len = file_len(&path);
        let mut rows: Vec<(String, f64, u64)> = Vec::new();

        upstream.settle();
        let started = Instant::now();
        bash(
            &self.work,
            &format!("curl -sSf -o /dev/null '{}'", file.url),
        );
        rows.push((
            "fetch (HTTP GET, loopback, wall)".into(),
            started.elapsed().as_secs_f64(),
            len,
        ));
        if let Some(signature_url) = &file.signature_url {
            let signature = get(signature_url);
            let started = support::thread_cpu();
            Keyring::load(&self.keyring)
                .unwrap()
                .verify_reader(
                    BufReader::with_capacity(1 << 20, std::fs::File::open(&path).unwrap()),
                    &signature,
                )
                .unwrap();
            rows.push((
                "OpenPGP signature".into(),
                support::thread_cpu() - started,
                len,
            ));
        }
        let started = support::thread_cpu();
        sha256_file(&path);
        rows.push((
            "SHA-256 (catalog digest)".into(),
            support::thread_cpu() - started,
            len,
        ));
        let raw_path;
        let source: Box<dyn Read> = match mode {
            Mode::Qcow2 => {
                raw_path = self.work.join("stage.raw");
                let seconds = bash(
                    &self.work,
                    &format!(
                        "qemu-img convert -O raw '{}' '{}'",
                        path.display(),
                        raw_path.display()
                    ),
                );
                rows.push(("qemu-img convert -O raw (wall)".into(), seconds, len));
                Box::new(std::fs::File::open(&raw_path).unwrap())
            }
            Mode::Raw => Box::new(std::fs::File::open(&path).unwrap()),
            _ => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(&path).unwrap(),
            ))),
        };
        let stages = bundle_stages(source, mode, &self.work, &mut rows);
        let _ = std::fs::remove_file(self.work.join("stage.raw"));
        println!(
            "{:<38} {:>9} {:>10} {:>12}",
            "stage", "CPU s", "MiB in", "MiB/s"
        );
        for (name, seconds, bytes) in &rows {
            println!(
                "{name:<38} {seconds:>9.2} {:>10.0} {:>12.1}",
                *bytes as f64 / MIB,
                *bytes as f64 / MIB / seconds
            );
        }
        stages
    }
}

struct Stages {
    deflate_seconds: f64,
}

/// The bundle's own stages over `source` (the image's raw bytes), each timed alone in CPU
/// seconds: reading (inflate, where the source is gzip), the tar stream's SHA-1, deflate (which
/// a spliced bundle skips), AES, the parts' SHA-1 and writing them.
fn bundle_stages(
    mut source: Box<dyn Read>,
    mode: Mode,
    work: &Path,
    rows: &mut Vec<(String, f64, u64)>,
) -> Stages {
    let mut buffer = vec![0u8; 1 << 20];
    let mut compress = Compress::new(Compression::new(LEVEL), false);
    let mut compressed = Vec::with_capacity(2 << 20);
    let mut cipher = cbc::Encryptor::<Aes128>::new(&[7u8; 16].into(), &[9u8; 16].into());
    let mut tar_sha1 = Sha1::new();
    let mut part_sha1 = Sha1::new();
    let parts_path = work.join("stage-parts");
    let mut parts = std::fs::File::create(&parts_path).unwrap();
    let mut times = [0.0f64; 6];
    let (mut raw, mut out) = (0u64, 0u64);
    loop {
        let t = support::thread_cpu();
        let n = read_full(&mut source, &mut buffer);
        times[0] += support::thread_cpu() - t;
        if n == 0 {
            break;
        }
        raw += n as u64;
        let t = support::thread_cpu();
        tar_sha1.update(&buffer[..n]);
        times[1] += support::thread_cpu() - t;
        let t = support::thread_cpu();
        compressed.clear();
        let before = compress.total_in();
        while ((compress.total_in() - before) as usize) < n {
            let used = (compress.total_in() - before) as usize;
            compressed.reserve(n);
            compress
                .compress_vec(&buffer[used..n], &mut compressed, FlushCompress::None)
                .unwrap();
        }
        times[2] += support::thread_cpu() - t;
        let whole = compressed.len() - compressed.len() % 16;
        let t = support::thread_cpu();
        for block in compressed[..whole].chunks_exact_mut(16) {
            cipher.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        times[3] += support::thread_cpu() - t;
        let t = support::thread_cpu();
        part_sha1.update(&compressed[..whole]);
        times[4] += support::thread_cpu() - t;
        let t = support::thread_cpu();
        parts.write_all(&compressed[..whole]).unwrap();
        times[5] += support::thread_cpu() - t;
        out += whole as u64;
    }
    let t = support::thread_cpu();
    parts.sync_all().unwrap();
    times[5] += support::thread_cpu() - t;
    drop(parts);
    let _ = std::fs::remove_file(&parts_path);
    let read = match mode {
        Mode::Qcow2 | Mode::Raw => "reading the raw disk",
        _ => "inflate (gunzip)",
    };
    let names = [
        read,
        "SHA-1 of the tar stream",
        "deflate -6 (spliced bundles skip it)",
        "AES-128-CBC",
        "SHA-1 of the parts",
        "writing the parts (+fsync)",
    ];
    for (i, name) in names.iter().enumerate() {
        let bytes = if i < 3 { raw } else { out };
        rows.push((name.to_string(), times[i], bytes));
    }
    Stages {
        deflate_seconds: times[2],
    }
}

fn sha256_file(path: &Path) -> Vec<u8> {
    let mut file = std::fs::File::open(path).unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    let mut sha256 = Sha256::new();
    loop {
        let n = file.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        sha256.update(&buffer[..n]);
    }
    sha256.finalize().to_vec()
}

/// The bench image's files as fake-store's signed catalog states them.
fn catalog_files(api: &str) -> Vec<UpstreamFile> {
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
            let url_text = url("url");
            let name = url_text.rsplit('/').next().unwrap().to_string();
            UpstreamFile {
                name,
                url: url_text,
                signature_url: Some(url("signature-url")),
                sha256: f["sha256"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// GETs a whole body (a catalog, a signature).
fn get(url: &str) -> Vec<u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let response = reqwest::get(url).await.unwrap().error_for_status().unwrap();
            response.bytes().await.unwrap().to_vec()
        })
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
