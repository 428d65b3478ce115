//! The daemon tells its service manager when it serves and why it gave up (the `sd_notify`
//! protocol that systemd's `Type=notify` and the init script's `start-stop-daemon --notify-await`
//! wait on): the real binary, a real Unix datagram socket standing in for the manager.

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

    fn start(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_image-store-proxy"))
            // Upstream is nowhere: readiness must not wait for the catalog.
            .args(["--api-url", "http://127.0.0.1:9/api", "--data-dir"])
            .arg(&self.data_dir)
            .args(args)
            .env("NOTIFY_SOCKET", &self.path)
            .env_remove("http_proxy")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
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

    let kill = format!("kill -TERM {}", child.id());
    assert!(
        Command::new("sh")
            .args(["-c", &kill])
            .status()
            .unwrap()
            .success()
    );
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
    let eucarc = manager.data_dir.with_extension("eucarc");
    std::fs::write(
        &eucarc,
        "export EC2_URL=http://127.0.0.1:9/services/compute\nexport EC2_ACCESS_KEY='a'\n",
    )
    .unwrap();
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
