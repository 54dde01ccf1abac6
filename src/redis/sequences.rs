//! Duplicates and gaps (G06): per channel, per origin, the last sequence number seen.
//!
//! A Native frame carries its origin bus id and the sequence numbers of its records, counted
//! per origin and channel by the sender. A record at or below the last one seen is a
//! duplicate; a jump past the next one is a gap. The first frame from an origin after a
//! SUBSCRIBE sets the baseline.

use std::collections::HashMap;

use crate::wire::frame::Origin;

/// Most origins remembered per channel; past it the least recently seen is forgotten.
const MAX_ORIGINS: usize = 1024;

/// Per Redis channel, per origin: the last sequence number seen, and a recency stamp.
#[derive(Default)]
pub(crate) struct Sequences {
    channels: HashMap<String, HashMap<Origin, (u64, u64)>>,
}

impl Sequences {
    /// Checks the `count` records from `origin` starting at `first_seq`, received on
    /// `channel` at recency `tick`, against what was seen; returns how many of the leading
    /// ones are duplicates, and how many records of that origin were skipped (a gap) before
    /// them. The caller guarantees `count >= 1` and that the range does not pass `u64::MAX`.
    pub(crate) fn check(
        &mut self,
        channel: &str,
        origin: &Origin,
        first_seq: u64,
        count: u64,
        tick: u64,
    ) -> (u64, u64) {
        let last_seq = first_seq + (count - 1);
        if !self.channels.contains_key(channel) {
            self.channels.insert(channel.to_string(), HashMap::new());
        }
        let Some(origins) = self.channels.get_mut(channel) else {
            return (0, 0);
        };
        let (skip, gap) = match origins.get(origin) {
            None => (0, 0),
            Some(&(seen, _)) if last_seq <= seen => (count, 0),
            Some(&(seen, _)) if first_seq <= seen => (seen - first_seq + 1, 0),
            Some(&(seen, _)) => (0, first_seq - seen - 1),
        };
        if origins.len() >= MAX_ORIGINS && !origins.contains_key(origin) {
            let oldest = origins
                .iter()
                .min_by_key(|(_, &(_, at))| at)
                .map(|(o, _)| *o);
            if let Some(oldest) = oldest {
                origins.remove(&oldest);
            }
        }
        let seen = origins.get(origin).map_or(0, |&(seen, _)| seen);
        origins.insert(*origin, (seen.max(last_seq), tick));
        (skip, gap)
    }

    /// Forgets what was seen on `channel`: it is subscribed afresh, or no more.
    pub(crate) fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
    }
}
