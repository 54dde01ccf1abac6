//! A receiver's open gaps (K02, K03): per origin and channel, what was asked for, until
//! when, and the later frames that wait for it.
//!
//! # Algorithm
//!
//! Each dispatch thread owns the gaps of its channels (a channel's frames always go to the
//! same thread, so nothing here is shared or locked). When a frame arrives past a gap that
//! repair can ask for, the frame is *held* and the gap is asked for once; a later frame
//! of that origin and channel past the mark is held too (a new hole before it is asked for at
//! once). Frames that fill the gap (answers, or a late copy) are delivered as they come, and
//! after each one the held frames that now follow the mark are delivered, in sequence order.
//!
//! A gap waits `repair_timeout` without progress (the deadline moves whenever part of it
//! arrives), and is then asked for again, up to [`ASKS`] times, each wait twice the one
//! before. When the last passes, or when holding one more frame would pass the bound on
//! held frames, the gap is *flushed*: what is still missing is counted missed and every
//! held frame is delivered in order. So the hold is bounded in time and in memory, and other
//! channels and origins never wait: they are never held.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::wire::frame::Origin;

/// A frame waiting for the gap before it.
pub(super) struct Held {
    /// The frame as received.
    pub(super) bytes: Vec<u8>,
    /// It came as a repair answer, not as published.
    pub(super) repaired: bool,
}

/// Times a gap is asked for before it is given up: a request can be lost (the origin's
/// control channel not yet subscribed again after a reconnect, which takes the origin's
/// client up to a second of backoff and more on a busy machine), and the answer too. Each
/// wait is twice the one before: 1, 2, 4 and 8 `repair_timeout`s, 15 in all (3 s by default).
pub(super) const ASKS: u8 = 4;

/// One open gap.
struct Gap {
    /// The highest sequence number asked for.
    asked_to: u64,
    /// Times it was asked for (the first time included) without progress.
    asked: u8,
    /// When it is given up, unless part of it arrives first.
    deadline: Instant,
    /// Frames past the gap, by first sequence number: (last, frame).
    held: BTreeMap<u64, (u64, Held)>,
}

/// The open gaps of one dispatch thread.
pub(super) struct Holds {
    gaps: HashMap<(String, Origin), Gap>,
    timeout: Duration,
    held_bytes: usize,
    held_messages: u64,
    max_bytes: usize,
    max_messages: u64,
}

impl Holds {
    /// No gap open; at most `max_messages` messages in `max_bytes` held at once.
    pub(super) fn new(timeout: Duration, max_messages: u64, max_bytes: usize) -> Self {
        Holds {
            gaps: HashMap::new(),
            timeout,
            held_bytes: 0,
            held_messages: 0,
            max_bytes,
            max_messages,
        }
    }

    /// Whether a gap of `origin` on `channel` is open.
    pub(super) fn is_open(&self, channel: &str, origin: &Origin) -> bool {
        !self.gaps.is_empty() && self.gaps.contains_key(&(channel.to_string(), *origin))
    }

    /// Opens (or widens) the gap `from..=to` of `origin` on `channel`; returns the part not
    /// asked for yet, which the caller asks for.
    pub(super) fn open(
        &mut self,
        channel: &str,
        origin: &Origin,
        from: u64,
        to: u64,
        now: Instant,
    ) -> Option<(u64, u64)> {
        let deadline = now + self.timeout;
        let gap = self
            .gaps
            .entry((channel.to_string(), *origin))
            .or_insert(Gap {
                asked_to: 0,
                asked: 1,
                deadline,
                held: BTreeMap::new(),
            });
        if to <= gap.asked_to {
            return None;
        }
        let from = from.max(gap.asked_to + 1);
        gap.asked_to = to;
        gap.deadline = deadline;
        Some((from, to))
    }

    /// Holds a frame of `first..=last` (its gap must be open); false when there is no room.
    pub(super) fn hold(
        &mut self,
        channel: &str,
        origin: &Origin,
        (first, last): (u64, u64),
        held: Held,
    ) -> bool {
        let messages = last - first + 1;
        if self.held_messages + messages > self.max_messages
            || self.held_bytes + held.bytes.len() > self.max_bytes
        {
            return false;
        }
        let Some(gap) = self.gaps.get_mut(&(channel.to_string(), *origin)) else {
            return false;
        };
        self.held_messages += messages;
        self.held_bytes += held.bytes.len();
        if let Some((old_last, old)) = gap.held.insert(first, (last, held)) {
            // The same frame again: keep one.
            self.held_messages -= old_last - first + 1;
            self.held_bytes -= old.bytes.len();
        }
        true
    }

    /// The highest sequence number held or asked for, for a frame of `origin` on `channel`
    /// that arrives past the mark: a hole between it and this is new.
    pub(super) fn reach(&self, channel: &str, origin: &Origin) -> u64 {
        self.gaps
            .get(&(channel.to_string(), *origin))
            .map_or(0, |gap| {
                let held = gap.held.values().map(|(last, _)| *last).max().unwrap_or(0);
                held.max(gap.asked_to)
            })
    }

    /// Part of the gap arrived: its deadline starts again.
    pub(super) fn progress(&mut self, channel: &str, origin: &Origin, now: Instant) {
        if let Some(gap) = self.gaps.get_mut(&(channel.to_string(), *origin)) {
            gap.deadline = now + self.timeout;
            gap.asked = 1;
        }
    }

    /// The gap's deadline passed: when it was asked for fewer than [`ASKS`] times, returns
    /// what was asked for, to ask again, and starts the deadline again; `None`: give up.
    pub(super) fn ask_again(
        &mut self,
        channel: &str,
        origin: &Origin,
        now: Instant,
    ) -> Option<u64> {
        let gap = self.gaps.get_mut(&(channel.to_string(), *origin))?;
        if gap.asked >= ASKS {
            return None;
        }
        gap.deadline = now + self.timeout * (1 << gap.asked);
        gap.asked += 1;
        Some(gap.asked_to)
    }

    /// The first held frame that follows `mark` (or every held frame, in order, when `mark`
    /// is unknown), taken out.
    pub(super) fn next_ready(
        &mut self,
        channel: &str,
        origin: &Origin,
        mark: Option<u64>,
    ) -> Option<Held> {
        let gap = self.gaps.get_mut(&(channel.to_string(), *origin))?;
        let (&first, _) = gap.held.first_key_value()?;
        if mark.is_some_and(|mark| first > mark.saturating_add(1)) {
            return None;
        }
        let (_, (last, held)) = gap.held.pop_first()?;
        self.held_messages -= last - first + 1;
        self.held_bytes -= held.bytes.len();
        Some(held)
    }

    /// The first held frame's first sequence number, if any.
    pub(super) fn first_held(&self, channel: &str, origin: &Origin) -> Option<u64> {
        let gap = self.gaps.get(&(channel.to_string(), *origin))?;
        gap.held.first_key_value().map(|(first, _)| *first)
    }

    /// Closes the gap when nothing is held and `mark` reached what was asked for; returns
    /// whether it is closed (or was not open).
    pub(super) fn close_if_filled(&mut self, channel: &str, origin: &Origin, mark: u64) -> bool {
        let key = (channel.to_string(), *origin);
        match self.gaps.get(&key) {
            Some(gap) if gap.held.is_empty() && mark >= gap.asked_to => {
                self.gaps.remove(&key);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Closes the gap, dropping what it still holds (nobody receives on the channel any
    /// more, or the caller took it all); returns what was asked for, to give up on.
    pub(super) fn close(&mut self, channel: &str, origin: &Origin) -> Option<u64> {
        let gap = self.gaps.remove(&(channel.to_string(), *origin))?;
        for (first, (last, held)) in &gap.held {
            self.held_messages -= last - first + 1;
            self.held_bytes -= held.bytes.len();
        }
        Some(gap.asked_to)
    }

    /// The gaps whose deadline passed by `now`.
    pub(super) fn expired(&self, now: Instant) -> Vec<(String, Origin)> {
        self.gaps
            .iter()
            .filter(|(_, gap)| gap.deadline <= now)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The earliest deadline, if a gap is open.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.gaps.values().map(|gap| gap.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Origin = [1; 16];

    fn held(n: u8) -> Held {
        Held {
            bytes: vec![n; 10],
            repaired: false,
        }
    }

    #[test]
    fn held_frames_come_out_in_order_once_they_follow_the_mark() {
        let now = Instant::now();
        let mut holds = Holds::new(Duration::from_millis(100), 100, 1000);
        assert_eq!(holds.open("c", &A, 3, 4, now), Some((3, 4)));
        assert!(holds.hold("c", &A, (7, 7), held(7)));
        assert!(holds.hold("c", &A, (5, 6), held(5)));
        assert_eq!(holds.reach("c", &A), 7);
        // Widening asks only for what was not asked.
        assert_eq!(holds.open("c", &A, 3, 4, now), None);
        assert_eq!(holds.open("c", &A, 3, 8, now), Some((5, 8)));
        assert!(holds.next_ready("c", &A, Some(2)).is_none());
        assert_eq!(holds.next_ready("c", &A, Some(4)).unwrap().bytes[0], 5);
        assert!(
            holds.next_ready("c", &A, Some(5)).is_none(),
            "7 does not follow 5"
        );
        assert_eq!(holds.next_ready("c", &A, Some(6)).unwrap().bytes[0], 7);
        assert!(!holds.close_if_filled("c", &A, 7), "8 was asked for");
        assert!(holds.close_if_filled("c", &A, 8));
        assert_eq!((holds.held_messages, holds.held_bytes), (0, 0));
    }

    #[test]
    fn the_hold_is_bounded_and_gaps_expire() {
        let now = Instant::now();
        let mut holds = Holds::new(Duration::from_millis(100), 3, 1000);
        holds.open("c", &A, 1, 1, now);
        assert!(holds.hold("c", &A, (2, 3), held(2)));
        assert!(!holds.hold("c", &A, (4, 5), held(4)), "past 3 messages");
        assert!(holds.expired(now).is_empty());
        let later = now + Duration::from_millis(100);
        assert_eq!(holds.expired(later), vec![("c".to_string(), A)]);
        holds.progress("c", &A, later);
        assert!(
            holds.expired(later).is_empty(),
            "progress moves the deadline"
        );
    }
}
