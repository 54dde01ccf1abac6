//! Copy-on-write subscriber snapshots whose writes copy `O(log n)`, not `O(n)`.
//!
//! # Algorithm
//!
//! A channel's subscribers form an immutable, persistent radix trie (Bagwell's array-mapped
//! trie, as in Clojure's `PersistentVector`, but sparse): every subscriber gets a *slot*
//! number from a per-channel counter, and the trie is keyed by slot, five bits per level.
//! Nodes are bitmap-compressed: a node stores only its present children (or, in a leaf, its
//! present subscribers) in slot order, and a 32-bit map says which of the 32 positions they
//! occupy. Slots only grow, so iterating the trie visits subscribers in the order they were
//! added (L02).
//!
//! A write (add or remove) copies the one path from the root to the slot's leaf, sharing
//! every other node with the previous version: at most `32 * height` entries are cloned,
//! `height = log32(slots)`, so 100,000 listeners cost three levels. The reader side never
//! changes: a post loads the root once (one `ArcSwap` load, done by the caller) and walks an
//! immutable tree.
//!
//! Finding an item needs no index: the caller's items carry a key (a registration id) that
//! grows with the slot, because the caller assigns both under one lock. So a node's items, and
//! its children's key ranges, are sorted, and [`Trie::remove_by`] descends by binary search
//! (a child's range starts at its leftmost item): `O(log n)` comparisons, no memory per item.
//!
//! Removals leave slot numbers unused; when the counter runs well ahead of the number of
//! subscribers ([`Trie::should_repack`]), the writer rebuilds the trie densely. Each repack
//! costs `O(len)` and needs at least `len / 2` removals since the previous one, so writes stay
//! `O(log n)` amortized, and a small channel with churn is always a single leaf.
//!
//! Memory: a subscriber costs its entry in one leaf; interior nodes add about one pointer per
//! 32 subscribers.

use std::sync::Arc;

const BITS: u32 = 5;
const WIDTH: u64 = 1 << BITS;
const MASK: u64 = WIDTH - 1;

/// One immutable node of a snapshot.
pub(crate) struct Node<T> {
    /// Which of the 32 positions under this node are present.
    bitmap: u32,
    body: Body<T>,
}

enum Body<T> {
    Leaf(Box<[T]>),
    Branch(Box<[Arc<Node<T>>]>),
}

impl<T> Node<T> {
    /// Calls `f` on every item, in slot order.
    pub(crate) fn for_each<F: FnMut(&T)>(&self, f: &mut F) {
        self.for_each_leaf(&mut |items: &[T]| items.iter().for_each(&mut *f));
    }

    /// Calls `f` on every leaf's items, in slot order: the caller's per-item loop stays in
    /// the caller, where it is inlined (one call per 32 items, not one per item). Recursion
    /// depth is the trie's height (at most 13 for 64-bit slots).
    #[inline]
    pub(crate) fn for_each_leaf<F: FnMut(&[T])>(&self, f: &mut F) {
        match &self.body {
            Body::Leaf(items) => f(items),
            Body::Branch(children) => children.iter().for_each(|child| child.for_each_leaf(f)),
        }
    }
}

/// The writer's view of one channel's subscribers: the current root plus what is needed to
/// produce the next version. Lives behind the channel's registration lock; the post path only
/// ever sees [`Trie::root`] through the channel's `ArcSwapOption`.
pub(crate) struct Trie<T> {
    root: Option<Arc<Node<T>>>,
    /// Levels above the leaves.
    height: u32,
    /// The slot the next push takes.
    next: u64,
    len: usize,
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Trie {
            root: None,
            height: 0,
            next: 0,
            len: 0,
        }
    }
}

impl<T: Clone> Trie<T> {
    /// The current version, to be published to readers.
    pub(crate) fn root(&self) -> Option<Arc<Node<T>>> {
        self.root.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `item` after every present item; returns its slot.
    pub(crate) fn push(&mut self, item: T) -> u64 {
        let slot = self.next;
        while slot >> (BITS * (self.height + 1)) != 0 {
            // The trie is full at this height: the old root becomes child 0 of a new one.
            self.root = self.root.take().map(|old| {
                Arc::new(Node {
                    bitmap: 1,
                    body: Body::Branch(Box::new([old])),
                })
            });
            self.height += 1;
        }
        self.root = Some(Arc::new(insert(
            self.root.as_deref(),
            self.height,
            slot,
            item,
        )));
        self.next += 1;
        self.len += 1;
        slot
    }

    /// The item whose key is `key`, if any. Keys (`key_of`) must grow with the slots, that
    /// is, with the order of [`Trie::push`]es (see the module docs).
    pub(crate) fn get_by<K: Ord>(&self, key: K, key_of: impl Fn(&T) -> K) -> Option<&T> {
        let mut node = self.root.as_deref()?;
        loop {
            match &node.body {
                Body::Leaf(items) => {
                    let at = items.binary_search_by(|item| key_of(item).cmp(&key)).ok()?;
                    return Some(&items[at]);
                }
                Body::Branch(children) => {
                    node = &children[child_of(children, &key, &key_of)?];
                }
            }
        }
    }

    /// Removes the item whose key is `key` if `accept` takes it; returns it. Keys as for
    /// [`Trie::get_by`].
    pub(crate) fn remove_by<K: Ord>(
        &mut self,
        key: K,
        key_of: impl Fn(&T) -> K,
        accept: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let root = self.root.as_deref()?;
        let (node, item) = remove_by(root, &key, &key_of, &accept)?;
        self.root = node.map(Arc::new);
        self.len -= 1;
        if self.len == 0 {
            *self = Trie::default();
        }
        Some(item)
    }

    /// Whether enough slots went unused that a dense rebuild pays for itself (see the module
    /// docs for the amortization argument).
    pub(crate) fn should_repack(&self) -> bool {
        self.next > WIDTH && self.next > 2 * self.len as u64
    }

    /// Rebuilds the trie densely, keeping the order. Builds the levels bottom-up, each node
    /// once: `O(len)`.
    pub(crate) fn repack(&mut self) {
        let mut items = Vec::with_capacity(self.len);
        if let Some(root) = &self.root {
            root.for_each(&mut |item: &T| items.push(item.clone()));
        }
        *self = Trie::dense(items);
    }

    /// A trie of `items` at slots `0..items.len()`.
    fn dense(items: Vec<T>) -> Self {
        let len = items.len();
        let mut level = nodes(items, Body::Leaf);
        let mut height = 0;
        while level.len() > 1 {
            level = nodes(level, Body::Branch);
            height += 1;
        }
        Trie {
            root: level.pop(),
            height,
            next: len as u64,
            len,
        }
    }
}

/// Full nodes of up to 32 of `items` each, in order.
fn nodes<T, U>(items: Vec<U>, body: impl Fn(Box<[U]>) -> Body<T>) -> Vec<Arc<Node<T>>> {
    let mut items = items.into_iter();
    let mut nodes = Vec::with_capacity(items.len().div_ceil(WIDTH as usize));
    loop {
        let chunk: Box<[U]> = items.by_ref().take(WIDTH as usize).collect();
        if chunk.is_empty() {
            return nodes;
        }
        nodes.push(Arc::new(Node {
            bitmap: u32::MAX >> (WIDTH as usize - chunk.len()),
            body: body(chunk),
        }));
    }
}

/// Where the child (or item) at position `bit` sits among a node's present ones.
fn rank(bitmap: u32, bit: u32) -> usize {
    (bitmap & (bit - 1)).count_ones() as usize
}

fn position(slot: u64, height: u32) -> u32 {
    1 << ((slot >> (BITS * height)) & MASK)
}

// The copies below allocate their exact size once: no growth, no shrink (a write's cost is
// mostly the allocator's and the reference counts').

/// A copy of `items` with `item` inserted at `at`.
fn inserted<T: Clone>(items: &[T], at: usize, item: T) -> Box<[T]> {
    let mut copy = Vec::with_capacity(items.len() + 1);
    copy.extend_from_slice(&items[..at]);
    copy.push(item);
    copy.extend_from_slice(&items[at..]);
    copy.into_boxed_slice()
}

/// A copy of `items` with the one at `at` replaced by `item`.
fn replaced<T: Clone>(items: &[T], at: usize, item: T) -> Box<[T]> {
    let mut copy = Vec::with_capacity(items.len());
    copy.extend_from_slice(&items[..at]);
    copy.push(item);
    copy.extend_from_slice(&items[at + 1..]);
    copy.into_boxed_slice()
}

/// A copy of `items` without the one at `at`.
fn removed<T: Clone>(items: &[T], at: usize) -> Box<[T]> {
    let mut copy = Vec::with_capacity(items.len() - 1);
    copy.extend_from_slice(&items[..at]);
    copy.extend_from_slice(&items[at + 1..]);
    copy.into_boxed_slice()
}

/// Returns a copy of `node` (or a fresh node) with `item` at `slot`.
fn insert<T: Clone>(node: Option<&Node<T>>, height: u32, slot: u64, item: T) -> Node<T> {
    let bit = position(slot, height);
    let bitmap = node.map_or(0, |n| n.bitmap);
    let at = rank(bitmap, bit);
    debug_assert!(bitmap & bit == 0 || height > 0, "slot {slot} is taken");
    let body = match (node.map(|n| &n.body), height) {
        (None, 0) => Body::Leaf(Box::new([item])),
        (Some(Body::Leaf(items)), _) => Body::Leaf(inserted(items, at, item)),
        (None, _) => Body::Branch(Box::new([Arc::new(insert(None, height - 1, slot, item))])),
        (Some(Body::Branch(children)), _) => {
            if bitmap & bit != 0 {
                let child = Arc::new(insert(Some(&children[at]), height - 1, slot, item));
                Body::Branch(replaced(children, at, child))
            } else {
                let child = Arc::new(insert(None, height - 1, slot, item));
                Body::Branch(inserted(children, at, child))
            }
        }
    };
    Node {
        bitmap: bitmap | bit,
        body,
    }
}

/// The `n`th (from 0) set bit of `bitmap`, alone.
fn nth_bit(bitmap: u32, n: usize) -> u32 {
    let mut rest = bitmap;
    for _ in 0..n {
        rest &= rest - 1;
    }
    rest & rest.wrapping_neg()
}

/// The first item under `node`: the smallest key.
fn first<T>(node: &Node<T>) -> &T {
    match &node.body {
        Body::Leaf(items) => &items[0],
        Body::Branch(children) => first(&children[0]),
    }
}

/// Which of `children` holds `key`, if any may: the last whose first key is not above it.
fn child_of<T, K: Ord>(
    children: &[Arc<Node<T>>],
    key: &K,
    key_of: impl Fn(&T) -> K,
) -> Option<usize> {
    children
        .partition_point(|child| key_of(first(child)) <= *key)
        .checked_sub(1)
}

/// Returns a copy of `node` without the item keyed `key` (`None` when that leaves it empty)
/// and the removed item; `None` when there is no such item or `accept` refuses it.
fn remove_by<T: Clone, K: Ord>(
    node: &Node<T>,
    key: &K,
    key_of: &impl Fn(&T) -> K,
    accept: &impl Fn(&T) -> bool,
) -> Option<(Option<Node<T>>, T)> {
    match &node.body {
        Body::Leaf(items) => {
            let at = items.binary_search_by(|item| key_of(item).cmp(key)).ok()?;
            if !accept(&items[at]) {
                return None;
            }
            let bitmap = node.bitmap & !nth_bit(node.bitmap, at);
            let rest = (bitmap != 0).then(|| Node {
                bitmap,
                body: Body::Leaf(removed(items, at)),
            });
            Some((rest, items[at].clone()))
        }
        Body::Branch(children) => {
            let at = child_of(children, key, key_of)?;
            let (child, item) = remove_by(&children[at], key, key_of, accept)?;
            let rest = match child {
                Some(child) => Some(Node {
                    bitmap: node.bitmap,
                    body: Body::Branch(replaced(children, at, Arc::new(child))),
                }),
                None => {
                    let bitmap = node.bitmap & !nth_bit(node.bitmap, at);
                    (bitmap != 0).then(|| Node {
                        bitmap,
                        body: Body::Branch(removed(children, at)),
                    })
                }
            };
            Some((rest, item))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(trie: &Trie<u64>) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(root) = trie.root() {
            root.for_each(&mut |x: &u64| out.push(*x));
        }
        out
    }

    #[test]
    fn push_keeps_order_across_levels() {
        let mut trie = Trie::default();
        for i in 0..5000u64 {
            assert_eq!(trie.push(i), i);
        }
        assert_eq!(items(&trie), (0..5000).collect::<Vec<_>>());
        assert_eq!(trie.height, 2);
    }

    #[test]
    fn remove_any_slot_and_prune() {
        let mut trie = Trie::default();
        for i in 0..2000u64 {
            trie.push(i);
        }
        for i in (0..2000u64).filter(|i| i % 3 != 0) {
            assert_eq!(trie.remove_by(i, |x| *x, |_| true), Some(i));
            assert_eq!(trie.remove_by(i, |x| *x, |_| true), None);
            assert_eq!(trie.get_by(i, |x| *x), None);
        }
        assert_eq!(
            items(&trie),
            (0..2000).filter(|i| i % 3 == 0).collect::<Vec<_>>()
        );
        for i in (0..2000u64).filter(|i| i % 3 == 0) {
            assert_eq!(trie.get_by(i, |x| *x), Some(&i));
            trie.remove_by(i, |x| *x, |_| true);
        }
        assert!(trie.root().is_none());
        assert_eq!(trie.len(), 0);
    }

    #[test]
    fn old_versions_are_unchanged() {
        let mut trie = Trie::default();
        for i in 0..100u64 {
            trie.push(i);
        }
        let before = trie.root().unwrap();
        assert_eq!(trie.remove_by(50, |x| *x, |_| false), None);
        trie.remove_by(50, |x| *x, |_| true);
        trie.push(100);
        let mut seen = Vec::new();
        before.for_each(&mut |x: &u64| seen.push(*x));
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn repack_is_dense_and_ordered() {
        let mut trie = Trie::default();
        for i in 0..100u64 {
            trie.push(i);
        }
        for i in 0..90u64 {
            trie.remove_by(i, |x| *x, |_| true);
        }
        assert!(trie.should_repack());
        trie.repack();
        assert_eq!(trie.next, 10);
        assert_eq!(trie.height, 0);
        assert_eq!(items(&trie), (90..100).collect::<Vec<_>>());
    }
}
