//! The README's first command, as a person uses it: `image-store-proxy demo` starts, the client
//! commands it prints work when pasted into a shell, the install reaches the fake cloud, and a
//! second run of the demo on the same directory keeps the installed state.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    /// The copy-pasteable commands the demo printed.
    commands: Vec<String>,
    /// Where the proxy and fake-store listen, as printed (`host:port`).
    proxy: String,
    store: String,
    _stdout: BufReader<ChildStdout>,
}

impl Demo {
    /// Starts the demo in `dir`, listening where asked (`127.0.0.1:0`: any free port).
    fn start(dir: &Path, proxy: &str, store: &str) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_image-store-proxy"))
            .args(["demo", "--data-dir", "demo-data"])
            .args(["--listen", proxy, "--store-listen", store])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut commands = Vec::new();
        let (mut proxy, mut store) = (String::new(), String::new());
        let mut line = String::new();
        while !line.starts_with("Ctrl-C") {
            line.clear();
            assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "demo ended early");
            let address = || {
                line.split("http://")
                    .nth(1)
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
            };
            if line.contains(" client --url ") {
                commands.push(line.trim().to_string());
            } else if line.trim_start().starts_with("proxy ") {
                proxy = address().to_string();
            } else if line.trim_start().starts_with("fake store ") {
                store = address().to_string();
            }
        }
        Demo {
            child,
            commands,
            proxy,
            store,
            _stdout: stdout,
        }
    }

    /// Runs the printed command that ends with `tail` through `sh`, as if pasted.
    fn run(&self, dir: &Path, tail: &str) -> Value {
        let command = self
            .commands
            .iter()
            .find(|c| c.ends_with(tail))
            .unwrap_or_else(|| panic!("the demo prints a `{tail}` command: {:?}", self.commands));
        let output = Command::new("sh")
            .args(["-c", command])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Ctrl-C, as the demo's last line says.
    fn interrupt(mut self) {
        // The shell's `kill` builtin: a bare machine may have no procps.
        let kill = format!("kill -INT {}", self.child.id());
        assert!(
            Command::new("sh")
                .args(["-c", &kill])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the demo stops cleanly on Ctrl-C: {status}"
        );
    }
}

fn karmic_state(reply: &Value) -> Value {
    reply["states"]
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
        .unwrap_or_else(|| panic!("no state for Ubuntu 9.10 in {reply}"))
}

#[test]
fn the_printed_commands_install_an_image_and_a_second_run_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "127.0.0.1:0", "127.0.0.1:0");

    let dashboard = demo.run(dir.path(), "dashboard");
    assert!(dashboard.get("error-message").is_none(), "{dashboard}");
    assert_eq!(dashboard["images"].as_array().unwrap().len(), 2);
    assert_eq!(karmic_state(&dashboard)["status"], "uninstalled");

    let pressed = demo.run(dir.path(), "install 'Ubuntu 9.10'");
    assert_eq!(pressed["state"]["status"], "downloading", "{pressed}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let installed = loop {
        let state = karmic_state(&demo.run(dir.path(), "states 'Ubuntu 9.10'"));
        if state["status"] == "installed" {
            break state;
        }
        assert!(state.get("error-message").is_none(), "{state}");
        assert!(Instant::now() < deadline, "not installed in time: {state}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let emi = installed["emi"].as_str().unwrap().to_string();
    assert!(emi.starts_with("emi-"), "{installed}");
    let bucket = std::fs::read_dir(dir.path().join("demo-data/proxy/fake-cloud"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("image-store-")
        })
        .expect("the fake cloud holds a bucket");
    let registration: Value = serde_json::from_slice(
        &std::fs::read(bucket.join("ubuntu-server-amd64-9.10-image.registration.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(registration["image_id"], emi.as_str());
    // A person runs the demo again on its default addresses; here, on the ones just used (the
    // catalog's image URIs carry fake-store's address).
    let (proxy, store) = (demo.proxy.clone(), demo.store.clone());
    demo.interrupt();

    let again = Demo::start(dir.path(), &proxy, &store);
    let state = karmic_state(&again.run(dir.path(), "states 'Ubuntu 9.10'"));
    assert_eq!(state["status"], "installed", "{state}");
    assert_eq!(state["emi"], emi.as_str());
    again.interrupt();
}
