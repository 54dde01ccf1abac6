//! The transport boundary: what the bus asks of whatever carries its global messages, and
//! what a transport may ask of the bus.
//!
//! The shape is Phoenix.PubSub's adapter behaviour: `subscribe`, `unsubscribe` (the
//! [`Interest`] the local core reports as channels get their first receiver and lose their
//! last) and [`broadcast`](Transport::broadcast). Inbound messages come back through
//! [`Receive`]: the transport decodes what it receives with the [`crate::wire`] formats and
//! hands each message to the local receivers of its channel with
//! [`crate::local::post::receive`].
//!
//! Dependencies point one way: the local core knows only [`Interest`]; this module knows the
//! core; a transport ([`crate::redis`]) knows this module, the core and the wire formats; the
//! facade ([`crate::Bus`]) picks a transport and wires it to the core. Nothing below a
//! transport names it.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use crate::error::{BusError, PostError};
pub(crate) use crate::local::registry::Interest;
use crate::local::registry::Topic;
use crate::stats::{Stats, Tally};

/// A boxed, sendable future: the trait's async methods, object-safe.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries a bus's global messages to every bus subscribed to their channel, this one
/// included (G03).
pub(crate) trait Transport: Interest {
    /// Starts the transport's tasks; messages it receives go to `local` from now on.
    fn start(&self, local: Weak<dyn Receive>);

    /// Queues one encoded message (a Native record, or a whole Serverpod payload) for
    /// `channel`, the bus's own name of it (without namespace). Never waits. A borrowed
    /// message is the codec's scratch buffer: copy it.
    ///
    /// # Errors
    ///
    /// [`PostError::Backpressure`] when the transport holds as much as it may (G07).
    fn broadcast(&self, channel: &str, message: Cow<'_, [u8]>) -> Result<Ticket, PostError>;

    /// Returns once everything broadcast before the call is acknowledged (G12).
    fn flush(&self) -> BoxFuture<'_, Result<(), BusError>>;

    /// Returns once every subscription change reported before the call is in effect (G04).
    fn subscriptions_ready(&self) -> BoxFuture<'_, Result<(), BusError>>;

    /// Flushes, unsubscribes and closes the connections, within a bounded time (G12).
    /// Idempotent.
    fn close(&self) -> BoxFuture<'_, Result<(), BusError>>;

    /// Adds the transport's counters to `stats`.
    fn fill(&self, stats: &mut Stats);
}

/// One broadcast message, until the transport has settled it. Held by its `Delivery`;
/// dropping it tells the transport that nobody will ask for the outcome any more.
pub(crate) struct Ticket {
    /// Its number, in broadcast order.
    pub(crate) number: u64,
    /// Where its settlement is published.
    pub(crate) settlement: Arc<dyn Settlement>,
}

impl Ticket {
    /// Resolves when the broker acknowledged the message (`Ok`), refused it, or will never
    /// see it (the bus shut down first).
    pub(crate) fn settled(self) -> BoxFuture<'static, Result<(), PostError>> {
        let wait = self.settlement.clone().settled(self.number);
        Box::pin(async move {
            let result = wait.await;
            drop(self);
            result
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settlement.forget(self.number);
    }
}

/// Where a transport publishes which broadcasts are settled. A `Delivery` holds this, not
/// the transport, so that a forgotten `Delivery` keeps no connection open.
pub(crate) trait Settlement: Send + Sync {
    /// Resolves when ticket `number` is settled: `Ok` when the broker acknowledged it.
    fn settled(self: Arc<Self>, number: u64) -> BoxFuture<'static, Result<(), PostError>>;

    /// Nobody will ask for ticket `number`'s outcome any more: what is kept of it can go, so
    /// that what a transport keeps of refused messages is bounded by the live Deliveries.
    fn forget(&self, number: u64);
}

/// The bus as a transport sees it: where received messages go.
pub(crate) trait Receive: Send + Sync {
    /// The live topic of `channel` (the bus's own name); `None` when the channel has no
    /// receivers and no handles, so there is nothing to deliver (and no sequence to track).
    fn topic(&self, channel: &str) -> Option<Arc<Topic>>;

    /// Counts what delivering received messages did (as a post does, but not as posted).
    fn received(&self, tally: &Tally);
}
