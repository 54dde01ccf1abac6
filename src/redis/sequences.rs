//! Duplicates and gaps (G06): per channel, per origin, the last sequence number seen.
//!
//! A Native frame carries its origin bus id and the sequence numbers of its records, counted
//! per origin and channel by the sender. A record at or below the last one seen (the
//! *mark*) is a duplicate; a jump past the next one is a gap, counted missed. The first
//! frame from an origin after a SUBSCRIBE sets the mark.
//!
//! # What a forged frame can do
//!
//! Without a signing key anyone who can PUBLISH can write a frame with any origin and any
//! sequence number, so the mark must not be movable without bound by one frame. Two rules
//! bound it:
//!
//! - **Plausibility.** A frame more than [`WINDOW`] sequence numbers past the mark, or more
//!   than `WINDOW` below it, is *implausible*: it is refused (counted and reported as a
//!   decode failure), counts nothing missed and does not move the mark. Honest traffic only
//!   does that after more than a million messages of one origin on one channel were lost
//!   while this bus stayed subscribed; then the origin's next frame that directly follows
//!   the refused one re-synchronises the mark. So a forged frame near `u64::MAX` no longer
//!   mutes an origin nor adds 1.8e19 to `global_missed`: it is one refused frame, and a
//!   forger who sends two contiguous ones moves the mark once, after which the real
//!   origin's frames are themselves implausible and take it back the same way.
//! - **Our own origin.** A frame claiming this bus's own origin with a sequence number it
//!   has not sent is refused: the caller checks it before asking here.
//!
//! A frame that does not decode never moves the mark. When its header still reads, its
//! messages are counted missed at once (issue: accounting holds even for a frame nobody can
//! read), and the range is remembered, so that the gap the origin's next frame shows is not
//! counted a second time.
//!
//! Memory: at most [`MAX_ORIGINS`] origins per channel (the least recently seen is
//! forgotten; a replay of an evicted origin's frames is then taken as new, which is the cost
//! of the bound), and only channels this bus subscribes.

use std::collections::HashMap;

use crate::wire::frame::Origin;

/// Most origins remembered per channel; past it the least recently seen is forgotten.
const MAX_ORIGINS: usize = 1024;

/// Most ranges counted missed that one origin keeps above its mark.
const MAX_COUNTED: usize = 64;

/// How far from the mark, in sequence numbers, a frame may be and still be believed.
pub const WINDOW: u64 = 1 << 20;

/// What one origin has shown on one channel.
#[derive(Clone, Debug)]
struct Seen {
    /// The highest sequence number accepted.
    mark: u64,
    /// Whether a frame of this origin was read yet: only lost ones were when false, and
    /// then `mark` means nothing. (A frame dropped before delivery can be counted before the
    /// frames queued ahead of it are read: it must not become their mark.)
    based: bool,
    /// Recency, for eviction.
    stamp: u64,
    /// The last sequence number of the last implausible frame: a frame that follows it
    /// directly re-synchronises the mark.
    refused_up_to: Option<u64>,
    /// Ranges above the mark already counted missed (unreadable or dropped frames'), sorted
    /// and disjoint; at most [`MAX_COUNTED`] (past it the lowest is forgotten, and counted
    /// again if a gap covers it).
    counted: Vec<(u64, u64)>,
}

/// What [`Sequences::check`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Leading records already seen: drop them.
    pub duplicates: u64,
    /// Records of this origin skipped before the frame: count them missed.
    pub missed: u64,
    /// The frame is too far from the mark to be believed: refuse it whole.
    pub implausible: bool,
}

/// Per Redis channel, per origin: what was seen.
#[derive(Debug, Default)]
pub struct Sequences {
    channels: HashMap<String, HashMap<Origin, Seen>>,
}

impl Sequences {
    /// Checks the `count` records from `origin` starting at `first`, received on `channel`
    /// at recency `tick`, and moves the mark past them unless they are implausible. The
    /// caller guarantees `count >= 1` and that the range does not pass `u64::MAX` (the frame
    /// decoder refuses such frames).
    pub fn check(
        &mut self,
        channel: &str,
        origin: &Origin,
        first: u64,
        count: u64,
        tick: u64,
    ) -> Verdict {
        let last = first + (count - 1);
        let origins = self.origins(channel, origin);
        let Some(seen) = origins.get_mut(origin) else {
            origins.insert(*origin, Seen::new(last, tick));
            return Verdict::default();
        };
        seen.stamp = tick;
        if !seen.based {
            // The first frame read of an origin some of whose frames were counted lost.
            let mut counted = std::mem::take(&mut seen.counted);
            counted.retain(|&(_, end)| end > last);
            *seen = Seen::new(last, tick);
            seen.counted = counted;
            return Verdict::default();
        }
        let verdict = seen.verdict(first, last);
        if verdict.implausible {
            if seen
                .refused_up_to
                .is_some_and(|end| first == end.wrapping_add(1))
            {
                // Two frames in a row from the same far place: the origin really is there.
                *seen = Seen::new(last, tick);
                return Verdict::default();
            }
            seen.refused_up_to = Some(last);
            return verdict;
        }
        seen.refused_up_to = None;
        seen.mark = seen.mark.max(last);
        let mark = seen.mark;
        seen.counted.retain(|&(_, end)| end > mark);
        verdict
    }

    /// Counts the `count` records of an unreadable frame from `origin` starting at `first`
    /// as lost, without moving the mark; returns how many are newly counted (none that were
    /// already seen or counted, none of an implausible frame).
    pub fn lost(
        &mut self,
        channel: &str,
        origin: &Origin,
        first: u64,
        count: u64,
        tick: u64,
    ) -> u64 {
        let last = first + (count - 1);
        let origins = self.origins(channel, origin);
        let seen = origins.entry(*origin).or_insert_with(|| Seen {
            based: false,
            ..Seen::new(0, tick)
        });
        if seen.based && seen.verdict(first, last).implausible {
            return 0;
        }
        let from = if seen.based {
            first.max(seen.mark + 1)
        } else {
            first
        };
        if from > last {
            return 0;
        }
        let newly = seen.uncounted(from, last);
        seen.count(from, last);
        newly
    }

    /// The range `from..=to` missing before a frame from `origin` that starts at `first`,
    /// when repair can ask for it (K02): the origin is known, the frame is past the next
    /// sequence number and plausible, and none of the range was counted missed already
    /// (messages this bus dropped itself are counted at once and not asked for).
    pub fn gap(&self, channel: &str, origin: &Origin, first: u64) -> Option<(u64, u64)> {
        let seen = self.channels.get(channel)?.get(origin)?;
        if !seen.based || first <= seen.mark.saturating_add(1) || first - seen.mark - 1 > WINDOW {
            return None;
        }
        let (from, to) = (seen.mark + 1, first - 1);
        (seen.uncounted(from, to) == to - from + 1).then_some((from, to))
    }

    /// The last sequence number accepted from `origin` on `channel`, if it is known.
    pub fn mark(&self, channel: &str, origin: &Origin) -> Option<u64> {
        let seen = self.channels.get(channel)?.get(origin)?;
        seen.based.then_some(seen.mark)
    }

    /// Gives up on everything of `origin` up to `to` not seen yet: counts what was not
    /// counted already and moves the mark to `to` (a repair that timed out, or what the
    /// origin no longer has). Returns how many are newly counted missed. Nothing moves
    /// when the origin is unknown here, `to` is not past the mark, or `to` is implausibly
    /// far.
    pub fn skip_to(&mut self, channel: &str, origin: &Origin, to: u64) -> u64 {
        let Some(seen) = self
            .channels
            .get_mut(channel)
            .and_then(|origins| origins.get_mut(origin))
        else {
            return 0;
        };
        if !seen.based || to <= seen.mark || to - seen.mark > WINDOW {
            return 0;
        }
        let missed = seen.uncounted(seen.mark + 1, to);
        seen.mark = to;
        seen.counted.retain(|&(_, end)| end > to);
        missed
    }

    /// The origins known on `channel`, with their marks: whom a receiver that reconnected
    /// asks for their latest sequence number (K04).
    pub fn known(&self, channel: &str) -> Vec<(Origin, u64)> {
        self.channels.get(channel).map_or_else(Vec::new, |origins| {
            origins
                .iter()
                .filter(|(_, seen)| seen.based)
                .map(|(origin, seen)| (*origin, seen.mark))
                .collect()
        })
    }

    /// Forgets what was seen on `channel`: it is subscribed afresh, or no more.
    pub fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
    }

    /// The origins of `channel`, with room for `origin`.
    fn origins(&mut self, channel: &str, origin: &Origin) -> &mut HashMap<Origin, Seen> {
        if !self.channels.contains_key(channel) {
            self.channels.insert(channel.to_string(), HashMap::new());
        }
        let origins = self
            .channels
            .get_mut(channel)
            .unwrap_or_else(|| unreachable!("inserted above"));
        if origins.len() >= MAX_ORIGINS && !origins.contains_key(origin) {
            let oldest = origins
                .iter()
                .min_by_key(|(_, seen)| seen.stamp)
                .map(|(o, _)| *o);
            if let Some(oldest) = oldest {
                origins.remove(&oldest);
            }
        }
        origins
    }
}

impl Seen {
    fn new(mark: u64, stamp: u64) -> Self {
        Seen {
            mark,
            based: true,
            stamp,
            refused_up_to: None,
            counted: Vec::new(),
        }
    }

    /// Duplicates, gap and plausibility of the range `first..=last` against the mark.
    fn verdict(&self, first: u64, last: u64) -> Verdict {
        if first > self.mark {
            let gap = first - self.mark - 1;
            return match gap {
                0 => Verdict::default(),
                gap if gap > WINDOW => Verdict {
                    implausible: true,
                    ..Verdict::default()
                },
                _ => Verdict {
                    missed: self.uncounted(self.mark + 1, first - 1),
                    ..Verdict::default()
                },
            };
        }
        if self.mark - first >= WINDOW {
            return Verdict {
                implausible: true,
                ..Verdict::default()
            };
        }
        Verdict {
            duplicates: (self.mark.min(last) - first) + 1,
            ..Verdict::default()
        }
    }

    /// How many of `from..=to` were not already counted missed.
    fn uncounted(&self, from: u64, to: u64) -> u64 {
        let counted: u64 = self
            .counted
            .iter()
            .filter(|&&(start, end)| start <= to && from <= end)
            .map(|&(start, end)| end.min(to) - start.max(from) + 1)
            .sum();
        (to - from + 1) - counted
    }

    /// Records `from..=to` as counted missed.
    fn count(&mut self, from: u64, to: u64) {
        let (mut start, mut end) = (from, to);
        // Merge every range that overlaps or touches it.
        self.counted.retain(|&(s, e)| {
            let apart = e.saturating_add(1) < start || end.saturating_add(1) < s;
            if !apart {
                start = start.min(s);
                end = end.max(e);
            }
            apart
        });
        let at = self.counted.partition_point(|&(s, _)| s < start);
        self.counted.insert(at, (start, end));
        if self.counted.len() > MAX_COUNTED {
            self.counted.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Origin = *b"origin-a-16bytes";

    fn check(s: &mut Sequences, first: u64, count: u64) -> Verdict {
        s.check("c", &A, first, count, 0)
    }

    fn v(duplicates: u64, missed: u64, implausible: bool) -> Verdict {
        Verdict {
            duplicates,
            missed,
            implausible,
        }
    }

    #[test]
    fn a_gap_is_asked_for_only_when_nothing_of_it_was_counted() {
        let mut s = Sequences::default();
        assert_eq!(s.gap("c", &A, 5), None, "an unknown origin has no gap");
        check(&mut s, 1, 2);
        assert_eq!(s.gap("c", &A, 3), None);
        assert_eq!(s.gap("c", &A, 6), Some((3, 5)));
        assert_eq!(s.lost("c", &A, 4, 1, 0), 1);
        assert_eq!(s.gap("c", &A, 6), None, "4 was counted when it was dropped");
        // Giving up counts what was not counted, once.
        assert_eq!(s.skip_to("c", &A, 5), 2);
        assert_eq!(s.mark("c", &A), Some(5));
        assert_eq!(s.skip_to("c", &A, 5), 0);
        assert_eq!(check(&mut s, 6, 1), v(0, 0, false));
        assert_eq!(s.known("c"), vec![(A, 6)]);
    }

    #[test]
    fn duplicates_and_gaps() {
        let mut s = Sequences::default();
        assert_eq!(check(&mut s, 1, 3), v(0, 0, false));
        assert_eq!(check(&mut s, 4, 1), v(0, 0, false));
        assert_eq!(check(&mut s, 3, 3), v(2, 0, false));
        assert_eq!(check(&mut s, 9, 1), v(0, 3, false));
        assert_eq!(check(&mut s, 1, 9), v(9, 0, false));
    }

    #[test]
    fn a_forged_far_frame_neither_mutes_nor_inflates() {
        let mut s = Sequences::default();
        check(&mut s, 1, 1);
        assert_eq!(check(&mut s, u64::MAX - 1, 1), v(0, 0, true));
        // The real origin goes on undisturbed.
        assert_eq!(check(&mut s, 2, 1), v(0, 0, false));
        assert_eq!(check(&mut s, 3, 1), v(0, 0, false));
    }

    #[test]
    fn two_contiguous_far_frames_resynchronise_and_the_real_origin_takes_it_back() {
        let mut s = Sequences::default();
        check(&mut s, 1, 1);
        let far = 10 * WINDOW;
        assert_eq!(check(&mut s, far, 1), v(0, 0, true));
        assert_eq!(check(&mut s, far + 1, 1), v(0, 0, false));
        // Now the real origin is far below: refused once, then followed.
        assert_eq!(check(&mut s, 2, 1), v(0, 0, true));
        assert_eq!(check(&mut s, 3, 1), v(0, 0, false));
        assert_eq!(check(&mut s, 4, 1), v(0, 0, false));
    }

    #[test]
    fn an_unreadable_frame_is_counted_once() {
        let mut s = Sequences::default();
        check(&mut s, 1, 1);
        assert_eq!(s.lost("c", &A, 2, 3, 0), 3);
        assert_eq!(s.lost("c", &A, 2, 3, 0), 0, "the same frame again");
        // The next frame's gap is what was not counted yet: 5 and 6.
        assert_eq!(check(&mut s, 7, 1), v(0, 2, false));
        assert_eq!(check(&mut s, 8, 1), v(0, 0, false));
        // A lying header far away counts nothing.
        assert_eq!(s.lost("c", &A, u64::MAX - 10, 5, 0), 0);
    }

    #[test]
    fn a_frame_counted_lost_before_the_frames_queued_ahead_of_it_are_read() {
        // A new origin's frames 1..=3 wait to be read when its frame 4 is dropped.
        let mut s = Sequences::default();
        assert_eq!(s.lost("c", &A, 4, 1, 0), 1);
        assert_eq!(check(&mut s, 1, 1), v(0, 0, false));
        assert_eq!(check(&mut s, 2, 2), v(0, 0, false));
        // Frame 5 shows no gap: 4 was counted.
        assert_eq!(check(&mut s, 5, 1), v(0, 0, false));
    }
}
