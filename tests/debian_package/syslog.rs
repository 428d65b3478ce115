//! A stand-in syslog for hosts that have none, so that the test reads what the init script's
//! logger sends.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Syslog as seen by `logger`: a datagram socket at /dev/log, when this host has none (a
/// container without a syslog daemon). `None` where a syslog daemon owns /dev/log: the daemon's
/// lines then go to that host's log and are not checked here.
pub(crate) struct Syslog {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Syslog {
    pub(crate) fn listen() -> Option<Self> {
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

    pub(crate) fn wait_for(&self, needle: &str) {
        self.wait_for_line(needle, |_| true);
    }

    /// Waits for a line saying `needle` at syslog priority `priority` (facility * 8 + level:
    /// daemon.err is 27, daemon.warning 28, daemon.info 30), as the datagram's `<N>` states it.
    pub(crate) fn wait_for_at(&self, needle: &str, priority: u8) {
        let prefix = format!("<{priority}>");
        self.wait_for_line(needle, |line| line.starts_with(&prefix));
    }

    fn wait_for_line(&self, needle: &str, also: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if lines.iter().any(|l| l.contains(needle) && also(l)) {
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
