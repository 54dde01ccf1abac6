//! `Delivery`: what a post did, and a future for its completion.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::PostError;

/// What a post did.
///
/// Awaiting it is optional: a local post is complete when `post_message` returns, and a
/// global post is already queued then and goes out whether or not the `Delivery` is awaited.
#[derive(Debug)]
pub struct Delivery {
    local_receivers: usize,
    global: bool,
}

impl Delivery {
    pub(crate) fn local(receivers: usize) -> Self {
        Delivery {
            local_receivers: receivers,
            global: false,
        }
    }

    /// Listeners and streams reached synchronously by this post: 0 for a global post, and not
    /// counting receivers of another message type (L05).
    pub fn local_receivers(&self) -> usize {
        self.local_receivers
    }

    /// Whether the post went through Redis.
    pub fn is_global(&self) -> bool {
        self.global
    }
}

impl IntoFuture for Delivery {
    type Output = Result<(), PostError>;
    type IntoFuture = DeliveryFuture;

    /// Local: ready at once. Global: resolves when Redis acknowledged the PUBLISH that
    /// carried the message.
    fn into_future(self) -> DeliveryFuture {
        DeliveryFuture {
            result: Some(Ok(())),
        }
    }
}

/// The future of an awaited [`Delivery`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct DeliveryFuture {
    result: Option<Result<(), PostError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<(), PostError>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Polling again after completion keeps returning Ok: a local delivery cannot fail later.
        Poll::Ready(self.result.take().unwrap_or(Ok(())))
    }
}
