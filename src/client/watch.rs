//! `client watch IMAGE`: follows one install by polling `states` as the Store tab does, with a
//! progress bar per phase (downloading, then installing) and the `status-detail` line beside it.
//! Ends with the registered ids, or fails with the install's one-line error.

use super::{ClientError, ProxyClient};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::time::Duration;

/// Between two polls: quicker than the Store tab's 5 s, a person is watching.
const POLL: Duration = Duration::from_millis(500);

/// What a finished install registered, as one line for stdout.
#[derive(Debug)]
pub struct Installed {
    pub title: String,
    pub emi: String,
    pub eki: Option<String>,
    pub eri: Option<String>,
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Installed {}: machine image {}", self.title, self.emi)?;
        if let Some(eki) = &self.eki {
            write!(f, ", kernel {eki}")?;
        }
        if let Some(eri) = &self.eri {
            write!(f, ", ramdisk {eri}")?;
        }
        Ok(())
    }
}

/// The bar of the phase under way; a new phase finishes the old bar and starts another.
struct Bars {
    phase: Option<String>,
    bar: Option<ProgressBar>,
    /// Without a terminal the bars are hidden: each new status line is printed instead.
    plain: bool,
    last_line: String,
}

impl Bars {
    fn new() -> Self {
        Self {
            phase: None,
            bar: None,
            plain: !std::io::stderr().is_terminal(),
            last_line: String::new(),
        }
    }

    fn show(&mut self, phase: &str, percent: u64, detail: &str) {
        if self.phase.as_deref() != Some(phase) {
            self.finish();
            let bar = ProgressBar::new(100);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>11} [{bar:30.cyan/blue}] {pos:>3}% {wide_msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(phase.to_string());
            self.bar = Some(bar);
            self.phase = Some(phase.to_string());
        }
        if let Some(bar) = &self.bar {
            bar.set_position(percent.min(100));
            bar.set_message(detail.to_string());
        }
        let line = format!("{phase} {percent:>3}% {detail}");
        if self.plain && line != self.last_line {
            eprintln!("{line}");
            self.last_line = line;
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Polls until the install of `query` (a URI or a unique part of a title) ends.
pub async fn follow(client: &ProxyClient, query: &str) -> Result<Installed, ClientError> {
    let uri = client
        .image_uris(&[query.to_string()])
        .await?
        .pop()
        .ok_or_else(|| ClientError::NoSuchImage(query.into()))?;
    let mut bars = Bars::new();
    loop {
        let reply = client.states(&[&uri]).await?;
        if let Some(message) = reply.error_message() {
            return Err(ClientError::Proxy(message.into()));
        }
        let find = |list: &str, key: &str| -> Value {
            reply.body[list]
                .as_array()
                .and_then(|items| items.iter().find(|item| item[key] == uri.as_str()))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let state = find("states", "image-uri");
        let title = find("images", "uri")["title"]
            .as_str()
            .unwrap_or(&uri)
            .to_string();
        let text = |key: &str| state[key].as_str().map(str::to_owned);
        match state["status"].as_str() {
            Some(phase @ ("downloading" | "installing")) => {
                let percent = state["progress-percentage"].as_u64().unwrap_or(0);
                bars.show(phase, percent, &text("status-detail").unwrap_or_default());
            }
            Some("installed") => {
                bars.finish();
                return Ok(Installed {
                    title,
                    emi: text("emi").unwrap_or_else(|| "?".into()),
                    eki: text("eki"),
                    eri: text("eri"),
                });
            }
            Some("uninstalled") => {
                bars.finish();
                return Err(match text("error-message") {
                    Some(error) => ClientError::InstallFailed(error),
                    None if state["install-state"] == "cancelled" => {
                        ClientError::InstallCancelled(title)
                    }
                    None => ClientError::NotInstalling(title),
                });
            }
            _ => {
                return Err(ClientError::NoState {
                    uri: uri.clone(),
                    body: reply.body.to_string().chars().take(200).collect(),
                });
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
