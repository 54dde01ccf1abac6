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
use super::holds::{Held, Holds};
use super::publisher;
use super::sequences::WINDOW;
use super::state::{Change, State};
use crate::error::Reason;
use crate::events::BusEvent;
use crate::export;
use crate::local::post::{self, Snapshot};
use crate::local::registry::Topic;
use crate::stats::Tally;
use crate::transport::Receive;
use crate::wire::codec::Payload;
use crate::wire::control::{self, Control};
use crate::wire::frame::{
    self, Frame, Origin, HEADER_LEN, MAC_LEN, RECORD_OVERHEAD, VERSION_SIGNED,
};
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
            let channels = subscribe
                .iter()
                .filter(|channel| !state.is_control(channel))
                .count();
            tracing::info!(target: "evbus", channels, "resubscribing after a reconnect");
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
            ask_latest(&state, wanted.iter());
            state.link_changed(Link::Subscriber, LinkState::Restored);
        }
    }
}

/// After the subscriber reconnected, or a channel moved to another master: asks every
/// origin known on each of `channels` for its latest sequence number there (K04). What was
/// posted while the channel was not subscribed shows no gap until the origin's next post, and
/// an origin that went quiet meanwhile (its announcement lost) would never post it. Only the
/// number is asked for: the gap it shows is asked for as any gap, a bounded number of times,
/// so that a message that cannot reach this bus (one past its output buffer limit cuts the
/// connection again) is given up after a few `repair_timeout`s instead of being asked for on
/// every reconnect.
fn ask_latest<'a>(state: &State, channels: impl Iterator<Item = &'a String>) {
    if !state.repairing() {
        return;
    }
    let known: Vec<(String, Vec<(Origin, u64)>)> = {
        let sequences = state.sequences.lock();
        channels
            .filter(|channel| !state.is_control(channel))
            .map(|channel| (channel.clone(), sequences.known(channel)))
            .collect()
    };
    for (channel, origins) in known {
        for (origin, mark) in origins {
            publisher::request_repair(state, &origin, &channel, mark.saturating_add(1), u64::MAX);
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
    ask_latest(state, moved.iter().map(|(channel, _)| channel));
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
///
/// On a cluster every channel is `SSUBSCRIBE`d alone anyway, with an answer of its own: the
/// refused ones are known at once.
async fn subscribe_all(state: &State, redis: &Redis, channels: Vec<String>) {
    if redis.is_cluster() {
        let refused = until_answered(|| redis.subscribe_each(channels.clone()))
            .await
            .unwrap_or_default();
        return record_refusals(state, &channels, refused);
    }
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
    record_refusals(state, &channels, refused);
}

/// Records which of `channels` (just subscribed) Redis refused, and reports each (G04).
fn record_refusals(state: &State, channels: &[String], refused: Vec<(String, Reason)>) {
    {
        let mut known = state.refused_subscriptions.lock();
        for channel in channels {
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
            // fred follows a `MOVED` itself; one it hands back is a slot table on the move.
            Err(Failure::Retry | Failure::Moved(_)) => {
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
    /// silent). In the Serverpod format each is one message, counted here. In the Native
    /// format each is a frame of any number of messages, of origins unknown here; each shows
    /// as a gap at its origin's next frame on the channel (or its announcement, K04), where
    /// its messages are counted exactly and, with repair on, asked for (K02). Counting
    /// `count` here as well counted frames as messages, and forgetting the sequence marks,
    /// as this did, hid the gaps: a cluster bench lost 4,025 messages and counted 176.
    pub(super) fn lagged(&self, count: u64) {
        if self.state.codec.format == WireFormat::Native {
            tracing::warn!(
                target: "evbus",
                frames = count,
                "this bus's Redis subscriber read too slowly and fred dropped frames: their \
                 messages show as gaps, repaired or counted missed"
            );
            return;
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

    /// One message from Redis, on the dispatch thread of its channel (`holds` are that
    /// thread's open gaps).
    pub(super) fn receive(&self, holds: &mut Holds, channel: &[u8], payload: &[u8]) {
        let state = &self.state;
        // Not a channel of ours: we subscribe only UTF-8 names in our namespace.
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        if state.is_control(channel) {
            return self.control(holds, channel, payload);
        }
        match state.codec.format {
            WireFormat::Native if control::is_control(payload) => {
                self.announced(holds, channel, payload);
            }
            WireFormat::Native => self.on_channel(
                holds,
                channel,
                Step::Frame {
                    bytes: payload,
                    repaired: false,
                },
            ),
            WireFormat::Serverpod => self.serverpod(channel, payload),
        }
    }

    /// The bus's name of Redis channel `channel`, the bus, and the channel's receivers:
    /// `None` when it is not a channel of this bus's namespace, the bus is gone, or nothing
    /// receives on it.
    fn receivers<'a>(&self, channel: &'a str) -> Option<(&'a str, Arc<dyn Receive>, Arc<Topic>)> {
        let name = channel.strip_prefix(self.state.namespace.as_str())?;
        let local = self.local.upgrade()?;
        let topic = local.topic(name)?;
        Some((name, local, topic))
    }

    /// A Serverpod message: one message per payload, and the payload is the message.
    fn serverpod(&self, channel: &str, payload: &[u8]) {
        let state = &self.state;
        // No receivers: nothing to deliver.
        let Some((name, local, topic)) = self.receivers(channel) else {
            return;
        };
        let snapshot = topic.snapshot();
        let mut tally = Tally::default();
        let max = state.codec.max_message_bytes;
        if payload.len() > max {
            let reason = format!(
                "payload of {} bytes exceeds max_message_bytes ({max})",
                payload.len()
            );
            return self.refuse(name, reason);
        }
        match serverpod::decode_serverpod(payload) {
            Ok(message) => {
                let payload = Payload::Json(message.data);
                let class = &message.class;
                if self.deliver(name, snapshot.as_deref(), class, payload, &mut tally) {
                    add(&state.received, 1);
                }
            }
            Err(error) => self.refuse(name, error.to_string()),
        }
        local.received(&tally);
    }

    /// One step of the Native messages of Redis channel `channel`: a frame, or a gap given
    /// up on or reported gone; then whatever held frames of its origin now follow the mark.
    fn on_channel(&self, holds: &mut Holds, channel: &str, step: Step<'_>) {
        let state = &self.state;
        // No receivers: nothing to deliver (and no sequence to track).
        let Some((name, local, topic)) = self.receivers(channel) else {
            if let Step::Expire { origin } = step {
                holds.close(channel, &origin);
            }
            return;
        };
        let snapshot = topic.snapshot();
        let mut to = Here {
            channel,
            name,
            snapshot: snapshot.as_deref(),
            tally: Tally::default(),
            received: 0,
        };
        let origin = match step {
            Step::Frame { bytes, repaired } => self.frame(holds, &mut to, bytes, repaired, true),
            Step::Gone {
                origin,
                from,
                to: last,
            } => {
                let mut sequences = state.sequences.lock();
                // Only a range that starts where the receiver stands: the rest is on its way.
                if sequences
                    .mark(channel, &origin)
                    .is_some_and(|mark| from <= mark.saturating_add(1))
                {
                    let lost = sequences.skip_to(channel, &origin, last);
                    drop(sequences);
                    self.missed(&origin, lost);
                }
                Some(origin)
            }
            Step::Expire { origin } => {
                self.flush(holds, &mut to, &origin);
                None
            }
            Step::Latest { origin, last } => {
                self.latest(holds, channel, &origin, last);
                None
            }
        };
        if let Some(origin) = origin {
            self.release(holds, &mut to, &origin);
        }
        add(&state.received, to.received);
        local.received(&to.tally);
    }

    /// Delivers the held frames of `origin` that now follow the mark, in order, and closes
    /// the gap once it is filled (K03).
    fn release(&self, holds: &mut Holds, to: &mut Here<'_>, origin: &Origin) {
        if !holds.is_open(to.channel, origin) {
            return;
        }
        loop {
            let mark = self.state.sequences.lock().mark(to.channel, origin);
            let Some(held) = holds.next_ready(to.channel, origin, mark) else {
                break;
            };
            self.frame(holds, to, &held.bytes, held.repaired, true);
        }
        let mark = self.state.sequences.lock().mark(to.channel, origin);
        if let Some(mark) = mark {
            holds.close_if_filled(to.channel, origin, mark);
        }
    }

    /// Gives up on the gap of `origin`: counts what is still missing before each held frame
    /// and delivers them in order, then counts what was asked for and never came (K03).
    fn flush(&self, holds: &mut Holds, to: &mut Here<'_>, origin: &Origin) {
        while let Some(first) = holds.first_held(to.channel, origin) {
            let lost = (self.state.sequences.lock()).skip_to(to.channel, origin, first - 1);
            self.missed(origin, lost);
            if let Some(held) = holds.next_ready(to.channel, origin, None) {
                self.frame(holds, to, &held.bytes, held.repaired, false);
            }
        }
        if let Some(asked) = holds.close(to.channel, origin) {
            let lost = (self.state.sequences.lock()).skip_to(to.channel, origin, asked);
            self.missed(origin, lost);
        }
    }

    /// The gaps of this dispatch thread whose `repair_timeout` passed: asked for again, up
    /// to [`ASKS`](super::holds::ASKS) times in all, each wait twice the one before, then given
    /// up (K03).
    pub(super) fn expire(&self, holds: &mut Holds, now: Instant) {
        for (channel, origin) in holds.expired(now) {
            if let Some(asked_to) = holds.ask_again(&channel, &origin, now) {
                let mark = self.state.sequences.lock().mark(&channel, &origin);
                if let Some(from) = mark.and_then(|mark| mark.checked_add(1)) {
                    if from <= asked_to {
                        publisher::request_repair(&self.state, &origin, &channel, from, asked_to);
                        continue;
                    }
                }
            }
            self.on_channel(holds, &channel, Step::Expire { origin });
        }
    }

    /// One Native frame of `to.channel`, `repaired` when it came as a repair answer: checked,
    /// then delivered, or held while a gap before it is repaired (only when `may_hold`).
    /// Returns its origin when it moved the mark, so that held frames may follow.
    fn frame(
        &self,
        holds: &mut Holds,
        to: &mut Here<'_>,
        payload: &[u8],
        repaired: bool,
        may_hold: bool,
    ) -> Option<Origin> {
        let state = &self.state;
        let (channel, name) = (to.channel, to.name);
        let max = state.codec.max_message_bytes;
        // The limit is applied to each message of a frame, not to the frame: a frame
        // from a bus with a larger limit may carry messages within this bus's limit
        // beside ones over it, and Redis has delivered the whole frame already.
        // Authenticity first: a frame without a valid MAC is not even parsed, and
        // touches nothing.
        if !self.authentic(payload) {
            let why = match payload.get(3) {
                Some(&VERSION_SIGNED) => "a wrong MAC",
                _ => "no MAC",
            };
            self.reject(
                name,
                format!("a frame with {why} (this bus has a signing key)"),
            );
            return None;
        }
        let frame = match frame::decode_frame(payload) {
            Ok(frame) => frame,
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
                return None;
            }
        };
        let count = frame.records.len() as u64;
        let last = frame.first_seq + (count - 1);
        if !state
            .sequencer
            .lock()
            .may_have_sent(&frame.origin, channel, last)
        {
            self.reject(
                name,
                format!("a frame claims this bus's own origin with sequence {last}, which it never sent"),
            );
            return None;
        }
        if may_hold && state.repairing() && self.held(holds, to, payload, &frame, repaired) {
            return None;
        }
        let tick = state.received.load(Relaxed);
        let verdict =
            state
                .sequences
                .lock()
                .check(channel, &frame.origin, frame.first_seq, count, tick);
        if verdict.implausible {
            self.refuse(
                name,
                format!(
                    "implausible sequence numbers {}..={last} from {}: more than {WINDOW} away from the last seen",
                    frame.first_seq,
                    hex(&frame.origin)
                ),
            );
            return None;
        }
        add(&state.duplicates, verdict.duplicates);
        self.missed(&frame.origin, verdict.missed);
        if verdict.duplicates == count {
            return None;
        }
        if repaired {
            add(&state.repaired, count - verdict.duplicates);
            holds.progress(channel, &frame.origin, Instant::now());
        } else {
            export::latency(&state.namespace, frame.sent_at);
        }
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
                    format!("message of {size} bytes exceeds max_message_bytes ({max})"),
                );
                continue;
            }
            let payload = Payload::Native(record.payload);
            let delivered = self.deliver(name, to.snapshot, record.class, payload, &mut to.tally);
            to.received += u64::from(delivered);
        }
        Some(frame.origin)
    }

    /// Holds `frame` when a gap of its origin lies before it, and asks for the part of the
    /// gap not asked for yet (K02, K03); false when it is to be delivered now (no gap, or no
    /// room left to hold it: then the gap is given up first).
    fn held(
        &self,
        holds: &mut Holds,
        to: &mut Here<'_>,
        payload: &[u8],
        frame: &Frame<'_>,
        repaired: bool,
    ) -> bool {
        let (channel, origin) = (to.channel, &frame.origin);
        let first = frame.first_seq;
        let last = first + (frame.records.len() as u64 - 1);
        let (gap, past) = {
            let sequences = self.state.sequences.lock();
            let past = sequences
                .mark(channel, origin)
                .is_some_and(|mark| first > mark.saturating_add(1) && first - mark - 1 <= WINDOW);
            (sequences.gap(channel, origin, first), past)
        };
        let open = holds.is_open(channel, origin);
        if gap.is_none() && !(open && past) {
            return false;
        }
        if let Some(gap) = gap {
            self.ask(holds, channel, origin, gap);
        }
        let kept = Held {
            bytes: payload.to_vec(),
            repaired,
        };
        if holds.hold(channel, origin, (first, last), kept) {
            return true;
        }
        // No room: this gap is given up now, and the frame goes on as if there were none.
        self.flush(holds, to, origin);
        false
    }

    /// An origin's announcement of its last sequence number on `channel` (K04).
    fn announced(&self, holds: &mut Holds, channel: &str, payload: &[u8]) {
        let state = &self.state;
        if !state.repairing() {
            // Repair is off here: an announcement is nothing to this bus.
            return;
        }
        let name = state.local_name(channel);
        match self.decode_control(name, payload) {
            Some(Control::Announce { origin, last }) => {
                self.on_channel(holds, channel, Step::Latest { origin, last });
            }
            Some(_) => self.refuse(name, "a repair message on a channel of messages".into()),
            None => {}
        }
    }

    /// `origin`'s last sequence number on `channel` is `last` (K04): a gap before it that
    /// was not asked for yet is asked for.
    fn latest(&self, holds: &mut Holds, channel: &str, origin: &Origin, last: u64) {
        let state = &self.state;
        if !state.sequencer.lock().may_have_sent(origin, channel, last) {
            return self.reject(
                state.local_name(channel),
                format!("a repair message claims this bus's own origin with sequence {last}, which it never sent"),
            );
        }
        let Some(next) = last.checked_add(1) else {
            return;
        };
        let gap = state.sequences.lock().gap(channel, origin, next);
        if let Some(gap) = gap {
            self.ask(holds, channel, origin, gap);
        }
    }

    /// Opens (or widens) the gap `from..=to` of `origin` on `channel` and asks the origin for
    /// the part not held or asked for yet (K02). (A gap that is not open yet has nothing held
    /// or asked: all of it is asked for, and the gap is opened.)
    fn ask(&self, holds: &mut Holds, channel: &str, origin: &Origin, (from, to): (u64, u64)) {
        let from = from.max(holds.reach(channel, origin) + 1);
        if from > to {
            return;
        }
        if let Some((from, to)) = holds.open(channel, origin, from, to, Instant::now()) {
            publisher::request_repair(&self.state, origin, channel, from, to);
        }
    }

    /// A message on this bus's control channel: a request for what it published, or an
    /// answer to a request of its own (K02, K05).
    fn control(&self, holds: &mut Holds, channel: &str, payload: &[u8]) {
        let state = &self.state;
        let Some(control) = self.decode_control(channel, payload) else {
            if control::decode(payload).is_err() {
                add(&state.repair_refused, 1);
            }
            return;
        };
        match control {
            Control::Request {
                asker,
                channel,
                from,
                to,
            } => self.answer(&asker, channel, from, to),
            Control::Answer { channel, frame } => self.on_channel(
                holds,
                channel,
                Step::Frame {
                    bytes: frame,
                    repaired: true,
                },
            ),
            Control::Gone {
                origin,
                channel,
                from,
                to,
            } => self.on_channel(holds, channel, Step::Gone { origin, from, to }),
            Control::Latest {
                origin,
                channel,
                last,
            } => self.on_channel(holds, channel, Step::Latest { origin, last }),
            Control::Announce { .. } => {
                self.refuse(channel, "an announcement on a control channel".into());
            }
        }
    }

    /// Answers `asker`'s request from the retransmit window: what is kept, and what is gone
    /// (K02); refused past the asker's rate limit (K05).
    fn answer(&self, asker: &Origin, channel: &str, from: u64, to: u64) {
        let state = &self.state;
        let Some(window) = &state.window else {
            return;
        };
        let answer = window
            .lock()
            .answer(asker, channel, from, to, Instant::now());
        let Some(answer) = answer else {
            if state.repair_refused.fetch_add(1, Relaxed) == 0 {
                tracing::warn!(
                    target: "evbus",
                    asker = %hex(asker),
                    "repair requests refused past their asker's rate limit (counted in global_repair_refused)"
                );
            }
            return;
        };
        let reply_to = state.control_channel(asker);
        let origin = state.sequencer.lock().origin;
        if let Some(last) = answer.latest {
            let latest = Control::Latest {
                origin,
                channel,
                last,
            };
            publisher::send_control(state, reply_to.clone(), latest);
        }
        if let Some((from, to)) = answer.gone {
            let gone = Control::Gone {
                origin,
                channel,
                from,
                to,
            };
            publisher::send_control(state, reply_to.clone(), gone);
        }
        for frame in &answer.frames {
            publisher::send_control(state, reply_to.clone(), Control::Answer { channel, frame });
        }
    }

    /// Decodes a control message, authenticated when this bus has a signing key; refused
    /// (counted, reported) otherwise.
    fn decode_control<'a>(&self, channel: &str, payload: &'a [u8]) -> Option<Control<'a>> {
        let decoded = match control::decode(payload) {
            Ok(decoded) => decoded,
            Err(reason) => {
                self.refuse(channel, reason.to_string());
                return None;
            }
        };
        let keys = &self.state.codec.keys;
        if keys.enabled()
            && !decoded
                .signed
                .is_some_and(|(body, mac)| keys.verify(body, mac))
        {
            self.reject(
                channel,
                "a repair message without a valid MAC (this bus has a signing key)".into(),
            );
            return None;
        }
        Some(decoded.control)
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

/// What is being delivered to: one channel's receivers, and what they got.
struct Here<'a> {
    /// The Redis channel.
    channel: &'a str,
    /// Its name on the bus.
    name: &'a str,
    snapshot: Option<&'a Snapshot>,
    tally: Tally,
    received: u64,
}

/// What [`Reader::on_channel`] does for one channel.
enum Step<'a> {
    /// A frame as published, or `repaired` as a repair answer.
    Frame { bytes: &'a [u8], repaired: bool },
    /// The origin no longer has `from..=to`: counted missed.
    Gone { origin: Origin, from: u64, to: u64 },
    /// The gap of `origin` waited `repair_timeout` without progress: given up.
    Expire { origin: Origin },
    /// `origin`'s last sequence number is `last` (an announcement, or the answer to a
    /// request for it): a gap before it is asked for.
    Latest { origin: Origin, last: u64 },
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
