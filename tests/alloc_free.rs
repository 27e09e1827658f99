//! The hot path allocates nothing in steady state: a counting allocator watches the thread that
//! serves signals in-process (parse → auth → rate limit → risk → order → paper fill → answer).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

#[path = "../bench/fixture.rs"]
#[allow(dead_code)]
mod fixture;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if WATCHED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only an
// atomic and a const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    WATCHED.with(|w| w.set(true));
    f();
    WATCHED.with(|w| w.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn signals_allocate_nothing_in_steady_state() {
    let mut f = fixture::Fixture::new(40_000);
    // Warm up: fill the order history, the idempotency store and every buffer to capacity.
    for i in 0..20_000 {
        assert!(matches!(f.signal(i), 200 | 201), "{}", String::from_utf8_lossy(&f.resp.body));
        if i % 1000 == 0 {
            f.quote();
        }
    }
    let mut created = 0;
    let n = counted(|| {
        for i in 20_000..40_000 {
            if f.signal(i) == 201 {
                created += 1;
            }
            if i % 1000 == 0 {
                f.quote();
            }
        }
    });
    assert!(created > 10_000, "the loop really placed orders ({created})");
    assert_eq!(n, 0, "allocations on the signal path in steady state");
    // The counter does see allocations: a guard against a test that cannot fail.
    assert!(counted(|| drop(std::hint::black_box(vec![1u8; 64]))) > 0);
}
