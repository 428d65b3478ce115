//! A client that signs like the Store servlet (SPEC §4.1): `image-store-proxy client ...` for
//! operators and scripts, and [`ProxyClient`] for tests and the demo.

use crate::api::signature::{self, CLIENT_TTL_SECS};
use crate::db::now_unix;
use reqwest::Url;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

mod watch;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad proxy URL {0:?}")]
    Url(String),
    #[error("{url}: {cause}")]
    Http { url: String, cause: String },
    #[error("{url}: the reply is not a JSON object: {body:?}")]
    NotJson { url: String, body: String },
    #[error("the proxy says: {0}")]
    Proxy(String),
    #[error("no image matches {0:?}; `client dashboard` lists them")]
    NoSuchImage(String),
    #[error("{query:?} matches several images: {titles}")]
    Ambiguous { query: String, titles: String },
    #[error("image {title:?} offers no {action} action now (status {status})")]
    NoAction {
        title: String,
        action: String,
        status: String,
    },
    /// A watched install failed: its one-line error, as the proxy wrote it.
    #[error("{0}")]
    InstallFailed(String),
    #[error("the install of {0:?} was cancelled")]
    InstallCancelled(String),
    #[error("{0:?} is not being installed; `client install` starts it")]
    NotInstalling(String),
    #[error("the proxy sent no state for {uri}: {body}")]
    NoState { uri: String, body: String },
}

/// A reply: the HTTP status (the real UI ignores it) and the JSON object.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn error_message(&self) -> Option<&str> {
        self.body.get("error-message").and_then(Value::as_str)
    }
}

pub struct ProxyClient {
    base: Url,
    secret: Vec<u8>,
    client_id: String,
    http: reqwest::Client,
}

static NONCE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An opaque decimal nonce, unique per process (the servlet uses `System.nanoTime()`).
fn fresh_nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let count = NONCE_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}{count:04}",
        nanos ^ (u64::from(std::process::id()) << 40)
    )
}

impl ProxyClient {
    /// `url` is the proxy's address, e.g. `http://localhost:52780`.
    pub fn new(url: &str, secret: &str, client_id: &str) -> Result<Self, ClientError> {
        let base = Url::parse(url).map_err(|_| ClientError::Url(url.into()))?;
        crate::fetch::install_crypto_provider();
        let http =
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(|e| ClientError::Http {
                    url: url.into(),
                    cause: e.to_string(),
                })?;
        Ok(Self {
            base,
            secret: secret.as_bytes().to_vec(),
            client_id: client_id.into(),
            http,
        })
    }

    /// Signs `params` for `method` on `url` as the servlet does; returns them with `Signature` last.
    pub fn sign(
        &self,
        method: &str,
        url: &Url,
        mut params: Vec<(String, String)>,
    ) -> Vec<(String, String)> {
        let host =
            signature::signing_host(url.host_str().unwrap_or(""), url.port_or_known_default());
        signature::sign_request(
            &self.secret,
            method,
            &host,
            url.path(),
            &mut params,
            &signature::Stamp {
                client_id: &self.client_id,
                expires: now_unix() + CLIENT_TTL_SECS,
                nonce: &fresh_nonce(),
            },
        );
        params
    }

    /// Sends a signed request to `target` (a path like `/api/states`, or an absolute action URI).
    pub async fn call(
        &self,
        method: &str,
        target: &str,
        params: Vec<(String, String)>,
    ) -> Result<Reply, ClientError> {
        let url = self
            .base
            .join(target)
            .map_err(|_| ClientError::Url(target.into()))?;
        let signed = self.sign(method, &url, params);
        self.send(method, url, &signed).await
    }

    /// Sends already-built parameters as-is (tests use it to send what a forger would).
    pub async fn send(
        &self,
        method: &str,
        mut url: Url,
        params: &[(String, String)],
    ) -> Result<Reply, ClientError> {
        let encoded = params
            .iter()
            .map(|(name, value)| {
                format!("{}={}", signature::encode(name), signature::encode(value))
            })
            .collect::<Vec<_>>()
            .join("&");
        let request = if method == "GET" {
            url.set_query(Some(&encoded));
            self.http.get(url.clone())
        } else {
            self.http
                .post(url.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(encoded)
        };
        let http_error = |e: reqwest::Error| ClientError::Http {
            url: url.to_string(),
            cause: crate::report::transport(&e, "the proxy"),
        };
        let response = request.send().await.map_err(http_error)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(http_error)?;
        match serde_json::from_str::<Value>(&text) {
            Ok(body) if body.is_object() => Ok(Reply { status, body }),
            _ => Err(ClientError::NotJson {
                url: url.to_string(),
                body: text.chars().take(200).collect(),
            }),
        }
    }

    pub async fn dashboard(&self) -> Result<Reply, ClientError> {
        self.call("GET", "/api/dashboard", Vec::new()).await
    }

    pub async fn search(&self, query: &str) -> Result<Reply, ClientError> {
        self.call("GET", "/api/search", vec![("q".into(), query.into())])
            .await
    }

    pub async fn states(&self, uris: &[&str]) -> Result<Reply, ClientError> {
        let params = uris
            .iter()
            .map(|uri| ("image-uri".to_string(), uri.to_string()))
            .collect();
        self.call("POST", "/api/states", params).await
    }

    /// Resolves what a person typed (an image URI, or a unique part of its title) to image URIs,
    /// fetching the dashboard only when some query is not already a URI.
    pub async fn image_uris(&self, queries: &[String]) -> Result<Vec<String>, ClientError> {
        if queries.iter().all(|q| q.contains("://")) {
            return Ok(queries.to_vec());
        }
        let dashboard = self.dashboard().await?;
        queries
            .iter()
            .map(|query| {
                let image = find_image(&dashboard.body, query)?;
                Ok(image["uri"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }

    /// Finds the image `query` names (its exact URI, or a unique part of its title) on the
    /// dashboard and POSTs to the action URI its state offers.
    pub async fn act(&self, query: &str, action: &str) -> Result<Reply, ClientError> {
        let dashboard = self.dashboard().await?;
        let image = find_image(&dashboard.body, query)?;
        let states = dashboard.body["states"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let state = states
            .iter()
            .find(|state| state["image-uri"] == image["uri"])
            .cloned()
            .unwrap_or_default();
        let Some(uri) = state["actions"][action].as_str() else {
            return Err(ClientError::NoAction {
                title: image["title"].as_str().unwrap_or("?").into(),
                action: action.into(),
                status: state["status"].as_str().unwrap_or("unknown").into(),
            });
        };
        self.call("POST", uri, Vec::new()).await
    }
}

/// The dashboard image whose URI is `query`, or the only one whose title contains it.
fn find_image<'a>(dashboard: &'a Value, query: &str) -> Result<&'a Value, ClientError> {
    let images = dashboard["images"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(image) = images.iter().find(|image| image["uri"] == query) {
        return Ok(image);
    }
    let lower = query.to_lowercase();
    let matches: Vec<&Value> = images
        .iter()
        .filter(|image| {
            image["title"]
                .as_str()
                .is_some_and(|t| t.to_lowercase().contains(&lower))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(ClientError::NoSuchImage(query.into())),
        many => Err(ClientError::Ambiguous {
            query: query.into(),
            titles: many
                .iter()
                .filter_map(|i| i["title"].as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The proxy's address
    #[arg(
        long,
        env = "IMAGE_STORE_PROXY_URL",
        default_value = "http://localhost:52780"
    )]
    pub url: String,
    /// The secret that signs requests (--fake-eucalyptus's SECRET, or the admin's EC2_SECRET_KEY)
    #[arg(long, env = "IMAGE_STORE_PROXY_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Sent as ClientId (logged by the proxy, not checked)
    #[arg(
        long,
        env = "IMAGE_STORE_PROXY_CLIENT_ID",
        default_value = "image-store-proxy-client"
    )]
    pub client_id: String,
    #[command(subcommand)]
    pub call: Call,
}

#[derive(Debug, clap::Subcommand)]
pub enum Call {
    /// The whole catalog with every image's state
    Dashboard,
    /// Search the cached catalog
    Search { words: Vec<String> },
    /// States of the given images (URIs or unique parts of titles) plus every install under way
    /// or failed
    States { images: Vec<String> },
    /// Install an image (its URI or a unique part of its title)
    Install { image: String },
    /// Cancel an install
    Cancel { image: String },
    /// Clear an install's error
    ClearError { image: String },
    /// Follow an install with progress bars until it ends; prints the registered ids, or fails
    /// with the install's error
    Watch { image: String },
}

/// Runs one CLI call and prints the reply as pretty JSON; an `error-message` makes it fail.
pub async fn run(args: ClientArgs) -> Result<(), ClientError> {
    let client = ProxyClient::new(&args.url, &args.secret, &args.client_id)?;
    let reply = match &args.call {
        Call::Watch { image } => {
            let installed = watch::follow(&client, image).await?;
            println!("{installed}");
            return Ok(());
        }
        Call::Dashboard => client.dashboard().await?,
        Call::Search { words } => client.search(&words.join(" ")).await?,
        Call::States { images } => {
            let uris = client.image_uris(images).await?;
            client
                .states(&uris.iter().map(String::as_str).collect::<Vec<_>>())
                .await?
        }
        Call::Install { image } => client.act(image, "install").await?,
        Call::Cancel { image } => client.act(image, "cancel").await?,
        Call::ClearError { image } => client.act(image, "clear-error").await?,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&reply.body).unwrap_or_default()
    );
    let refused = !(200..300).contains(&reply.status);
    match reply.error_message() {
        // A dashboard or search answered with a catalog and a banner (the upstream is down, the
        // last good catalog is shown) succeeded; any refusal (a bad signature, say) did not.
        Some(message) if refused || !matches!(args.call, Call::Dashboard | Call::Search { .. }) => {
            Err(ClientError::Proxy(message.into()))
        }
        Some(banner) => {
            eprintln!("image-store-proxy client: note: {banner}");
            Ok(())
        }
        None if refused => Err(ClientError::Proxy(format!("HTTP {}", reply.status))),
        None => Ok(()),
    }
}

/// What a script sees in `$?` (the man page's EXIT STATUS): 1 when the proxy refused the call or
/// the install it followed failed or was cancelled, 3 when the proxy could not be reached or
/// answered something that is not its API (2 is a usage error, from the argument parser).
impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Url(_) => 2,
            ClientError::Http { .. } | ClientError::NotJson { .. } => 3,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_image_is_found_by_uri_or_by_a_unique_part_of_its_title() {
        let dashboard = json!({"images": [
            {"uri": "http://store/images/a", "title": "Ubuntu 9.10 Server"},
            {"uri": "http://store/images/b", "title": "Ubuntu 10.04 LTS Server"},
        ]});
        let uri = |q| find_image(&dashboard, q).map(|i| i["uri"].as_str().unwrap().to_string());
        assert_eq!(
            uri("http://store/images/b").unwrap(),
            "http://store/images/b"
        );
        assert_eq!(uri("ubuntu 9.10").unwrap(), "http://store/images/a");
        assert!(matches!(uri("Debian"), Err(ClientError::NoSuchImage(_))));
        match uri("Server") {
            Err(ClientError::Ambiguous { titles, .. }) => {
                assert_eq!(titles, "Ubuntu 9.10 Server, Ubuntu 10.04 LTS Server")
            }
            other => panic!("expected an ambiguity, got {other:?}"),
        }
    }
}
