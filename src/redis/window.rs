//! The retransmit window (K01) and how an origin answers repair requests (K02, K05).
//!
//! # Algorithm
//!
//! The publisher keeps every Native frame it publishes, as published, in one FIFO of the
//! whole bus, indexed per channel by sequence number. When the window holds more than its
//! bound in messages or in bytes, the oldest frames are evicted first, whatever their
//! channel; a frame larger than the byte bound alone is not kept. So memory is the byte
//! bound plus one small entry per frame, whatever the load.
//!
//! A channel's kept frames are always the newest it published, with no hole between them
//! (a frame too large to keep drops the channel's older frames). So a request for
//! `from..=to` on a channel is answered with every kept frame that overlaps it, in order (a frame is resent whole: the receiver drops the records it already has as
//! duplicates), and with one *gone* for the part below the oldest kept frame. So one request
//! never makes the origin resend more than its window.
//!
//! Requests are untrusted: per asker, a token bucket bounds the bytes resent (a window's
//! worth per second, with a window's worth of burst) and the requests taken
//! ([`REQUEST_BURST`], refilled at [`REQUESTS_PER_SECOND`]); a request past either is
//! refused and counted (`Stats::global_repair_refused`). At most [`MAX_ASKERS`] askers are
//! remembered; the least recently seen is forgotten.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::wire::frame::Origin;

/// Requests one asker may make at once (a receiver that resubscribed asks once per channel
/// and origin it knows).
pub(super) const REQUEST_BURST: f64 = 4096.0;
/// Requests per second one asker is granted after its burst.
pub(super) const REQUESTS_PER_SECOND: f64 = 1024.0;
/// Askers whose budgets are remembered.
const MAX_ASKERS: usize = 1024;

/// One kept frame.
struct Kept {
    first: u64,
    last: u64,
    frame: Arc<[u8]>,
}

/// What one request gets: frames to resend, and the range the origin no longer has.
#[derive(Default, Debug)]
pub(super) struct Answer {
    pub(super) frames: Vec<Arc<[u8]>>,
    pub(super) gone: Option<(u64, u64)>,
    /// For a request up to `u64::MAX`: the last sequence number published on the channel.
    pub(super) latest: Option<u64>,
}

/// The frames this bus published, bounded (K01).
pub(super) struct Window {
    max_messages: u64,
    max_bytes: u64,
    messages: u64,
    bytes: u64,
    /// Per Redis channel, its kept frames in sequence order.
    channels: HashMap<Arc<str>, VecDeque<Kept>>,
    /// Every kept frame's channel and first sequence number, oldest first: the eviction
    /// order. (An entry whose frame was dropped with its channel's older frames is skipped.)
    order: VecDeque<(Arc<str>, u64)>,
    /// The last sequence number published per channel (kept or not): what a request for
    /// "everything after" is answered up to.
    last: HashMap<Arc<str>, u64>,
    budgets: HashMap<Origin, Budget>,
}

impl Window {
    pub(super) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Window {
            max_messages: max_messages as u64,
            max_bytes: max_bytes as u64,
            messages: 0,
            bytes: 0,
            channels: HashMap::new(),
            order: VecDeque::new(),
            last: HashMap::new(),
            budgets: HashMap::new(),
        }
    }

    /// Bytes of frames kept now.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Keeps a frame of `count` records from `first` published on `channel`.
    pub(super) fn keep(&mut self, channel: &str, first: u64, count: u64, frame: &[u8]) {
        let last = first + (count - 1);
        let channel: Arc<str> = match self.channels.get_key_value(channel) {
            Some((known, _)) => known.clone(),
            None => Arc::from(channel),
        };
        self.last.insert(channel.clone(), last);
        let size = frame.len() as u64;
        if size > self.max_bytes || count > self.max_messages {
            // Too large to keep at all; requests for it are answered "gone", and so are
            // requests for the channel's older frames: what is kept has no hole.
            if let Some(frames) = self.channels.remove(&channel) {
                for kept in frames {
                    self.messages -= kept.last - kept.first + 1;
                    self.bytes -= kept.frame.len() as u64;
                }
            }
            return;
        }
        while self.messages + count > self.max_messages || self.bytes + size > self.max_bytes {
            self.evict_oldest();
        }
        self.messages += count;
        self.bytes += size;
        self.order.push_back((channel.clone(), first));
        self.channels.entry(channel).or_default().push_back(Kept {
            first,
            last,
            frame: Arc::from(frame),
        });
    }

    fn evict_oldest(&mut self) {
        let Some((channel, first)) = self.order.pop_front() else {
            return;
        };
        let Some(frames) = self.channels.get_mut(&channel) else {
            return;
        };
        if frames.front().is_some_and(|kept| kept.first == first) {
            let Some(kept) = frames.pop_front() else {
                return;
            };
            self.messages -= kept.last - kept.first + 1;
            self.bytes -= kept.frame.len() as u64;
        }
        if frames.is_empty() {
            self.channels.remove(&channel);
        }
    }

    /// Forgets everything kept: this bus's origin changed, so no receiver can ask for these.
    pub(super) fn clear(&mut self) {
        self.channels.clear();
        self.order.clear();
        self.last.clear();
        self.messages = 0;
        self.bytes = 0;
    }

    /// Answers `asker`'s request for `from..=to` on `channel` at time `now`; `None` when the
    /// asker is past its rate limit (K05).
    pub(super) fn answer(
        &mut self,
        asker: &Origin,
        channel: &str,
        from: u64,
        to: u64,
        now: Instant,
    ) -> Option<Answer> {
        let burst_bytes = self.max_bytes as f64;
        if !self.budgets.contains_key(asker) && self.budgets.len() >= MAX_ASKERS {
            let oldest = self
                .budgets
                .iter()
                .min_by_key(|(_, budget)| budget.seen)
                .map(|(asker, _)| *asker);
            if let Some(oldest) = oldest {
                self.budgets.remove(&oldest);
            }
        }
        let budget = self
            .budgets
            .entry(*asker)
            .or_insert_with(|| Budget::new(burst_bytes, now));
        budget.refill(burst_bytes, now);
        if budget.requests < 1.0 || budget.bytes <= 0.0 {
            return None;
        }
        budget.requests -= 1.0;
        let mut answer = Answer::default();
        let Some(&sent) = self.last.get(channel) else {
            return Some(answer);
        };
        if to == u64::MAX {
            answer.latest = Some(sent);
            return Some(answer);
        }
        let to = to.min(sent);
        if from > to {
            return Some(answer);
        }
        let frames = self.channels.get(channel);
        let oldest = frames
            .and_then(|frames| frames.front())
            .map_or(sent + 1, |kept| kept.first);
        if from < oldest {
            answer.gone = Some((from, to.min(oldest - 1)));
        }
        if let Some(frames) = frames {
            // Frames are in sequence order: skip those that end before `from`.
            let start = frames.partition_point(|kept| kept.last < from);
            for kept in frames.range(start..) {
                if kept.first > to {
                    break;
                }
                budget.bytes -= kept.frame.len() as f64;
                answer.frames.push(kept.frame.clone());
            }
        }
        Some(answer)
    }
}

/// One asker's token buckets.
struct Budget {
    requests: f64,
    bytes: f64,
    seen: Instant,
}

impl Budget {
    fn new(burst_bytes: f64, now: Instant) -> Self {
        Budget {
            requests: REQUEST_BURST,
            bytes: burst_bytes,
            seen: now,
        }
    }

    fn refill(&mut self, burst_bytes: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.seen).as_secs_f64();
        self.seen = now;
        self.requests = (self.requests + elapsed * REQUESTS_PER_SECOND).min(REQUEST_BURST);
        self.bytes = (self.bytes + elapsed * burst_bytes).min(burst_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Origin = [1; 16];

    /// The messages of every kept frame, counted one by one.
    fn kept(window: &Window) -> u64 {
        let frames = window.channels.values().flatten();
        frames.map(|k| k.last - k.first + 1).sum()
    }

    #[test]
    fn memory_stays_within_both_bounds_whatever_is_kept() {
        let mut window = Window::new(100, 1000);
        let mut first = [1u64; 3];
        for i in 0..10_000u64 {
            let channel = ["a", "b", "c"][(i % 3) as usize];
            let count = i % 7 + 1;
            let frame = vec![0u8; (i % 300) as usize + 1];
            let at = &mut first[(i % 3) as usize];
            window.keep(channel, *at, count, &frame);
            *at += count;
            assert!(window.messages <= 100 && window.bytes <= 1000);
            assert_eq!(window.messages, kept(&window));
        }
    }

    #[test]
    fn a_request_gets_the_overlapping_frames_and_what_is_gone() {
        let mut window = Window::new(6, 1 << 20);
        for first in [1, 3, 5, 7] {
            window.keep("c", first, 2, &[first as u8]);
        }
        // 1..=2 were evicted (8 messages, room for 6).
        let now = Instant::now();
        let answer = window.answer(&A, "c", 2, 5, now).unwrap();
        assert_eq!(answer.gone, Some((2, 2)));
        let firsts: Vec<u8> = answer.frames.iter().map(|f| f[0]).collect();
        assert_eq!(firsts, vec![3, 5]);
        let answer = window.answer(&A, "c", 7, 100, now).unwrap();
        assert_eq!((answer.gone, answer.frames.len()), (None, 1));
        // Up to u64::MAX: the latest sequence number, no frames.
        let answer = window.answer(&A, "c", 7, u64::MAX, now).unwrap();
        assert_eq!((answer.latest, answer.frames.len()), (Some(8), 0));
        // Nothing after the last sent, nothing of an unknown channel.
        assert!(window
            .answer(&A, "c", 9, 20, now)
            .unwrap()
            .frames
            .is_empty());
        let unknown = window.answer(&A, "x", 1, 5, now).unwrap();
        assert!(unknown.frames.is_empty() && unknown.gone.is_none());
    }

    #[test]
    fn a_frame_too_large_to_keep_drops_its_channels_older_frames() {
        let mut window = Window::new(10, 1 << 20);
        window.keep("c", 1, 2, &[1]);
        window.keep("d", 1, 2, &[1]);
        window.keep("c", 3, 20, &[3]);
        window.keep("c", 23, 2, &[23]);
        let answer = window.answer(&A, "c", 1, 30, Instant::now()).unwrap();
        assert_eq!(answer.gone, Some((1, 22)));
        assert_eq!(answer.frames.len(), 1);
        // The dropped frame's place in the eviction order is skipped, not taken for another.
        for first in (25..45).step_by(2) {
            window.keep("c", first, 2, &[0]);
        }
        assert!(window.messages <= 10);
        assert_eq!(window.messages, kept(&window));
    }

    #[test]
    fn askers_are_rate_limited() {
        let mut window = Window::new(10, 1 << 20);
        window.keep("c", 1, 1, &[0]);
        let now = Instant::now();
        let taken = (0..10_000)
            .filter(|_| window.answer(&A, "c", 1, 1, now).is_some())
            .count();
        assert_eq!(taken, REQUEST_BURST as usize);
        // Another asker has its own budget; time refills the first one's.
        assert!(window.answer(&[2; 16], "c", 1, 1, now).is_some());
        let later = now + std::time::Duration::from_millis(10);
        assert!(window.answer(&A, "c", 1, 1, later).is_some());
    }
}
