//! The process's allocator, chosen once per process: glibc's malloc for berth's
//! short-lived commands and mimalloc for its long-running services.
//!
//! Why two: under `benches/scheduler.sh` glibc's malloc and free took about a fifth of the
//! API server's CPU (JSON trees allocated on one thread and freed on another), and with
//! mimalloc the same load ran 1.4-1.7x faster; but mimalloc's first pages cost about a
//! millisecond more per process start, and `berth run` starts berth three times. A
//! service calls [`use_service_allocator`] before its threads start; from then on new
//! memory comes from mimalloc. Memory is always given back to the allocator that gave it
//! (mimalloc's page map tells its own pointers apart), so what was allocated before the
//! switch stays glibc's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a service switched to mimalloc; never cleared.
static SERVICE: AtomicBool = AtomicBool::new(false);

/// The global allocator of the `berth` binary (`#[global_allocator]` in its `main.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

/// Makes mimalloc give every allocation from now on. Call it early in a long-running
/// service, before it starts threads.
pub fn use_service_allocator() {
    SERVICE.store(true, Ordering::SeqCst);
}

/// Whether `ptr` came from mimalloc (nothing did before the switch).
fn from_mimalloc(ptr: *mut u8) -> bool {
    SERVICE.load(Ordering::Relaxed)
        // SAFETY: a lookup in mimalloc's page map; any address may be asked about.
        && unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

// SAFETY: every block is handed to the allocator that made it (`from_mimalloc`), and
// both allocators meet GlobalAlloc's contract themselves.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if SERVICE.load(Ordering::Relaxed) {
            // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if SERVICE.load(Ordering::Relaxed) {
            // SAFETY: the caller's layout, as GlobalAlloc::alloc_zeroed requires.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if from_mimalloc(ptr) {
            // SAFETY: mimalloc made this block with this layout.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        } else {
            // SAFETY: glibc made this block with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A block stays with the allocator that made it, grown or shrunk there.
        if from_mimalloc(ptr) {
            // SAFETY: mimalloc made this block with this layout; the size is the caller's.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: glibc made this block with this layout; the size is the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_go_back_to_the_allocator_that_made_them() {
        let allocator = Allocator;
        let layout = Layout::from_size_align(100, 8).unwrap_or_else(|_| unreachable!());
        // SAFETY: a valid layout; each block is freed once, by the same allocator.
        unsafe {
            let before = allocator.alloc(layout);
            assert!(!before.is_null());
            assert!(!libmimalloc_sys::mi_is_in_heap_region(before.cast()));
            use_service_allocator();
            let after = allocator.alloc(layout);
            assert!(!after.is_null());
            assert!(libmimalloc_sys::mi_is_in_heap_region(after.cast()));
            before.write_bytes(7, 100);
            let grown = allocator.realloc(before, layout, 5000);
            assert!(!libmimalloc_sys::mi_is_in_heap_region(grown.cast()));
            assert_eq!(*grown.add(99), 7);
            allocator.dealloc(
                grown,
                Layout::from_size_align(5000, 8).unwrap_or_else(|_| unreachable!()),
            );
            let moved = allocator.realloc(after, layout, 5000);
            assert!(libmimalloc_sys::mi_is_in_heap_region(moved.cast()));
            allocator.dealloc(
                moved,
                Layout::from_size_align(5000, 8).unwrap_or_else(|_| unreachable!()),
            );
        }
    }
}
