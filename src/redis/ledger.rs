//! What the publisher keeps and others read: this bus's origin and the sequence numbers it
//! sent ([`Sequencer`], which the reader asks about frames that claim this origin), and which
//! tickets are settled ([`Settler`], which a `Delivery` asks after a shutdown).

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt};

use crate::wire::frame::Origin;

/// Channels whose sequence numbers one origin id tracks; past it, a new origin id starts
/// afresh (receivers see a new origin, not a gap).
const MAX_SEQUENCED_CHANNELS: usize = 1 << 16;

/// The watermark of settled tickets. Shared with every `Delivery`, which asks it, after a
/// shutdown, whether its ticket was settled out of order.
#[derive(Default)]
pub(super) struct Settler {
    /// Every ticket up to this one is settled.
    acked: u64,
    /// Settled tickets past `acked + 1`.
    ahead: BTreeSet<u64>,
}

impl Settler {
    /// Whether `ticket` is settled.
    pub(super) fn is_settled(&self, ticket: u64) -> bool {
        ticket <= self.acked || self.ahead.contains(&ticket)
    }

    /// Settles `tickets`; returns the new watermark if it moved.
    pub(super) fn settle(&mut self, mut tickets: Vec<u64>) -> Option<u64> {
        tickets.sort_unstable();
        let before = self.acked;
        for ticket in tickets {
            if ticket == self.acked + 1 {
                self.acked = ticket;
                while self.ahead.first() == Some(&(self.acked + 1)) {
                    self.ahead.pop_first();
                    self.acked += 1;
                }
            } else {
                self.ahead.insert(ticket);
            }
        }
        (self.acked != before).then_some(self.acked)
    }
}

/// This bus's origin id and each channel's next sequence number (G06). Shared with the
/// reader, which refuses a frame that claims this origin with a number not sent yet.
pub(super) struct Sequencer {
    pub(super) origin: Origin,
    next: HashMap<String, u64>,
}

impl Sequencer {
    pub(super) fn new() -> Self {
        Sequencer {
            origin: new_origin(),
            next: HashMap::new(),
        }
    }

    /// Whether this bus sent `origin`'s sequence number `last` on `channel` (a frame that
    /// claims this bus's origin must have been sent by it). Other origins: true.
    pub(super) fn may_have_sent(&self, origin: &Origin, channel: &str, last: u64) -> bool {
        *origin != self.origin || self.next.get(channel).is_some_and(|&next| last < next)
    }

    /// Reserves `count` sequence numbers on `channel`; returns the first.
    pub(super) fn next(&mut self, channel: &str, count: u64) -> u64 {
        if !self.next.contains_key(channel) && self.next.len() >= MAX_SEQUENCED_CHANNELS {
            // Bound the table: start a new origin, whose sequences receivers learn afresh.
            *self = Sequencer::new();
        }
        let next = self.next.entry(channel.to_string()).or_insert(1);
        let first = *next;
        *next += count;
        first
    }
}

/// A random 128-bit origin id.
fn new_origin() -> Origin {
    let mut origin = [0; 16];
    if getrandom::fill(&mut origin).is_err() {
        // No OS randomness: fall back to time and address entropy (still unique in practice).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let salt = &origin as *const _ as usize as u128;
        origin = (nanos ^ salt.rotate_left(64) ^ u128::from(std::process::id())).to_le_bytes();
    }
    origin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_moves_over_contiguous_tickets_only() {
        let mut settler = Settler::default();
        assert_eq!(settler.settle(vec![2, 3]), None);
        assert_eq!(settler.settle(vec![1]), Some(3));
        assert_eq!(settler.settle(vec![5]), None);
        assert_eq!(settler.settle(vec![4, 6]), Some(6));
    }
}
