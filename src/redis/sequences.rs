//! Duplicates and gaps (G06): per channel, per origin, the last sequence number seen.
//!
//! A Native frame carries its origin bus id and the sequence numbers of its records, counted
//! per origin and channel by the sender. A record at or below the last one seen is a
//! duplicate; a jump past the next one is a gap. The first frame from an origin after a
//! SUBSCRIBE sets the baseline.

use std::collections::HashMap;

use crate::wire::frame::{Frame, Origin};

/// Most origins remembered per channel; past it the least recently seen is forgotten.
const MAX_ORIGINS: usize = 1024;

/// Per Redis channel, per origin: the last sequence number seen, and a recency stamp.
#[derive(Default)]
pub(crate) struct Sequences {
    channels: HashMap<String, HashMap<Origin, (u64, u64)>>,
}

impl Sequences {
    /// Checks `frame`, received on `channel` at recency `tick`, against what was seen;
    /// returns how many of its leading records are duplicates, and how many records of its
    /// origin were skipped (a gap) before it.
    pub(crate) fn check(&mut self, channel: &str, frame: &Frame<'_>, tick: u64) -> (u64, u64) {
        let count = frame.records.len() as u64;
        let last_seq = frame.first_seq + (count - 1);
        if !self.channels.contains_key(channel) {
            self.channels.insert(channel.to_string(), HashMap::new());
        }
        let Some(origins) = self.channels.get_mut(channel) else {
            return (0, 0);
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
        let seen = origins.get(&frame.origin).map_or(0, |&(seen, _)| seen);
        origins.insert(frame.origin, (seen.max(last_seq), tick));
        (skip, gap)
    }

    /// Forgets what was seen on `channel`: it is subscribed afresh, or no more.
    pub(crate) fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
    }
}
