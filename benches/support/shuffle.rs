//! Fisher-Yates with xorshift64: a fixed, dependency-free shuffle, the same in
//! `benches/churn.rs` and `examples/instr.rs`, so that both churn in the same random order.

/// Shuffles `items` in place; the same `seed` gives the same order.
pub fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
