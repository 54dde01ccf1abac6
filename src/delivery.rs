//! `Delivery`: what a post did, and a future for its completion.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::PostError;
use crate::transport::{BoxFuture, Ticket};

/// What a post did.
///
/// Awaiting it is optional: a local post is complete when `post_message` returns, and a
/// global post is already queued then and goes out whether or not the `Delivery` is awaited.
/// So a `Delivery` may be dropped unused (`post_message(..)?;`), and it is not `#[must_use]`;
/// the future that awaiting makes is.
///
/// # Awaiting
///
/// `delivery.await` (or [`delivery.acknowledged().await`](Delivery::acknowledged), the same
/// future by name) resolves once Redis acknowledged the PUBLISH that carried a global post;
/// at once for a local one. While Redis is unreachable it waits, with no bound of its own:
/// the post is held (G07) and goes out after the reconnect, or fails when the bus shuts down
/// first, whose own wait is bounded ([`Bus::shutdown`](crate::Bus::shutdown)). It is
/// cancel-safe: dropping the future does not withdraw the post. To bound the wait:
///
/// ```
/// # use std::time::Duration;
/// # use evbus::{Bus, MessageScope};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let bus = Bus::local();
/// let delivery = bus.messages().post_message("chat", "hi".to_string(), MessageScope::Auto)?;
/// match tokio::time::timeout(Duration::from_secs(5), delivery.acknowledged()).await {
///     Ok(Ok(())) => {}                // Redis has it (or the post was local)
///     Ok(Err(error)) => return Err(error), // refused, or the bus shut down first
///     Err(_elapsed) => {}             // still held: it goes out when Redis is back
/// }
/// # Ok::<(), evbus::PostError>(())
/// # }).unwrap();
/// ```
///
/// On edition 2021, `IntoFuture` is not in the prelude, so `delivery.into_future()` needs
/// `use std::future::IntoFuture;`. Without it, and with `futures_util::StreamExt` in scope,
/// the compiler reports E0599 about `StreamExt::into_future`, whose bounds a `Delivery` does
/// not meet: call [`acknowledged`](Delivery::acknowledged) instead, or `.await` the
/// `Delivery` itself.
pub struct Delivery {
    local_receivers: usize,
    /// A global post's ticket.
    global: Option<Ticket>,
}

impl Delivery {
    pub(crate) fn local(receivers: usize) -> Self {
        Delivery {
            local_receivers: receivers,
            global: None,
        }
    }

    pub(crate) fn global(ticket: Ticket) -> Self {
        Delivery {
            local_receivers: 0,
            global: Some(ticket),
        }
    }

    /// Listeners and streams reached synchronously by this post: 0 for a global post, and not
    /// counting receivers of another message type (L05).
    pub fn local_receivers(&self) -> usize {
        self.local_receivers
    }

    /// Whether the post went through Redis.
    pub fn is_global(&self) -> bool {
        self.global.is_some()
    }

    /// The future that `delivery.await` awaits, by name: resolves once Redis acknowledged the
    /// post (at once for a local post). See [Awaiting](Delivery#awaiting) for its bound and
    /// the edition 2021 note it avoids.
    ///
    /// # Errors
    ///
    /// [`PostError::Redis`] when Redis refused the PUBLISH, or when the bus shut down before
    /// Redis acknowledged it (G07).
    pub fn acknowledged(self) -> DeliveryFuture {
        self.into_future()
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("local_receivers", &self.local_receivers)
            .field("global", &self.is_global())
            .finish()
    }
}

impl IntoFuture for Delivery {
    type Output = Result<(), PostError>;
    type IntoFuture = DeliveryFuture;

    /// Local: ready at once. Global: resolves when Redis acknowledged the PUBLISH that
    /// carried the message; to an error when Redis refused it, or when the bus shut down
    /// before Redis acknowledged it (G07). While Redis is unreachable it waits.
    fn into_future(self) -> DeliveryFuture {
        DeliveryFuture {
            state: match self.global {
                None => State::Ready,
                Some(ticket) => State::Waiting(ticket.settled()),
            },
        }
    }
}

/// The future of an awaited [`Delivery`].
#[must_use = "futures do nothing unless awaited"]
pub struct DeliveryFuture {
    state: State,
}

enum State {
    Ready,
    Waiting(BoxFuture<'static, Result<(), PostError>>),
    Done(Result<(), PostError>),
}

impl Future for DeliveryFuture {
    type Output = Result<(), PostError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Ready => Poll::Ready(Ok(())),
            // Polling again after completion repeats the outcome.
            State::Done(result) => Poll::Ready(result.clone()),
            State::Waiting(settled) => {
                let result = std::task::ready!(settled.as_mut().poll(cx));
                self.state = State::Done(result.clone());
                Poll::Ready(result)
            }
        }
    }
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryFuture").finish_non_exhaustive()
    }
}
