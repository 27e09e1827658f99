//! The feed from the hot core to the fan-out core: a single-producer, single-consumer ring of
//! journal records (the same bytes the journal writes), and the sequence number up to which they
//! may be sent.
//!
//! The hot core copies each batch of encoded records in with one `memcpy` and never waits: when
//! the ring has no room for a batch, the batch is left out and the fan-out core notices the gap
//! in sequence numbers and reads those events back from the journal files. Clients are sent only
//! events that are durable, the same rule as HTTP answers.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The shared ring.
pub struct Feed {
    buf: Box<[UnsafeCell<u8>]>,
    mask: usize,
    /// Bytes ever written (producer).
    head: AtomicUsize,
    /// Bytes ever consumed (consumer).
    tail: AtomicUsize,
    /// Events up to this sequence number may be sent.
    durable: AtomicU64,
    /// Batches left out for want of room.
    overruns: AtomicU64,
}

// SAFETY: the producer writes only bytes in [head, tail + capacity) and publishes them with a
// release store of `head`; the consumer reads only bytes in [tail, head) after an acquire load
// of `head`, and frees them with a release store of `tail`. One producer and one consumer exist
// (`Producer` and `Consumer` are not `Clone`), so no byte is written while it is read.
unsafe impl Sync for Feed {}
// SAFETY: see above; the bytes are plain data.
unsafe impl Send for Feed {}

/// Creates a feed of `capacity` bytes (a power of two), with everything up to `durable` sent.
pub fn feed(capacity: usize, durable: u64) -> (Producer, Consumer) {
    assert!(capacity.is_power_of_two());
    // Made by the thread that builds the hot core, whose large blocks the node's allocator maps
    // when they are allocated (`crate::alloc`): the hot core's first pass takes no page faults.
    let buf: Box<[UnsafeCell<u8>]> = (0..capacity).map(|_| UnsafeCell::new(0)).collect();
    let feed = Arc::new(Feed {
        buf,
        mask: capacity - 1,
        head: AtomicUsize::new(0),
        tail: AtomicUsize::new(0),
        durable: AtomicU64::new(durable),
        overruns: AtomicU64::new(0),
    });
    (Producer { feed: feed.clone() }, Consumer { feed })
}

impl Feed {
    fn ptr(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.buf.as_ptr())
    }
}

/// The hot core's end.
pub struct Producer {
    feed: Arc<Feed>,
}

impl Producer {
    /// Copies `records` in whole, or leaves them out (counted) when there is no room.
    pub fn push(&self, records: &[u8]) {
        let f = &*self.feed;
        let cap = f.mask + 1;
        let head = f.head.load(Ordering::Relaxed);
        let tail = f.tail.load(Ordering::Acquire);
        if cap - head.wrapping_sub(tail) < records.len() {
            f.overruns.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let start = head & f.mask;
        let first = records.len().min(cap - start);
        // SAFETY: the free region [head, tail + cap) holds `records.len()` bytes (checked above),
        // split at the end of the buffer; the consumer does not read it (see `Feed`).
        unsafe {
            std::ptr::copy_nonoverlapping(records.as_ptr(), f.ptr().add(start), first);
            std::ptr::copy_nonoverlapping(records.as_ptr().add(first), f.ptr(), records.len() - first);
        }
        f.head.store(head.wrapping_add(records.len()), Ordering::Release);
    }

    /// Everything up to `seq` may be sent.
    pub fn publish_durable(&self, seq: u64) {
        self.feed.durable.store(seq, Ordering::Release);
    }
}

/// The fan-out core's end.
pub struct Consumer {
    feed: Arc<Feed>,
}

impl Consumer {
    /// Moves every byte written so far to the end of `out`.
    pub fn drain_into(&self, out: &mut Vec<u8>) {
        let f = &*self.feed;
        let cap = f.mask + 1;
        let tail = f.tail.load(Ordering::Relaxed);
        let head = f.head.load(Ordering::Acquire);
        let len = head.wrapping_sub(tail);
        if len == 0 {
            return;
        }
        let start = tail & f.mask;
        let first = len.min(cap - start);
        out.reserve(len);
        // SAFETY: [tail, head) was published by the producer's release store of `head`, and the
        // producer does not touch it until `tail` moves past it (see `Feed`).
        unsafe {
            let dst = out.as_mut_ptr().add(out.len());
            std::ptr::copy_nonoverlapping(f.ptr().add(start), dst, first);
            std::ptr::copy_nonoverlapping(f.ptr(), dst.add(first), len - first);
            out.set_len(out.len() + len);
        }
        f.tail.store(head, Ordering::Release);
    }

    /// Events up to this sequence number may be sent.
    pub fn durable(&self) -> u64 {
        self.feed.durable.load(Ordering::Acquire)
    }

    /// Batches the producer left out so far.
    pub fn overruns(&self) -> u64 {
        self.feed.overruns.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let (p, c) = feed(16, 0);
        let mut out = Vec::new();
        for round in 0..10u8 {
            let batch: Vec<u8> = (0..7).map(|i| round * 10 + i).collect();
            p.push(&batch);
            c.drain_into(&mut out);
            assert_eq!(out, batch);
            out.clear();
        }
    }

    #[test]
    fn a_batch_without_room_is_left_out_and_counted() {
        let (p, c) = feed(16, 0);
        p.push(&[1; 10]);
        p.push(&[2; 10]);
        assert_eq!(c.overruns(), 1);
        p.push(&[3; 6]);
        let mut out = Vec::new();
        c.drain_into(&mut out);
        assert_eq!(out, [[1u8; 10].as_slice(), &[3; 6]].concat());
        p.publish_durable(7);
        assert_eq!(c.durable(), 7);
    }

    #[test]
    fn threads_see_every_byte() {
        let (p, c) = feed(1 << 12, 0);
        let writer = std::thread::spawn(move || {
            let mut n = 0u32;
            while n < 100_000 {
                let rec = n.to_le_bytes();
                let before = p.feed.overruns.load(Ordering::Relaxed);
                p.push(&rec);
                if p.feed.overruns.load(Ordering::Relaxed) == before {
                    n += 1;
                }
            }
        });
        let mut out = Vec::new();
        let mut next = 0u32;
        while next < 100_000 {
            c.drain_into(&mut out);
            for chunk in out.chunks_exact(4) {
                assert_eq!(u32::from_le_bytes(chunk.try_into().unwrap()), next);
                next += 1;
            }
            out.clear();
        }
        writer.join().unwrap();
    }
}
