//! The daemon tells its service manager when it serves and why it gave up (the `sd_notify`
//! protocol that systemd's `Type=notify` and the init script's `start-stop-daemon --notify-await`
//! wait on): the real binary, a real Unix datagram socket standing in for the manager.

use crate::common;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SECRET: &str = "readiness-secret";

struct Manager {
    _dir: tempfile::TempDir,
    socket: UnixDatagram,
    path: std::path::PathBuf,
    data_dir: std::path::PathBuf,
}

impl Manager {
    /// A file beside the data dir, `data.<extension>`, holding `contents`.
    fn file(&self, extension: &str, contents: &str) -> std::path::PathBuf {
        let path = self.data_dir.with_extension(extension);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let data_dir = dir.path().join("data");
        Self {
            _dir: dir,
            socket,
            path,
            data_dir,
        }
    }

    /// The daemon with `args`, its data dir and this manager's socket; stderr piped.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_image-store-proxy"));
        command
            // Upstream is nowhere: readiness must not wait for the catalog.
            .args(["--api-url", "http://127.0.0.1:9/api", "--data-dir"])
            .arg(&self.data_dir)
            .args(args)
            .env("NOTIFY_SOCKET", &self.path)
            .env_remove("http_proxy")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    fn start(&self, args: &[&str]) -> Child {
        self.command(args).spawn().unwrap()
    }

    /// The next datagram the daemon sent, as `KEY=value` lines.
    fn message(&self) -> String {
        let mut buffer = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buffer)
            .expect("the daemon notified its manager in time");
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }
}

fn exit_with_stderr(child: Child) -> (std::process::ExitStatus, String) {
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn ready_once_serving_and_stopping_on_sigterm() {
    let manager = Manager::new();
    let child = manager.start(&["--listen", "127.0.0.1:0", "--fake-eucalyptus", SECRET]);
    let ready = manager.message();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        Path::new(&manager.data_dir).join("state.sqlite").exists(),
        "ready comes after the state database is open"
    );

    common::signal(child.id(), "TERM");
    assert_eq!(manager.message(), "STOPPING=1");
    let (status, stderr) = exit_with_stderr(child);
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}\n{stderr}"
    );
}

#[test]
fn a_refused_configuration_is_reported_with_its_reason() {
    let manager = Manager::new();
    // Cloud credentials without S3_URL: no install could succeed, so the daemon does not start.
    let eucarc = manager.file(
        "eucarc",
        "export EC2_URL=http://127.0.0.1:9/services/compute\nexport EC2_ACCESS_KEY='a'\n",
    );
    let child = manager.start(&[
        "--listen",
        "127.0.0.1:0",
        "--cloud-config",
        eucarc.to_str().unwrap(),
    ]);
    let message = manager.message();
    let (status, stderr) = exit_with_stderr(child);
    assert!(!status.success());
    assert!(message.lines().any(|l| l == "ERRNO=22"), "{message:?}");
    let status_line = message
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("a STATUS line in {message:?}"));
    assert!(
        status_line.contains("has no S3_URL (is Walrus registered?)"),
        "{status_line}"
    );
    assert!(stderr.contains(status_line), "{stderr}");
}

#[test]
fn an_address_in_use_is_reported_with_its_errno() {
    let manager = Manager::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let child = manager.start(&["--listen", &address, "--fake-eucalyptus", SECRET]);
    let message = manager.message();
    let (status, stderr) = exit_with_stderr(child);
    assert!(!status.success());
    const EADDRINUSE: &str = "ERRNO=98";
    assert!(message.lines().any(|l| l == EADDRINUSE), "{message:?}");
    assert!(
        message.contains(&format!("cannot listen on {address}")),
        "{message:?}"
    );
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

/// Under systemd (stderr is the stream `JOURNAL_STREAM` names) every line starts with the syslog
/// priority journald reads and carries no timestamp of its own, so `journalctl -p warning` finds
/// the warnings; the last word of a failed start is an error (`<3>`).
#[test]
fn under_the_journal_lines_carry_their_priority_and_no_timestamp() {
    let manager = Manager::new();
    let journal = manager.data_dir.with_extension("journal");
    let (stream, identity) = common::journal_stream(&journal);
    let no_keyring = manager.data_dir.with_extension("no-keyring.gpg");
    let mut child = manager
        .command(&["--listen", "127.0.0.1:0", "--fake-eucalyptus", SECRET])
        .arg("--keyring")
        .arg(no_keyring)
        .env("JOURNAL_STREAM", &identity)
        .stderr(stream)
        .spawn()
        .unwrap();
    let ready = manager.message();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    common::signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    let lines = std::fs::read_to_string(&journal).unwrap();
    assert!(
        lines.lines().all(|line| line.starts_with('<')),
        "every line has a priority: {lines}"
    );
    assert!(
        lines
            .lines()
            .any(|line| line.starts_with("<4>") && line.contains("keyring")),
        "the missing keyring is a warning: {lines}"
    );
    assert!(
        lines
            .lines()
            .any(|line| line.starts_with("<6>") && line.contains("starting")),
        "start-up is info: {lines}"
    );
    assert!(
        !lines.contains(&format!("{}-", time_year())),
        "no timestamp of our own: {lines}"
    );

    // The same daemon refused at start: its last word is an error.
    let refused = manager.data_dir.with_extension("refused");
    let (stream, identity) = common::journal_stream(&refused);
    let status = manager
        .command(&["--listen", "127.0.0.1:0"])
        .args(["--cloud-config", "/nonexistent/cloud.toml"])
        .env("JOURNAL_STREAM", &identity)
        .stderr(stream)
        .status()
        .unwrap();
    assert!(!status.success());
    let lines = std::fs::read_to_string(&refused).unwrap();
    assert!(
        lines
            .lines()
            .any(|line| line.starts_with("<3>image-store-proxy: ")),
        "{lines}"
    );
}

/// This year, as a timestamp of ours would start ("2026-").
fn time_year() -> i64 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    1970 + seconds / 31_556_952
}

/// `SIGHUP` reloads: the `--config` file is read again and the catalog and keyring with it; a
/// file that no longer loads is refused with its reason and the running configuration stays.
/// The daemon keeps serving either way (before, SIGHUP killed it with 129, which systemd's
/// `Restart=on-failure` counts as a clean exit), and still stops cleanly on SIGTERM.
#[test]
fn sighup_reloads_and_a_broken_config_keeps_the_running_one() {
    let manager = Manager::new();
    let config = manager.file(
        "toml",
        &format!("fake-eucalyptus = \"{SECRET}\"\napi-url = \"http://127.0.0.1:9/api\"\n"),
    );
    let log_path = manager.data_dir.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = manager
        .command(&["--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stderr(log)
        .spawn()
        .unwrap();
    let ready = manager.message();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let pid = child.id();
    let signal = |name: &str| common::signal(pid, name);
    let wait_for_log = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap();
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    signal("HUP");
    wait_for_log("reloaded the configuration");
    std::fs::write(&config, "workers = \"many\"\n").unwrap();
    signal("HUP");
    let text = wait_for_log("reload refused, the running configuration stays");
    assert!(text.contains(&config.display().to_string()), "{text}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after two SIGHUPs"
    );

    signal("TERM");
    assert_eq!(manager.message(), "STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

/// The daemon runs with its malloc settings (`src/main.rs`: one arena, a fixed mmap threshold)
/// under the process id it was started with, as systemd tracks it; a threshold its environment
/// sets is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_restarts_itself_in_place_with_its_malloc_settings() {
    fn environment(pid: u32) -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|b| *b == 0)
            .map(|entry| String::from_utf8_lossy(entry).into_owned())
            .filter(|entry| entry.starts_with("MALLOC_"))
            .collect()
    }
    let mut env = common::TestEnv::start().await;
    let pid = env.proxy.as_ref().unwrap().pid();
    let mut settings = environment(pid);
    settings.sort();
    assert_eq!(
        settings,
        ["MALLOC_ARENA_MAX=1", "MALLOC_MMAP_THRESHOLD_=131072"]
    );

    env.kill_proxy();
    env.proxy_env = vec![("MALLOC_MMAP_THRESHOLD_".into(), "262144".into())];
    env.start_proxy();
    let mut settings = environment(env.proxy.as_ref().unwrap().pid());
    settings.sort();
    assert_eq!(
        settings,
        ["MALLOC_ARENA_MAX=1", "MALLOC_MMAP_THRESHOLD_=262144"]
    );
}
