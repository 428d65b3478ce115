//! What the bench programs share: starting the peers (fake-store, moto, the proxy) on loopback,
//! timing a process, medians, the disk-like bytes an image is made of, and the OpenSSL-made
//! credentials a cloud config names. Not an example itself: each bench includes it as `mod support`.

#![allow(dead_code)]

use image_store_proxy::client::ProxyClient;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MIB: f64 = (1 << 20) as f64;

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A field of `/proc/PID/status` in KiB (`VmHWM:` is the peak RSS).
pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process and its threads so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// CPU seconds this thread has run: stages are timed in CPU, not wall, time, so the figures hold
/// on a busy machine too.
pub fn thread_cpu() -> f64 {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos: u64 = schedstat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    nanos as f64 / 1e9
}

/// Starts a program that prints `… http://ADDR/… …` first on stdout; returns it and the URL.
pub fn start_and_read_url(command: &mut Command, log: &Path) -> (Child, String) {
    let mut child = command
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
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

/// moto as the tests start it (`tests/peers/moto_peer.py`): the child, its S3 and EC2 URLs.
pub struct Moto {
    pub child: Child,
    pub s3: String,
    pub ec2: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn venv_python(root: &Path) -> PathBuf {
    let venv = std::env::var_os("IMAGE_STORE_PROXY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/test-peers/venv"));
    let python = venv.join("bin/python");
    assert!(python.exists(), "no moto: run ./test.sh once to install it");
    python
}

pub fn start_moto(root: &Path, dir: &Path) -> Moto {
    let mut child = Command::new(venv_python(root))
        .arg(root.join("tests/peers/moto_peer.py"))
        .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("moto.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ports: Vec<&str> = line.split_whitespace().collect();
    assert!(ports.len() == 3 && ports[0] == "ready", "moto: {line:?}");
    Moto {
        s3: format!("http://127.0.0.1:{}/", ports[1]),
        ec2: format!("http://127.0.0.1:{}/", ports[2]),
        child,
    }
}

/// A TOML `--cloud-config` for moto, its keys and certificates made by openssl, private.
pub fn cloud_config(dir: &Path, moto: &Moto, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    for name in ["user", "cloud"] {
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .arg("-subj")
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(creds.join(format!("{name}-pk.pem")))
            .arg("-out")
            .arg(creds.join(format!("{name}-cert.pem")))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl req");
    }
    let config = creds.join("cloud.toml");
    std::fs::write(
        &config,
        format!(
            "ec2-url = \"{}\"\ns3-url = \"{}\"\naccess-key = \"AKIDBENCH\"\nsecret-key = \"{secret}\"\n\
             user-id = \"123456789012\"\nuser-cert = \"user-cert.pem\"\nuser-key = \"user-pk.pem\"\n\
             cloud-cert = \"cloud-cert.pem\"\nsignature-version = \"2\"\n",
            moto.ec2, moto.s3
        ),
    )
    .unwrap();
    for entry in std::fs::read_dir(&creds).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    config
}

/// One install through the UI API, timed from the install request to `installed`.
pub struct Install {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    /// When each status line (cut at its first ':') was first seen, in seconds from the request.
    pub timeline: Vec<(String, f64)>,
}

/// Presses Install on the one image whose title holds `title` and follows it to `installed`;
/// the proxy is `proxy`, answering at `url`.
pub async fn install(proxy: &Child, url: &str, secret: &str, title: &str) -> Install {
    let client = ProxyClient::new(url.trim_end_matches("/api"), secret, "bench").unwrap();
    let uri = loop {
        if let Ok(uris) = client.image_uris(&[title.to_string()]).await {
            break uris[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu_before = cpu_seconds(proxy.id());
    let started = Instant::now();
    let reply = client.act(&uri, "install").await.unwrap();
    assert!(reply.error_message().is_none(), "{:?}", reply.body);
    let mut timeline: Vec<(String, f64)> = Vec::new();
    loop {
        let reply = client.states(&[&uri]).await.unwrap();
        let state = &reply.body["states"][0];
        if let Some(error) = state["error-message"].as_str() {
            panic!("the install failed: {error}");
        }
        let detail = state["status-detail"].as_str().unwrap_or("");
        let stage = detail.split(':').next().unwrap_or("").to_string();
        if !stage.is_empty() && timeline.last().is_none_or(|(last, _)| *last != stage) {
            timeline.push((stage, started.elapsed().as_secs_f64()));
        }
        if state["status"] == "installed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Install {
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds(proxy.id()) - cpu_before,
        peak_rss_kib: proc_status_kib(proxy.id(), "VmHWM:"),
        timeline,
    }
}

/// Deterministic disk-like bytes: per 64 KiB, zeros (35 %), text-like lines of words (40 %) or
/// noise (25 %, as already-compressed files are).
pub struct DiskBytes {
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

    pub fn new(seed: u64) -> Self {
        DiskBytes { state: seed }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    pub fn fill(&mut self, chunk: &mut Vec<u8>) {
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

    /// Writes `bytes` of it to `path`.
    pub fn write(seed: u64, path: &Path, bytes: u64) {
        let mut out =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
        let mut source = DiskBytes::new(seed);
        let mut chunk = Vec::with_capacity(64 << 10);
        let mut left = bytes;
        while left > 0 {
            source.fill(&mut chunk);
            let n = left.min(chunk.len() as u64) as usize;
            out.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        out.flush().unwrap();
    }
}

/// Runs `script` with bash in `dir`; panics when it fails. Returns its wall seconds.
pub fn bash(dir: &Path, script: &str) -> f64 {
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(dir)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .status()
        .unwrap();
    assert!(status.success(), "bash failed: {script}");
    started.elapsed().as_secs_f64()
}
