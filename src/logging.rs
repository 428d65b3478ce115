//! Where log lines go and how they look. On a terminal or a file: plain text with a timestamp.
//! Under systemd, whose journal already stamps each line and reads a `<N>` syslog priority at the
//! start of a line on stderr (`sd-daemon(3)`): the priority and no timestamp, so `journalctl -p
//! warning` shows the warnings. systemd tells a service its stderr is the journal with
//! `JOURNAL_STREAM=<device>:<inode>`, and only a stderr with that device and inode is the journal
//! (a child that inherited the variable but writes elsewhere is not). The init script asks for the
//! same prefixes with `IMAGE_STORE_PROXY_LOG_PRIORITIES=1`, for `logger --prio-prefix`, so syslog
//! keeps the levels too.

use std::fmt;
use std::io::IsTerminal;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// Installs the process's log subscriber: `debug` lowers the default level; `RUST_LOG` overrides.
pub fn init(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if priorities_wanted() {
        builder
            .with_ansi(false)
            .event_format(JournalFormat::default())
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// A line the process writes on stderr itself (its last word on a failed start), with the
/// journal's priority prefix when stderr is the journal.
pub fn error_line(line: &str) -> String {
    if priorities_wanted() {
        format!("<{}>{line}", priority(&Level::ERROR))
    } else {
        line.to_string()
    }
}

/// Whether each line is to start with its syslog priority: stderr is the journal, or the init
/// script's logger reads the prefixes.
fn priorities_wanted() -> bool {
    std::env::var_os("IMAGE_STORE_PROXY_LOG_PRIORITIES").is_some_and(|v| v == "1")
        || stderr_is_the_journal()
}

/// Whether stderr is the stream `JOURNAL_STREAM` names.
pub fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// syslog's priority for a tracing level: err, warning, info, debug.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The plain format without its timestamp, after a `<N>` priority.
struct JournalFormat {
    inner: format::Format<format::Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> Self {
        Self {
            inner: format::Format::default().without_time().with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.inner.format_event(context, writer, event)
    }
}
