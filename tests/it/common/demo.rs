//! `image-store-proxy demo` as a person runs it: started in a directory, its printed addresses
//! and copy-pasteable commands read back, stopped with Ctrl-C.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

pub struct Demo {
    child: Child,
    /// The copy-pasteable commands the demo printed.
    pub commands: Vec<String>,
    /// Where the proxy and fake-store listen, as printed (`host:port`).
    pub proxy: String,
    pub store: String,
    /// The Store page address, as printed.
    pub store_page: String,
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Demo {
    /// A failed test must not leave the demo running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// Starts the demo in `dir`, listening where asked (`127.0.0.1:0`: any free port).
    pub fn start(dir: &Path, proxy: &str, store: &str) -> Demo {
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
        let (mut proxy, mut store, mut store_page) = (String::new(), String::new(), String::new());
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
            } else if line.starts_with("Store page: open ") {
                let url = line.split_whitespace().nth(3).unwrap();
                store_page = url.to_string();
            }
        }
        Demo {
            child,
            commands,
            proxy,
            store,
            store_page,
            _stdout: stdout,
        }
    }

    /// Runs the printed command that ends with `tail` through `sh`, as if pasted.
    pub fn run(&self, dir: &Path, tail: &str) -> Value {
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
    pub fn interrupt(mut self) {
        super::signal(self.child.id(), "INT");
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the demo stops cleanly on Ctrl-C: {status}"
        );
    }
}
