//! How an error reads as one line: its own message, then each cause in its `source` chain that the
//! line does not already say. Our errors' messages are whole lines (the UI, an install's error and
//! the log show them as they are) and keep their causes as typed sources for programs that look
//! (the errno of a failed start); other libraries' errors (reqwest's "error sending request" above
//! "connection refused") say only their part. Joining the chain this way says each cause once,
//! whichever kind of error it is.

use std::error::Error;

/// `error` and its causes, each said once, joined by ": ".
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// Another library's message as one line: its line breaks (sequoia's parser says "Unrecognized
/// EOF found at 1\nExpected one of …") and the spaces around them become one space.
pub fn flat(message: &impl std::fmt::Display) -> String {
    message
        .to_string()
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A failed HTTP exchange with `peer` ("the image store", "the cloud", "the proxy") as one short
/// cause a person can act on: "the image store at 127.0.0.1:37207 refused the connection", not
/// reqwest's "error sending request for url (…): client error (Connect): tcp connect error: …".
/// The caller's line names the URL; this names the host and what happened.
pub fn transport(error: &reqwest::Error, peer: &str) -> String {
    let at = match error.url() {
        Some(url) => match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{peer} at {host}:{port}"),
            (Some(host), None) => format!("{peer} at {host}"),
            _ => peer.to_string(),
        },
        None => peer.to_string(),
    };
    let mut causes: Vec<&(dyn Error + 'static)> = vec![error];
    let mut next = error.source();
    while let Some(cause) = next {
        causes.push(cause);
        next = cause.source();
    }
    let chain = || causes.iter().copied();
    let innermost = chain().last().map(ToString::to_string).unwrap_or_default();
    // The upstream resolver's refusal (`fetch/hosts.rs`) is already a whole line.
    if let Some(refusal) = chain().find_map(|e| e.downcast_ref::<crate::fetch::HostRefusal>()) {
        return refusal.to_string();
    }
    if let Some(tls) = chain().find_map(|e| e.downcast_ref::<rustls::Error>()) {
        return format!("the TLS handshake with {at} failed: {tls}");
    }
    if chain().any(|e| e.to_string().starts_with("dns error")) {
        return format!("the name of {at} does not resolve: {innermost}");
    }
    if let Some(io) = chain().find_map(|e| e.downcast_ref::<std::io::Error>()) {
        use std::io::ErrorKind::*;
        return match io.kind() {
            ConnectionRefused => format!("{at} refused the connection"),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                format!("{at} closed the connection")
            }
            TimedOut => format!("{at} did not answer in time"),
            HostUnreachable | NetworkUnreachable => format!("{at} cannot be reached: {io}"),
            _ => format!("{at}: {io}"),
        };
    }
    if error.is_timeout() {
        return format!("{at} did not answer in time");
    }
    if error.is_body() || error.is_decode() {
        return format!("the answer of {at} broke off: {innermost}");
    }
    format!("{at}: {innermost}")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// A port nobody listens on gives the one short cause, with the host and port.
    #[tokio::test]
    async fn a_refused_connection_is_one_short_cause() {
        crate::fetch::install_crypto_provider();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let error = reqwest::Client::new()
            .get(format!("http://{address}/api/dashboard"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            super::transport(&error, "the image store"),
            format!("the image store at {address} refused the connection")
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("state database {path}: {source}")]
    struct SaysItsCause {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on {address}")]
    struct LeavesItsCause {
        address: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::other("unable to open database file");
        let says = SaysItsCause {
            path: "/d/state.sqlite",
            source: io(),
        };
        assert_eq!(
            one_line(&says),
            "state database /d/state.sqlite: unable to open database file"
        );
        let leaves = LeavesItsCause {
            address: "127.0.0.1:1",
            source: io(),
        };
        assert_eq!(
            one_line(&leaves),
            "cannot listen on 127.0.0.1:1: unable to open database file"
        );
    }
}
