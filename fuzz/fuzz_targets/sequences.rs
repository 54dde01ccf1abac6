//! Sequences of frames from several origins into the duplicate and gap tracker, against a
//! model of what each honest origin sent.
//!
//! Each origin sends frames of consecutive sequence numbers; the input decides, frame by
//! frame, whether a receiver gets it, loses it, gets it again (a replay), gets it unreadable
//! (only its header counts), or whether a forger's frame (any origin, any sequence number)
//! comes in between. Then every origin sends one last frame that arrives, so that every gap
//! shows. Each origin's first frame arrives (a receiver cannot know of messages sent before
//! the first it sees). Without forged frames the accounting is exact: per origin, every sequence number
//! is delivered once or counted missed, none twice, and duplicates are only what was
//! delivered before. With them: no panic, and counters stay far from wrapping.

#![no_main]

use evbus::fuzzing::sequences::{Sequences, WINDOW};
use libfuzzer_sys::fuzz_target;

const ORIGINS: usize = 3;

fuzz_target!(|data: &[u8]| {
    let mut sequences = Sequences::default();
    let origins: [[u8; 16]; ORIGINS] = [[1; 16], [2; 16], [3; 16]];
    // Per origin: the next sequence number it sends, and what the receiver did with each.
    let mut next = [1u64; ORIGINS];
    let mut delivered = vec![Vec::<bool>::new(); ORIGINS];
    let mut missed = [0u64; ORIGINS];
    // Frames sent, but those that arrived unreadable: a replay of one of them would deliver
    // messages already counted missed, which no receiver can take back.
    let mut sent: Vec<Vec<(u64, u64)>> = vec![Vec::new(); ORIGINS];
    let mut forged = false;
    // Past 64 separate ranges of unreadable frames above its mark, an origin forgets the
    // lowest (a bound on memory): exactness is promised below that.
    let mut unreadable = [0usize; ORIGINS];
    let mut tick = 0;
    // Each origin's first frame arrives: a receiver cannot know of messages its origin sent
    // before the first one it saw (they may predate its SUBSCRIBE).
    for o in 0..ORIGINS {
        deliver(&mut sequences, &origins[o], 1, 1, tick, &mut delivered[o], &mut missed[o]);
        sent[o].push((1, 1));
        next[o] = 2;
    }
    for chunk in data.chunks(3) {
        let [op, a, b] = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let o = usize::from(a) % ORIGINS;
        tick += 1;
        match op % 5 {
            // A new frame of `b % 8 + 1` messages: delivered, lost, or unreadable.
            0..=2 => {
                let count = u64::from(b % 8) + 1;
                let first = next[o];
                next[o] += count;
                if op % 5 != 2 {
                    sent[o].push((first, count));
                }
                match op % 5 {
                    0 => deliver(&mut sequences, &origins[o], first, count, tick, &mut delivered[o], &mut missed[o]),
                    1 => {} // lost on the way
                    _ => {
                        unreadable[o] += 1;
                        missed[o] += sequences.lost("c", &origins[o], first, count, tick);
                    }
                }
            }
            // A replay of a frame sent before.
            3 => {
                if let Some(&(first, count)) = sent[o].get(usize::from(b) % sent[o].len().max(1)) {
                    deliver(&mut sequences, &origins[o], first, count, tick, &mut delivered[o], &mut missed[o]);
                }
            }
            // A forger's frame.
            _ => {
                forged = true;
                let origin = if b % 2 == 0 { origins[o] } else { [b; 16] };
                let first = u64::from(b).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let verdict = sequences.check("c", &origin, first.min(u64::MAX - 8), 8, tick);
                assert!(verdict.missed <= WINDOW);
            }
        }
    }
    for o in 0..ORIGINS {
        let first = next[o];
        deliver(&mut sequences, &origins[o], first, 1, tick + 1, &mut delivered[o], &mut missed[o]);
        if forged || unreadable[o] > 64 {
            continue;
        }
        // Exact: every number up to the last is delivered once or counted missed.
        let got = delivered[o].iter().filter(|&&d| d).count() as u64;
        assert_eq!(got + missed[o], first, "origin {o}: delivered {got} + missed {} != sent {first}", missed[o]);
    }
});

/// Hands a frame to the tracker and records, per sequence number, what was delivered;
/// panics on a number delivered twice.
fn deliver(
    sequences: &mut Sequences,
    origin: &[u8; 16],
    first: u64,
    count: u64,
    tick: u64,
    delivered: &mut Vec<bool>,
    missed: &mut u64,
) {
    let verdict = sequences.check("c", origin, first, count, tick);
    if verdict.implausible {
        return;
    }
    *missed += verdict.missed;
    for seq in first + verdict.duplicates..first + count {
        let at = (seq - 1) as usize;
        if delivered.len() <= at {
            delivered.resize(at + 1, false);
        }
        assert!(!delivered[at], "sequence {seq} delivered twice");
        delivered[at] = true;
    }
}
