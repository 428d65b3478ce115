//! What the S3 and EC2 clients share: one HTTP client, retries with backoff for what may pass (5xx,
//! timeouts, dropped connections), and the clouds' XML errors turned into one line a person can act
//! on ("the cloud refused RegisterImage: AuthFailure: ...").

use super::CloudError;
use super::sign::{AccessKey, SignatureVersion, V4Scope};
use crate::fetch::retry::{RetryPolicy, Retryable};
use crate::limits::MAX_CLOUD_ERROR_BYTES;
use reqwest::{Response, StatusCode, Url};
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// One of a cloud's services (S3, EC2) as requests to it are addressed and signed.
pub struct Endpoint {
    pub client: reqwest::Client,
    pub url: Url,
    pub key: AccessKey,
    pub signature: SignatureVersion,
    /// V4's region; Eucalyptus accepts any name.
    pub region: String,
}

impl Endpoint {
    /// The V4 scope of `service` (`s3`, `ec2`) at this endpoint.
    pub fn scope(&self, service: &str) -> V4Scope {
        V4Scope {
            region: self.region.clone(),
            service: service.into(),
        }
    }
}

/// A cloud call's outcome when it did not succeed: worth another try, or final.
pub enum Failure {
    Transient(CloudError),
    Permanent(CloudError),
}

impl Failure {
    pub fn into_error(self) -> CloudError {
        match self {
            Failure::Transient(e) | Failure::Permanent(e) => e,
        }
    }
}

pub fn http_client() -> Result<reqwest::Client, CloudError> {
    crate::fetch::install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("image-store-proxy/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(crate::limits::CONNECT_TIMEOUT)
        .build()
        .map_err(|e| CloudError::Unreachable {
            action: "starting",
            url: String::new(),
            cause: e.to_string(),
        })
}

/// `host[:port]` as the request's `Host` header carries it.
pub fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// A transport error: always worth another try.
pub fn unreachable(action: &'static str, url: &Url, error: &reqwest::Error) -> Failure {
    Failure::Transient(CloudError::Unreachable {
        action,
        url: url.to_string(),
        cause: crate::report::transport(error, "the cloud"),
    })
}

/// Reads a non-success response into a failure: 5xx, 408 and 429 are transient.
pub async fn refused(action: &'static str, response: Response) -> Failure {
    let status = response.status();
    let body = error_body(response).await;
    let error = CloudError::Refused {
        action,
        reason: error_line(status, &body),
    };
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Failure::Transient(error)
    } else {
        Failure::Permanent(error)
    }
}

async fn error_body(mut response: Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_CLOUD_ERROR_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_CLOUD_ERROR_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// `Code: Message` from an S3 (`<Error>`) or EC2 (`<Response><Errors><Error>`) error body, or the
/// HTTP status when the body says nothing useful.
pub fn error_line(status: StatusCode, body: &str) -> String {
    let parsed = roxmltree::Document::parse(body).ok().and_then(|doc| {
        let error = doc
            .descendants()
            .find(|n| n.has_tag_name("Error") || n.has_tag_name("error"))?;
        let text = |name: &str| {
            error
                .children()
                .find(|n| n.tag_name().name().eq_ignore_ascii_case(name))
                .and_then(|n| n.text())
                .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        // A blank `<Code>` says nothing: the HTTP status does better.
        let code = text("Code").filter(|code| !code.is_empty())?;
        Some(match text("Message") {
            Some(message) if !message.is_empty() => format!("{code}: {message}"),
            _ => code,
        })
    });
    parsed.unwrap_or_else(|| {
        let reason = status.canonical_reason().unwrap_or("");
        format!("HTTP {} {reason}", status.as_u16())
            .trim_end()
            .to_string()
    })
}

impl Retryable for Failure {
    fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient(_))
    }

    fn cancelled() -> Self {
        Failure::Permanent(CloudError::Cancelled)
    }
}

/// Runs `attempt` until it succeeds, fails for good, or transient failures use up the policy
/// (the one retry loop, `fetch::retry`); the pause doubles each time. Cancelling stops the waiting.
pub async fn with_retries<T, F, Fut>(
    retry: &RetryPolicy,
    cancel: &CancellationToken,
    attempt: F,
) -> Result<T, CloudError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    crate::fetch::retry::with_retries(retry, cancel, attempt, |failure, tries| {
        let (Failure::Transient(error) | Failure::Permanent(error)) = failure;
        tracing::warn!("{error}; trying again ({tries} of {})", retry.attempts);
    })
    .await
    .map_err(Failure::into_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A cloud answering 500 with a body that never ends: read up to the cap, then judged.
    #[tokio::test]
    async fn an_endless_error_body_is_read_only_up_to_the_cap() {
        crate::fetch::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = socket.read(&mut [0u8; 4096]).await;
            let head = "HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            let chunk = format!("2000\r\n{}\r\n", "x".repeat(0x2000));
            while socket.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let response = reqwest::get(format!("http://{addr}/")).await.unwrap();
        let failure = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            refused("checking the bucket", response),
        )
        .await
        .expect("the error body is not read to its (missing) end");
        match failure {
            Failure::Transient(CloudError::Refused { reason, .. }) => {
                assert!(reason.contains("500"), "{reason}")
            }
            _ => panic!("a 500 is a transient refusal"),
        }
    }

    #[test]
    fn ec2_and_s3_errors_become_one_line() {
        let ec2 = "<?xml version=\"1.0\"?><Response><Errors><Error><Code>AuthFailure</Code>\
                   <Message>AWS was not able to validate the provided access credentials</Message>\
                   </Error></Errors><RequestID>x</RequestID></Response>";
        assert_eq!(
            error_line(StatusCode::UNAUTHORIZED, ec2),
            "AuthFailure: AWS was not able to validate the provided access credentials"
        );
        let s3 = "<Error><Code>NoSuchBucket</Code><Message>The specified bucket\n does not exist</Message></Error>";
        assert_eq!(
            error_line(StatusCode::NOT_FOUND, s3),
            "NoSuchBucket: The specified bucket does not exist"
        );
        assert_eq!(
            error_line(StatusCode::INTERNAL_SERVER_ERROR, "<html>oops"),
            "HTTP 500 Internal Server Error"
        );
        assert_eq!(
            error_line(
                StatusCode::NOT_FOUND,
                "<Error><Code> </Code><Message>m</Message></Error>"
            ),
            "HTTP 404 Not Found",
            "a blank code is no code"
        );
    }
}
