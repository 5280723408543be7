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
//!
//! mimalloc is called through its plain entry points (`mi_malloc`, `mi_realloc`) for
//! the alignments every block of it has (8 bytes), and its aligned ones only beyond: in
//! mimalloc 3 an aligned request that is not a small power of two takes an
//! over-allocating path, and `mi_malloc_aligned` for every Rust allocation (what the
//! `mimalloc` crate's allocator does) cost the API server about 5% of its CPU there.

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

/// The alignment every mimalloc block has: blocks are multiples of a word, carved from
/// aligned pages.
const MIMALLOC_WORD: usize = 8;

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
            // SAFETY: plain calls into mimalloc; a word-aligned block is aligned enough
            // for the layouts it is used for.
            unsafe {
                if layout.align() <= MIMALLOC_WORD {
                    libmimalloc_sys::mi_malloc(layout.size()).cast()
                } else {
                    libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
                }
            }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if SERVICE.load(Ordering::Relaxed) {
            // SAFETY: as in `alloc`.
            unsafe {
                if layout.align() <= MIMALLOC_WORD {
                    libmimalloc_sys::mi_zalloc(layout.size()).cast()
                } else {
                    libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
                }
            }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if from_mimalloc(ptr) {
            // SAFETY: mimalloc made this block; its free takes any of its blocks.
            unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
        } else {
            // SAFETY: glibc made this block with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A block stays with the allocator that made it, grown or shrunk there.
        if from_mimalloc(ptr) {
            // SAFETY: mimalloc made this block with this layout; the size is the caller's,
            // and the new block keeps the layout's alignment.
            unsafe {
                if layout.align() <= MIMALLOC_WORD {
                    libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
                } else {
                    libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
                }
            }
        } else {
            // SAFETY: glibc made this block with this layout; the size is the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once switched, mimalloc's blocks have every alignment asked for, through the
    /// plain and the aligned calls alike. (Part of the one test below: the switch is for
    /// the whole process, and tests may share one.)
    fn mimalloc_blocks_keep_every_alignment_asked_for(allocator: Allocator) {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 24, 100, 1000, 3000, 70_000] {
                let layout =
                    Layout::from_size_align(size, align).unwrap_or_else(|_| unreachable!());
                // SAFETY: valid layouts; each block freed once with its own layout.
                unsafe {
                    let block = allocator.alloc(layout);
                    assert_eq!(block as usize % align, 0, "alloc {size} aligned {align}");
                    let zeroed = allocator.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "alloc_zeroed {size} aligned {align}");
                    assert!((0..size).all(|i| *zeroed.add(i) == 0));
                    block.write_bytes(9, size);
                    let grown = allocator.realloc(block, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "realloc {size} aligned {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 9));
                    allocator.dealloc(
                        grown,
                        Layout::from_size_align(size * 3, align).unwrap_or_else(|_| unreachable!()),
                    );
                    allocator.dealloc(zeroed, layout);
                }
            }
        }
    }

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
        mimalloc_blocks_keep_every_alignment_asked_for(allocator);
    }
}
