//! The node's memory allocator: mimalloc, with the hot core's large blocks mapped when they are
//! allocated.
//!
//! The kernel maps fresh memory on first touch, one page fault per page, or per 2 MiB where
//! transparent huge pages back the block (mimalloc asks for them). A large table that the hot
//! core fills sparsely over a session — the engine's order map is sized for every account's order
//! history when the account is made — would take those faults in the middle of requests, long
//! after it was allocated: on this class of VM one huge-page fault held the hot thread for 20 ms
//! (`BENCHMARKS.md`, "Offload to PostgreSQL"). So on the threads that build and run the hot core
//! ([`map_large_blocks_on_this_thread`]), a block of at least [`POPULATE_BYTES`] is mapped by
//! `madvise(MADV_POPULATE_WRITE)` before it is handed out: the faults happen where the block is
//! allocated (at start, at replay, when an account is made), not where it is first used. Other
//! threads (the fan-out, snapshot and offload mirrors) keep mapping on first touch, and with it
//! their memory until they use it. Small blocks come from mimalloc's pages, which are reused.
//!
//! `MADV_POPULATE_WRITE` leaves the contents alone (zeroed memory stays zero) and needs Linux 5.14;
//! on an older kernel the call fails and the block is mapped on first touch as before.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

use mimalloc::MiMalloc;

/// Blocks from this size on are mapped when they are allocated.
pub const POPULATE_BYTES: usize = 1 << 20;

/// The global allocator of the `signalgate` binary and its benchmarks.
pub struct Allocator;

thread_local! {
    static MAP_LARGE_BLOCKS: Cell<bool> = const { Cell::new(false) };
}

/// From now on, large blocks allocated by this thread are mapped when they are allocated.
pub fn map_large_blocks_on_this_thread() {
    MAP_LARGE_BLOCKS.with(|m| m.set(true));
}

// SAFETY: every call is forwarded unchanged to mimalloc; `populate` only asks the kernel to map
// pages that hold the block mimalloc returned, without changing their contents.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { MiMalloc.alloc(layout) };
        populate(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        populate(p, layout.size());
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if new_size > layout.size() {
            populate(p, new_size);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
}

/// Maps every page of the `len` bytes at `p` now, when the block is large and this thread asked.
fn populate(p: *mut u8, len: usize) {
    // `try_with`: a thread that is exiting may still free and allocate.
    if p.is_null() || len < POPULATE_BYTES || !MAP_LARGE_BLOCKS.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    // SAFETY: sysconf reads a constant; it neither allocates nor fails for _SC_PAGESIZE.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let start = p as usize & !(page - 1);
    let end = p as usize + len;
    // SAFETY: the range covers the pages of a block that is mapped and ours; the advice maps
    // them as a write would, without writing. A failure (older kernel) only leaves them to be
    // mapped on first touch, so its result is not needed.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident pages of the `len` bytes at `p`, from mincore(2).
    fn resident(p: *const u8, len: usize) -> usize {
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let start = p as usize & !(page - 1);
        let pages = (p as usize + len - start).div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is mapped (a live block) and `vec` has a byte per page.
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, p as usize + len - start, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    #[test]
    fn populate_maps_every_page_of_a_large_block() {
        let len = 8 * POPULATE_BYTES;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let p = p.cast::<u8>();
        assert_eq!(resident(p, len), 0, "a fresh mapping has no pages yet");
        populate(p, len);
        assert_eq!(resident(p, len), 0, "only threads that ask have their blocks mapped");
        map_large_blocks_on_this_thread();
        populate(p, len);
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        assert_eq!(resident(p, len), len / page);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p.cast(), len) };
    }

    #[test]
    fn large_blocks_keep_their_contents() {
        map_large_blocks_on_this_thread();
        let a = Allocator;
        let len = 8 * POPULATE_BYTES;
        let layout = Layout::from_size_align(len, 64).unwrap();
        // SAFETY: a non-zero layout; the block is freed below with the layout it then has.
        let p = unsafe { a.alloc_zeroed(layout) };
        assert!(!p.is_null());
        // SAFETY: `p` holds `len` zeroed bytes.
        assert!(unsafe { std::slice::from_raw_parts(p, len) }.iter().all(|b| *b == 0));
        // SAFETY: `p` is writable for `len` bytes and is grown with the layout it was allocated with.
        let q = unsafe {
            p.write_bytes(7, len);
            a.realloc(p, layout, 2 * len)
        };
        assert!(!q.is_null());
        // SAFETY: realloc kept the first `len` bytes.
        assert!(unsafe { std::slice::from_raw_parts(q, len) }.iter().all(|b| *b == 7));
        unsafe { a.dealloc(q, Layout::from_size_align(2 * len, 64).unwrap()) };
    }
}
