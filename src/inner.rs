//! What every handle of one bus shares ([`BusInner`]): the local core, and the transport
//! with the codec when the bus has one.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::delivery::Delivery;
use crate::error::PostError;
use crate::events::EventHub;
use crate::local::registry::{Registry, Topic};
use crate::message::{Message, MessageScope};
use crate::stats::Tally;
use crate::transport::{Receive, Transport};
use crate::wire::codec::Codec;

/// Settings a running bus reads.
pub(crate) struct Config {
    pub(crate) stream_capacity: usize,
    /// The Redis namespace (empty on a local bus): the label of the bus's metrics.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) namespace: String,
}

/// The transport of a bus that has one, and the codec its messages are encoded with.
pub(crate) struct Global {
    pub(crate) codec: Arc<Codec>,
    pub(crate) transport: Arc<dyn Transport>,
}

/// The state all handles of one bus share.
pub(crate) struct BusInner {
    pub(crate) registry: Registry,
    pub(crate) config: Config,
    /// Registration ids, shared by listeners and streams.
    pub(crate) next_id: AtomicU64,
    pub(crate) events: Arc<EventHub>,
    /// On a bus built with a Redis URL.
    pub(crate) global: Option<Global>,
}

impl BusInner {
    /// The scope check of every post: `Ok(None)` when the post is to be delivered locally,
    /// `Ok(Some(global))` when it goes through the transport (G01, G02).
    #[inline]
    pub(crate) fn route(&self, scope: MessageScope) -> Result<Option<&Global>, PostError> {
        if self.registry.is_closed() {
            return Err(PostError::ShutDown);
        }
        match (scope, &self.global) {
            (MessageScope::Local, _) | (MessageScope::Auto, None) => Ok(None),
            (MessageScope::Global, None) => Err(PostError::RedisNotEnabled),
            (_, Some(global)) => Ok(Some(global)),
        }
    }

    /// A global post: encoded here, on the posting thread (so `Encode` and `TooLarge` are
    /// returned at once), then handed to the transport; counted as a post when accepted.
    #[inline(never)]
    pub(crate) fn post_global<M: Message>(
        &self,
        global: &Global,
        channel: &str,
        message: &M,
    ) -> Result<Delivery, PostError> {
        let ticket = global
            .codec
            .encode_with(message, |bytes| global.transport.broadcast(channel, bytes))??;
        self.registry.counters.record_post(&Tally::default());
        Ok(Delivery::global(ticket))
    }
}

impl Receive for BusInner {
    fn topic(&self, channel: &str) -> Option<Arc<Topic>> {
        self.registry.get(channel)
    }

    fn received(&self, tally: &Tally) {
        self.registry.counters.record_received(tally);
    }
}
