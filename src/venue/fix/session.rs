//! The FIX session layer, sans-I/O: logon, heartbeats and test requests, sequence numbers in
//! both directions, gaps asked for again (ResendRequest) and filled (SequenceReset-GapFill),
//! duplicates dropped, logout.
//!
//! The session writes what it sends into [`Session::output`], for the connection to write to
//! the socket, and judges each message received ([`Session::receive`]): the application messages
//! it lets through are the venue's to act on. Time comes in as an argument.
//!
//! Messages it sent are not kept for resending: a ResendRequest from the counterparty is
//! answered with one gap fill over the whole range. An order or cancel the counterparty never
//! got is found by the venue's reconciliation instead (OrderStatusRequest), never sent again
//! blindly, which could trade twice.
//!
//! Sequence numbers survive restarts through the journal ([`Progress`]): the next number
//! expected in, and a block of outgoing numbers reserved ahead, so that a restart never reuses
//! a number the counterparty saw (a restart starts from the end of the block; the counterparty
//! asks for the numbers skipped and gets a gap fill).

use super::codec::{Encoder, Message};
use crate::metrics::FixCounters;
use crate::time::{Nanos, SECOND};

/// Outgoing sequence numbers reserved in the journal at a time.
pub const BLOCK: u64 = 1 << 16;
/// A new block is reserved when fewer than this many numbers of the current one are left: the
/// reservation is durable long before the numbers run out.
const LEAD: u64 = BLOCK / 2;

/// Settings of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// SenderCompID (49): this side.
    pub sender: String,
    /// TargetCompID (56): the venue.
    pub target: String,
    /// HeartBtInt (108).
    pub heartbeat: Nanos,
    /// How long the venue has to answer a Logon.
    pub logon_timeout: Nanos,
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection.
    Disconnected,
    /// Connected, Logon sent, no answer yet.
    LoggingOn,
    /// Logged on: messages flow.
    Active,
    /// Logout sent, waiting for the venue's.
    LoggingOut,
}

impl State {
    /// Name for `/ready` and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Disconnected => "disconnected",
            State::LoggingOn => "logging_on",
            State::Active => "active",
            State::LoggingOut => "logging_out",
        }
    }
}

/// What to do with a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An application message, in sequence: the venue acts on it.
    Deliver,
    /// Handled by the session, or not to act on (a duplicate, or ahead of a gap that is being
    /// filled).
    Done,
    /// The session is over: the connection is to be closed.
    Disconnect,
}

/// Sequence numbers to keep across a restart (see [`crate::engine::venue::Execution::Session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The next sequence number expected from the venue.
    pub inbound: u64,
    /// The first outgoing sequence number not reserved.
    pub outbound: u64,
}

/// One FIX session.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    next_out: u64,
    next_in: u64,
    /// Outgoing numbers below this one are reserved in the journal (or about to be).
    reserved: u64,
    /// Progress last reported.
    reported: Progress,
    /// While a gap is being filled: the highest number seen beyond it.
    gap_until: Option<u64>,
    /// When the gap was last asked for.
    gap_asked: Nanos,
    since: Nanos,
    last_in: Nanos,
    last_out: Nanos,
    test_sent: Option<Nanos>,
    out: Vec<u8>,
    counters: FixCounters,
}

impl Session {
    /// A session that has exchanged nothing yet.
    pub fn new(cfg: SessionConfig) -> Self {
        Session {
            cfg,
            state: State::Disconnected,
            next_out: 1,
            next_in: 1,
            reserved: 1,
            reported: Progress { inbound: 1, outbound: 1 },
            gap_until: None,
            gap_asked: 0,
            since: 0,
            last_in: 0,
            last_out: 0,
            test_sent: None,
            out: Vec::with_capacity(64 * 1024),
            counters: FixCounters::default(),
        }
    }

    /// Continues from what the journal recorded: outgoing numbers from the end of the reserved
    /// block, since some of it may have been used.
    pub fn resume(&mut self, p: Progress) {
        self.next_in = self.next_in.max(p.inbound);
        self.next_out = self.next_out.max(p.outbound);
        self.reserved = self.reserved.max(p.outbound);
        self.reported = Progress { inbound: self.next_in, outbound: self.reserved };
    }

    /// Where the session is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Logged on, and not filling a gap in what the venue sent.
    pub fn in_sync(&self) -> bool {
        self.state == State::Active && self.gap_until.is_none()
    }

    /// The counters.
    pub fn counters(&self) -> &FixCounters {
        &self.counters
    }

    /// The next outgoing sequence number.
    pub fn next_out(&self) -> u64 {
        self.next_out
    }

    /// The next sequence number expected in.
    pub fn next_in(&self) -> u64 {
        self.next_in
    }

    /// Progress not reported yet, to journal now.
    pub fn progress(&mut self) -> Option<Progress> {
        let now = Progress { inbound: self.next_in, outbound: self.reserved };
        (now != self.reported).then(|| {
            self.reported = now;
            now
        })
    }

    /// Bytes to write to the connection.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// A connection is open: sends Logon.
    pub fn connected(&mut self, now: Nanos) {
        self.state = State::LoggingOn;
        self.gap_until = None;
        self.test_sent = None;
        self.since = now;
        self.last_in = now;
        self.out.clear();
        let hb = (self.cfg.heartbeat / SECOND) as i64;
        self.send(b"A", now, |m| {
            m.int(98, 0).int(108, hb);
        });
    }

    /// The connection is gone. What was not written is dropped: the venue asks for those
    /// numbers again and gets a gap fill.
    pub fn disconnected(&mut self) {
        self.state = State::Disconnected;
        self.gap_until = None;
        self.out.clear();
    }

    /// Asks the venue to end the session.
    pub fn logout(&mut self, now: Nanos, text: &str) {
        if matches!(self.state, State::Active | State::LoggingOn) {
            self.send(b"5", now, |m| {
                m.str(58, text);
            });
            self.state = State::LoggingOut;
            self.since = now;
        }
    }

    /// Starts an outgoing message with the standard header, lets `body` add its fields, and
    /// finishes it. Writes into the output buffer: nothing allocates once it has grown.
    pub fn send(&mut self, msg_type: &[u8], now: Nanos, body: impl FnOnce(&mut Encoder<'_>)) {
        let seq = self.next_out;
        self.next_out += 1;
        if self.next_out + LEAD > self.reserved {
            self.reserved = self.next_out + BLOCK;
        }
        self.write(msg_type, seq, now, body);
    }

    fn write(&mut self, msg_type: &[u8], seq: u64, now: Nanos, body: impl FnOnce(&mut Encoder<'_>)) {
        let mut m = Encoder::new(&mut self.out, msg_type);
        m.str(49, &self.cfg.sender).str(56, &self.cfg.target).int(34, seq as i64).timestamp(52, now);
        body(&mut m);
        m.finish();
        self.last_out = now;
        self.counters.sent += 1;
    }

    /// Judges a received message, answering what the session answers itself.
    pub fn receive(&mut self, m: &Message<'_>, now: Nanos) -> Verdict {
        self.counters.received += 1;
        self.last_in = now;
        self.test_sent = None;
        if m.get(49) != Some(self.cfg.target.as_bytes()) || m.get(56) != Some(self.cfg.sender.as_bytes()) {
            log::error!("fix: a message for another session (SenderCompID or TargetCompID differs)");
            self.logout(now, "CompID problem");
            return Verdict::Disconnect;
        }
        let (Ok(Some(seq)), Ok(poss_dup)) = (m.uint(34), m.flag(43)) else {
            self.logout(now, "MsgSeqNum missing or unreadable");
            return Verdict::Disconnect;
        };
        let msg_type = m.msg_type();
        if msg_type == b"A" {
            if self.state != State::LoggingOn {
                return Verdict::Done;
            }
            self.state = State::Active;
            self.counters.logons += 1;
            log::info!(
                "fix: logged on to {} (next out {}, next in {}, venue's logon {seq})",
                self.cfg.target,
                self.next_out,
                self.next_in
            );
        }
        if msg_type == b"4" && m.flag(123).ok().flatten() != Some(true) {
            // SequenceReset in reset mode: whatever its own number, the next one is NewSeqNo.
            return self.reset_to(m, now, false);
        }
        if seq < self.next_in {
            if poss_dup == Some(true) {
                self.counters.duplicates += 1;
                return Verdict::Done;
            }
            log::error!("fix: MsgSeqNum {seq} from the venue, expected {}: the session cannot go on", self.next_in);
            let text = format!("MsgSeqNum too low, expecting {}", self.next_in);
            self.logout(now, &text);
            return Verdict::Disconnect;
        }
        if seq > self.next_in {
            // A gap: ask for everything from the first missing number on, once per gap; what
            // comes ahead of it comes again, in order.
            if self.gap_until.is_none() {
                log::warn!("fix: gap in the venue's messages ({} to {seq}); asking for them again", self.next_in);
                self.ask_again(now);
            }
            self.gap_until = Some(self.gap_until.unwrap_or(0).max(seq));
            return match msg_type {
                b"2" => self.answer_resend(m, now),
                b"5" => self.logged_out(now),
                _ => Verdict::Done,
            };
        }
        // In sequence.
        self.next_in += 1;
        if self.gap_until.is_some_and(|until| self.next_in > until) {
            self.gap_until = None;
            log::info!("fix: the gap is filled; in sequence at {}", self.next_in);
        }
        match msg_type {
            b"A" | b"0" => Verdict::Done,
            b"1" => {
                if let Some(id) = m.get(112) {
                    self.send(b"0", now, |h| {
                        h.bytes(112, id);
                    });
                }
                Verdict::Done
            }
            b"2" => self.answer_resend(m, now),
            b"4" => self.reset_to(m, now, true),
            b"5" => self.logged_out(now),
            _ => Verdict::Deliver,
        }
    }

    /// ResendRequest from the first missing number on.
    fn ask_again(&mut self, now: Nanos) {
        self.counters.resends_asked += 1;
        self.gap_asked = now;
        let from = self.next_in as i64;
        self.send(b"2", now, |r| {
            r.int(7, from).int(16, 0);
        });
    }

    /// A SequenceReset: the next expected number becomes NewSeqNo (never lower, for a gap fill).
    fn reset_to(&mut self, m: &Message<'_>, now: Nanos, gap_fill: bool) -> Verdict {
        let Ok(Some(new)) = m.uint(36) else {
            self.logout(now, "NewSeqNo missing or unreadable");
            return Verdict::Disconnect;
        };
        if gap_fill && new < self.next_in {
            return Verdict::Done;
        }
        self.next_in = new;
        if self.gap_until.is_some_and(|until| self.next_in > until) {
            self.gap_until = None;
            log::info!("fix: the gap is filled; in sequence at {}", self.next_in);
        }
        Verdict::Done
    }

    /// The venue asks for messages again: one gap fill over the range (see the module's note).
    fn answer_resend(&mut self, m: &Message<'_>, now: Nanos) -> Verdict {
        let Ok(Some(from)) = m.uint(7) else {
            self.logout(now, "BeginSeqNo missing or unreadable");
            return Verdict::Disconnect;
        };
        if from >= self.next_out {
            return Verdict::Done;
        }
        self.counters.resends_answered += 1;
        log::warn!("fix: the venue asks for {from} onwards again; filling the gap up to {}", self.next_out);
        let next = self.next_out as i64;
        self.write(b"4", from, now, |g| {
            g.char(43, b'Y').timestamp(122, now).char(123, b'Y').int(36, next);
        });
        Verdict::Done
    }

    fn logged_out(&mut self, now: Nanos) -> Verdict {
        if self.state != State::LoggingOut {
            log::warn!("fix: the venue logged out");
            self.send(b"5", now, |_| {});
        }
        Verdict::Disconnect
    }

    /// Time passes: heartbeats, a test request when the venue is silent, and the end of a
    /// session that does not answer.
    pub fn tick(&mut self, now: Nanos) -> Verdict {
        let hb = self.cfg.heartbeat;
        match self.state {
            State::Disconnected => Verdict::Done,
            State::LoggingOn if now.saturating_sub(self.since) >= self.cfg.logon_timeout => {
                log::warn!("fix: no answer to the Logon");
                Verdict::Disconnect
            }
            State::LoggingOut if now.saturating_sub(self.since) >= 2 * SECOND => Verdict::Disconnect,
            State::Active => {
                if let Some(at) = self.test_sent {
                    if now.saturating_sub(at) >= hb {
                        log::warn!("fix: no answer to a TestRequest; the connection is taken as lost");
                        return Verdict::Disconnect;
                    }
                } else if now.saturating_sub(self.last_in) >= hb + hb / 5 {
                    let id = (now / 1_000_000) as i64;
                    self.send(b"1", now, |t| {
                        t.int(112, id);
                    });
                    self.test_sent = Some(now);
                }
                // A gap still open after a heartbeat interval is asked for again: orders wait
                // while it is open.
                if self.gap_until.is_some() && now.saturating_sub(self.gap_asked) >= hb {
                    log::warn!("fix: the gap from {} is still open; asking for it again", self.next_in);
                    self.ask_again(now);
                }
                if now.saturating_sub(self.last_out) >= hb {
                    self.send(b"0", now, |_| {});
                }
                Verdict::Done
            }
            State::LoggingOn | State::LoggingOut => Verdict::Done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::venue::fix::codec::frame;

    const NOW: Nanos = 1_796_660_914_500_000_000;

    fn session() -> Session {
        Session::new(SessionConfig {
            sender: "SG".into(),
            target: "VENUE".into(),
            heartbeat: 30 * SECOND,
            logon_timeout: 10 * SECOND,
        })
    }

    /// A message from the venue: `fields` after the header.
    fn from_venue(msg_type: &[u8], seq: u64, fields: &[(u32, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut m = Encoder::new(&mut out, msg_type);
        m.str(49, "VENUE").str(56, "SG").int(34, seq as i64).timestamp(52, NOW);
        for (tag, v) in fields {
            m.str(*tag, v);
        }
        m.finish();
        out
    }

    fn receive(s: &mut Session, bytes: &[u8], now: Nanos) -> Verdict {
        s.receive(&Message::parse(bytes).unwrap(), now)
    }

    /// What the session wrote, each message as (type, its fields), the output emptied.
    fn sent(s: &mut Session) -> Vec<(String, Vec<(u32, String)>)> {
        let out = std::mem::take(s.output());
        let mut at = 0;
        let mut all = Vec::new();
        while let Ok(Some(n)) = frame(&out[at..]) {
            let m = Message::parse(&out[at..at + n]).unwrap();
            let fields = m.fields().map(|(t, v)| (t, String::from_utf8_lossy(v).into_owned())).collect();
            all.push((String::from_utf8_lossy(m.msg_type()).into_owned(), fields));
            at += n;
        }
        assert_eq!(at, out.len(), "whole messages only");
        all
    }

    fn field(m: &(String, Vec<(u32, String)>), tag: u32) -> Option<&str> {
        m.1.iter().find(|(t, _)| *t == tag).map(|(_, v)| v.as_str())
    }

    fn logged_on() -> Session {
        let mut s = session();
        s.connected(NOW);
        assert_eq!(receive(&mut s, &from_venue(b"A", 1, &[(98, "0"), (108, "30")]), NOW), Verdict::Done);
        assert!(s.in_sync());
        sent(&mut s);
        s
    }

    #[test]
    fn logon_heartbeats_and_a_silent_venue() {
        let mut s = session();
        s.connected(NOW);
        let logon = sent(&mut s);
        assert_eq!(logon.len(), 1);
        assert_eq!(logon[0].0, "A");
        assert_eq!(
            (field(&logon[0], 34), field(&logon[0], 98), field(&logon[0], 108)),
            (Some("1"), Some("0"), Some("30"))
        );
        assert_eq!(s.state(), State::LoggingOn);
        receive(&mut s, &from_venue(b"A", 1, &[(98, "0"), (108, "30")]), NOW);
        assert_eq!((s.state(), s.next_in(), s.next_out()), (State::Active, 2, 2));
        // Quiet for a heartbeat interval: a Heartbeat goes out.
        assert_eq!(s.tick(NOW + 30 * SECOND), Verdict::Done);
        let hb = sent(&mut s);
        assert!(hb.iter().any(|m| m.0 == "0"), "{hb:?}");
        // Nothing from the venue for longer: a TestRequest; no answer within another interval
        // ends the connection.
        s.tick(NOW + 37 * SECOND);
        assert!(sent(&mut s).iter().any(|m| m.0 == "1"));
        assert_eq!(s.tick(NOW + 68 * SECOND), Verdict::Disconnect);
        // A TestRequest from the venue is answered with its id.
        let mut s = logged_on();
        receive(&mut s, &from_venue(b"1", 2, &[(112, "T7")]), NOW);
        let answer = sent(&mut s);
        assert_eq!((answer[0].0.as_str(), field(&answer[0], 112)), ("0", Some("T7")));
    }

    #[test]
    fn a_gap_is_asked_for_once_and_duplicates_are_dropped() {
        let mut s = logged_on();
        // 4 arrives where 2 is due: one ResendRequest from 2 on; 4 is not acted on yet.
        assert_eq!(receive(&mut s, &from_venue(b"8", 4, &[]), NOW), Verdict::Done);
        assert_eq!(receive(&mut s, &from_venue(b"8", 5, &[]), NOW), Verdict::Done);
        let asked = sent(&mut s);
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert_eq!((asked[0].0.as_str(), field(&asked[0], 7), field(&asked[0], 16)), ("2", Some("2"), Some("0")));
        assert!(!s.in_sync());
        // Not filled within a heartbeat interval: asked for again.
        s.tick(NOW + 29 * SECOND);
        assert!(sent(&mut s).iter().all(|m| m.0 != "2"));
        s.tick(NOW + 30 * SECOND);
        let again = sent(&mut s);
        assert!(again.iter().any(|m| m.0 == "2" && field(m, 7) == Some("2")), "{again:?}");
        // The resend: in order, flagged; the session is in sequence after the last seen.
        for seq in 2..=5 {
            assert_eq!(receive(&mut s, &from_venue(b"8", seq, &[(43, "Y")]), NOW), Verdict::Deliver);
        }
        assert!(s.in_sync());
        assert_eq!(s.next_in(), 6);
        // A message sent again that was already had is dropped; one below without the flag
        // ends the session.
        assert_eq!(receive(&mut s, &from_venue(b"8", 3, &[(43, "Y")]), NOW), Verdict::Done);
        assert_eq!(s.counters().duplicates, 1);
        assert_eq!(receive(&mut s, &from_venue(b"8", 3, &[]), NOW), Verdict::Disconnect);
        let logout = sent(&mut s);
        assert_eq!(logout[0].0, "5");
        assert_eq!(field(&logout[0], 58), Some("MsgSeqNum too low, expecting 6"));
    }

    #[test]
    fn gap_fills_and_resets_move_the_expected_number() {
        let mut s = logged_on();
        receive(&mut s, &from_venue(b"8", 5, &[]), NOW);
        assert!(!s.in_sync());
        // A gap fill over 2..5, then 5 itself again.
        receive(&mut s, &from_venue(b"4", 2, &[(43, "Y"), (123, "Y"), (36, "5")]), NOW);
        assert_eq!(s.next_in(), 5);
        assert_eq!(receive(&mut s, &from_venue(b"8", 5, &[]), NOW), Verdict::Deliver);
        assert!(s.in_sync());
        // Reset mode: whatever its own number.
        receive(&mut s, &from_venue(b"4", 99, &[(36, "40")]), NOW);
        assert_eq!(s.next_in(), 40);
    }

    #[test]
    fn a_resend_request_gets_one_gap_fill() {
        let mut s = logged_on();
        for _ in 0..3 {
            s.send(b"D", NOW, |m| {
                m.int(11, 1);
            });
        }
        sent(&mut s);
        assert_eq!(s.next_out(), 5);
        receive(&mut s, &from_venue(b"2", 2, &[(7, "2"), (16, "0")]), NOW);
        let fill = sent(&mut s);
        assert_eq!(fill.len(), 1);
        let f = &fill[0];
        assert_eq!(f.0, "4");
        assert_eq!(
            (field(f, 34), field(f, 43), field(f, 123), field(f, 36)),
            (Some("2"), Some("Y"), Some("Y"), Some("5"))
        );
        assert!(field(f, 122).is_some(), "OrigSendingTime with PossDupFlag");
        assert_eq!(s.next_out(), 5, "a gap fill uses the number asked for");
    }

    #[test]
    fn outgoing_numbers_are_reserved_ahead_and_a_restart_starts_past_them() {
        let mut s = session();
        assert_eq!(s.progress(), None);
        s.connected(NOW);
        // The Logon used 1: a block is reserved from 2.
        assert_eq!(s.progress(), Some(Progress { inbound: 1, outbound: 2 + BLOCK }));
        assert_eq!(s.progress(), None, "reported once");
        receive(&mut s, &from_venue(b"A", 1, &[]), NOW);
        assert_eq!(s.progress(), Some(Progress { inbound: 2, outbound: 2 + BLOCK }));
        // A new block is reserved once fewer than half of the current one are left.
        let renewed = loop {
            s.send(b"0", NOW, |_| {});
            s.output().clear();
            if let Some(p) = s.progress() {
                break p;
            }
        };
        assert_eq!(2 + BLOCK - s.next_out(), LEAD - 1);
        assert_eq!(renewed.outbound, s.next_out() + BLOCK);
        // A restart resumes from what the journal had: out from the end of the block.
        let mut again = session();
        again.resume(Progress { inbound: 7, outbound: 70_000 });
        again.connected(NOW);
        let logon = sent(&mut again);
        assert_eq!(field(&logon[0], 34), Some("70000"));
        assert_eq!(again.next_in(), 7);
    }
}
