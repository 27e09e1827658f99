//! Latency and error accounting: HDR histograms, the open-loop schedule that corrects for
//! coordinated omission, and errors counted by kind.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// The send schedule of one open-loop connection: request `k` is due at `start + k × interval`.
///
/// Latency is counted from the *intended* send time, not from when the request actually left: a
/// server (or a load generator) that falls behind shows up as latency instead of as a quietly
/// lower request rate. This is the correction wrk2 makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// When request 0 is due (ns on the harness clock).
    pub start_ns: u64,
    /// Time between two requests of this connection (ns).
    pub interval_ns: u64,
}

impl Schedule {
    /// When request `k` is due.
    pub fn intended(&self, k: u64) -> u64 {
        self.start_ns + k * self.interval_ns
    }

    /// When request `k` actually goes out, given that the connection is free at `free_ns`.
    pub fn send_at(&self, k: u64, free_ns: u64) -> u64 {
        self.intended(k).max(free_ns)
    }

    /// The latency of request `k` answered at `done_ns`, from its intended send time.
    pub fn latency(&self, k: u64, done_ns: u64) -> u64 {
        done_ns.saturating_sub(self.intended(k))
    }
}

/// p50, p90, p99, p99.9 and max of `h` (zeros when it is empty).
pub fn percentiles(h: &Histogram<u64>) -> [u64; 5] {
    if h.is_empty() {
        return [0; 5];
    }
    [h.value_at_quantile(0.5), h.value_at_quantile(0.9), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max()]
}

/// An empty latency histogram in microseconds: 1 µs to 1 h at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds")
}

/// Counts of one run.
pub struct Stats {
    /// Latencies in microseconds.
    pub latency_us: Histogram<u64>,
    /// Requests answered with 2xx.
    pub ok: u64,
    /// Everything else, by kind (`http 429 rate.limited`, `timeout`, `disconnect`, …).
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty counts; latencies from 1 µs to 1 h at 3 significant digits.
    pub fn new() -> Self {
        Stats { latency_us: latency_histogram(), ok: 0, errors: BTreeMap::new() }
    }

    /// Records one answered request.
    pub fn record(&mut self, latency_ns: u64, outcome: Outcome) {
        self.latency_us.saturating_record((latency_ns / 1_000).max(1));
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Error(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    /// Records a request that got no answer (its latency is unknown and not recorded).
    pub fn fail(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Requests in all.
    pub fn total(&self) -> u64 {
        self.ok + self.error_count()
    }

    /// Requests that failed.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Failed share of all requests.
    pub fn error_rate(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            self.error_count() as f64 / self.total() as f64
        }
    }

    /// (p50, p90, p99, p99.9, max) in microseconds.
    pub fn percentiles(&self) -> [u64; 5] {
        percentiles(&self.latency_us)
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// Anything else, by kind.
    Error(String),
}

/// The error kind of an HTTP answer: status and, for signalgate's JSON errors, the code.
pub fn classify(status: u16, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Ok;
    }
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(String::from));
    Outcome::Error(match code {
        Some(c) => format!("http {status} {c}"),
        None => format!("http {status}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut s = Stats::new();
        for v in 1..=1000u64 {
            s.record(v * 1_000, Outcome::Ok);
        }
        assert_eq!(s.percentiles(), [500, 900, 990, 999, 1000]);
        assert_eq!(s.total(), 1000);
        assert_eq!(s.error_rate(), 0.0);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut s = Stats::new();
        s.record(1_000, classify(201, b"{}"));
        s.record(1_000, classify(429, br#"{"error":{"code":"rate.limited","message":"x"}}"#));
        s.record(1_000, classify(502, b"<html>bad gateway</html>"));
        s.fail("timeout");
        s.fail("timeout");
        assert_eq!(s.ok, 1);
        assert_eq!(s.errors["http 429 rate.limited"], 1);
        assert_eq!(s.errors["http 502"], 1);
        assert_eq!(s.errors["timeout"], 2);
        assert_eq!(s.error_rate(), 0.8);
        assert_eq!(s.latency_us.len(), 3, "failures without an answer have no latency");
    }

    /// One connection, 1000 requests/s, a server that answers in 1 ms but stalls 100 ms once.
    /// Closed-loop timing (from the actual send) hides the stall in one sample; open-loop timing
    /// (from the intended send) charges it to every request that should have gone out meanwhile.
    #[test]
    fn open_loop_latency_includes_the_time_a_stall_delayed_every_request() {
        let sched = Schedule { start_ns: 0, interval_ns: 1_000_000 };
        let service = |k: u64| if k == 100 { 100_000_000 } else { 500_000 };
        let (mut closed, mut open) = (Stats::new(), Stats::new());
        let mut free = 0;
        for k in 0..1000 {
            let sent = sched.send_at(k, free);
            let done = sent + service(k);
            closed.record(done - sent, Outcome::Ok);
            open.record(sched.latency(k, done), Outcome::Ok);
            free = done;
        }
        // Closed loop: 999 answers of 0.5 ms and one of 100 ms.
        assert_eq!(closed.percentiles()[2], 500);
        // (3 significant digits: the histogram reports the top of the bucket holding 100 ms.)
        assert!(closed.percentiles()[4].abs_diff(100_000) <= 100, "{}", closed.percentiles()[4]);
        // Open loop: the ~100 requests due during the stall waited for it.
        let p90 = open.percentiles()[1];
        assert!(p90 >= 10_000, "p90 {p90} µs");
        assert!(open.percentiles()[2] >= 90_000);
        assert_eq!(sched.latency(0, 500_000), 500_000);
        assert_eq!(sched.send_at(5, 0), 5_000_000);
        assert_eq!(sched.send_at(5, 7_000_000), 7_000_000);
    }
}
