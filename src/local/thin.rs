//! [`ThinArc`]: an `Arc` as a thin pointer beside a static table of its value's type.
//!
//! A trait object made by hand, for the two things the post path holds by the thousand: a
//! group's receivers ([`Group`](super::post::Group)) and a listener
//! ([`Listener`](super::post::Listener)). An `Arc<dyn Trait>` finds its value by rounding the
//! `Arc`'s header up to the alignment its vtable holds, five instructions per use on the post
//! path; here the pointer is the value's, and a type check or a call is a load from the table.
//!
//! The table is the user's type, whatever else it holds; it gives this module an [`ArcOps`],
//! what cloning, dropping and checking the value take without knowing its type.

#![allow(unsafe_code)]

use std::any::{Any, TypeId};
use std::ptr::NonNull;
use std::sync::Arc;

/// What a [`ThinArc`] does with its value without knowing its type `V`: one per `V`, made by
/// [`ArcOps::of`] in a const.
pub(crate) struct ArcOps {
    /// `TypeId::of::<V>()`: [`ThinArc::get`]'s check.
    type_id: TypeId,
    /// Counts one more reference.
    retain: unsafe fn(NonNull<()>),
    /// Drops one reference.
    release: unsafe fn(NonNull<()>),
    /// The value's pointer, with the right to write it, if the reference is the only one.
    unique: unsafe fn(NonNull<()>) -> Option<NonNull<()>>,
    /// Gives the reference up as an `Arc<dyn Any>`, of the same allocation.
    into_any: unsafe fn(NonNull<()>) -> Arc<dyn Any + Send + Sync>,
}

impl ArcOps {
    /// The operations of an `Arc<V>`.
    pub(crate) const fn of<V: Send + Sync + 'static>() -> ArcOps {
        ArcOps {
            type_id: TypeId::of::<V>(),
            retain: retain::<V>,
            release: release::<V>,
            unique: unique::<V>,
            into_any: into_any::<V>,
        }
    }
}

/// A static table of a [`ThinArc`]'s value type: whatever its user calls through, and the
/// value's [`ArcOps`].
pub(crate) trait Table: Sync + 'static {
    fn arc_ops(&self) -> &ArcOps;
}

/// An `Arc<V>` held as its value's pointer, beside `V`'s table `T` (see the module docs).
pub(crate) struct ThinArc<T: Table> {
    /// From `Arc::into_raw` of an `Arc<V>`, where `table.arc_ops()` is `ArcOps::of::<V>()`.
    value: NonNull<()>,
    table: &'static T,
}

// SAFETY: a `ThinArc` is an `Arc<V>` for a `V: Send + Sync` (`ThinArc::new`'s bound), which
// is then `Send + Sync`; the table is `'static` and `Sync`.
unsafe impl<T: Table> Send for ThinArc<T> {}
// SAFETY: as for `Send`: shared, a `ThinArc` hands out `&V` only.
unsafe impl<T: Table> Sync for ThinArc<T> {}

impl<T: Table> ThinArc<T> {
    /// `value` as a thin pointer beside `table`, which must be `V`'s.
    ///
    /// # Panics
    ///
    /// If `table` is not `V`'s (a bug: the type checks rely on it).
    pub(crate) fn new<V: Send + Sync + 'static>(value: Arc<V>, table: &'static T) -> Self {
        assert!(
            table.arc_ops().type_id == TypeId::of::<V>(),
            "a thin Arc's table is its value type's"
        );
        let value = Arc::into_raw(value).cast_mut().cast::<()>();
        ThinArc {
            value: NonNull::new(value).expect("Arc::into_raw is not null"),
            table,
        }
    }

    /// The value's type's table.
    #[inline(always)]
    pub(crate) fn table(&self) -> &'static T {
        self.table
    }

    /// The value's pointer, for the table's own operations, valid while `self` is.
    #[inline(always)]
    pub(crate) fn pointer(&self) -> NonNull<()> {
        self.value
    }

    /// The value, if it is a `V`: a load and a compare.
    #[inline(always)]
    pub(crate) fn get<V: 'static>(&self) -> Option<&V> {
        if self.table.arc_ops().type_id != TypeId::of::<V>() {
            return None;
        }
        // SAFETY: `value` is an `Arc<U>` whose `ArcOps` is `table`'s (`new` checks it), and
        // that table's `TypeId` is `V`'s, so `U` is `V`. `self` holds its reference while
        // the result is borrowed.
        Some(unsafe { &*(self.value.as_ptr() as *const V) })
    }

    /// The value, mutable, if it is a `V` and no other `ThinArc` or `Arc` shares it.
    pub(crate) fn get_mut<V: 'static>(&mut self) -> Option<&mut V> {
        self.get::<V>()?;
        // SAFETY: `get` checked the type; the result is only dereferenced below.
        self.unique()
            .map(|value| unsafe { &mut *(value.as_ptr() as *mut V) })
    }

    /// The value's pointer, with the right to write it, if no one shares it: while `self` is
    /// borrowed mutably, no one can start to.
    pub(crate) fn unique(&mut self) -> Option<NonNull<()>> {
        // SAFETY: this `ThinArc`'s pointer, for its table's type, held by `self`.
        unsafe { (self.table.arc_ops().unique)(self.value) }
    }

    /// The same allocation, type-erased (to drop it later, somewhere else).
    pub(crate) fn into_any(self) -> Arc<dyn Any + Send + Sync> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: this `ThinArc`'s own reference, given up (`ManuallyDrop`: no release).
        unsafe { (this.table.arc_ops().into_any)(this.value) }
    }
}

impl<T: Table> Clone for ThinArc<T> {
    fn clone(&self) -> Self {
        // SAFETY: this `ThinArc`'s pointer, for its table's type, held by `self`.
        unsafe { (self.table.arc_ops().retain)(self.value) };
        ThinArc {
            value: self.value,
            table: self.table,
        }
    }
}

impl<T: Table> Drop for ThinArc<T> {
    fn drop(&mut self) {
        // SAFETY: this `ThinArc`'s pointer, for its table's type; it gives it up here.
        unsafe { (self.table.arc_ops().release)(self.value) }
    }
}

/// [`ArcOps::retain`] of `V`.
///
/// # Safety
///
/// `value` is from `Arc::into_raw` of an `Arc<V>`, and the caller holds a reference to it.
unsafe fn retain<V>(value: NonNull<()>) {
    // SAFETY: the caller's contract.
    unsafe { Arc::increment_strong_count(value.as_ptr() as *const V) }
}

/// [`ArcOps::release`] of `V`.
///
/// # Safety
///
/// `value` is from `Arc::into_raw` of an `Arc<V>`, and the caller gives up its reference.
unsafe fn release<V>(value: NonNull<()>) {
    // SAFETY: the caller's contract.
    drop(unsafe { Arc::from_raw(value.as_ptr() as *const V) })
}

/// [`ArcOps::unique`] of `V`.
///
/// # Safety
///
/// `value` is from `Arc::into_raw` of an `Arc<V>`, whose reference the caller holds,
/// borrowed mutably.
unsafe fn unique<V>(value: NonNull<()>) -> Option<NonNull<()>> {
    // SAFETY: the caller's contract; `ManuallyDrop` leaves the count as it is.
    let mut arc = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(value.as_ptr() as *const V) });
    Arc::get_mut(&mut arc).map(|value| NonNull::from(value).cast())
}

/// [`ArcOps::into_any`] of `V`.
///
/// # Safety
///
/// `value` is from `Arc::into_raw` of an `Arc<V>`, whose reference the caller gives up.
unsafe fn into_any<V: Send + Sync + 'static>(value: NonNull<()>) -> Arc<dyn Any + Send + Sync> {
    // SAFETY: the caller's contract.
    unsafe { Arc::from_raw(value.as_ptr() as *const V) }
}
