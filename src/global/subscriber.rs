//! The subscriber side: subscription changes in order (G04), and what arrives from Redis,
//! checked (G06, G09) and handed to the local path (G03).
//!
//! # Duplicates and gaps (G06)
//!
//! A Native frame carries its origin bus id and the sequence numbers of its messages,
//! counted per origin and channel by the sender. For each channel it subscribes, the reader
//! remembers the last sequence seen from each origin: a message at or below it is a
//! duplicate (fred sends a command again when the connection dropped while it was in flight,
//! so a PUBLISH can arrive twice) and is dropped; a jump past the next one is a gap, counted
//! in `Stats::global_missed` and reported as [`BusEvent::MessagesMissed`]. The first message
//! from an origin after a SUBSCRIBE sets the baseline. A gap is seen when the next message
//! from that origin arrives; the Serverpod format has no sequence numbers, so there only
//! client-side lag is counted.
//!
//! # Untrusted input (G09)
//!
//! Whatever arrives is untrusted. A payload over `max_message_bytes`, a frame that does not
//! decode, a class that no receiver type of this bus takes, or a payload that does not
//! decode as the receiver's type is counted in `Stats::global_decode_errors`, reported as
//! [`BusEvent::DecodeFailed`], and skipped; the rest of the frame and the subscription go
//! on. Nothing panics: the decoders are total ([`super::envelope`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::codec::{Codec, Payload};
use super::envelope::{self, Origin};
use super::redis::{Incoming, Link, LinkState, Messages, Redis};
use super::{Change, Shared};
use crate::bus::{BusInner, WireFormat};
use crate::events::BusEvent;
use crate::post::{self, Entry, Group, Snapshot};
use crate::stats::Tally;
use crate::subscribers::Node;

/// Per Redis channel, per origin: the last sequence number seen, and a recency stamp.
pub(super) type Sequences = HashMap<String, HashMap<Origin, (u64, u64)>>;

/// Most origins remembered per channel; past it the least recently seen is forgotten.
const MAX_ORIGINS: usize = 1024;

/// The task that applies subscription changes, in the order the registry made them, and
/// restores the subscriptions after the subscriber connection came back.
///
/// The set of channels to be subscribed is this task's own, changed only here, in order: a
/// restore subscribes exactly the channels that have receivers at that point of the
/// sequence, so an UNSUBSCRIBE queued during an outage is never undone by the restore.
pub(super) async fn apply_changes(
    shared: Arc<Shared>,
    redis: Arc<Redis>,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let mut wanted: HashSet<String> = HashSet::new();
    let mut pending = Vec::new();
    while changes.recv_many(&mut pending, 4096).await > 0 {
        // The last change of each channel wins; the others cancel out.
        let mut last: HashMap<String, bool> = HashMap::new();
        let mut restore = false;
        let mut applied = 0;
        for change in pending.drain(..) {
            match change {
                Change::Subscription { channel, subscribe } => {
                    last.insert(channel, subscribe);
                    applied += 1;
                }
                Change::Restore => restore = true,
            }
        }
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        for (channel, on) in last {
            if on && wanted.insert(channel.clone()) {
                subscribe.push(channel);
            } else if !on && wanted.remove(&channel) {
                unsubscribe.push(channel);
            }
        }
        {
            // A channel subscribed afresh learns its origins' sequences afresh.
            let mut sequences = shared.sequences.lock();
            for channel in subscribe.iter().chain(&unsubscribe) {
                sequences.remove(channel);
            }
        }
        if restore {
            // The new connection has no subscriptions: subscribe everything wanted.
            subscribe = wanted.iter().cloned().collect();
        }
        if !subscribe.is_empty() {
            until_done(|| redis.subscribe(subscribe.clone())).await;
        }
        if !unsubscribe.is_empty() && !restore {
            until_done(|| redis.unsubscribe(unsubscribe.clone())).await;
        }
        if applied > 0 {
            shared.changes_confirmed.send_modify(|c| *c += applied);
        }
        if restore {
            shared.link_changed(Link::Subscriber, LinkState::Restored);
        }
    }
}

/// Runs `command` until Redis confirms it. While Redis is unreachable that is after the
/// reconnect: `subscriptions_ready` waits meanwhile, as documented.
async fn until_done<F, Fut>(mut command: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), super::redis::Failure>>,
{
    let mut pause = Duration::from_millis(20);
    while command().await.is_err() {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The task that reads the subscriber connection.
pub(super) struct Reader {
    shared: Arc<Shared>,
    bus: Weak<BusInner>,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>, bus: Weak<BusInner>) -> Self {
        Reader { shared, bus }
    }

    pub(super) async fn run(self, mut messages: Messages) {
        while let Some(incoming) = messages.next().await {
            match incoming {
                Incoming::Message(message) => self.receive(message.channel(), message.payload()),
                Incoming::Lagged(count) => self.lagged(count),
            }
        }
    }

    /// fred dropped `count` PUBLISHes that this task read too slowly. Native frames carry
    /// sequence numbers, so what they held is reported exactly as a gap when the next frame
    /// of each origin arrives; in the Serverpod format each PUBLISH is one message and is
    /// counted here.
    fn lagged(&self, count: u64) {
        if self.shared.codec.format == WireFormat::Serverpod {
            self.shared.missed.fetch_add(count, Relaxed);
            self.shared.emit(BusEvent::MessagesMissed {
                origin: "this bus's Redis subscriber (too slow)".into(),
                count,
            });
        }
    }

    fn receive(&self, channel: &[u8], payload: &[u8]) {
        let shared = &self.shared;
        // Not a channel of ours: we subscribe only UTF-8 names in our namespace.
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        let Some(name) = channel.strip_prefix(shared.namespace.as_str()) else {
            return;
        };
        let Some(bus) = self.bus.upgrade() else {
            return;
        };
        // No receivers: nothing to deliver (and no sequence to track).
        let Some(slot) = bus.registry.get(name) else {
            return;
        };
        let max = shared.codec.max_message_bytes;
        if payload.len() > max {
            return self.refuse(
                name,
                format!(
                    "payload of {} bytes exceeds max_message_bytes ({max})",
                    payload.len()
                ),
            );
        }
        let snapshot = slot.snapshot();
        let snapshot = snapshot.as_deref();
        let mut tally = Tally::default();
        let mut received = 0;
        match shared.codec.format {
            WireFormat::Serverpod => match envelope::decode_serverpod(payload) {
                Ok(message) => {
                    let payload = Payload::Json(message.data);
                    received += u64::from(self.deliver(
                        name,
                        snapshot,
                        &message.class,
                        payload,
                        &mut tally,
                    ));
                }
                Err(error) => self.refuse(name, error.to_string()),
            },
            _ => match envelope::decode_frame(payload) {
                Ok(frame) => {
                    let skip = self.sequence(channel, &frame);
                    for record in &frame.records[skip..] {
                        let payload = Payload::Native(record.payload);
                        received += u64::from(self.deliver(
                            name,
                            snapshot,
                            record.class,
                            payload,
                            &mut tally,
                        ));
                    }
                }
                Err(error) => self.refuse(name, error.to_string()),
            },
        }
        shared.received.fetch_add(received, Relaxed);
        bus.registry.counters.record_received(&tally);
    }

    /// Checks `frame`'s sequence numbers against what was seen on `channel` (G06); returns
    /// how many of its leading records are duplicates.
    fn sequence(&self, channel: &str, frame: &envelope::Frame<'_>) -> usize {
        let shared = &self.shared;
        let count = frame.records.len() as u64;
        let last_seq = frame.first_seq + (count - 1);
        let mut sequences = shared.sequences.lock();
        if !sequences.contains_key(channel) {
            sequences.insert(channel.to_string(), HashMap::new());
        }
        let Some(origins) = sequences.get_mut(channel) else {
            return 0;
        };
        let (skip, gap) = match origins.get(&frame.origin) {
            None => (0, 0),
            Some(&(seen, _)) if last_seq <= seen => (count, 0),
            Some(&(seen, _)) if frame.first_seq <= seen => (seen - frame.first_seq + 1, 0),
            Some(&(seen, _)) => (0, frame.first_seq - seen - 1),
        };
        if origins.len() >= MAX_ORIGINS && !origins.contains_key(&frame.origin) {
            let oldest = origins
                .iter()
                .min_by_key(|(_, &(_, at))| at)
                .map(|(o, _)| *o);
            if let Some(oldest) = oldest {
                origins.remove(&oldest);
            }
        }
        let tick = shared.received.load(Relaxed);
        let seen = origins.get(&frame.origin).map_or(0, |&(seen, _)| seen);
        origins.insert(frame.origin, (seen.max(last_seq), tick));
        drop(sequences);
        if skip > 0 {
            shared.duplicates.fetch_add(skip, Relaxed);
        }
        if gap > 0 {
            shared.missed.fetch_add(gap, Relaxed);
            shared.emit(BusEvent::MessagesMissed {
                origin: hex(&frame.origin),
                count: gap,
            });
        }
        skip as usize
    }

    /// Hands one message to every receiver type that takes its class, decoding it once per
    /// type (G03); false when it was refused.
    fn deliver(
        &self,
        name: &str,
        snapshot: Option<&Snapshot>,
        class: &str,
        payload: Payload<'_>,
        tally: &mut Tally,
    ) -> bool {
        let codec = &self.shared.codec;
        let groups = snapshot.map_or(&[][..], |s| &s.groups[..]);
        let mut taken = false;
        let mut mismatches = 0;
        for group in groups {
            match (group.wire)(group, codec, class, payload, tally) {
                None => mismatches += group.len as u64,
                Some(Ok(())) => taken = true,
                Some(Err(reason)) => {
                    let reason =
                        format!("{}: payload does not decode: {reason:.256}", short(class));
                    self.refuse(name, reason);
                    return false;
                }
            }
        }
        if !taken && !codec.knows(class) {
            // At most 64 characters of it: the class comes from the wire.
            self.refuse(name, format!("unknown class {:?}", short(class)));
            return false;
        }
        tally.mismatches += mismatches;
        true
    }

    fn refuse(&self, channel: &str, reason: String) {
        self.shared.decode_errors.fetch_add(1, Relaxed);
        self.shared.emit(BusEvent::DecodeFailed {
            channel: channel.to_string(),
            reason,
        });
    }
}

/// Decodes one received message as the group's type `M` and delivers it to the group: the
/// group's `wire` entry, made by the registry for each receiver type. `None` when `M` does
/// not take `class`.
pub(crate) fn deliver_wire<M: crate::Message>(
    group: &Group,
    codec: &Codec,
    class: &str,
    payload: Payload<'_>,
    tally: &mut Tally,
) -> Option<Result<(), String>> {
    let root = group.root.downcast_ref::<Node<Entry<M>>>()?;
    let message = match codec.decode::<M>(class, payload)? {
        Ok(message) => message,
        Err(reason) => return Some(Err(reason)),
    };
    post::deliver_to(group, root, message, tally);
    Some(Ok(()))
}

/// At most the first 64 characters of `text`.
fn short(text: &str) -> &str {
    text.char_indices()
        .nth(64)
        .map_or(text, |(at, _)| &text[..at])
}

fn hex(origin: &Origin) -> String {
    origin.iter().map(|b| format!("{b:02x}")).collect()
}
