//! `Channel<M>`: a pre-interned, typed channel handle for hot paths.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::bus::BusInner;
use crate::delivery::Delivery;
use crate::error::PostError;
use crate::message::{Message, MessageScope};
use crate::registry::Slot;

/// A typed handle on one channel, from [`Bus::channel`](crate::Bus::channel).
///
/// Posting through it is [`Messages::post_message`](crate::Messages::post_message) without
/// the name lookup: one snapshot load, then the receivers. While a handle (or a clone) lives,
/// its channel stays interned, so listeners added by name later are found by it; when the
/// last handle, listener and stream of a channel are gone, the channel is forgotten (L13).
pub struct Channel<M> {
    bus: Arc<BusInner>,
    slot: Arc<Slot>,
    _message: PhantomData<fn(M)>,
}

impl<M: Message> Channel<M> {
    pub(crate) fn new(bus: Arc<BusInner>, name: &str) -> Self {
        let slot = bus.registry.hold(name);
        Channel {
            bus,
            slot,
            _message: PhantomData,
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        self.slot.name()
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
                self.slot.post(message, &self.bus.registry.counters),
            )),
            Some(global) => self.bus.post_global(global, self.slot.name(), &message),
        }
    }
}

impl<M> Clone for Channel<M> {
    fn clone(&self) -> Self {
        self.bus.registry.hold_again(&self.slot);
        Channel {
            bus: self.bus.clone(),
            slot: self.slot.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> Drop for Channel<M> {
    fn drop(&mut self) {
        self.bus.registry.release(&self.slot);
    }
}

impl<M> std::fmt::Debug for Channel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.slot.name())
            .finish()
    }
}
