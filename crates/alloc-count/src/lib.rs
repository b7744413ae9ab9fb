//! A [`GlobalAlloc`] wrapper that counts allocations and allocated bytes while counting is
//! switched on, and forwards every call to the allocator it wraps.
//!
//! Counting is off by default; while it is off each call pays one relaxed atomic load. The
//! counters are process-wide (every thread adds to them), so a caller reads [`totals`] before
//! and after the region it measures and takes the difference.
//!
//! ```
//! use alloc_count::{Counting, totals};
//! use std::alloc::System;
//!
//! #[global_allocator]
//! static ALLOCATOR: Counting<System> = Counting::new(System);
//!
//! alloc_count::enable();
//! let before = totals();
//! let v: Vec<u64> = Vec::with_capacity(16);
//! let after = totals();
//! assert!(after.allocs > before.allocs);
//! assert!(after.bytes - before.bytes >= 128);
//! drop(v);
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Allocations and bytes counted since the process started counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Calls to `alloc`, `alloc_zeroed` and `realloc`.
    pub allocs: u64,
    /// Bytes requested by those calls (for `realloc`, the new size).
    pub bytes: u64,
}

/// Switches counting on for the rest of the process.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether counting is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The counters now (all zero while counting was never switched on).
pub fn totals() -> Totals {
    Totals {
        allocs: ALLOCS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

#[inline]
fn count(size: usize) {
    if ENABLED.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// Wraps allocator `A`, counting its allocations while [`enable`] has been called.
#[derive(Debug)]
pub struct Counting<A>(A);

impl<A> Counting<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        Self(inner)
    }
}

// SAFETY: every method forwards its arguments unchanged to the wrapped allocator, which upholds
// the `GlobalAlloc` contract; counting touches only atomics and never allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's guarantees for `layout` are passed on as they are.
        unsafe { self.0.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by the wrapped allocator with `layout`.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` and `layout` come from the wrapped allocator; `new_size` is the caller's.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}
