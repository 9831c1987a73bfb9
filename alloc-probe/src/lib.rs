//! aquifer-alloc-probe: measures the largest single allocation the calling
//! thread makes inside a closure, so the decoders' property tests can assert
//! that no length a byte stream claims is allocated before it is checked
//! (dev-only; never a dependency of the product).
//!
//! A test binary installs [`Probe`] as its global allocator once:
//!
//! ```text
//! #[global_allocator]
//! static PROBE: aquifer_alloc_probe::Probe = aquifer_alloc_probe::Probe;
//! ```
//!
//! and wraps the code under test in [`largest_allocation`]. Outside such a
//! call the probe only forwards to the system allocator. It never measures
//! other threads (each test case runs its decoder on its own thread) and
//! never allocates itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, noting request sizes while this thread measures.
pub struct Probe;

thread_local! {
    /// The largest request seen while measuring; `None` while not measuring.
    /// Const-initialised and without a destructor, so reading it from inside
    /// the allocator never allocates.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note(size: usize) {
    // `try_with`: during thread teardown the slot may be gone; not measuring then.
    let _ = LARGEST.try_with(|largest| {
        if let Some(seen) = largest.get() {
            largest.set(Some(seen.max(size)));
        }
    });
}

// SAFETY: every call forwards to `System` with the caller's arguments
// unchanged; `note` only reads and writes a thread-local `Cell`.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `alloc`; `ptr` and `layout` come from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns its result with the largest single allocation (in
/// bytes) this thread requested meanwhile. Measures only where [`Probe`] is
/// the global allocator; elsewhere the size is 0.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let outer = LARGEST.with(|l| l.replace(Some(0)));
    let out = f();
    let largest = LARGEST.with(|l| l.replace(outer)).unwrap_or(0);
    // A nested measurement counts toward the one around it too.
    if let Some(o) = outer {
        LARGEST.with(|l| l.set(Some(o.max(largest))));
    }
    (out, largest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static PROBE: Probe = Probe;

    #[test]
    fn sees_the_largest_request_and_nothing_outside() {
        let (v, largest) = largest_allocation(|| Vec::<u8>::with_capacity(1 << 20));
        assert!(largest >= 1 << 20, "{largest}");
        drop(v);
        let (_, small) = largest_allocation(|| vec![0u8; 16]);
        assert!(small < 1 << 20, "{small}");
        let (_, none) = largest_allocation(|| 1 + 1);
        assert_eq!(none, 0);
    }
}
