//! The machine: root and tools, the lock between runs, dpkg, the system user and its processes,
//! the daemon the init script started, the init script itself.

use crate::{DEFAULTS, FAKE_STORE_PACKAGE, INIT_SCRIPT, MARKER, PACKAGE, PIDFILE, USER, text};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Root, the packaging tools, and no systemd running the show: otherwise say what is missing.
pub(crate) fn preconditions() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap();
    assert_eq!(
        uid, "0",
        "the Debian package test installs and purges system packages, so it runs as root, as CI \
         does: run ./test.sh as root (for example in a Debian container)"
    );
    assert!(
        !Path::new("/run/systemd/system").exists(),
        "the Debian package test drives the init script itself and must not race systemd for \
         the service: run it where systemd is not PID 1 (a container, as CI)"
    );
    for tool in [
        "dpkg-buildpackage",
        "dh",
        "help2man",
        "lintian",
        "systemd-analyze",
        "start-stop-daemon",
        "logger",
    ] {
        assert!(
            Command::new("sh")
                .args([
                    "-c",
                    &format!("PATH=\"$PATH:/usr/sbin:/sbin\" command -v {tool}")
                ])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{tool} is missing: ./test.sh installs it (dpkg-dev, debhelper, help2man, lintian, systemd)"
        );
    }
}

/// Runs of this test on one machine take turns: the package, its user and /dev/log are global.
pub(crate) struct SystemLock(#[allow(dead_code)] std::fs::File);

impl SystemLock {
    pub(crate) fn acquire() -> Self {
        std::fs::create_dir_all("/run/lock").unwrap();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/image-store-proxy-package-test.lock")
            .unwrap();
        file.lock().unwrap();
        Self(file)
    }
}

/// A package left by an interrupted run of this test (its defaults file carries [`MARKER`]) is
/// stopped and purged; one installed by anybody else fails the test instead.
pub(crate) fn clean_up_after_an_interrupted_run() {
    let proxy = installed_version(PACKAGE).is_some() || package_has_config_files(PACKAGE);
    if proxy {
        let defaults = std::fs::read_to_string(DEFAULTS).unwrap_or_default();
        assert!(
            defaults.starts_with(MARKER),
            "{PACKAGE} is installed on this machine, and not by this test: the test would replace \
             and purge it. Purge it first (dpkg --purge {PACKAGE}), or run the suite elsewhere"
        );
        eprintln!("purging {PACKAGE}, left behind by an interrupted run of this test");
        if Path::new(INIT_SCRIPT).exists() {
            init_script("stop");
        }
        if let Some(user) = SystemUser::lookup() {
            user.wait_until_no_process_runs();
        }
    }
    if proxy || installed_version(FAKE_STORE_PACKAGE).is_some() {
        dpkg(&["--purge", PACKAGE, FAKE_STORE_PACKAGE]);
    }
}

/// Purges the packages if the test fails half-way.
pub(crate) struct Installed {
    pub(crate) purged: bool,
}

impl Installed {
    pub(crate) fn new() -> Self {
        Self { purged: false }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.purged {
            return;
        }
        eprintln!("the test failed: stopping the daemon and purging the packages");
        let _ = Command::new(INIT_SCRIPT)
            .arg("stop")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output();
        if let Some(user) = SystemUser::lookup() {
            user.wait_until_no_process_runs();
        }
        let _ = std::fs::remove_file(crate::UI_SECRET);
        let _ = Command::new("dpkg")
            .args(["--purge", PACKAGE, FAKE_STORE_PACKAGE])
            .stdin(Stdio::null())
            .output();
    }
}

#[derive(Debug)]
pub(crate) struct SystemUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: String,
    pub(crate) shell: String,
}

impl SystemUser {
    pub(crate) fn lookup() -> Option<Self> {
        let output = Command::new("getent")
            .args(["passwd", USER])
            .output()
            .unwrap();
        if !output.status.success() {
            return None;
        }
        let line = String::from_utf8(output.stdout).unwrap();
        let fields: Vec<&str> = line.trim().split(':').collect();
        Some(Self {
            uid: fields[2].parse().unwrap(),
            gid: fields[3].parse().unwrap(),
            home: fields[5].to_string(),
            shell: fields[6].to_string(),
        })
    }

    /// Until no process of the user is left, zombies included (PID 1 of a container may reap
    /// late, and deluser refuses a user that still owns one).
    pub(crate) fn wait_until_no_process_runs(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = processes_of(self.uid);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processes of {USER} still there: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub(crate) fn processes_of(uid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            .and_then(|id| id.parse::<u32>().ok());
        if real_uid == Some(uid) {
            let name = status.lines().next().unwrap_or_default().to_string();
            found.push(format!("{} {name}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// The daemon the init script started, found through its pidfile.
pub(crate) struct Daemon {
    pub(crate) pid: u32,
}

impl Daemon {
    pub(crate) fn from_pidfile() -> Self {
        let pid = std::fs::read_to_string(PIDFILE)
            .expect("the init script wrote its pidfile")
            .trim()
            .parse()
            .unwrap();
        Self { pid }
    }

    fn proc(&self, file: &str) -> PathBuf {
        Path::new("/proc").join(self.pid.to_string()).join(file)
    }

    pub(crate) fn uid(&self) -> u32 {
        let status = std::fs::read_to_string(self.proc("status")).expect("the daemon runs");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The running executable; " (deleted)" follows it when the file was replaced since.
    pub(crate) fn exe(&self) -> String {
        std::fs::read_link(self.proc("exe"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub(crate) fn environment(&self) -> Vec<String> {
        let mut bytes = Vec::new();
        std::fs::File::open(self.proc("environ"))
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
            .split(|b| *b == 0)
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect()
    }
}

/// `/etc/init.d/image-store-proxy ACTION` with the clean environment `service` gives it.
pub(crate) fn init_script(action: &str) -> Output {
    Command::new(INIT_SCRIPT)
        .arg(action)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// dpkg, waiting its turn when apt or dpkg holds the lock (another suite may be installing).
pub(crate) fn dpkg(args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let output = Command::new("dpkg")
            .args(args)
            .stdin(Stdio::null())
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            eprintln!("dpkg {args:?}:\n{}", text(&output));
            return;
        }
        if stderr.contains("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        panic!(
            "dpkg {args:?} failed ({}):\n{}",
            output.status,
            text(&output)
        );
    }
}

pub(crate) fn installed_version(package: &str) -> Option<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev} ${Version}", package])
        .output()
        .unwrap();
    let line = String::from_utf8(output.stdout).unwrap();
    line.strip_prefix("ii ").map(|v| v.trim().to_string())
}

pub(crate) fn package_has_config_files(package: &str) -> bool {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}", package])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).starts_with("rc")
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
