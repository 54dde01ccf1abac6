//! Errors of posting ([`PostError`]) and of the bus as a whole ([`BusError`]).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Why a post failed. Nothing was delivered when a post returns an error.
///
/// # In a web server
///
/// [`http_status`](PostError::http_status) is the status to answer a request with, and with
/// this crate's `axum` feature a `PostError` is an axum `IntoResponse` with that status (its
/// text as the body where that tells a client nothing of the server's insides: the table's
/// first three rows), so a handler returns it with `?`:
///
/// | error | status | [`is_retryable`](PostError::is_retryable) |
/// |---|---|---|
/// | [`TooLarge`](PostError::TooLarge) | 413 Payload Too Large | no |
/// | [`Backpressure`](PostError::Backpressure) | 503 Service Unavailable | yes |
/// | [`ShutDown`](PostError::ShutDown) | 503 Service Unavailable | no (another server may take it) |
/// | [`Redis`](PostError::Redis) | 502 Bad Gateway | no |
/// | [`Encode`](PostError::Encode) | 500 Internal Server Error | no |
/// | [`RedisNotEnabled`](PostError::RedisNotEnabled) | 500 Internal Server Error | no |
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostError {
    /// A [`MessageScope::Global`](crate::MessageScope::Global) post on a bus built without a
    /// Redis URL (G01). Displays "Redis needs to be enabled to post global messages".
    RedisNotEnabled,
    /// The global publish queue is full (Redis is unreachable and `outage_buffer` messages are
    /// already held), G07.
    Backpressure,
    /// The encoded message is larger than `max_message_bytes`.
    TooLarge {
        /// Encoded size of the refused message, in bytes.
        size: usize,
        /// The bus's `max_message_bytes`.
        max: usize,
    },
    /// The message could not be encoded for Redis; the serde error is its `source()`.
    Encode(Reason),
    /// Redis refused or lost the PUBLISH that carried the message.
    Redis(Reason),
    /// The bus was shut down ([`Bus::shutdown`](crate::Bus::shutdown)).
    ShutDown,
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostError::RedisNotEnabled => f.write_str("Redis needs to be enabled to post global messages"),
            PostError::Backpressure => {
                f.write_str("the global publish queue is full (Redis unreachable and the outage buffer is full)")
            }
            PostError::TooLarge { size, max } => {
                write!(f, "message of {size} bytes exceeds max_message_bytes ({max})")
            }
            PostError::Encode(reason) => write!(f, "message could not be encoded: {reason}"),
            PostError::Redis(reason) => write!(f, "Redis did not accept the message: {reason}"),
            PostError::ShutDown => f.write_str("the bus is shut down"),
        }
    }
}

impl PostError {
    /// Whether the same post, made again later on this bus, may succeed: only for
    /// [`Backpressure`](PostError::Backpressure) (Redis is unreachable and the outage buffer is
    /// full; it drains after the reconnect). The bus already retries what a dropped connection
    /// lost, so a [`Redis`](PostError::Redis) error is Redis's answer (or a shutdown that came
    /// first) and another try would meet the same; every post after
    /// [`ShutDown`](PostError::ShutDown) fails alike; the others are about the message or the
    /// bus's settings.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PostError::Backpressure)
    }

    /// The HTTP status to answer a request whose post failed with this error: 413 for
    /// [`TooLarge`](PostError::TooLarge); 503 for [`Backpressure`](PostError::Backpressure)
    /// and [`ShutDown`](PostError::ShutDown) (the server cannot take it now; a client may try
    /// again later or elsewhere); 502 for [`Redis`](PostError::Redis) (the upstream refused
    /// it); 500 for the server's own faults, [`Encode`](PostError::Encode) and
    /// [`RedisNotEnabled`](PostError::RedisNotEnabled).
    pub fn http_status(&self) -> u16 {
        match self {
            PostError::TooLarge { .. } => 413,
            PostError::Backpressure | PostError::ShutDown => 503,
            PostError::Redis(_) => 502,
            PostError::Encode(_) | PostError::RedisNotEnabled => 500,
        }
    }
}

impl Error for PostError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            PostError::Encode(reason) | PostError::Redis(reason) => reason.source(),
            _ => None,
        }
    }
}

/// Why building, flushing or shutting down a bus failed, or a wait for Redis ended without
/// its answer.
///
/// In a web server, [`http_status`](BusError::http_status) is the status to answer with (and
/// the status of its `IntoResponse` with the `axum` feature): 503 for
/// [`ShutDown`](BusError::ShutDown), 502 for [`Redis`](BusError::Redis), 500 for
/// [`InvalidConfig`](BusError::InvalidConfig). A wait that a handler bounds with a timeout
/// (`subscribed`, `subscriptions_ready`, `flush`) and that times out is best answered with 503
/// too: Redis is unreachable now.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusError {
    /// A [`BusBuilder`](crate::BusBuilder) setting is out of range; the text says which.
    InvalidConfig(String),
    /// Redis could not be reached or refused the connection; the client's error, when there
    /// is one, is its `source()`.
    Redis(Reason),
    /// The bus was shut down.
    ShutDown,
    /// Redis refused to subscribe `channel` (an ACL that does not allow it: `NOPERM`). The
    /// other channels are subscribed all the same; this one receives nothing from Redis
    /// until its receivers are removed and added again, or the subscriber reconnects with
    /// the permission. Also reported as [`BusEvent::SubscribeRefused`](crate::BusEvent).
    SubscribeRefused {
        /// The channel, without the namespace.
        channel: String,
        /// Redis's answer; the client's error is the `source()`.
        reason: Reason,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::InvalidConfig(reason) => write!(f, "invalid bus configuration: {reason}"),
            BusError::Redis(reason) => write!(f, "Redis: {reason}"),
            BusError::ShutDown => f.write_str("the bus is shut down"),
            BusError::SubscribeRefused { channel, reason } => {
                write!(f, "Redis refused to subscribe {channel:?}: {reason}")
            }
        }
    }
}

impl BusError {
    /// The HTTP status to answer a request that failed with this error: 503 for
    /// [`ShutDown`](BusError::ShutDown), 502 for [`Redis`](BusError::Redis), 500 for
    /// [`InvalidConfig`](BusError::InvalidConfig).
    pub fn http_status(&self) -> u16 {
        match self {
            BusError::ShutDown => 503,
            BusError::Redis(_) | BusError::SubscribeRefused { .. } => 502,
            BusError::InvalidConfig(_) => 500,
        }
    }
}

impl Error for BusError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            BusError::Redis(reason) | BusError::SubscribeRefused { reason, .. } => reason.source(),
            _ => None,
        }
    }
}

/// The text of an error, with the error that caused it when there is one: what
/// [`PostError::Encode`], [`PostError::Redis`] and [`BusError::Redis`] carry.
///
/// It reads as its text (`Deref<Target = str>`, `Display`) and compares by it; the error it
/// came from, if any (serde's, the Redis client's), is the [`source`](Error::source) of the
/// error that holds it, so error reporters can walk the chain.
#[derive(Clone)]
pub struct Reason {
    text: String,
    cause: Option<Arc<dyn Error + Send + Sync>>,
}

impl Reason {
    /// A reason with no underlying error.
    pub fn new(text: impl Into<String>) -> Self {
        Reason {
            text: text.into(),
            cause: None,
        }
    }

    /// A reason caused by `cause`.
    pub fn caused_by(text: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> Self {
        Reason {
            text: text.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The underlying error, if any.
    pub fn cause(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn Error + 'static))
    }
}

impl std::ops::Deref for Reason {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            None => fmt::Debug::fmt(&self.text, f),
            Some(cause) => f
                .debug_struct("Reason")
                .field("text", &self.text)
                .field("cause", cause)
                .finish(),
        }
    }
}

/// Reasons are equal when their texts are.
impl PartialEq for Reason {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Reason {}

impl From<String> for Reason {
    fn from(text: String) -> Self {
        Reason::new(text)
    }
}

impl From<&str> for Reason {
    fn from(text: &str) -> Self {
        Reason::new(text)
    }
}

/// The `axum` feature: errors as responses, with the status of their `http_status`. The body
/// is the error's text where it tells nothing of the server's insides (too large, held back,
/// shut down); otherwise the status's reason phrase, so that a Redis address or a serde
/// message never reaches a client: log the error itself where you want its text.
#[cfg(feature = "axum")]
mod axum {
    use axum_core::response::{IntoResponse, Response};
    use http::StatusCode;

    use super::{BusError, PostError};

    fn respond(status: u16, text: Option<String>) -> Response {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let text = text.unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
        (status, text).into_response()
    }

    /// The status of [`PostError::http_status`]; as the body, the error's text for
    /// `TooLarge`, `Backpressure` and `ShutDown`, the status's reason phrase for the others.
    impl IntoResponse for PostError {
        fn into_response(self) -> Response {
            let text = match self {
                PostError::TooLarge { .. } | PostError::Backpressure | PostError::ShutDown => {
                    Some(self.to_string())
                }
                _ => None,
            };
            respond(self.http_status(), text)
        }
    }

    /// The status of [`BusError::http_status`]; as the body, the error's text for
    /// `ShutDown`, the status's reason phrase for the others.
    impl IntoResponse for BusError {
        fn into_response(self) -> Response {
            let text = matches!(self, BusError::ShutDown).then(|| self.to_string());
            respond(self.http_status(), text)
        }
    }
}
