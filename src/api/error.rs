//! The one place errors become HTTP. The Store servlet ignores status codes and parses every body
//! as a JSON object, so every error is `{"error-message": "<one line>"}`; the status is for others.

use crate::json::to_ascii_json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The reason is logged, never sent: the client learns only that the signature was refused.
    #[error("Bad request signature")]
    BadSignature { reason: String },
    #[error("Unknown image: {key}")]
    UnknownImage { key: String },
    #[error("Unknown action {action:?}: the actions are install, cancel and clear-error")]
    UnknownAction { action: String },
    #[error("No such API call: {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("The request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("The request body did not arrive within {seconds} seconds")]
    SlowBody { seconds: u64 },
    /// The nonce book is full of live nonces: refusing is safer than forgetting one early.
    #[error("Too many signed requests in the last minutes; try again shortly")]
    TooManyLiveNonces,
    /// The image's catalog is past `--max-catalog-age`: the line says how old and what to do.
    #[error(transparent)]
    StaleCatalog(#[from] crate::catalog::StaleCatalog),
    /// Our own state failed us. The cause is part of the one line (the client and the log both
    /// get it), so it is not also offered as `source`, which would print it twice under `{:#}`.
    #[error("Internal error: {0}")]
    Internal(crate::db::DbError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadSignature { .. } => StatusCode::UNAUTHORIZED,
            ApiError::UnknownImage { .. }
            | ApiError::UnknownAction { .. }
            | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::SlowBody { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyLiveNonces => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StaleCatalog(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(error: crate::db::DbError) -> Self {
        ApiError::Internal(error)
    }
}

/// An ASCII-only JSON body with the right content type.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        to_ascii_json(body),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::BadSignature { reason } => {
                tracing::info!("refused a request: bad signature: {reason}")
            }
            ApiError::Internal(cause) => tracing::error!("request failed: {cause}"),
            ApiError::TooManyLiveNonces => tracing::warn!("refused a request: {self}"),
            other => tracing::debug!("request refused: {other}"),
        }
        json_response(self.status(), &json!({ "error-message": self.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full nonce book is the server's limit, not the client's fault: 503, and not the 401 of a
    /// bad signature, so an operator can tell a flood from forgeries.
    #[test]
    fn limits_have_their_own_statuses() {
        for (error, status) in [
            (ApiError::TooManyLiveNonces, 503),
            (ApiError::SlowBody { seconds: 10 }, 408),
            (ApiError::BodyTooLarge { limit: 1 }, 413),
        ] {
            assert_eq!(error.into_response().status().as_u16(), status);
        }
    }
}
