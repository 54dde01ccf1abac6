//! Copy-on-write subscriber snapshots whose writes copy `O(log n)`, not `O(n)`.
//!
//! # Algorithm
//!
//! A channel's subscribers form an immutable, persistent radix trie (Bagwell's array-mapped
//! trie, as in Clojure's `PersistentVector`, but sparse): every subscriber gets a *slot*
//! number from a per-channel counter, and the trie is keyed by slot, five bits per level.
//! Nodes are compressed: a node stores only its present children (or, in a leaf, its present
//! subscribers) in slot order; a branch's child records its position among the 32 (`Child`),
//! a leaf's items need none. Slots only grow, so iterating the trie visits subscribers in the
//! order they were added (L02), and a push goes to the end of the last leaf, or to a new last
//! child: no node needs a map of its occupied positions.
//!
//! A write (add or remove) copies the one path from the root to the slot's leaf, sharing
//! every other node with the previous version: at most `32 * height` entries are cloned,
//! `height = log32(slots)`, so 100,000 listeners cost three levels. The reader side never
//! changes: a post borrows the root once (done by the caller) and walks an
//! immutable tree.
//!
//! Finding an item needs no index: the caller's items carry a key ([`Keyed`], a registration
//! id) that grows with the slot, because the caller assigns both under one lock. So a node's
//! items, and its children's key ranges, are sorted, and [`Trie::removed`] descends by binary
//! search over the keys a branch keeps of its children's first items (a lower bound that stays
//! one, see `Child`): `O(log n)` comparisons, no memory per item, and no child visited but
//! the one descended into. In the leaf it scans (`index_in_leaf`): an item's key is behind its
//! pointer (the registry's receiver holds its id), so each probe of a binary search waited
//! for the last one's cache miss, five in a row on a large channel removed in random order;
//! a scan's loads do not depend on each other, and the processor has them in flight at once.
//!
//! Removals leave slot numbers unused; when the counter runs well ahead of the number of
//! subscribers (`Trie::should_repack`), a removal rebuilds the trie densely. Each repack
//! costs `O(len)` and needs at least `len / 2` removals since the previous one, so writes stay
//! `O(log n)` amortized, and a small channel with churn is always a single leaf.
//!
//! Memory: a subscriber costs its entry in one leaf; a leaf adds its node (40 bytes: two
//! counts and three words) and interior nodes three words (a pointer, a first key and a
//! position) per 32 subscribers. A node is three words (a leaf's `Vec`; the enum's tag sits in
//! the `Vec`'s capacity, which never uses its top bit; a test checks that the compiler does
//! so for two-word items). A [`Trie`] value holds its root node
//! inline, and a leaf with one item holds it inline too, so the trie of a channel with one
//! subscriber allocates nothing of its own: it is part of its owner's allocation (the
//! registry's published group).

use std::sync::Arc;

/// An item's key: it must grow with the order of [`Trie::pushed`] (see the module docs).
pub(crate) trait Keyed {
    fn key(&self) -> u64;
}

impl Keyed for u64 {
    fn key(&self) -> u64 {
        *self
    }
}

/// A child of a branch, with the key of its first item when it was made: a lower bound of its
/// keys that stays one (items leave a child; they join only the last), so a search compares
/// keys in the branch and does not descend each child it probes. And its position among the
/// 32 under the branch: a push checks whether the last child covers its slot.
#[derive(Clone)]
struct Child<T> {
    first: u64,
    node: Arc<Node<T>>,
    position: u8,
}

impl<T: Keyed> Child<T> {
    fn new(position: u32, node: Node<T>) -> Self {
        Child {
            first: first(&node).key(),
            node: Arc::new(node),
            position: position as u8,
        }
    }
}

const BITS: u32 = 5;
const WIDTH: u64 = 1 << BITS;
const MASK: u64 = WIDTH - 1;

/// One immutable node: three words for items of two words (the registry's entries), the
/// enum's tag kept in the `Vec`'s capacity. Nodes hold no bitmap: a leaf's items and a
/// branch's children are in slot order, and a push only ever appends (see `insert`).
#[derive(Clone)]
enum Node<T> {
    /// A leaf with one item, held inline: a channel with one receiver has no leaf allocation.
    One(T),
    /// A leaf with two or more items. A `Vec`: copies have their exact size; a leaf made in
    /// place (the registry's spare) gets room for 32 items with its second, so it fills
    /// without reallocating; and a leaf changed in place keeps at most four times its items'
    /// room.
    Leaf(Vec<T>),
    /// Present children, in slot order; never empty.
    Branch(Box<[Child<T>]>),
}

impl<T> Node<T> {
    /// Calls `f` on every leaf's items, in slot order: the caller's per-item loop stays in
    /// the caller, where it is inlined (one call per 32 items, not one per item). Recursion
    /// depth is the trie's height (at most 13 for 64-bit slots).
    #[inline]
    fn for_each_leaf<F: FnMut(&[T])>(&self, f: &mut F) {
        match self {
            Node::One(item) => f(std::slice::from_ref(item)),
            Node::Leaf(items) => f(items),
            Node::Branch(children) => children
                .iter()
                .for_each(|child| child.node.for_each_leaf(f)),
        }
    }
}

/// One version of a channel's subscribers, never empty: its root node, inline, and what is
/// needed to produce the next version. Immutable: a write returns a new version that shares
/// all but one path with this one. The registry publishes versions (inside its snapshot) and
/// the post path walks them.
pub(crate) struct Trie<T> {
    root: Node<T>,
    /// The slot the next push takes. The height (levels above the leaves) follows from it:
    /// [`height_for`].
    next: u64,
    len: usize,
}

/// The levels above the leaves of a trie whose slots are below `next` (at least 1): the root
/// only ever grows, when a push needs a slot beyond it, and a repack rebuilds it for `len`
/// slots, so this is the height in both cases.
fn height_for(next: u64) -> u32 {
    // The last slot's significant bits, five per level: no loop (this is on every push).
    let bits = u64::BITS - next.saturating_sub(1).leading_zeros();
    bits.saturating_sub(1) / BITS
}

impl<T> Trie<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` on every item, in slot order.
    pub(crate) fn for_each<F: FnMut(&T)>(&self, f: &mut F) {
        self.for_each_leaf(&mut |items: &[T]| items.iter().for_each(&mut *f));
    }

    /// Calls `f` on every leaf's items, in slot order (see `Node::for_each_leaf`).
    #[inline]
    pub(crate) fn for_each_leaf<F: FnMut(&[T])>(&self, f: &mut F) {
        self.root.for_each_leaf(f);
    }

    /// Every item, when the trie is one leaf (up to 32 items): no walk needed.
    #[inline]
    pub(crate) fn as_leaf(&self) -> Option<&[T]> {
        match &self.root {
            Node::One(item) => Some(std::slice::from_ref(item)),
            Node::Leaf(items) => Some(items),
            Node::Branch(_) => None,
        }
    }
}

impl<T: Clone + Keyed> Trie<T> {
    /// A trie of `item` alone, at slot 0.
    pub(crate) fn new(item: T) -> Self {
        Trie {
            root: Node::One(item),
            next: 1,
            len: 1,
        }
    }

    /// A new version with `item` appended after every present item.
    pub(crate) fn pushed(&self, item: T) -> Self {
        let slot = self.next;
        let (before, height) = (height_for(slot), height_for(slot + 1));
        let root = if height == before {
            insert(Some(&self.root), height, slot, item)
        } else {
            // The trie is full at this height: the old root becomes child 0 of a new one.
            let mut grown = self.root.clone();
            for _ in before..height {
                grown = Node::Branch(Box::new([Child::new(0, grown)]));
            }
            insert(Some(&grown), height, slot, item)
        };
        Trie {
            root,
            next: slot + 1,
            len: self.len + 1,
        }
    }

    /// The item whose key ([`Keyed`]) is `key`, if any.
    pub(crate) fn get(&self, key: u64) -> Option<&T> {
        Some(self.find(key)?.1)
    }

    /// A new version without the item whose key is `key`, if `accept` takes it (`None` when
    /// that leaves it empty), and the item; rebuilt densely when it became sparse (see
    /// [`Trie::should_repack`]). `None` when there is no such item or `accept` refuses it.
    pub(crate) fn removed(
        &self,
        key: u64,
        accept: impl Fn(&T) -> bool,
    ) -> Option<(Option<Self>, T)> {
        let (root, item) = remove_by(&self.root, key, &accept)?;
        let rest = root.map(|root| Trie {
            root,
            next: self.next,
            len: self.len - 1,
        });
        Some((rest.map(Trie::repacked_if_sparse), item))
    }

    /// Whether enough slots went unused that a dense rebuild pays for itself (see the module
    /// docs for the amortization argument).
    fn should_repack(&self) -> bool {
        self.next > WIDTH && self.next > 2 * self.len as u64
    }

    fn repacked_if_sparse(self) -> Self {
        if !self.should_repack() {
            return self;
        }
        let mut items = Vec::with_capacity(self.len);
        self.for_each(&mut |item: &T| items.push(item.clone()));
        Trie::dense(items)
    }

    /// A trie of `items` (at least one) at slots `0..items.len()`. Builds the levels
    /// bottom-up, each node once: `O(len)`.
    fn dense(items: Vec<T>) -> Self {
        let len = items.len();
        let mut level = nodes(items, leaf);
        while level.len() > 1 {
            level = nodes(level, |children: Vec<Arc<Node<T>>>| {
                let children = children.into_iter().enumerate();
                Node::Branch(
                    children
                        .map(|(position, node)| Child {
                            first: first(&node).key(),
                            node,
                            position: position as u8,
                        })
                        .collect(),
                )
            });
        }
        let root = match level.pop().map(Arc::try_unwrap) {
            Some(Ok(root)) => root,
            Some(Err(root)) => (*root).clone(),
            None => unreachable!("a trie is never empty"),
        };
        Trie {
            root,
            next: len as u64,
            len,
        }
    }
}

/// A leaf of `items` (at least one): inline when there is one.
fn leaf<T>(mut items: Vec<T>) -> Node<T> {
    match (items.len(), items.pop()) {
        (1, Some(item)) => Node::One(item),
        (_, last) => {
            items.extend(last);
            Node::Leaf(items)
        }
    }
}

/// Full nodes of up to 32 of `items` each, in order.
fn nodes<T, U>(items: Vec<U>, node: impl Fn(Vec<U>) -> Node<T>) -> Vec<Arc<Node<T>>> {
    let mut items = items.into_iter();
    let mut nodes = Vec::with_capacity(items.len().div_ceil(WIDTH as usize));
    loop {
        let chunk: Vec<U> = items.by_ref().take(WIDTH as usize).collect();
        if chunk.is_empty() {
            return nodes;
        }
        nodes.push(Arc::new(node(chunk)));
    }
}

/// The position (0 to 31) of `slot` among the 32 under a node at `height`.
fn position(slot: u64, height: u32) -> u32 {
    ((slot >> (BITS * height)) & MASK) as u32
}

// The copies below allocate their exact size once: no growth, no shrink (a write's cost is
// mostly the allocator's and the reference counts').

/// A copy of `items` with `item` inserted at `at`.
fn inserted<T: Clone>(items: &[T], at: usize, item: T) -> Vec<T> {
    let mut copy = Vec::with_capacity(items.len() + 1);
    copy.extend_from_slice(&items[..at]);
    copy.push(item);
    copy.extend_from_slice(&items[at..]);
    copy
}

/// A copy of `items` with the one at `at` replaced by `item`.
fn replaced<T: Clone>(items: &[T], at: usize, item: T) -> Vec<T> {
    let mut copy = Vec::with_capacity(items.len());
    copy.extend_from_slice(&items[..at]);
    copy.push(item);
    copy.extend_from_slice(&items[at + 1..]);
    copy
}

/// A copy of `items` without the one at `at`.
fn removed<T: Clone>(items: &[T], at: usize) -> Vec<T> {
    let mut copy = Vec::with_capacity(items.len() - 1);
    copy.extend_from_slice(&items[..at]);
    copy.extend_from_slice(&items[at + 1..]);
    copy
}

/// Returns a copy of `node` (or a fresh node) with `item` at `slot`, which is above every
/// slot in the trie: the item goes last in its leaf, and its leaf is the last child of each
/// branch on the way, or a new last child.
fn insert<T: Clone + Keyed>(node: Option<&Node<T>>, height: u32, slot: u64, item: T) -> Node<T> {
    let position = position(slot, height);
    let Some(node) = node else {
        return match height {
            0 => Node::One(item),
            _ => Node::Branch(Box::new([Child::new(
                position,
                insert(None, height - 1, slot, item),
            )])),
        };
    };
    let children = match node {
        Node::One(present) => return Node::Leaf(vec![present.clone(), item]),
        Node::Leaf(items) => return Node::Leaf(inserted(items, items.len(), item)),
        Node::Branch(children) => children,
    };
    let last = children.len() - 1;
    let children = if u32::from(children[last].position) == position {
        let child = Child {
            node: Arc::new(insert(Some(&children[last].node), height - 1, slot, item)),
            ..children[last]
        };
        replaced(children, last, child)
    } else {
        debug_assert!(u32::from(children[last].position) < position);
        let child = Child::new(position, insert(None, height - 1, slot, item));
        inserted(children, children.len(), child)
    };
    Node::Branch(children.into_boxed_slice())
}

/// The first item under `node`: the smallest key.
fn first<T>(node: &Node<T>) -> &T {
    match node {
        Node::One(item) => item,
        Node::Leaf(items) => &items[0],
        Node::Branch(children) => first(&children[0].node),
    }
}

/// Which of `children` holds `key`, if any may: the last whose first key is not above it.
fn child_of<T>(children: &[Child<T>], key: u64) -> Option<usize> {
    children
        .partition_point(|child| child.first <= key)
        .checked_sub(1)
}

/// Where the item keyed `key` is among a leaf's `items` (at most 32), if there.
///
/// A scan, not a binary search, though the keys are sorted: see the module docs. The loop
/// stops at the first key not below `key`, and its branch predicts "go on", so the loads
/// ahead are issued before the comparisons behind them resolve. Measured on 100,000
/// listeners removed in random order (`benches/churn.rs`, AMD EPYC, runs alternated): 130 –
/// 154 ms by binary search, 79 – 87 ms scanning; in add order, where the items are cached, no
/// slower (53 – 59 ms, 48 – 51).
fn index_in_leaf<T: Keyed>(items: &[T], key: u64) -> Option<usize> {
    let at = items.iter().position(|item| item.key() >= key)?;
    (items[at].key() == key).then_some(at)
}

/// Returns a copy of `node` without the item keyed `key` (`None` when that leaves it empty)
/// and the removed item; `None` when there is no such item or `accept` refuses it.
fn remove_by<T: Clone + Keyed>(
    node: &Node<T>,
    key: u64,
    accept: &impl Fn(&T) -> bool,
) -> Option<(Option<Node<T>>, T)> {
    match node {
        Node::One(item) => (item.key() == key && accept(item)).then(|| (None, item.clone())),
        Node::Leaf(items) => {
            let at = index_in_leaf(items, key)?;
            if !accept(&items[at]) {
                return None;
            }
            // A leaf has at least two items: one is left.
            Some((Some(leaf(removed(items, at))), items[at].clone()))
        }
        Node::Branch(children) => {
            let at = child_of(children, key)?;
            let (child, item) = remove_by(&children[at].node, key, accept)?;
            let rest = match child {
                Some(child) => {
                    let child = Child {
                        node: Arc::new(child),
                        ..children[at]
                    };
                    Some(Node::Branch(
                        replaced(children, at, child).into_boxed_slice(),
                    ))
                }
                None => (children.len() > 1)
                    .then(|| Node::Branch(removed(children, at).into_boxed_slice())),
            };
            Some((rest, item))
        }
    }
}

// In place: the same changes made to a version that no reader can see (the registry's spare,
// see `local::registry`), so they copy nothing that is not shared. `Arc::make_mut` copies a
// node only while another version still shares it; once the two versions have diverged, a
// write touches no reference count but the item's own.

impl<T: Clone + Keyed> Trie<T> {
    /// [`Trie::pushed`], in place.
    pub(crate) fn push(&mut self, item: T) {
        let slot = self.next;
        let (before, height) = (height_for(slot), height_for(slot + 1));
        for _ in before..height {
            let old = std::mem::replace(&mut self.root, placeholder());
            self.root = Node::Branch(Box::new([Child::new(0, old)]));
        }
        insert_mut(&mut self.root, height, slot, item);
        self.next = slot + 1;
        self.len += 1;
    }

    /// [`Trie::removed`], in place: the removed item, and whether the trie is now empty
    /// (then it holds nothing the caller may use but must drop). `None`, and no change, when
    /// there is no such item or `accept` refuses it.
    ///
    /// `path` is where the item is, if known: a guess, checked (one key comparison) before
    /// it is used, such as the item's path in another version of the same shape (the
    /// registry's spare and published versions are changed alike); on success it is set to
    /// where the item was. One search finds the item, checks it and removes it.
    pub(crate) fn remove(
        &mut self,
        key: u64,
        accept: impl Fn(&T) -> bool,
        path: &mut Option<Path>,
    ) -> Option<(T, bool)> {
        let guess = path.and_then(|path| Some((path, self.at(&path)?)));
        let (found, item) = match guess.filter(|(_, item)| item.key() == key) {
            Some(found) => found,
            None => self.find(key)?,
        };
        if !accept(item) {
            return None;
        }
        *path = Some(found);
        let (item, empty) = remove_at(&mut self.root, found.steps());
        self.len -= 1;
        if !empty && self.should_repack() {
            let mut items = Vec::with_capacity(self.len);
            self.for_each(&mut |item: &T| items.push(item.clone()));
            *self = Trie::dense(items);
        }
        Some((item, empty))
    }

    /// Where the item keyed `key` is, and the item, if there is one.
    fn find(&self, key: u64) -> Option<(Path, &T)> {
        let mut path = Path {
            steps: [0; MAX_STEPS],
            len: 0,
        };
        let mut node = &self.root;
        loop {
            let at = match node {
                Node::One(item) => return (item.key() == key).then_some((path, item)),
                Node::Leaf(items) => index_in_leaf(items, key)?,
                Node::Branch(children) => child_of(children, key)?,
            };
            path.steps[usize::from(path.len)] = at as u8;
            path.len += 1;
            match node {
                Node::Branch(children) => node = &children[at].node,
                Node::Leaf(items) => return Some((path, &items[at])),
                Node::One(_) => unreachable!("returned above"),
            }
        }
    }

    /// The item at `path`, if the trie has one there.
    fn at(&self, path: &Path) -> Option<&T> {
        let mut node = &self.root;
        for &step in path.steps() {
            match node {
                Node::Branch(children) => node = &children.get(usize::from(step))?.node,
                Node::Leaf(items) => return items.get(usize::from(step)),
                Node::One(_) => return None,
            }
        }
        match node {
            Node::One(item) => Some(item),
            _ => None,
        }
    }
}

/// The most steps from a root to an item: 13 branches (for 64-bit slots) and a leaf.
const MAX_STEPS: usize = 14;

/// Where an item is in a trie: from the root, the index of the child taken at each branch,
/// then the item's index in its leaf (none for a leaf of one item). Positions in a version
/// of the trie; another version of the same shape has the item at the same path.
#[derive(Clone, Copy)]
pub(crate) struct Path {
    steps: [u8; MAX_STEPS],
    len: u8,
}

impl Path {
    fn steps(&self) -> &[u8] {
        &self.steps[..usize::from(self.len)]
    }
}

/// A node to leave behind while its owner is rebuilt: allocates nothing.
fn placeholder<T>() -> Node<T> {
    Node::Leaf(Vec::new())
}

/// `items` with `item` inserted at `at`, reallocated to its exact size.
fn insert_into<T>(items: &mut Box<[T]>, at: usize, item: T) {
    let mut list = std::mem::take(items).into_vec();
    list.reserve_exact(1);
    list.insert(at, item);
    *items = list.into_boxed_slice();
}

/// `items` without the one at `at`, which is returned.
fn remove_from<T>(items: &mut Box<[T]>, at: usize) -> T {
    let mut list = std::mem::take(items).into_vec();
    let item = list.remove(at);
    *items = list.into_boxed_slice();
    item
}

/// [`insert`], in place.
fn insert_mut<T: Clone + Keyed>(node: &mut Node<T>, height: u32, slot: u64, item: T) {
    let position = position(slot, height);
    match node {
        Node::One(_) => {
            let Node::One(present) = std::mem::replace(node, placeholder()) else {
                unreachable!("matched above")
            };
            // Room for a full leaf at once: a leaf changed in place grows by pushes, and
            // growing it by doubling would reallocate four times per 32 items.
            let mut items = Vec::with_capacity(WIDTH as usize);
            items.extend([present, item]);
            *node = Node::Leaf(items);
        }
        Node::Leaf(items) => items.push(item),
        Node::Branch(children) => {
            let last = children.len() - 1;
            if u32::from(children[last].position) == position {
                insert_mut(
                    Arc::make_mut(&mut children[last].node),
                    height - 1,
                    slot,
                    item,
                );
            } else {
                let child = Child::new(position, insert(None, height - 1, slot, item));
                insert_into(children, children.len(), child);
            }
        }
    }
}

/// [`remove_by`], in place, for an item known to be at `steps` (see [`Path`]): the item, and
/// whether `node` is now empty (and to be dropped by its parent).
fn remove_at<T: Clone>(node: &mut Node<T>, steps: &[u8]) -> (T, bool) {
    match node {
        Node::One(_) => match std::mem::replace(node, placeholder()) {
            Node::One(item) => (item, true),
            _ => unreachable!("matched above"),
        },
        Node::Leaf(items) => {
            let item = items.remove(usize::from(steps[0]));
            if items.len() == 1 {
                *node = leaf(std::mem::take(items));
            } else if items.len() * 4 < items.capacity() {
                items.shrink_to_fit();
            }
            (item, false)
        }
        Node::Branch(children) => {
            let at = usize::from(steps[0]);
            let (item, empty) = remove_at(Arc::make_mut(&mut children[at].node), &steps[1..]);
            if empty {
                drop(remove_from(children, at));
            }
            (item, children.is_empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(trie: Option<&Trie<u64>>) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(trie) = trie {
            trie.for_each(&mut |x: &u64| out.push(*x));
        }
        out
    }

    /// A trie of `0..n` (n >= 1), pushed one by one.
    fn pushed(n: u64) -> Trie<u64> {
        (1..n).fold(Trie::new(0), |trie, i| trie.pushed(i))
    }

    /// Removes `key`; the trie left, and whether it was there.
    fn remove(trie: Option<Trie<u64>>, key: u64) -> (Option<Trie<u64>>, bool) {
        match trie.as_ref().and_then(|t| t.removed(key, |_| true)) {
            Some((rest, item)) => {
                assert_eq!(item, key);
                (rest, true)
            }
            None => (trie, false),
        }
    }

    /// The memory figures of the module docs: a node of two-word items is three words.
    #[test]
    fn nodes_are_three_words() {
        assert_eq!(std::mem::size_of::<Node<(u64, u64)>>(), 24);
        assert_eq!(std::mem::size_of::<Child<(u64, u64)>>(), 24);
    }

    #[test]
    fn heights_follow_the_last_slot() {
        for (next, height) in [(0, 0), (1, 0), (32, 0), (33, 1), (1024, 1), (1025, 2)] {
            assert_eq!(height_for(next), height, "next = {next}");
        }
        assert_eq!(height_for(u64::MAX), 12);
    }

    #[test]
    fn push_keeps_order_across_levels() {
        let trie = pushed(5000);
        assert_eq!(items(Some(&trie)), (0..5000).collect::<Vec<_>>());
        assert_eq!(height_for(trie.next), 2);
        assert!(matches!(pushed(1).root, Node::One(_)));
        assert!(matches!(pushed(32).root, Node::Leaf(_)));
        assert!(matches!(pushed(33).root, Node::Branch(_)));
    }

    #[test]
    fn remove_any_slot_and_prune() {
        let mut trie = Some(pushed(2000));
        for i in (0..2000u64).filter(|i| i % 3 != 0) {
            let removed;
            (trie, removed) = remove(trie, i);
            assert!(removed);
            let again;
            (trie, again) = remove(trie, i);
            assert!(!again);
            assert_eq!(trie.as_ref().unwrap().get(i), None);
        }
        assert_eq!(
            items(trie.as_ref()),
            (0..2000).filter(|i| i % 3 == 0).collect::<Vec<_>>()
        );
        for i in (0..2000u64).filter(|i| i % 3 == 0) {
            assert_eq!(trie.as_ref().unwrap().get(i), Some(&i));
            (trie, _) = remove(trie, i);
        }
        assert!(trie.is_none());
    }

    #[test]
    fn old_versions_are_unchanged() {
        let before = pushed(100);
        assert!(before.removed(50, |_| false).is_none());
        let (after, _) = before.removed(50, |_| true).unwrap();
        let after = after.unwrap().pushed(100);
        assert_eq!(after.len(), 100);
        assert_eq!(items(Some(&before)), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn repack_is_dense_and_ordered() {
        let mut trie = Some(pushed(100));
        for i in 0..90u64 {
            (trie, _) = remove(trie, i);
        }
        // Repacked at 49 items (100 slots), then at 24 (49 slots): one leaf since.
        let trie = trie.unwrap();
        assert_eq!(trie.next, 24);
        assert_eq!(height_for(trie.next), 0);
        assert!(matches!(trie.root, Node::Leaf(_)));
        assert_eq!(items(Some(&trie)), (90..100).collect::<Vec<_>>());
    }

    /// A leaf down to one item holds it inline, and the trie is still keyed right.
    #[test]
    fn one_item_leaves_are_inline() {
        let (trie, _) = pushed(2).removed(0, |_| true).unwrap();
        let trie = trie.unwrap();
        assert!(matches!(trie.root, Node::One(1)));
        assert_eq!(trie.get(1), Some(&1));
        let trie = trie.pushed(2);
        assert_eq!(items(Some(&trie)), [1, 2]);
    }

    /// The in-place writes agree with the copying ones, in every removal order, across
    /// repacks and height changes, and leave the version they were copied from unchanged.
    #[test]
    fn in_place_writes_match_copies() {
        let shared = pushed(40);
        let mut trie = Trie::new(0u64);
        for i in 1..3000 {
            trie.push(i);
        }
        let mut copy = shared.pushed(40);
        copy.push(41);
        assert_eq!(items(Some(&shared)), (0..40).collect::<Vec<_>>());
        assert_eq!(items(Some(&copy)), (0..42).collect::<Vec<_>>());
        let mut order: Vec<u64> = (0..3000).collect();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let mut left: Vec<u64> = (0..3000).collect();
        for (at, key) in order.iter().enumerate() {
            let before = (at % 7 == 0).then(|| trie.removed(*key, |_| true));
            assert!(trie.remove(*key, |_| false, &mut None).is_none());
            // A wrong guess of its path is checked, and not used.
            let mut path = trie
                .find(order[(at + 1) % order.len()])
                .map(|(path, _)| path);
            let (item, empty) = trie.remove(*key, |_| true, &mut path).unwrap();
            assert_eq!((item, empty), (*key, at == 2999));
            left.retain(|x| x != key);
            if let Some(Some((copied, _))) = before {
                assert_eq!(items(copied.as_ref()), left);
            }
            if !empty {
                assert_eq!(items(Some(&trie)), left);
                assert_eq!(trie.len(), left.len());
            }
        }
    }
}
