//! The Debian package, end to end, as an operator meets it. As root (CI is root), on a host where
//! systemd is not PID 1 (a container, as CI): `dpkg-buildpackage -us -uc -b` builds both packages
//! from a copy of this checkout, lintian finds no error, `dpkg -i` installs them (system user,
//! data directory, init script, unit), the init script refuses the shipped configuration quickly
//! and says why in syslog, then starts the daemon with `--fake-eucalyptus` in DAEMON_OPTS as the
//! system user, which answers a signed request and installs an image from the packaged
//! fake-store; a rebuilt higher version upgrades it with the state kept, and `dpkg --purge`
//! removes the user and the data.
//!
//! The package build reuses one cargo target directory under `target/tmp/debian-package` across
//! versions and runs, apart from the suite's own (cargo locks a target directory while it builds),
//! so the upgrade's rebuild compiles nothing. Installing a system package is global: a lock file
//! serialises runs, and a package installed by anyone but this test is left alone (the test
//! fails, saying so).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PACKAGE: &str = "image-store-proxy";
const FAKE_STORE_PACKAGE: &str = "image-store-proxy-fake-store";
const USER: &str = "image-store-proxy";
const DATA_DIR: &str = "/var/lib/image-store-proxy";
const DEFAULTS: &str = "/etc/default/image-store-proxy";
const INIT_SCRIPT: &str = "/etc/init.d/image-store-proxy";
const UNIT: &str = "/lib/systemd/system/image-store-proxy.service";
const PIDFILE: &str = "/run/image-store-proxy.pid";
const TEST_KEYRING: &str = "/usr/share/image-store-proxy-fake-store/test-keyring.gpg";
const SECRET: &str = "package-test-secret-0123456789";
/// The first line of the defaults file this test writes: a package left behind by an interrupted
/// run of this test carries it, and only such a package is purged before the run.
const MARKER: &str = "# Written by image-store-proxy's tests/debian_package.rs";

#[test]
fn the_package_builds_installs_serves_upgrades_and_purges() {
    preconditions();
    let _lock = SystemLock::acquire();
    clean_up_after_an_interrupted_run();
    let mut timings = Vec::new();

    let build = PackageBuild::prepare();
    let v1 = build.version();
    let started = Instant::now();
    let debs = build.build(&v1);
    timings.push(("build v1 (dpkg-buildpackage)", started.elapsed()));
    for deb in &debs {
        let size = std::fs::metadata(deb).unwrap().len();
        eprintln!("package {}: {size} bytes", deb.display());
    }

    let started = Instant::now();
    let lintian = run(Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(build.changes(&v1)));
    timings.push(("lintian", started.elapsed()));
    let lintian_output = String::from_utf8_lossy(&lintian.stdout).into_owned();
    eprintln!("lintian output:\n{lintian_output}");
    assert!(
        !lintian_output.lines().any(|l| l.starts_with("E: ")),
        "{lintian_output}"
    );

    let mut installed = Installed::new();
    let started = Instant::now();
    dpkg(&[&["--install"], &paths(&debs)[..]].concat());
    timings.push(("dpkg --install", started.elapsed()));
    let user = SystemUser::lookup().expect("postinst created the system user");
    assert_eq!(user.home, DATA_DIR);
    assert_eq!(user.shell, "/usr/sbin/nologin");
    assert!(user.uid < 1000, "a system user: {user:?}");
    let data_dir = std::fs::metadata(DATA_DIR).expect("postinst created the data directory");
    assert_eq!((data_dir.uid(), data_dir.gid()), (user.uid, user.gid));
    assert_eq!(data_dir.mode() & 0o777, 0o750);
    for path in [
        "/usr/bin/image-store-proxy",
        "/usr/bin/fake-store",
        INIT_SCRIPT,
        UNIT,
        DEFAULTS,
        TEST_KEYRING,
        "/usr/share/man/man1/image-store-proxy.1.gz",
        "/usr/share/man/man1/fake-store.1.gz",
        "/etc/image-store-proxy",
    ] {
        assert!(Path::new(path).exists(), "the packages install {path}");
    }
    // The test key's secret half rides in fake-store, never in the daemon (built without `demo`).
    let secret_key = test_secret_key_line();
    assert!(contains(
        &std::fs::read("/usr/bin/fake-store").unwrap(),
        &secret_key
    ));
    assert!(
        !contains(
            &std::fs::read("/usr/bin/image-store-proxy").unwrap(),
            &secret_key
        ),
        "the production daemon carries the published test secret key"
    );
    check_unit();

    // The shipped configuration: this version needs --fake-eucalyptus, so the daemon refuses to
    // start, and the init script says so at once rather than after its 60-second wait.
    let syslog = Syslog::listen();
    let started = Instant::now();
    let refused = init_script("start");
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        text(&refused).contains("did not start"),
        "{}",
        text(&refused)
    );
    if let Some(syslog) = &syslog {
        syslog.wait_for("no cloud to install into");
    }
    user.wait_until_no_process_runs();

    // Configured as an operator would, with the packaged fake-store as upstream.
    let store = FakeStore::start();
    let port = free_port();
    let proxy_url = format!("http://127.0.0.1:{port}");
    std::fs::write(
        DEFAULTS,
        format!(
            "{MARKER}\nDAEMON_OPTS=\"--fake-eucalyptus={SECRET} --listen 127.0.0.1:{port} \
             --api-url {} --keyring {TEST_KEYRING} --retry-delay-ms 100\"\n\
             http_proxy=\"http://127.0.0.1:9/\"\nhttps_proxy=\"http://127.0.0.1:9/\"\n\
             no_proxy=\"127.0.0.1,localhost\"\n",
            store.api_url
        ),
    )
    .unwrap();
    let started = Instant::now();
    let start = init_script("start");
    timings.push(("init script start (until ready)", started.elapsed()));
    assert!(start.status.success(), "{}", text(&start));
    let first = Daemon::from_pidfile();
    assert_eq!(first.uid(), user.uid, "the daemon runs as {USER}");
    assert_eq!(first.exe(), "/usr/bin/image-store-proxy");
    let environment = first.environment();
    for variable in [
        "http_proxy=http://127.0.0.1:9/",
        "https_proxy=http://127.0.0.1:9/",
        "no_proxy=127.0.0.1,localhost",
    ] {
        assert!(
            environment.iter().any(|e| e == variable),
            "{variable} from {DEFAULTS} reaches the daemon: {environment:?}"
        );
    }
    assert!(init_script("status").status.success());
    if let Some(syslog) = &syslog {
        syslog.wait_for(&format!(
            "image-store-proxy[{}]: image-store-proxy listening on {proxy_url}/api",
            first.pid
        ));
    }

    // The Store tab's signed requests, through the packaged client.
    let dashboard = client(&proxy_url, SECRET, &["dashboard"]);
    assert!(dashboard.get("error-message").is_none(), "{dashboard}");
    assert_eq!(
        dashboard["images"].as_array().unwrap().len(),
        2,
        "{dashboard}"
    );
    let forged = client(&proxy_url, "not-the-secret", &["dashboard"]);
    assert_eq!(forged["error-message"], "Bad request signature", "{forged}");
    client(&proxy_url, SECRET, &["install", "Ubuntu 9.10"]);
    let installed_state = wait_until_installed(&proxy_url);
    let emi = installed_state["emi"].as_str().unwrap().to_string();
    let bucket_files = files_under(&Path::new(DATA_DIR).join("fake-cloud"));
    assert!(!bucket_files.is_empty());

    // The upgrade: a higher version from the same build directory, installed over the running
    // daemon, which the init script restarts (in a container invoke-rc.d may not).
    let v2 = format!("{v1}+upgradetest1");
    let started = Instant::now();
    let debs = build.build(&v2);
    timings.push(("build v2 (rebuild for the upgrade)", started.elapsed()));
    dpkg(&[&["--install"], &paths(&debs)[..]].concat());
    assert_eq!(installed_version(PACKAGE).as_deref(), Some(v2.as_str()));
    assert!(
        std::fs::read_to_string(DEFAULTS)
            .unwrap()
            .starts_with(MARKER),
        "the upgrade keeps the operator's {DEFAULTS}"
    );
    let restart = init_script("restart");
    assert!(restart.status.success(), "{}", text(&restart));
    let second = Daemon::from_pidfile();
    assert_ne!(second.pid, first.pid);
    assert_eq!(
        second.exe(),
        "/usr/bin/image-store-proxy",
        "the new executable runs"
    );
    assert_eq!(second.uid(), user.uid);
    let after = client(&proxy_url, SECRET, &["states", "Ubuntu 9.10"]);
    let state = after["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["image-uri"]
                .as_str()
                .unwrap()
                .ends_with("ubuntu-9.10-server-amd64")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no state for Ubuntu 9.10 after the upgrade: {after}"));
    assert_eq!(state["status"], "installed", "the state survived: {state}");
    assert_eq!(state["emi"], emi.as_str());
    assert_eq!(
        files_under(&Path::new(DATA_DIR).join("fake-cloud")),
        bucket_files
    );

    // Stop, then purge: the user and the data go.
    let stop = init_script("stop");
    assert!(stop.status.success(), "{}", text(&stop));
    user.wait_until_no_process_runs();
    assert_eq!(init_script("status").status.code(), Some(3), "stopped");
    assert!(!Path::new(PIDFILE).exists());
    drop(store);
    let started = Instant::now();
    dpkg(&["--purge", PACKAGE, FAKE_STORE_PACKAGE]);
    timings.push(("dpkg --purge", started.elapsed()));
    installed.purged = true;
    assert!(SystemUser::lookup().is_none(), "purge removed the user");
    assert!(
        !Command::new("getent")
            .args(["group", USER])
            .output()
            .unwrap()
            .status
            .success(),
        "purge removed the group"
    );
    for path in [
        DATA_DIR,
        DEFAULTS,
        INIT_SCRIPT,
        UNIT,
        "/usr/bin/image-store-proxy",
        "/etc/image-store-proxy",
    ] {
        assert!(!Path::new(path).exists(), "purge removed {path}");
    }
    assert_eq!(installed_version(PACKAGE), None);

    for (what, took) in timings {
        eprintln!("{what}: {:.2} s", took.as_secs_f64());
    }
}

/// Root, the packaging tools, and no systemd running the show: otherwise say what is missing.
fn preconditions() {
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
struct SystemLock(#[allow(dead_code)] std::fs::File);

impl SystemLock {
    fn acquire() -> Self {
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
fn clean_up_after_an_interrupted_run() {
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
struct Installed {
    purged: bool,
}

impl Installed {
    fn new() -> Self {
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
        let _ = Command::new("dpkg")
            .args(["--purge", PACKAGE, FAKE_STORE_PACKAGE])
            .stdin(Stdio::null())
            .output();
    }
}

/// `dpkg-buildpackage` in a copy of this checkout (it writes the .debs next to the source
/// directory, and its droppings into debian/), with one cargo target directory kept across builds.
struct PackageBuild {
    root: PathBuf,
    source: PathBuf,
}

impl PackageBuild {
    fn prepare() -> Self {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-package");
        let outputs = root.join("src");
        let source = outputs.join(PACKAGE);
        if outputs.exists() {
            std::fs::remove_dir_all(&outputs).unwrap();
        }
        std::fs::create_dir_all(&source).unwrap();
        // tar keeps modification times: cargo sees unchanged sources as unchanged.
        run(Command::new("sh")
            .args([
                "-c",
                "tar -C \"$1\" --exclude=./target --exclude=./.git --exclude=./demo-data -cf - . \
                 | tar -C \"$2\" -xf -",
                "sh",
                env!("CARGO_MANIFEST_DIR"),
            ])
            .arg(&source));
        Self { root, source }
    }

    fn version(&self) -> String {
        let output = run(Command::new("dpkg-parsechangelog")
            .args(["-S", "Version"])
            .current_dir(&self.source));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    fn changes(&self, version: &str) -> PathBuf {
        self.source
            .parent()
            .unwrap()
            .join(format!("{PACKAGE}_{version}_{}.changes", architecture()))
    }

    /// Builds `version` (a changelog entry is added when it is not the current one) and returns
    /// the two .debs.
    fn build(&self, version: &str) -> Vec<PathBuf> {
        if self.version() != version {
            let field = |name: &str| {
                let output = run(Command::new("dpkg-parsechangelog")
                    .args(["-S", name])
                    .current_dir(&self.source));
                String::from_utf8(output.stdout).unwrap().trim().to_string()
            };
            let changelog = self.source.join("debian/changelog");
            let old = std::fs::read_to_string(&changelog).unwrap();
            let entry = format!(
                "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Rebuilt by \
                 tests/debian_package.rs to test an upgrade.\n\n -- {}  {}\n\n",
                field("Maintainer"),
                field("Date")
            );
            std::fs::write(&changelog, entry + &old).unwrap();
        }
        let log_path = self.root.join(format!("build-{version}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new("nice");
        command
            .args(["-n", "10", "dpkg-buildpackage", "-us", "-uc", "-b"])
            .current_dir(&self.source)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // What `cargo test` tells its tests is not for the nested build (CARGO, the path of the
        // cargo running this test, is: debian/rules uses it).
        for (name, _) in std::env::vars() {
            if name.starts_with("CARGO_") && name != "CARGO_HOME" {
                command.env_remove(&name);
            }
        }
        command.env("CARGO_TARGET_DIR", self.root.join("cargo"));
        let status = command.status().unwrap();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            status.success(),
            "dpkg-buildpackage failed ({status}); the end of {}:\n{}",
            log_path.display(),
            tail(&log, 60)
        );
        let debs: Vec<PathBuf> = [PACKAGE, FAKE_STORE_PACKAGE]
            .iter()
            .map(|package| {
                self.source
                    .parent()
                    .unwrap()
                    .join(format!("{package}_{version}_{}.deb", architecture()))
            })
            .collect();
        for deb in &debs {
            assert!(deb.exists(), "dpkg-buildpackage made {}", deb.display());
        }
        debs
    }
}

/// The unit cannot run here (systemd is not PID 1), so systemd checks it offline: it must load
/// without a single warning, and keep its sandbox.
fn check_unit() {
    let verify = run(Command::new("systemd-analyze").args(["verify", "--man=no", UNIT]));
    assert!(
        verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    let security = run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "--no-pager",
        UNIT,
    ]));
    let report = text(&security);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for image-store-proxy.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(exposure <= 2.0, "the unit's sandbox loosened:\n{report}");
}

/// Syslog as seen by `logger`: a datagram socket at /dev/log, when this host has none (a
/// container without a syslog daemon). `None` where a syslog daemon owns /dev/log: the daemon's
/// lines then go to that host's log and are not checked here.
struct Syslog {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Syslog {
    fn listen() -> Option<Self> {
        let path = Path::new("/dev/log");
        if path.exists() {
            eprintln!("/dev/log exists: the daemon's syslog lines are not checked on this host");
            return None;
        }
        let socket = UnixDatagram::bind(path).expect("bind /dev/log");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let lines = lines.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 64 * 1024];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buffer) {
                        let line = String::from_utf8_lossy(&buffer[..n]).into_owned();
                        lines.lock().unwrap().push(line);
                    }
                }
            })
        };
        Some(Self {
            lines,
            stop,
            reader: Some(reader),
        })
    }

    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if lines.iter().any(|l| l.contains(needle)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "syslog never said {needle:?}; it said:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file("/dev/log");
    }
}

/// The packaged fake-store, serving its demo images on a free port.
struct FakeStore {
    child: Child,
    api_url: String,
    _dir: tempfile::TempDir,
}

impl FakeStore {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("/usr/bin/fake-store")
            .args(["--generate-demo", "--listen", "127.0.0.1:0"])
            .arg(dir.path().join("images"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // It goes on printing (the image sets): keep reading, or it dies of a broken pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let api_url = line
            .strip_prefix("fake-store serving ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("fake-store said {line:?}"))
            .to_string();
        Self {
            child,
            api_url,
            _dir: dir,
        }
    }
}

impl Drop for FakeStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct SystemUser {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

impl SystemUser {
    fn lookup() -> Option<Self> {
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
    fn wait_until_no_process_runs(&self) {
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

fn processes_of(uid: u32) -> Vec<String> {
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
struct Daemon {
    pid: u32,
}

impl Daemon {
    fn from_pidfile() -> Self {
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

    fn uid(&self) -> u32 {
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
    fn exe(&self) -> String {
        std::fs::read_link(self.proc("exe"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    fn environment(&self) -> Vec<String> {
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
fn init_script(action: &str) -> Output {
    Command::new(INIT_SCRIPT)
        .arg(action)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The packaged client, signing as the Store tab does; its JSON reply.
fn client(url: &str, secret: &str, call: &[&str]) -> Value {
    let output = run(Command::new("/usr/bin/image-store-proxy")
        .args(["client", "--url", url, "--secret", secret])
        .args(call)
        .env_remove("http_proxy"));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("client {call:?}: {e}: {}", text(&output)))
}

fn wait_until_installed(proxy_url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reply = client(proxy_url, SECRET, &["states", "Ubuntu 9.10"]);
        let state = reply["states"]
            .as_array()
            .and_then(|states| {
                states.iter().find(|s| {
                    s["image-uri"]
                        .as_str()
                        .is_some_and(|u| u.ends_with("ubuntu-9.10-server-amd64"))
                })
            })
            .cloned()
            .unwrap_or_else(|| panic!("no state for Ubuntu 9.10 in {reply}"));
        if state["status"] == "installed" {
            assert!(
                state["emi"].as_str().unwrap().starts_with("emi-"),
                "{state}"
            );
            return state;
        }
        assert!(state.get("error-message").is_none(), "{state}");
        assert!(Instant::now() < deadline, "not installed in time: {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// dpkg, waiting its turn when apt or dpkg holds the lock (another suite may be installing).
fn dpkg(args: &[&str]) {
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

fn installed_version(package: &str) -> Option<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev} ${Version}", package])
        .output()
        .unwrap();
    let line = String::from_utf8(output.stdout).unwrap();
    line.strip_prefix("ii ").map(|v| v.trim().to_string())
}

fn package_has_config_files(package: &str) -> bool {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}", package])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).starts_with("rc")
}

fn architecture() -> String {
    let output = run(Command::new("dpkg").arg("--print-architecture"));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push((path.clone(), entry.metadata().unwrap().len()));
        }
    }
    found.sort();
    found
}

/// A line from the middle of the armored test secret key (keyrings/test-signing-key.asc).
fn test_secret_key_line() -> Vec<u8> {
    let armored = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("keyrings/test-signing-key.asc"),
    )
    .unwrap();
    let body: Vec<&str> = armored
        .lines()
        .filter(|l| l.len() == 64 && !l.starts_with('-'))
        .collect();
    assert!(!body.is_empty(), "an armored key body");
    body[body.len() / 2].as_bytes().to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn paths(debs: &[PathBuf]) -> Vec<&str> {
    debs.iter().map(|d| d.to_str().unwrap()).collect()
}

fn run(command: &mut Command) -> Output {
    let output = command.stdin(Stdio::null()).output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        text(&output)
    );
    output
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
