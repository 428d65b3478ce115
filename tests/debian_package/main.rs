//! The Debian package, end to end, as an operator meets it. As root (CI is root), on a host where
//! systemd is not PID 1 (a container, as CI): `dpkg-buildpackage -us -uc -b` builds both packages
//! from a copy of this checkout, lintian finds no error, `dpkg -i` installs them (system user,
//! data directory, init script, unit), the init script refuses the shipped configuration quickly
//! and says why in syslog, then starts the daemon with `--fake-eucalyptus` in DAEMON_OPTS as the
//! system user, which answers a signed request and installs an image from the packaged
//! fake-store; a rebuilt higher version upgrades it with the state kept, and `dpkg --purge`
//! removes the user and the data. The upgrade crosses the real schema migration from 0.1.0: before
//! the higher version is installed, the daemon is stopped and its data directory replaced by the
//! one release 0.1.0 wrote (`tests/fixtures/upgrade-0.1.0/data`, schema 2), as an upgrade from
//! the 0.1.0 package finds it; the upgraded daemon must start, migrate it and list the same
//! installs, installed, with the same ids. (Building the 0.1.0 package as well would double the
//! test's ~12 minutes for what the fixture, made by 0.1.0 itself, already holds.)
//!
//! The package build reuses one cargo target directory under `target/tmp/debian-package` across
//! versions and runs, apart from the suite's own (cargo locks a target directory while it builds),
//! so the upgrade's rebuild compiles nothing. Installing a system package is global: a lock file
//! serialises runs, and a package installed by anyone but this test is left alone (the test
//! fails, saying so).

mod package_build;
mod syslog;
mod system;

use package_build::{PackageBuild, paths};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use syslog::Syslog;
use system::{
    Daemon, Installed, SystemLock, SystemUser, clean_up_after_an_interrupted_run, dpkg, free_port,
    init_script, installed_version, preconditions,
};

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
/// Where the test keeps the UI's secret, as the shipped /etc/default example names it.
const UI_SECRET: &str = "/etc/image-store-proxy/ui-secret";
/// The first line of the defaults file this test writes: a package left behind by an interrupted
/// run of this test carries it, and only such a package is purged before the run.
const MARKER: &str = "# Written by image-store-proxy's tests/debian_package.rs";

#[test]
fn the_package_builds_installs_serves_upgrades_and_purges() {
    preconditions();
    let _lock = SystemLock::acquire();
    clean_up_after_an_interrupted_run();
    let mut timings = Timings::default();

    let build = PackageBuild::prepare();
    let v1 = build.version();
    let debs = timings.time("build v1 (dpkg-buildpackage)", || build.build(&v1));
    for deb in &debs {
        let size = std::fs::metadata(deb).unwrap().len();
        eprintln!("package {}: {size} bytes", deb.display());
    }
    timings.time("lintian", || lint(&build.changes(&v1)));

    let mut installed = Installed::new();
    timings.time("dpkg --install", || {
        dpkg(&[&["--install"], &paths(&debs)[..]].concat())
    });
    let user = check_installation();
    check_unit();

    let syslog = Syslog::listen();
    refuses_the_shipped_configuration(&user, syslog.as_ref());

    let store = FakeStore::start();
    let port = free_port();
    let proxy_url = format!("http://127.0.0.1:{port}");
    configure(port, &store.api_url);
    let first = timings.time("init script start (until ready)", || {
        start(&user, &proxy_url, syslog.as_ref())
    });
    let installed_before = install_an_image(&proxy_url);
    reloads(&first, syslog.as_ref());

    // The upgrade: a higher version from the same build directory, installed over the running
    // daemon, which the init script restarts (in a container invoke-rc.d may not).
    let v2 = format!("{v1}+upgradetest1");
    let debs = timings.time("build v2 (rebuild for the upgrade)", || build.build(&v2));
    assert_eq!(installed_before["status"], "installed");
    let of_0_1_0 = as_left_by_0_1_0(&user);
    dpkg(&[&["--install"], &paths(&debs)[..]].concat());
    upgraded(&v2, &user, &first, &proxy_url, &of_0_1_0);

    let stop = init_script("stop");
    assert!(stop.status.success(), "{}", text(&stop));
    user.wait_until_no_process_runs();
    assert_eq!(init_script("status").status.code(), Some(3), "stopped");
    assert!(!Path::new(PIDFILE).exists());
    drop(store);
    // The secret file is the administrator's, as the keyring would be: purge leaves it, so the
    // administrator removes it first.
    std::fs::remove_file(UI_SECRET).unwrap();
    timings.time("dpkg --purge", || {
        dpkg(&["--purge", PACKAGE, FAKE_STORE_PACKAGE])
    });
    installed.purged = true;
    purged();

    timings.report();
}

/// lintian on the .changes (both packages): no error. Its output is printed for the record.
fn lint(changes: &Path) {
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(changes)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!("lintian {}:\n{}", changes.display(), text(&lintian));
    assert!(lintian.status.success(), "lintian found errors");
    assert!(
        !String::from_utf8_lossy(&lintian.stdout)
            .lines()
            .any(|l| l.starts_with("E: ")),
        "lintian found errors"
    );
}

/// What postinst and the packages put in place; returns the system user.
fn check_installation() -> SystemUser {
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
    // The licence notices of the statically linked crates ship with each binary.
    for package in ["image-store-proxy", "image-store-proxy-fake-store"] {
        let notices = notices_of(package);
        for crate_line in ["tokio ", "sequoia-openpgp ", "hyper "] {
            assert!(
                notices.lines().any(|line| line.starts_with(crate_line)),
                "{package}'s notices list {crate_line:?}"
            );
        }
        assert!(
            notices.contains("Permission is hereby granted"),
            "MIT texts in {package}"
        );
    }
    assert!(
        !notices_of("image-store-proxy").contains("\nfake-store "),
        "the daemon is built without fake-store"
    );
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
    user
}

/// The installed THIRD-PARTY-NOTICES of `package` (dh_compress may have gzipped it).
fn notices_of(package: &str) -> String {
    let plain = format!("/usr/share/doc/{package}/THIRD-PARTY-NOTICES");
    if let Ok(text) = std::fs::read_to_string(&plain) {
        return text;
    }
    let gz = format!("{plain}.gz");
    let output = run(Command::new("zcat").arg(&gz));
    String::from_utf8(output.stdout).unwrap_or_else(|e| panic!("{gz}: {e}"))
}

/// The shipped configuration names no cloud credentials, and euca_conf is not there to fetch
/// them, so the daemon refuses to start, and the init script says so at once rather than after
/// its 60-second wait.
fn refuses_the_shipped_configuration(user: &SystemUser, syslog: Option<&Syslog>) {
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
    if let Some(syslog) = syslog {
        // At its level: daemon.err (3 * 8 + 3), where it once came as info like every line.
        syslog.wait_for_at("Proxy failed to retrieve Eucalyptus credentials", 27);
    }
    user.wait_until_no_process_runs();
}

/// /etc/default/image-store-proxy as an operator would write it, with the packaged fake-store as
/// upstream and its test keyring, and proxy variables that must reach the daemon.
fn configure(port: u16, api_url: &str) {
    // The UI's secret in a file only root and the daemon's group read, as the docs say: never on
    // the command line, where every local user sees it.
    let secret_file = UI_SECRET;
    std::fs::write(secret_file, format!("{SECRET}\n")).unwrap();
    run(Command::new("chgrp").args(["image-store-proxy", secret_file]));
    run(Command::new("chmod").args(["0640", secret_file]));
    std::fs::write(
        DEFAULTS,
        format!(
            "{MARKER}\nDAEMON_OPTS=\"--fake-eucalyptus-secret-file={secret_file} --listen 127.0.0.1:{port} \
             --api-url {api_url} --keyring {TEST_KEYRING} --retry-delay-ms 100\"\n\
             http_proxy=\"http://127.0.0.1:9/\"\nhttps_proxy=\"http://127.0.0.1:9/\"\n\
             no_proxy=\"127.0.0.1,localhost\"\n"
        ),
    )
    .unwrap();
}

/// `/etc/init.d/image-store-proxy start` returns once the daemon serves: as the system user, with
/// the proxy variables, its output in syslog.
fn start(user: &SystemUser, proxy_url: &str, syslog: Option<&Syslog>) -> Daemon {
    let start = init_script("start");
    assert!(start.status.success(), "{}", text(&start));
    let daemon = Daemon::from_pidfile();
    assert_eq!(daemon.uid(), user.uid, "the daemon runs as {USER}");
    assert_eq!(daemon.exe(), "/usr/bin/image-store-proxy");
    let environment = daemon.environment();
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
    if let Some(syslog) = syslog {
        syslog.wait_for(&format!(
            "image-store-proxy[{}]: image-store-proxy listening on {proxy_url}/api",
            daemon.pid
        ));
    }
    daemon
}

/// The Store tab's signed requests, through the packaged client: the dashboard, a forgery, and
/// an install into the fake cloud. Returns the installed state.
fn install_an_image(proxy_url: &str) -> Value {
    let dashboard = client(proxy_url, SECRET, &["dashboard"]);
    assert!(dashboard.get("error-message").is_none(), "{dashboard}");
    assert_eq!(
        dashboard["images"].as_array().unwrap().len(),
        2,
        "{dashboard}"
    );
    // A forgery is refused, and the client says so in its exit status (1) as well as the reply.
    let forged = Command::new("/usr/bin/image-store-proxy")
        .args([
            "client",
            "--url",
            proxy_url,
            "--secret",
            "not-the-secret",
            "dashboard",
        ])
        .env_remove("http_proxy")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(forged.status.code(), Some(1), "{}", text(&forged));
    let reply: Value = serde_json::from_slice(&forged.stdout).unwrap();
    assert_eq!(reply["error-message"], "Bad request signature", "{reply}");
    client(proxy_url, SECRET, &["install", "Ubuntu 9.10"]);
    wait_until_installed(proxy_url)
}

/// The installs of the 0.1.0 fixture: image URI and machine image id.
const FIXTURE_INSTALLS: &str =
    "SELECT image_uri, emi FROM installs WHERE state = 'installed' ORDER BY image_uri";

fn installs_in(db: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(FIXTURE_INSTALLS).unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn schema_version(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap()
}

/// Stops the daemon and puts in its data directory the state release 0.1.0 wrote (owned by the
/// system user, private, as the daemon keeps it); returns its installs.
fn as_left_by_0_1_0(user: &SystemUser) -> Vec<(String, String)> {
    let stop = init_script("stop");
    assert!(stop.status.success(), "{}", text(&stop));
    user.wait_until_no_process_runs();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade-0.1.0/data");
    for entry in std::fs::read_dir(DATA_DIR).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let mut copy = fixture.into_os_string();
    copy.push("/.");
    run(Command::new("cp").args(["-R"]).arg(copy).arg(DATA_DIR));
    let db = Path::new(DATA_DIR).join("state.sqlite");
    assert_eq!(schema_version(&db), 2, "0.1.0's schema");
    let installs = installs_in(&db);
    assert_eq!(installs.len(), 2, "{installs:?}");
    // Last, so that whatever reading it left is the daemon's too.
    run(Command::new("chown").args(["-R", &format!("{USER}:{USER}"), DATA_DIR]));
    run(Command::new("chmod").args(["-R", "g-w,o-rwx", DATA_DIR]));
    installs
}

/// After the upgrade: the new version, the operator's configuration, and, once restarted, the new
/// executable serving the state and fake cloud release 0.1.0 left, its schema migrated.
fn upgraded(
    version: &str,
    user: &SystemUser,
    before: &Daemon,
    proxy_url: &str,
    of_0_1_0: &[(String, String)],
) {
    assert_eq!(installed_version(PACKAGE).as_deref(), Some(version));
    assert!(
        std::fs::read_to_string(DEFAULTS)
            .unwrap()
            .starts_with(MARKER),
        "the upgrade keeps the operator's {DEFAULTS}"
    );
    let fake_cloud = files_under(&Path::new(DATA_DIR).join("fake-cloud"));
    assert!(!fake_cloud.is_empty());
    let restart = init_script("restart");
    assert!(restart.status.success(), "{}", text(&restart));
    let after = Daemon::from_pidfile();
    assert_ne!(after.pid, before.pid);
    assert_eq!(
        after.exe(),
        "/usr/bin/image-store-proxy",
        "the new executable runs"
    );
    assert_eq!(after.uid(), user.uid);
    for (uri, emi) in of_0_1_0 {
        let reply = client(proxy_url, SECRET, &["states", uri]);
        let now = reply["states"]
            .as_array()
            .and_then(|states| states.iter().find(|s| s["image-uri"] == uri.as_str()))
            .unwrap_or_else(|| panic!("no state for {uri} in {reply}"));
        assert_eq!(
            now["status"], "installed",
            "0.1.0's install survived: {now}"
        );
        assert_eq!(now["emi"], emi.as_str(), "{now}");
    }
    let db = Path::new(DATA_DIR).join("state.sqlite");
    assert!(schema_version(&db) > 2, "the schema migrated");
    assert_eq!(installs_in(&db), of_0_1_0, "every install kept");
    assert_eq!(
        files_under(&Path::new(DATA_DIR).join("fake-cloud")),
        fake_cloud
    );
}

/// After `dpkg --purge`: no user, no group, no data, no configuration.
fn purged() {
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
}

/// How long each step took, printed at the end.
#[derive(Default)]
struct Timings(Vec<(&'static str, Duration)>);

impl Timings {
    fn time<T>(&mut self, what: &'static str, step: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = step();
        self.0.push((what, started.elapsed()));
        result
    }

    fn report(&self) {
        for (what, took) in &self.0 {
            eprintln!("{what}: {:.2} s", took.as_secs_f64());
        }
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

/// `/etc/init.d/image-store-proxy reload` sends SIGHUP: the same daemon (same pid) reloads and
/// keeps serving, where SIGHUP once killed it.
fn reloads(daemon: &Daemon, syslog: Option<&Syslog>) {
    let reload = init_script("reload");
    assert!(reload.status.success(), "{}", text(&reload));
    if let Some(syslog) = syslog {
        syslog.wait_for_at("reloaded the configuration", 30);
    }
    assert_eq!(Daemon::from_pidfile().pid, daemon.pid, "the same daemon");
    assert_eq!(
        init_script("status").status.code(),
        Some(0),
        "still running"
    );
    // What the daemon wrote holds secrets: closed to other users.
    for path in ["state.sqlite", "fake-cloud/keys/user-pk.pem"] {
        let path = Path::new(DATA_DIR).join(path);
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "{}: {mode:04o}", path.display());
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
        let state = ubuntu_9_10(&client(proxy_url, SECRET, &["states", "Ubuntu 9.10"]));
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

/// The state of the demo's Ubuntu 9.10 image in a reply.
fn ubuntu_9_10(reply: &Value) -> Value {
    reply["states"]
        .as_array()
        .and_then(|states| {
            states.iter().find(|s| {
                s["image-uri"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("ubuntu-9.10-server-amd64"))
            })
        })
        .cloned()
        .unwrap_or_else(|| panic!("no state for Ubuntu 9.10 in {reply}"))
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
