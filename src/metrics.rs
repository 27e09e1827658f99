//! Counters and histograms of the hot core, rendered in the Prometheus text format.
//!
//! Owned by the hot core (no atomics, no locks): counting is a plain add; rendering happens on
//! the same core when `/metrics` is scraped.

use std::io::Write as _;

use hdrhistogram::Histogram;

/// Routes as metric labels (never raw paths, which would grow without bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/signals`
    Signals,
    /// `POST /v1/orders`
    OrderCreate,
    /// `GET /v1/orders`
    OrderList,
    /// `GET /v1/orders/{id}`
    OrderGet,
    /// `DELETE /v1/orders/{id}`
    OrderCancel,
    /// `GET /v1/positions`
    Positions,
    /// `POST /v1/positions/{symbol}/close`
    PositionClose,
    /// `GET /v1/account`
    Account,
    /// `POST /v1/account/halt`
    Halt,
    /// `POST /v1/account/resume`
    Resume,
    /// `GET /v1/market/{symbol}/quote`
    Quote,
    /// `POST /v1/market/ticks`
    Ticks,
    /// `GET /v1/trades`
    Trades,
    /// `GET /v1/performance`
    Performance,
    /// `GET /v1/market/{symbol}/candles`
    Candles,
    /// `GET /health`
    Health,
    /// `GET /ready`
    Ready,
    /// `GET /metrics`
    Metrics,
    /// The admin API.
    Admin,
    /// Anything else.
    Unmatched,
}

const ROUTES: [Route; 20] = [
    Route::Signals,
    Route::OrderCreate,
    Route::OrderList,
    Route::OrderGet,
    Route::OrderCancel,
    Route::Positions,
    Route::PositionClose,
    Route::Account,
    Route::Halt,
    Route::Resume,
    Route::Quote,
    Route::Ticks,
    Route::Trades,
    Route::Performance,
    Route::Candles,
    Route::Health,
    Route::Ready,
    Route::Metrics,
    Route::Admin,
    Route::Unmatched,
];

impl Route {
    /// `/health`, `/ready` and `/metrics`: they describe the node, not the trading state, and
    /// are answered even when the node is overloaded or its journal cannot write.
    pub fn is_operational(self) -> bool {
        matches!(self, Route::Health | Route::Ready | Route::Metrics)
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Route::Signals => "POST /v1/signals",
            Route::OrderCreate => "POST /v1/orders",
            Route::OrderList => "GET /v1/orders",
            Route::OrderGet => "GET /v1/orders/{id}",
            Route::OrderCancel => "DELETE /v1/orders/{id}",
            Route::Positions => "GET /v1/positions",
            Route::PositionClose => "POST /v1/positions/{symbol}/close",
            Route::Account => "GET /v1/account",
            Route::Halt => "POST /v1/account/halt",
            Route::Resume => "POST /v1/account/resume",
            Route::Quote => "GET /v1/market/{symbol}/quote",
            Route::Ticks => "POST /v1/market/ticks",
            Route::Trades => "GET /v1/trades",
            Route::Performance => "GET /v1/performance",
            Route::Candles => "GET /v1/market/{symbol}/candles",
            Route::Health => "GET /health",
            Route::Ready => "GET /ready",
            Route::Metrics => "GET /metrics",
            Route::Admin => "admin",
            Route::Unmatched => "unmatched",
        }
    }

    fn index(self) -> usize {
        ROUTES.iter().position(|r| *r == self).unwrap_or(ROUTES.len() - 1)
    }
}

/// Statuses counted individually; anything else counts as `other`.
const STATUSES: [u16; 17] = [200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503, 0];

fn status_index(status: u16) -> usize {
    STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len() - 1)
}

/// Upper bounds of the request-duration histogram, in seconds (Prometheus `le`).
const DURATION_BOUNDS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Request durations of one route: cumulative-at-render bucket counts, sum and count.
#[derive(Clone, Copy, Default)]
struct Durations {
    buckets: [u64; DURATION_BOUNDS.len()],
    sum_ns: u64,
    count: u64,
}

impl Durations {
    fn observe(&mut self, ns: u64) {
        let secs = ns as f64 / 1e9;
        if let Some(i) = DURATION_BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.sum_ns += ns;
        self.count += 1;
    }

    /// The histogram's lines: `name` with `labels` (`key="value",` each, or empty).
    fn render(&self, out: &mut Vec<u8>, name: &str, labels: &str) -> std::io::Result<()> {
        let mut cumulative = 0;
        for (bound, n) in DURATION_BOUNDS.iter().zip(self.buckets) {
            cumulative += n;
            writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}")?;
        }
        writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count)?;
        let labels = labels.trim_end_matches(',');
        let labels = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        writeln!(out, "{name}_sum{labels} {:.9}", self.sum_ns as f64 / 1e9)?;
        writeln!(out, "{name}_count{labels} {}", self.count)
    }
}

/// Gauges read from the rest of the node when rendering.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Open HTTP connections.
    pub connections: usize,
    /// Requests being served.
    pub inflight: usize,
    /// Orders still working.
    pub open_orders: usize,
    /// Orders the venue holds.
    pub venue_orders: usize,
    /// Orders remembered by the engine.
    pub orders_in_memory: usize,
    /// Idempotency records.
    pub idempotency_records: usize,
    /// Idempotency records dropped early.
    pub idempotency_evicted: u64,
    /// Last event sequence number.
    pub last_seq: u64,
    /// Last sequence number the journal made durable.
    pub durable_seq: u64,
    /// Last sequence number on stable storage (synced).
    pub stable_seq: u64,
    /// Encoded events waiting for room in the journal, in bytes.
    pub journal_pending_bytes: usize,
    /// Whether the journal takes new commands.
    pub journal_healthy: bool,
    /// The journal's counters.
    pub journal: JournalCounters,
    /// Venue calls held until their events are durable.
    pub venue_held: usize,
    /// Accounts.
    pub accounts: usize,
    /// Whether the snapshot thread's last attempt failed (and none was written since).
    pub snapshots_failing: bool,
    /// Snapshot thread failures so far.
    pub snapshot_failures: u64,
    /// Sequence number of the newest snapshot written since start.
    pub snapshot_last_seq: u64,
}

/// A histogram of nanoseconds as a Prometheus summary in seconds.
fn summary(out: &mut Vec<u8>, name: &str, help: &str, h: &Histogram<u64>) -> std::io::Result<()> {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} summary")?;
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        writeln!(out, "{name}{{quantile=\"{q}\"}} {:.9}", v as f64 / 1e9)?;
    }
    let mean_ns = if h.is_empty() { 0.0 } else { h.mean() };
    writeln!(out, "{name}_sum {:.9}", mean_ns * h.len() as f64 / 1e9)?;
    writeln!(out, "{name}_count {}", h.len())
}

/// What a FIX session counts (kept by the session itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct FixCounters {
    /// Messages received.
    pub received: u64,
    /// Messages sent.
    pub sent: u64,
    /// ResendRequests sent (gaps found in what the venue sent).
    pub resends_asked: u64,
    /// ResendRequests answered (gaps the venue found in what this side sent).
    pub resends_answered: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Logons completed.
    pub logons: u64,
}

/// The session with a FIX venue, as read for one rendering.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixSession {
    /// Its state's name: `disconnected`, `logging_on`, `active` or `logging_out`.
    pub state: &'static str,
    /// Its counters.
    pub counters: FixCounters,
    /// Orders of unknown fate being reconciled.
    pub reconciling: usize,
    /// Reports about orders the venue layer does not hold, ignored.
    pub unmatched: u64,
    /// Application messages that could not be read, ignored.
    pub unreadable: u64,
}

/// The FIX session's metrics; `round_trip`: NewOrderSingle to first ExecutionReport, in ns.
pub fn render_fix(out: &mut Vec<u8>, s: &FixSession, round_trip: &Histogram<u64>) {
    let _ = render_fix_inner(out, s, round_trip);
}

fn render_fix_inner(out: &mut Vec<u8>, s: &FixSession, round_trip: &Histogram<u64>) -> std::io::Result<()> {
    writeln!(out, "# HELP signalgate_fix_session_state 1 for the state the session with the FIX venue is in.")?;
    writeln!(out, "# TYPE signalgate_fix_session_state gauge")?;
    for state in ["disconnected", "logging_on", "active", "logging_out"] {
        writeln!(out, "signalgate_fix_session_state{{state=\"{state}\"}} {}", u8::from(s.state == state))?;
    }
    let c = &s.counters;
    let counters: [(&str, &str, u64); 8] = [
        ("fix_messages_received_total", "Messages received from the FIX venue.", c.received),
        ("fix_messages_sent_total", "Messages sent to the FIX venue.", c.sent),
        (
            "fix_resend_requests_sent_total",
            "Gaps found in the venue's messages (ResendRequests sent).",
            c.resends_asked,
        ),
        (
            "fix_resend_requests_received_total",
            "Gaps the venue found in this node's messages (answered with a gap fill).",
            c.resends_answered,
        ),
        (
            "fix_duplicates_total",
            "Messages the venue sent again (PossDupFlag) and that were already had.",
            c.duplicates,
        ),
        ("fix_logons_total", "Logons completed.", c.logons),
        ("fix_reports_unmatched_total", "ExecutionReports about orders not held, ignored.", s.unmatched),
        ("fix_messages_unreadable_total", "Application messages from the venue that could not be read.", s.unreadable),
    ];
    for (name, help, v) in counters {
        writeln!(out, "# HELP signalgate_{name} {help}\n# TYPE signalgate_{name} counter\nsignalgate_{name} {v}")?;
    }
    writeln!(
        out,
        "# HELP signalgate_fix_orders_reconciling Orders of unknown fate the venue is being asked about.\n\
         # TYPE signalgate_fix_orders_reconciling gauge\nsignalgate_fix_orders_reconciling {}",
        s.reconciling
    )?;
    summary(
        out,
        "signalgate_fix_order_round_trip_seconds",
        "From a NewOrderSingle written to the venue's first ExecutionReport on it.",
        round_trip,
    )
}

/// What the journal did, as read from its counters for one rendering.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalCounters {
    /// Batches appended (copied into the mapping).
    pub appends: u64,
    /// Bytes appended.
    pub bytes: u64,
    /// Time spent appending, summed.
    pub append_ns: u64,
    /// Longest append.
    pub append_max_ns: u64,
    /// `fdatasync` calls completed.
    pub fsyncs: u64,
    /// Time spent in `fdatasync`, summed.
    pub fsync_ns: u64,
    /// Failed syncs and segment preparations.
    pub errors: u64,
    /// Segments started.
    pub segments: u64,
}

/// The hot core's metrics.
pub struct Metrics {
    requests: [[u64; STATUSES.len()]; ROUTES.len()],
    durations: [Durations; ROUTES.len()],
    /// Signal-to-order latency in nanoseconds: from the request parsed to the order handed to
    /// the venue.
    pub signal_to_order_ns: Histogram<u64>,
    /// Connections refused because of `http.max_connections`.
    pub connections_refused: u64,
    /// Connections that never showed a valid key, closed to make room at the connection cap.
    pub connections_evicted: u64,
    /// Requests refused with 503 because of `http.max_inflight`.
    pub overloaded: u64,
    /// Events produced by the engine.
    pub events: u64,
    /// Quotes applied.
    pub quotes: u64,
    /// Commands refused because the journal could not write.
    pub journal_rejected: u64,
    /// Requests a cluster node had another node serve, and how long that took.
    forwarded: Durations,
    /// Requests a cluster node could not have served elsewhere (503).
    forward_failures: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics. The histogram covers 1 ns to 60 s at 3 significant digits, allocated here.
    pub fn new() -> Self {
        Metrics {
            requests: [[0; STATUSES.len()]; ROUTES.len()],
            durations: [Durations::default(); ROUTES.len()],
            signal_to_order_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds"),
            connections_refused: 0,
            connections_evicted: 0,
            overloaded: 0,
            events: 0,
            quotes: 0,
            journal_rejected: 0,
            forwarded: Durations::default(),
            forward_failures: 0,
        }
    }

    /// Counts one answered request.
    pub fn count(&mut self, route: Route, status: u16) {
        self.requests[route.index()][status_index(status)] += 1;
    }

    /// Requests counted for a route and status.
    pub fn requests(&self, route: Route, status: u16) -> u64 {
        self.requests[route.index()][status_index(status)]
    }

    /// Records how long a request took, from its headers parsed to its answer ready.
    pub fn observe_request(&mut self, route: Route, ns: u64) {
        self.durations[route.index()].observe(ns);
    }

    /// Records a request another node of the cluster served (`ns`: the round trip), or could
    /// not (`None`).
    pub fn observe_forward(&mut self, ns: Option<u64>) {
        match ns {
            Some(ns) => self.forwarded.observe(ns),
            None => self.forward_failures += 1,
        }
    }

    /// The forwarding metrics of a cluster node.
    pub fn render_forwarding(&self, out: &mut Vec<u8>) {
        let _ = self.render_forwarding_inner(out);
    }

    fn render_forwarding_inner(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        writeln!(
            out,
            "# HELP signalgate_cluster_forwarded_total Requests served by the node that holds their account."
        )?;
        writeln!(out, "# TYPE signalgate_cluster_forwarded_total counter")?;
        writeln!(out, "signalgate_cluster_forwarded_total {}", self.forwarded.count)?;
        writeln!(out, "# HELP signalgate_cluster_forward_failures_total Requests that could not be forwarded (503).")?;
        writeln!(out, "# TYPE signalgate_cluster_forward_failures_total counter")?;
        writeln!(out, "signalgate_cluster_forward_failures_total {}", self.forward_failures)?;
        writeln!(out, "# HELP signalgate_cluster_forward_seconds Time to have another node serve a request.")?;
        writeln!(out, "# TYPE signalgate_cluster_forward_seconds histogram")?;
        self.forwarded.render(out, "signalgate_cluster_forward_seconds", "")
    }

    /// Records one signal-to-order latency.
    pub fn record_signal_to_order(&mut self, ns: u64) {
        self.signal_to_order_ns.saturating_record(ns.max(1));
    }

    /// Renders every metric.
    pub fn render(&self, g: &Gauges, out: &mut Vec<u8>) {
        let _ = self.render_inner(g, out);
    }

    fn render_inner(&self, g: &Gauges, out: &mut Vec<u8>) -> std::io::Result<()> {
        writeln!(out, "# HELP signalgate_http_requests_total HTTP requests answered, by route and status.")?;
        writeln!(out, "# TYPE signalgate_http_requests_total counter")?;
        for (r, route) in ROUTES.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = self.requests[r][s];
                if n > 0 {
                    let status_label = if *status == 0 { "other".to_string() } else { status.to_string() };
                    writeln!(
                        out,
                        "signalgate_http_requests_total{{route=\"{}\",status=\"{}\"}} {}",
                        route.label(),
                        status_label,
                        n
                    )?;
                }
            }
        }
        writeln!(out, "# HELP signalgate_http_request_duration_seconds Time from a request's headers parsed to its answer ready, by route.")?;
        writeln!(out, "# TYPE signalgate_http_request_duration_seconds histogram")?;
        for (r, route) in ROUTES.iter().enumerate() {
            let d = &self.durations[r];
            if d.count == 0 {
                continue;
            }
            d.render(out, "signalgate_http_request_duration_seconds", &format!("route=\"{}\",", route.label()))?;
        }
        let h = &self.signal_to_order_ns;
        summary(
            out,
            "signalgate_signal_to_order_seconds",
            "From a request parsed to its order handed to the venue (on the wire, for a FIX venue).",
            h,
        )?;
        writeln!(out, "# HELP signalgate_signal_to_order_max_seconds Largest signal-to-order latency seen.")?;
        writeln!(out, "# TYPE signalgate_signal_to_order_max_seconds gauge")?;
        writeln!(
            out,
            "signalgate_signal_to_order_max_seconds {:.9}",
            if h.is_empty() { 0.0 } else { h.max() as f64 / 1e9 }
        )?;
        let j = &g.journal;
        let counters: [(&str, &str, u64); 12] = [
            ("journal_appends_total", "Batches of events appended to the journal.", j.appends),
            ("journal_bytes_total", "Bytes appended to the journal.", j.bytes),
            ("journal_fsyncs_total", "fdatasync calls completed on the journal.", j.fsyncs),
            ("journal_errors_total", "Failed journal syncs and segment preparations.", j.errors),
            ("journal_segments_total", "Journal segments started since start.", j.segments),
            (
                "journal_rejected_total",
                "Commands refused with 503 journal.full or journal.unavailable.",
                self.journal_rejected,
            ),
            ("connections_refused_total", "Connections refused at the connection cap.", self.connections_refused),
            (
                "connections_evicted_total",
                "Connections without a valid key closed to make room at the connection cap.",
                self.connections_evicted,
            ),
            ("overloaded_total", "Requests refused with 503 at the in-flight cap.", self.overloaded),
            ("events_total", "Engine events produced.", self.events),
            ("quotes_total", "Quotes applied.", self.quotes),
            (
                "idempotency_evicted_total",
                "Idempotency records dropped before their time (store full).",
                g.idempotency_evicted,
            ),
        ];
        for (name, help, v) in counters {
            writeln!(out, "# HELP signalgate_{name} {help}\n# TYPE signalgate_{name} counter\nsignalgate_{name} {v}")?;
        }
        for (name, kind, help, ns) in [
            ("journal_append_seconds_total", "counter", "Time spent appending batches to the journal.", j.append_ns),
            ("journal_append_max_seconds", "gauge", "Longest journal append since start.", j.append_max_ns),
            ("journal_fsync_seconds_total", "counter", "Time spent in fdatasync on the journal.", j.fsync_ns),
        ] {
            writeln!(
                out,
                "# HELP signalgate_{name} {help}\n# TYPE signalgate_{name} {kind}\nsignalgate_{name} {:.9}",
                ns as f64 / 1e9
            )?;
        }
        writeln!(
            out,
            "# HELP signalgate_snapshot_failures_total Snapshot thread failures (each retried).\n\
             # TYPE signalgate_snapshot_failures_total counter\nsignalgate_snapshot_failures_total {}",
            g.snapshot_failures
        )?;
        let gauges: [(&str, &str, u64); 15] = [
            (
                "snapshots_healthy",
                "1 while snapshots are written, 0 from a failure until the next one is.",
                u64::from(!g.snapshots_failing),
            ),
            ("snapshot_last_seq", "Sequence number of the newest snapshot written since start.", g.snapshot_last_seq),
            ("journal_durable_seq", "Last event sequence number the journal made durable.", g.durable_seq),
            ("journal_stable_seq", "Last event sequence number on stable storage (synced).", g.stable_seq),
            (
                "journal_pending_bytes",
                "Encoded events waiting for room in the journal.",
                g.journal_pending_bytes as u64,
            ),
            (
                "journal_healthy",
                "1 while the journal takes new commands, 0 while they are refused.",
                u64::from(g.journal_healthy),
            ),
            ("venue_held_calls", "Orders and cancels held until their events are durable.", g.venue_held as u64),
            ("http_connections", "Open HTTP connections.", g.connections as u64),
            ("http_inflight", "Requests being served (queue depth of the hot core).", g.inflight as u64),
            ("open_orders", "Orders still working.", g.open_orders as u64),
            ("venue_working_orders", "Orders held by the venue (resting or delayed).", g.venue_orders as u64),
            ("orders_in_memory", "Orders remembered by the engine.", g.orders_in_memory as u64),
            ("idempotency_records", "Live idempotency records.", g.idempotency_records as u64),
            ("last_event_seq", "Sequence number of the last event.", g.last_seq),
            ("accounts", "Accounts.", g.accounts as u64),
        ];
        for (name, help, v) in gauges {
            writeln!(out, "# HELP signalgate_{name} {help}\n# TYPE signalgate_{name} gauge\nsignalgate_{name} {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_quantiles() {
        let mut m = Metrics::new();
        m.count(Route::Signals, 201);
        m.count(Route::Signals, 201);
        m.count(Route::Signals, 599);
        for ns in [1_000, 2_000, 3_000, 100_000] {
            m.record_signal_to_order(ns);
        }
        let mut out = Vec::new();
        m.render(&Gauges { connections: 3, ..Gauges::default() }, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("signalgate_http_requests_total{route=\"POST /v1/signals\",status=\"201\"} 2"));
        assert!(text.contains("status=\"other\"} 1"));
        assert!(text.contains("signalgate_signal_to_order_seconds_count 4"));
        assert!(text.contains("signalgate_signal_to_order_seconds{quantile=\"0.5\"} 0.000002"));
        assert!(text.contains("signalgate_http_connections 3"));
        assert!(!text.contains("signalgate_http_request_duration_seconds_bucket"), "no empty histograms");
        m.observe_request(Route::Signals, 300_000);
        m.observe_request(Route::Signals, 3_000_000_000);
        let mut out = Vec::new();
        m.render(&Gauges::default(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#"signalgate_http_request_duration_seconds_bucket{route="POST /v1/signals",le="0.0005"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"signalgate_http_request_duration_seconds_bucket{route="POST /v1/signals",le="2.5"} 1"#)
        );
        assert!(
            text.contains(r#"signalgate_http_request_duration_seconds_bucket{route="POST /v1/signals",le="+Inf"} 2"#)
        );
        assert!(text.contains(r#"signalgate_http_request_duration_seconds_count{route="POST /v1/signals"} 2"#));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
