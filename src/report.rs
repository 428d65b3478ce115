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

#[cfg(test)]
mod tests {
    use super::one_line;

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
