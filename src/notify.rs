//! Readiness for service managers: the `sd_notify` datagram protocol, which both systemd
//! (`Type=notify`) and Debian's `start-stop-daemon --notify-await` (the init script) speak. The
//! manager passes a Unix datagram socket in `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace); the daemon sends `READY=1` once it serves, or `ERRNO=` with a `STATUS=` line when it
//! gives up starting, so `service image-store-proxy start` reports the truth instead of guessing.
//! Without `NOTIFY_SOCKET` (a shell, the tests, the demo) every call here does nothing.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// The daemon serves the UI API: migrations ran, the workers run, the listener accepts.
pub fn ready() {
    send("READY=1\nSTATUS=serving the Store UI API");
}

/// A shutdown began (a signal arrived).
pub fn stopping() {
    send("STOPPING=1");
}

/// The daemon gives up starting: `message` becomes the manager's status line, `errno` its error
/// code (`start-stop-daemon` prints it and fails at once rather than waiting for a timeout).
pub fn failed(message: &str, errno: i32) {
    let line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    send(&format!("STATUS={line}\nERRNO={errno}"));
}

fn send(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    // start-stop-daemon listens only until the daemon is ready: a later STOPPING=1 finds no
    // socket, which is no news.
    if let Err(error) = send_to(&socket, state) {
        tracing::debug!(
            "cannot notify the service manager at NOTIFY_SOCKET={}: {error}",
            socket.to_string_lossy()
        );
    }
}

/// Sends one datagram to the socket named as in `NOTIFY_SOCKET`.
pub fn send_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let name = socket.as_bytes();
    let address = match name.first() {
        Some(b'/') => SocketAddr::from_pathname(Path::new(socket))?,
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&name[1..])?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an @abstract name",
            ));
        }
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 512];
        let n = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_path_socket_receives_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(receive(&manager), "READY=1");
    }

    #[test]
    fn an_abstract_socket_receives_the_state() {
        let name = format!("image-store-proxy-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&address).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(receive(&manager), "STOPPING=1");
    }

    #[test]
    fn a_relative_name_is_refused() {
        let error = send_to(OsStr::new("notify.sock"), "READY=1").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
