//! `Channel<M>`: a pre-interned, typed channel handle for hot paths.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::delivery::Delivery;
use crate::error::PostError;
use crate::inner::BusInner;
use crate::local::registry::Topic;
use crate::message::{Message, MessageScope};

/// A typed handle on one channel, from [`Bus::channel`](crate::Bus::channel).
///
/// Posting through it is [`Messages::post_message`](crate::Messages::post_message) without
/// the name lookup: one snapshot load, then the receivers. While a handle (or a clone) lives,
/// its channel stays interned, so listeners added by name later are found by it; when the
/// last handle, listener and stream of a channel are gone, the channel is forgotten (L13).
pub struct Channel<M> {
    bus: Arc<BusInner>,
    topic: Arc<Topic>,
    _message: PhantomData<fn(M)>,
}

impl<M: Message> Channel<M> {
    pub(crate) fn new(bus: Arc<BusInner>, name: &str) -> Self {
        let topic = bus.registry.hold(name);
        Channel {
            bus,
            topic,
            _message: PhantomData,
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        self.topic.name()
    }

    /// Posts `message` on this channel: the same contract as
    /// [`Messages::post_message`](crate::Messages::post_message) (L01 to L10).
    ///
    /// # Errors
    ///
    /// As `post_message`: [`PostError::RedisNotEnabled`] for a global post on a bus without
    /// Redis, [`PostError::ShutDown`] after shutdown.
    #[inline]
    pub fn post(&self, message: M, scope: MessageScope) -> Result<Delivery, PostError> {
        match self.bus.route(scope)? {
            None => Ok(Delivery::local(
                self.topic.post(message, &self.bus.registry.counters),
            )),
            Some(global) => self.bus.post_global(global, self.topic.name(), &message),
        }
    }
}

impl<M> Clone for Channel<M> {
    fn clone(&self) -> Self {
        self.bus.registry.hold_again(&self.topic);
        Channel {
            bus: self.bus.clone(),
            topic: self.topic.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> Drop for Channel<M> {
    fn drop(&mut self) {
        self.bus.registry.release(&self.topic);
    }
}

impl<M> std::fmt::Debug for Channel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.topic.name())
            .finish()
    }
}
