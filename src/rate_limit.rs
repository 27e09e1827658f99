//! Sliding-window counters: per-key request limits and per-account order throttles.
//!
//! The window is approximated the usual way, from the count of the current fixed window and a
//! share of the previous one proportional to how much of it still overlaps the sliding window.
//! Pure arithmetic on timestamps handed in by the caller; no clock, no allocation.

use crate::time::{Nanos, SECOND};

const MILLI: Nanos = 1_000_000;

/// One sliding window counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SlidingWindow {
    window: Nanos,
    current_start: Nanos,
    current: u32,
    previous: u32,
}

/// The answer to one admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Whether the request is admitted (and counted).
    pub allowed: bool,
    /// The limit in force.
    pub limit: u32,
    /// Requests left in the window after this one.
    pub remaining: u32,
    /// Seconds until the current fixed window ends.
    pub reset_secs: u32,
    /// When refused: seconds until a request would be admitted.
    pub retry_after_secs: u32,
}

impl SlidingWindow {
    /// A counter over windows of `window` nanoseconds.
    pub const fn new(window: Nanos) -> Self {
        SlidingWindow { window, current_start: 0, current: 0, previous: 0 }
    }

    /// A one-minute window.
    pub const fn per_minute() -> Self {
        Self::new(60 * SECOND)
    }

    /// A one-second window.
    pub const fn per_second() -> Self {
        Self::new(SECOND)
    }

    fn roll(&mut self, now: Nanos) {
        let start = now - now % self.window;
        if start == self.current_start {
            return;
        }
        self.previous = if start - self.current_start == self.window { self.current } else { 0 };
        self.current = 0;
        self.current_start = start;
    }

    /// Requests counted in the sliding window ending at `now`, times the window length in
    /// milliseconds. Millisecond weighting keeps every product in 64 bits (no 128-bit division on
    /// the hot path) and is far finer than the one-minute precision the limits need.
    fn weighted(&self, now: Nanos) -> u64 {
        let w = self.window / MILLI;
        let elapsed = (now - self.current_start) / MILLI;
        u64::from(self.previous) * (w - elapsed) + u64::from(self.current) * w
    }

    /// Counts one request at `now` if the window holds fewer than `limit`.
    pub fn admit(&mut self, now: Nanos, limit: u32) -> Admission {
        self.roll(now);
        let w = self.window / MILLI;
        let used = self.weighted(now);
        let reset = self.current_start + self.window - now;
        let reset_secs = reset.div_ceil(SECOND) as u32;
        let capacity = u64::from(limit) * w;
        // Admit when used + 1 request fits: used/w + 1 <= limit.
        if used + w <= capacity {
            self.current += 1;
            let remaining = ((capacity - used - w) / w) as u32;
            return Admission { allowed: true, limit, remaining, reset_secs, retry_after_secs: 0 };
        }
        // Refused: find when the previous window's share has decayed enough.
        let retry = if self.current >= limit || self.previous == 0 {
            reset
        } else {
            // previous*(w - e') + current*w + w <= limit*w  ⇒  e' >= w - (limit-current-1)*w/previous
            let spare = u64::from(limit - self.current - 1) * w / u64::from(self.previous);
            let needed_elapsed = w.saturating_sub(spare) * MILLI;
            needed_elapsed.saturating_sub(now - self.current_start).max(1)
        };
        Admission {
            allowed: false,
            limit,
            remaining: 0,
            reset_secs,
            retry_after_secs: retry.div_ceil(SECOND).max(1) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Nanos = 60 * SECOND;
    const T0: Nanos = 1_700_000_040 * SECOND; // a minute boundary

    #[test]
    fn admits_up_to_the_limit_then_refuses() {
        let mut w = SlidingWindow::per_minute();
        for i in 0..5 {
            let a = w.admit(T0 + i, 5);
            assert!(a.allowed);
            assert_eq!(a.remaining, 4 - i as u32);
        }
        let a = w.admit(T0 + 10, 5);
        assert!(!a.allowed);
        assert_eq!(a.retry_after_secs, 60);
        assert_eq!(a.reset_secs, 60);
    }

    #[test]
    fn the_previous_window_decays_linearly() {
        let mut w = SlidingWindow::per_minute();
        for _ in 0..10 {
            assert!(w.admit(T0, 10).allowed);
        }
        // Half-way through the next minute, half of the previous minute still counts: 5 used.
        let half = T0 + MIN + MIN / 2;
        for _ in 0..5 {
            assert!(w.admit(half, 10).allowed);
        }
        let refused = w.admit(half, 10);
        assert!(!refused.allowed);
        // previous=10, current=5: needs previous*(60-e)/60 <= 4 ⇒ e >= 36 s, i.e. 6 s after e=30.
        assert_eq!(refused.retry_after_secs, 6);
        assert!(w.admit(T0 + MIN + 36 * SECOND, 10).allowed);
    }

    #[test]
    fn a_gap_of_two_windows_forgets_everything() {
        let mut w = SlidingWindow::per_second();
        for _ in 0..3 {
            assert!(w.admit(T0, 3).allowed);
        }
        assert!(!w.admit(T0, 3).allowed);
        let a = w.admit(T0 + 2 * SECOND, 3);
        assert!(a.allowed);
        assert_eq!(a.remaining, 2);
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        let mut w = SlidingWindow::per_minute();
        assert!(!w.admit(T0, 0).allowed);
    }
}
