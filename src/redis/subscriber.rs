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
//! # A moved slot (C03, C04)
//!
//! On a Redis Cluster a channel is subscribed on the master that owns its slot. When the slot
//! moves (a resharding, a node added and given slots, a replica promoted after its master
//! failed), that master unsubscribes it, and nothing re-subscribes it but the bus. So the
//! subscription task reads the slot table every 250 ms ([`apply_changes`]) and subscribes
//! each moved channel on its new owner at once, emitting [`BusEvent::Resubscribed`]. Its
//! sequence marks are kept: what was posted between the move and the new subscription shows
//! as a gap when the origin's next message arrives, and is reported missed (G06).
//!
//! # Untrusted input (G09)
//!
//! Whatever arrives is untrusted. A message over `max_message_bytes` (judged one by one in
//! a frame), a frame that does not decode, a class that no receiver type of this bus takes, or a payload that does not
//! decode as the receiver's type is counted in `Stats::global_decode_errors`, reported as
//! [`BusEvent::DecodeFailed`], and skipped; the rest of the frame and the subscription go
//! on. A frame whose body does not decode but whose header does counts its messages as
//! missed, so that received + missed == posted holds. Nothing panics: the decoders are total ([`crate::wire`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::connection::{Failure, Link, LinkState, Redis};
use super::sequences::WINDOW;
use super::state::{Change, State};
use crate::error::Reason;
use crate::events::BusEvent;
use crate::export;
use crate::local::post::{self, Snapshot};
use crate::stats::Tally;
use crate::transport::Receive;
use crate::wire::codec::Payload;
use crate::wire::frame::{self, Origin, HEADER_LEN, MAC_LEN, RECORD_OVERHEAD, VERSION_SIGNED};
use crate::wire::serverpod;
use crate::wire::WireFormat;

/// The task that applies subscription changes, in the order the registry made them, and
/// restores the subscriptions after the subscriber connection came back.
///
/// The set of channels to be subscribed is this task's own, changed only here, in order: a
/// restore subscribes exactly the channels that have receivers at that point of the
/// sequence, so an UNSUBSCRIBE queued during an outage is never undone by the restore.
pub(super) async fn apply_changes(
    state: Arc<State>,
    redis: Arc<Redis>,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let mut wanted: HashSet<String> = HashSet::new();
    let mut pending = Vec::new();
    let mut slots_checked = Instant::now();
    loop {
        // On a cluster, the slot table is read again every `SLOT_CHECK` (C03, C04), also
        // while no change comes; `recv_many` is cancel-safe.
        let received = if redis.is_cluster() {
            let wait = SLOT_CHECK.saturating_sub(slots_checked.elapsed());
            tokio::time::timeout(wait, changes.recv_many(&mut pending, 4096)).await
        } else {
            Ok(changes.recv_many(&mut pending, 4096).await)
        };
        if redis.is_cluster() && slots_checked.elapsed() >= SLOT_CHECK {
            follow_slots(&state, &redis, &wanted).await;
            slots_checked = Instant::now();
        }
        match received {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => continue,
        }
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
            let mut sequences = state.sequences.lock();
            for channel in subscribe.iter().chain(&unsubscribe) {
                sequences.forget(channel);
            }
        }
        if restore {
            // The new connection has no subscriptions: subscribe everything wanted.
            subscribe = wanted.iter().cloned().collect();
            tracing::info!(target: "evbus", channels = subscribe.len(), "resubscribing after a reconnect");
        }
        if !unsubscribe.is_empty() {
            let mut refused = state.refused_subscriptions.lock();
            for channel in &unsubscribe {
                refused.remove(channel);
            }
        }
        if !subscribe.is_empty() {
            subscribe_all(&state, &redis, subscribe).await;
        }
        if !unsubscribe.is_empty() && !restore {
            // Redis never refuses an UNSUBSCRIBE of ours; if it did, there is nothing to undo.
            let _ = until_answered(|| redis.unsubscribe(unsubscribe.clone())).await;
        }
        if applied > 0 {
            state
                .subscriptions
                .send_modify(|s| s.confirmed = s.confirmed.saturating_add(applied));
        }
        if restore {
            state.link_changed(Link::Subscriber, LinkState::Restored);
        }
    }
}

/// How often a cluster's slot table is read, to follow a channel whose slot moved (C03).
/// Redis tells a subscriber at once (an unsolicited `SUNSUBSCRIBE`), but fred drops it.
const SLOT_CHECK: Duration = Duration::from_millis(250);
/// How long one reading of the slot table may take.
const SLOT_CHECK_LIMIT: Duration = Duration::from_secs(1);

/// Subscribes again, on its new owner, every wanted channel whose slot moved to another
/// master, and says so (C03, C04). Its sequence marks are kept, so that what was posted
/// while it was not subscribed shows as a gap (G06).
async fn follow_slots(state: &State, redis: &Redis, wanted: &HashSet<String>) {
    // Bounded: while a master is unreachable, reading the slot table may wait on it, and
    // subscription changes must not wait behind it.
    let Ok(Ok(moved)) = tokio::time::timeout(SLOT_CHECK_LIMIT, redis.moved()).await else {
        // The cluster is unreachable now: fred reconnects, and the restore follows.
        return;
    };
    let moved: Vec<(String, String)> = moved
        .into_iter()
        .filter(|(channel, _)| wanted.contains(channel))
        .collect();
    if moved.is_empty() {
        return;
    }
    let channels = moved.iter().map(|(channel, _)| channel.clone()).collect();
    subscribe_all(state, redis, channels).await;
    for (channel, to) in moved {
        let channel = channel
            .strip_prefix(state.namespace.as_str())
            .unwrap_or(&channel)
            .to_string();
        state.emit(BusEvent::Resubscribed { channel, to });
    }
}

/// Subscribes `channels`, in one command while Redis takes them all. Redis refuses a whole
/// SUBSCRIBE when its ACL forbids one of the channels, so then each is subscribed alone: a
/// refused one is recorded and reported (G04: it must hold up neither the other channels nor
/// `subscriptions_ready`, which returns an error naming it), and not sent again until it is
/// wanted afresh or the subscriber reconnects.
async fn subscribe_all(state: &State, redis: &Redis, channels: Vec<String>) {
    let suspects = match until_answered(|| redis.subscribe(channels.clone())).await {
        Ok(()) => until_answered(|| redis.unsubscribed(&channels))
            .await
            .unwrap_or_default(),
        Err(_) => channels.clone(),
    };
    let mut refused = Vec::new();
    for channel in &suspects {
        let answer = until_answered(|| redis.subscribe(vec![channel.clone()])).await;
        let answer = match answer {
            Ok(()) => {
                match until_answered(|| redis.unsubscribed(std::slice::from_ref(channel))).await {
                    Ok(zero) if zero.is_empty() => Ok(()),
                    _ => Err(Reason::new(
                        "Redis did not subscribe it (it answered with an error, such as NOPERM \
                     from an ACL that does not allow the channel)",
                    )),
                }
            }
            Err(reason) => Err(reason),
        };
        if let Err(reason) = answer {
            refused.push((channel.clone(), reason));
        }
    }
    {
        let mut known = state.refused_subscriptions.lock();
        for channel in &channels {
            known.remove(channel);
        }
    }
    for (channel, reason) in refused {
        state.subscribe_refused(&channel, reason);
    }
}

/// Runs `command` until Redis answers it: `Ok` when it applied it, its answer when it
/// refused it. While Redis is unreachable that is after the reconnect.
async fn until_answered<T, F, Fut>(mut command: F) -> Result<T, Reason>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut pause = Duration::from_millis(20);
    loop {
        match command().await {
            Ok(answer) => return Ok(answer),
            Err(Failure::Refused(reason)) => return Err(reason),
            Err(Failure::Retry) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The task that reads the subscriber connection.
pub(super) struct Reader {
    state: Arc<State>,
    /// The bus: where received messages go.
    local: Weak<dyn Receive>,
}

impl Reader {
    pub(super) fn new(state: Arc<State>, local: Weak<dyn Receive>) -> Self {
        Reader { state, local }
    }

    pub(super) fn state(&self) -> &State {
        &self.state
    }

    /// fred dropped `count` PUBLISHes that the reader read too slowly (G06: no loss is
    /// silent). In the Serverpod format each is one message. A Native frame may hold many,
    /// of origins unknown here: `count` is a lower bound, and the sequence marks are forgotten
    /// so that the same loss does not show again as gaps (a duplicate arriving right after
    /// is then not recognised).
    pub(super) fn lagged(&self, count: u64) {
        if self.state.codec.format == WireFormat::Native {
            self.state.sequences.lock().forget_all();
        }
        self.missed_here(count, "this bus's Redis subscriber (read too slowly)");
    }

    /// A received message dropped because the receive buffer was full: its messages are
    /// counted missed (a Native frame's from its header when it is authentic and plausible,
    /// so that the gap the origin's next frame shows is not counted again).
    pub(super) fn overflow(&self, channel: &[u8], payload: &[u8]) {
        let state = &self.state;
        let header = match state.codec.format {
            WireFormat::Native if self.authentic(payload) => {
                frame::decode_header(payload).filter(|&(_, _, count)| {
                    count as usize <= payload.len().saturating_sub(HEADER_LEN) / RECORD_OVERHEAD
                })
            }
            _ => None,
        };
        match (std::str::from_utf8(channel), header) {
            (Ok(channel), Some((origin, first, count))) => {
                let tick = state.received.load(Relaxed);
                let lost =
                    state
                        .sequences
                        .lock()
                        .lost(channel, &origin, first, u64::from(count), tick);
                self.missed(&origin, lost);
            }
            _ => self.missed_here(1, "this bus's receive buffer (full)"),
        }
    }

    /// A dispatch thread could not be started.
    pub(super) fn thread_failed(&self, index: usize, error: &std::io::Error) {
        self.state.emit(BusEvent::DecodeFailed {
            channel: String::new(),
            reason: format!("dispatch thread {index} could not start: {error}"),
        });
    }

    /// Counts `count` messages lost before their origin could be read, and says where.
    fn missed_here(&self, count: u64, place: &str) {
        add(&self.state.missed, count);
        self.state.emit(BusEvent::MessagesMissed {
            origin: place.into(),
            count,
        });
    }

    pub(super) fn receive(&self, channel: &[u8], payload: &[u8]) {
        let state = &self.state;
        // Not a channel of ours: we subscribe only UTF-8 names in our namespace.
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        let Some(name) = channel.strip_prefix(state.namespace.as_str()) else {
            return;
        };
        let Some(local) = self.local.upgrade() else {
            return;
        };
        // No receivers: nothing to deliver (and no sequence to track).
        let Some(topic) = local.topic(name) else {
            return;
        };
        let snapshot = topic.snapshot();
        let snapshot = snapshot.as_deref();
        let mut tally = Tally::default();
        let mut received = 0;
        let max = state.codec.max_message_bytes;
        match state.codec.format {
            // One message per payload: the payload is the message.
            WireFormat::Serverpod if payload.len() > max => self.refuse(
                name,
                format!(
                    "payload of {} bytes exceeds max_message_bytes ({max})",
                    payload.len()
                ),
            ),
            WireFormat::Serverpod => match serverpod::decode_serverpod(payload) {
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
            // The limit is applied to each message of a frame, not to the frame: a frame
            // from a bus with a larger limit may carry messages within this bus's limit
            // beside ones over it, and Redis has delivered the whole frame already.
            // Authenticity first: a frame without a valid MAC is not even parsed, and
            // touches nothing.
            WireFormat::Native if !self.authentic(payload) => {
                let why = match payload.get(3) {
                    Some(&VERSION_SIGNED) => "a wrong MAC",
                    _ => "no MAC",
                };
                self.reject(
                    name,
                    format!("a frame with {why} (this bus has a signing key)"),
                );
            }
            WireFormat::Native => match frame::decode_frame(payload) {
                Ok(frame) => {
                    let count = frame.records.len() as u64;
                    let last = frame.first_seq + (count - 1);
                    if !state
                        .sequencer
                        .lock()
                        .may_have_sent(&frame.origin, channel, last)
                    {
                        return self.reject(
                            name,
                            format!("a frame claims this bus's own origin with sequence {last}, which it never sent"),
                        );
                    }
                    let tick = state.received.load(Relaxed);
                    let verdict = state.sequences.lock().check(
                        channel,
                        &frame.origin,
                        frame.first_seq,
                        count,
                        tick,
                    );
                    if verdict.implausible {
                        return self.refuse(
                            name,
                            format!(
                                "implausible sequence numbers {}..={last} from {}: more than {WINDOW} away from the last seen",
                                frame.first_seq,
                                hex(&frame.origin)
                            ),
                        );
                    }
                    add(&state.duplicates, verdict.duplicates);
                    self.missed(&frame.origin, verdict.missed);
                    export::latency(&state.namespace, frame.sent_at);
                    for record in &frame.records[verdict.duplicates as usize..] {
                        // Measured as the poster measures it (`PostError::TooLarge`): the
                        // record in a frame of its own.
                        let size = HEADER_LEN
                            + frame.mac.map_or(0, |_| MAC_LEN)
                            + RECORD_OVERHEAD
                            + record.class.len()
                            + record.payload.len();
                        if size > max {
                            self.refuse(
                                name,
                                format!(
                                    "message of {size} bytes exceeds max_message_bytes ({max})"
                                ),
                            );
                            continue;
                        }
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
                Err(error) => {
                    self.refuse(name, error.to_string());
                    // Its messages are lost: when its header says how many (and the frame
                    // is long enough to hold that many), count them at once, so that
                    // received + missed == posted holds. The mark does not move: a frame
                    // that does not decode is not believed.
                    if let Some((origin, first, count)) = frame::decode_header(payload) {
                        let possible = (payload.len() - HEADER_LEN) / RECORD_OVERHEAD;
                        if count as usize <= possible {
                            let tick = state.received.load(Relaxed);
                            let lost = state.sequences.lock().lost(
                                channel,
                                &origin,
                                first,
                                u64::from(count),
                                tick,
                            );
                            self.missed(&origin, lost);
                        }
                    }
                }
            },
        }
        add(&state.received, received);
        local.received(&tally);
    }

    /// Counts and reports `count` messages from `origin` as lost (G06).
    fn missed(&self, origin: &Origin, count: u64) {
        if count == 0 {
            return;
        }
        let state = &self.state;
        add(&state.missed, count);
        state.emit(BusEvent::MessagesMissed {
            origin: hex(origin),
            count,
        });
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
        match post::receive(snapshot, &self.state.codec, class, payload, tally) {
            Ok(()) => true,
            Err(reason) => {
                self.refuse(name, reason);
                false
            }
        }
    }

    /// Whether the raw frame `payload` (which may not decode) is a signed frame whose MAC
    /// this bus accepts; always true on a bus without a signing key.
    fn authentic(&self, payload: &[u8]) -> bool {
        let keys = &self.state.codec.keys;
        if !keys.enabled() {
            return true;
        }
        if payload.get(3) != Some(&VERSION_SIGNED) {
            return false;
        }
        let Some(at) = payload.len().checked_sub(MAC_LEN) else {
            return false;
        };
        let (signed, mac) = payload.split_at(at);
        mac.try_into().is_ok_and(|mac| keys.verify(signed, mac))
    }

    /// Counts and reports a frame refused as not authentic (`Stats::global_rejected`).
    fn reject(&self, channel: &str, reason: String) {
        add(&self.state.rejected, 1);
        self.state.emit(BusEvent::Rejected {
            channel: channel.to_string(),
            reason,
        });
    }

    fn refuse(&self, channel: &str, reason: String) {
        add(&self.state.decode_errors, 1);
        self.state.emit(BusEvent::DecodeFailed {
            channel: channel.to_string(),
            reason,
        });
    }
}

/// Adds `n` to a counter, saturating at `u64::MAX`: a counter never wraps, whatever the
/// input claims.
fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
    if n > 0 {
        let _ = counter.fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_add(n)));
    }
}

fn hex(origin: &Origin) -> String {
    origin.iter().map(|b| format!("{b:02x}")).collect()
}
