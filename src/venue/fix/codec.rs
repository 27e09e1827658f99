//! FIX 4.4 tag=value messages, read and written without allocating.
//!
//! A message is `8=FIX.4.4␁9=<body length>␁35=<type>␁…␁10=<checksum>␁`: the body length counts
//! the bytes from `35=` through the SOH before `10=`, and the checksum is the sum of every byte
//! before `10=`, modulo 256, in three digits. [`Encoder`] writes one into a buffer the caller
//! reuses, filling both in at the end. [`frame`] finds where the first message of a stream ends
//! (or says more bytes are needed), checking both, and [`Message::parse`] indexes its fields in
//! place, on the stack: values are slices of the received bytes.
//!
//! Values are never empty and hold no SOH, except those of the data fields, which the field
//! before gives the length of (RawData after RawDataLength, and the like); those are read by
//! length. Typed reads (integers, decimals at a symbol's scale, UTC timestamps, Y/N) refuse what
//! the standard does not allow, naming the tag.

use crate::fixed::{parse_decimal, write_decimal};
use crate::time::{civil_from_days, days_from_civil, Nanos, DAY, SECOND};

/// The field separator.
pub const SOH: u8 = 0x01;
/// What every message starts with.
const HEADER: &[u8] = b"8=FIX.4.4\x019=";
/// Longest body accepted or written.
pub const MAX_BODY: usize = 65_535;
/// Most fields in one message.
pub const MAX_FIELDS: usize = 256;
/// Room kept for the body length and its SOH while the body is written (5 digits and SOH).
const LENGTH_ROOM: usize = 6;
/// `10=NNN␁`.
const TRAILER: usize = 7;

/// Data fields and the field that gives their length: (length tag, data tag).
const DATA_FIELDS: [(u32, u32); 6] = [(90, 91), (93, 89), (95, 96), (212, 213), (354, 355), (350, 351)];

/// What is wrong with received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not `8=FIX.4.4␁9=` at the start.
    BeginString,
    /// BodyLength missing, not a number, or beyond [`MAX_BODY`].
    BodyLength,
    /// The body does not end where BodyLength says (no `10=` there).
    Trailer,
    /// The checksum does not match the bytes.
    Checksum,
    /// A field that is not `tag=value␁`, an empty value, or a data field longer than the message.
    Field,
    /// More than [`MAX_FIELDS`] fields.
    TooManyFields,
    /// The body does not start with MsgType (35).
    MsgType,
    /// The value of this tag is not of its type.
    Value(u32),
}

/// Writes one message; [`Encoder::finish`] completes it.
pub struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    body: usize,
}

impl<'a> Encoder<'a> {
    /// Starts a message of type `msg_type` at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>, msg_type: &[u8]) -> Encoder<'a> {
        let start = out.len();
        out.extend_from_slice(HEADER);
        out.extend_from_slice(&[b'0'; LENGTH_ROOM]);
        let body = out.len();
        let mut e = Encoder { out, start, body };
        e.bytes(35, msg_type);
        e
    }

    fn tag(&mut self, tag: u32) -> &mut Vec<u8> {
        self.out.extend_from_slice(itoa::Buffer::new().format(tag).as_bytes());
        self.out.push(b'=');
        self.out
    }

    /// A text value: not empty, no SOH (a caller's bug otherwise, caught in tests).
    pub fn bytes(&mut self, tag: u32, value: &[u8]) -> &mut Self {
        debug_assert!(!value.is_empty() && !value.contains(&SOH), "tag {tag}: {value:?}");
        self.tag(tag).extend_from_slice(value);
        self.out.push(SOH);
        self
    }

    /// A text value.
    pub fn str(&mut self, tag: u32, value: &str) -> &mut Self {
        self.bytes(tag, value.as_bytes())
    }

    /// An integer.
    pub fn int(&mut self, tag: u32, value: i64) -> &mut Self {
        let mut digits = itoa::Buffer::new();
        self.bytes(tag, digits.format(value).as_bytes())
    }

    /// A one-character value (Side, OrdType, TimeInForce…).
    pub fn char(&mut self, tag: u32, value: u8) -> &mut Self {
        self.bytes(tag, &[value])
    }

    /// A decimal: `raw` with `decimals` implied decimals, written without trailing zeros.
    pub fn decimal(&mut self, tag: u32, raw: i64, decimals: u8) -> &mut Self {
        write_decimal(self.tag(tag), raw, decimals, 0);
        self.out.push(SOH);
        self
    }

    /// A UTCTimestamp with milliseconds, `YYYYMMDD-HH:MM:SS.sss`.
    pub fn timestamp(&mut self, tag: u32, at: Nanos) -> &mut Self {
        let (y, m, d) = civil_from_days((at / DAY) as i64);
        let s = at % DAY / SECOND;
        let ms = at % SECOND / 1_000_000;
        let mut t = *b"00000000-00:00:00.000";
        for (range, value) in [(0..4, y), (4..6, m), (6..8, d)]
            .into_iter()
            .chain([(9..11, (s / 3600) as i64), (12..14, (s / 60 % 60) as i64), (15..17, (s % 60) as i64)])
            .chain([(18..21, ms as i64)])
        {
            let mut v = value;
            for i in range.rev() {
                t[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        self.bytes(tag, &t)
    }

    /// Fills in BodyLength and appends the checksum; the message's length. A body beyond
    /// [`MAX_BODY`] is a caller's bug (an order is a few hundred bytes).
    pub fn finish(self) -> usize {
        let Encoder { out, start, body } = self;
        let len = out.len() - body;
        assert!(len <= MAX_BODY, "a FIX body of {len} bytes");
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(len).as_bytes();
        // The body moves left over the room not needed for the length.
        let at = start + HEADER.len();
        let shift = LENGTH_ROOM - digits.len() - 1;
        out.copy_within(body.., body - shift);
        out.truncate(out.len() - shift);
        out[at..at + digits.len()].copy_from_slice(digits);
        out[at + digits.len()] = SOH;
        let sum = out[start..].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        out.extend_from_slice(&[b'1', b'0', b'=', b'0' + sum / 100, b'0' + sum / 10 % 10, b'0' + sum % 10, SOH]);
        out.len() - start
    }
}

/// The length of the first message of `buf`, checked (header, body length, trailer, checksum):
/// `Ok(None)` while it is incomplete.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, Error> {
    let n = buf.len().min(HEADER.len());
    if buf[..n] != HEADER[..n] {
        return Err(Error::BeginString);
    }
    if n < HEADER.len() {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut at = HEADER.len();
    loop {
        match buf.get(at) {
            None => return Ok(None),
            Some(&SOH) if at > HEADER.len() => break,
            Some(d @ b'0'..=b'9') if at - HEADER.len() < 5 => len = len * 10 + usize::from(d - b'0'),
            Some(_) => return Err(Error::BodyLength),
        }
        at += 1;
    }
    if len == 0 || len > MAX_BODY {
        return Err(Error::BodyLength);
    }
    let body_end = at + 1 + len;
    let total = body_end + TRAILER;
    if buf.len() < total {
        return Ok(None);
    }
    let trailer = &buf[body_end..total];
    if &trailer[..3] != b"10=" || trailer[6] != SOH || !trailer[3..6].iter().all(u8::is_ascii_digit) {
        return Err(Error::Trailer);
    }
    let stated = trailer[3..6].iter().fold(0u32, |s, d| s * 10 + u32::from(d - b'0'));
    let sum = buf[..body_end].iter().fold(0u8, |s, b| s.wrapping_add(*b));
    if stated != u32::from(sum) {
        return Err(Error::Checksum);
    }
    Ok(Some(total))
}

/// An unsigned integer of at most 19 digits.
fn digits(v: &[u8]) -> Option<u64> {
    (v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
        .then(|| v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A received message, its fields indexed where they lie.
pub struct Message<'a> {
    bytes: &'a [u8],
    /// (tag, start, end) of each field of the body, in order; the first is MsgType.
    fields: [(u32, u32, u32); MAX_FIELDS],
    len: usize,
}

impl<'a> Message<'a> {
    /// Indexes the fields of one message as [`frame`] delimited it.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, Error> {
        let total = frame(bytes)?.filter(|n| *n == bytes.len()).ok_or(Error::Trailer)?;
        let body = bytes[HEADER.len()..].iter().position(|b| *b == SOH).map_or(0, |p| HEADER.len() + p + 1);
        let end = total - TRAILER;
        let mut m = Message { bytes, fields: [(0, 0, 0); MAX_FIELDS], len: 0 };
        let mut at = body;
        // The length a data field will have, from the field before it.
        let mut data: Option<(u32, usize)> = None;
        while at < end {
            let mut tag = 0u32;
            let tag_start = at;
            while let Some(d) = bytes.get(at).copied().filter(|d| at < end && d.is_ascii_digit()) {
                if at == tag_start && d == b'0' || at - tag_start >= 9 {
                    return Err(Error::Field);
                }
                tag = tag * 10 + u32::from(d - b'0');
                at += 1;
            }
            if at == tag_start || bytes.get(at) != Some(&b'=') {
                return Err(Error::Field);
            }
            let value = at + 1;
            let value_end = match data.take() {
                Some((data_tag, n)) if data_tag == tag => value + n,
                _ => value + bytes[value..end].iter().position(|b| *b == SOH).ok_or(Error::Field)?,
            };
            if value_end >= end || value_end == value || bytes[value_end] != SOH {
                return Err(Error::Field);
            }
            if m.len == MAX_FIELDS {
                return Err(Error::TooManyFields);
            }
            m.fields[m.len] = (tag, value as u32, value_end as u32);
            m.len += 1;
            if let Some((_, data_tag)) = DATA_FIELDS.iter().find(|(length, _)| *length == tag) {
                let n = digits(&bytes[value..value_end]).filter(|n| *n <= MAX_BODY as u64).ok_or(Error::Value(tag))?;
                data = Some((*data_tag, n as usize));
            }
            at = value_end + 1;
        }
        if m.len == 0 || m.fields[0].0 != 35 {
            return Err(Error::MsgType);
        }
        Ok(m)
    }

    /// MsgType (35).
    pub fn msg_type(&self) -> &'a [u8] {
        self.value(0)
    }

    fn value(&self, i: usize) -> &'a [u8] {
        let (_, start, end) = self.fields[i];
        &self.bytes[start as usize..end as usize]
    }

    /// The fields of the body in order, MsgType first.
    pub fn fields(&self) -> impl Iterator<Item = (u32, &'a [u8])> + '_ {
        (0..self.len).map(|i| (self.fields[i].0, self.value(i)))
    }

    /// The first value of `tag`.
    pub fn get(&self, tag: u32) -> Option<&'a [u8]> {
        (0..self.len).find(|i| self.fields[*i].0 == tag).map(|i| self.value(i))
    }

    /// The first value of `tag` as text.
    pub fn str(&self, tag: u32) -> Result<Option<&'a str>, Error> {
        self.get(tag).map(|v| std::str::from_utf8(v).map_err(|_| Error::Value(tag))).transpose()
    }

    /// An unsigned integer (SeqNum, lengths…).
    pub fn uint(&self, tag: u32) -> Result<Option<u64>, Error> {
        self.get(tag).map(|v| digits(v).ok_or(Error::Value(tag))).transpose()
    }

    /// A one-character value.
    pub fn char(&self, tag: u32) -> Result<Option<u8>, Error> {
        match self.get(tag) {
            None => Ok(None),
            Some([c]) => Ok(Some(*c)),
            Some(_) => Err(Error::Value(tag)),
        }
    }

    /// Y or N (PossDupFlag…).
    pub fn flag(&self, tag: u32) -> Result<Option<bool>, Error> {
        match self.char(tag)? {
            None => Ok(None),
            Some(b'Y') => Ok(Some(true)),
            Some(b'N') => Ok(Some(false)),
            Some(_) => Err(Error::Value(tag)),
        }
    }

    /// A decimal (price, quantity) at `decimals` implied decimals: digits, one dot, a leading
    /// minus; finer than the scale is an error.
    pub fn decimal(&self, tag: u32, decimals: u8) -> Result<Option<i64>, Error> {
        let Some(v) = self.get(tag) else { return Ok(None) };
        let digits = v.strip_prefix(b"-").unwrap_or(v);
        if digits.iter().filter(|b| **b == b'.').count() > 1 || !digits.iter().all(|b| b.is_ascii_digit() || *b == b'.')
        {
            return Err(Error::Value(tag));
        }
        parse_decimal(v, decimals).map(Some).map_err(|_| Error::Value(tag))
    }

    /// A UTCTimestamp, `YYYYMMDD-HH:MM:SS` with 0, 3, 6 or 9 digits of fraction.
    pub fn timestamp(&self, tag: u32) -> Result<Option<Nanos>, Error> {
        let Some(v) = self.get(tag) else { return Ok(None) };
        let bad = Error::Value(tag);
        let num = |r: std::ops::Range<usize>| -> Result<u64, Error> {
            let s = v.get(r).ok_or(bad)?;
            if !s.iter().all(u8::is_ascii_digit) {
                return Err(bad);
            }
            Ok(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
        };
        if v.len() < 17 || v[8] != b'-' || v[11] != b':' || v[14] != b':' {
            return Err(bad);
        }
        let (y, mo, d) = (num(0..4)? as i64, num(4..6)? as i64, num(6..8)? as i64);
        let (h, mi, s) = (num(9..11)?, num(12..14)?, num(15..17)?);
        let days = days_from_civil(y, mo, d);
        if days < 0 || civil_from_days(days) != (y, mo, d) || h > 23 || mi > 59 || s > 60 {
            return Err(bad);
        }
        let fraction = match v.len() {
            17 => 0,
            21 | 24 | 27 if v[17] == b'.' => num(18..v.len())? * 10u64.pow(27 - v.len() as u32),
            _ => return Err(bad),
        };
        // Beyond 2554 nanoseconds since 1970 no longer fit.
        let at =
            (days as u64).checked_mul(DAY).and_then(|d| d.checked_add((h * 3600 + mi * 60 + s) * SECOND + fraction));
        at.map(Some).ok_or(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGON: &[u8] = b"8=FIX.4.4\x019=62\x0135=A\x0149=SG\x0156=VENUE\x0134=1\x0152=20261207-16:28:34.500\x0198=0\x01108=30\x0110=028\x01";
    /// An ExecutionReport (fill) with a data field that holds an SOH.
    const REPORT: &[u8] = b"8=FIX.4.4\x019=191\x0135=8\x0149=VENUE\x0156=SG\x0134=7\x0143=Y\x0152=20261207-16:28:35.000\x0137=X1\x0111=42\x0117=E9\x01150=F\x0139=2\x0155=BTCUSD\x0154=1\x0138=0.5\x0132=0.5\x0131=65000.25\x01151=0\x0114=0.5\x016=65000.25\x0195=5\x0196=a\x01b=c\x0160=20261207-16:28:34.999123\x0110=024\x01";
    /// 2026-12-07T16:28:34.5Z.
    const AT: Nanos = 1_796_660_914_500_000_000;

    #[test]
    fn a_logon_is_written_byte_for_byte() {
        let mut out = b"left alone".to_vec();
        let mut e = Encoder::new(&mut out, b"A");
        e.str(49, "SG").str(56, "VENUE").int(34, 1).timestamp(52, AT + 999).int(98, 0).int(108, 30);
        assert_eq!(e.finish(), LOGON.len());
        assert_eq!(&out[..10], b"left alone");
        assert_eq!(&out[10..], LOGON, "{}", String::from_utf8_lossy(&out).replace('\x01', "|"));
    }

    #[test]
    fn written_messages_read_back() {
        let mut out = Vec::new();
        for body in [1usize, 9, 10, 99, 100, 9_999, 10_000, MAX_BODY - 5] {
            out.clear();
            let mut e = Encoder::new(&mut out, b"D");
            // 35=D␁ is 5 bytes: fill to `body` with one text field where there is room.
            if body > 5 + 4 {
                e.bytes(58, &vec![b'x'; body - 5 - 4]);
            }
            let n = e.finish();
            assert_eq!(frame(&out), Ok(Some(n)), "{body}");
            let m = Message::parse(&out).unwrap();
            assert_eq!(m.msg_type(), b"D");
        }
        out.clear();
        let mut e = Encoder::new(&mut out, b"D");
        e.str(11, "c-1").char(54, b'2').decimal(38, 150, 3).decimal(44, -6_500_025, 2).timestamp(60, AT);
        e.finish();
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.str(11), Ok(Some("c-1")));
        assert_eq!(m.char(54), Ok(Some(b'2')));
        assert_eq!((m.decimal(38, 3), m.decimal(44, 2)), (Ok(Some(150)), Ok(Some(-6_500_025))));
        assert_eq!(m.get(38), Some(&b"0.15"[..]));
        assert_eq!(m.timestamp(60), Ok(Some(AT)));
    }

    #[test]
    fn a_report_reads_with_its_data_field_and_typed_values() {
        assert_eq!(frame(REPORT), Ok(Some(REPORT.len())));
        let m = Message::parse(REPORT).unwrap();
        assert_eq!(m.msg_type(), b"8");
        assert_eq!(m.get(96), Some(&b"a\x01b=c"[..]), "read by its length, SOH and all");
        assert_eq!(m.uint(34), Ok(Some(7)));
        assert_eq!(m.flag(43), Ok(Some(true)));
        assert_eq!(m.decimal(31, 2), Ok(Some(6_500_025)));
        assert_eq!(m.decimal(31, 1), Err(Error::Value(31)), "finer than the scale");
        assert_eq!(m.timestamp(60), Ok(Some(AT + 499_123_000)));
        assert_eq!(m.timestamp(52), Ok(Some(AT + 500_000_000)));
        assert_eq!(m.char(55), Err(Error::Value(55)));
        assert_eq!(m.uint(55), Err(Error::Value(55)));
        assert_eq!(m.get(9999), None);
        let tags: Vec<u32> = m.fields().map(|(t, _)| t).collect();
        assert_eq!(tags[..4], [35, 49, 56, 34]);
        assert_eq!(tags.len(), 22);
    }

    #[test]
    fn incomplete_streams_wait_and_bad_ones_are_named() {
        for n in 0..LOGON.len() {
            assert_eq!(frame(&LOGON[..n]), Ok(None), "{n} bytes");
        }
        let two = [LOGON, REPORT].concat();
        assert_eq!(frame(&two), Ok(Some(LOGON.len())));
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut m = LOGON.to_vec();
            f(&mut m);
            frame(&m).and_then(|_| Message::parse(&m).map(|_| ()))
        };
        assert_eq!(bad(&|m| m[2] = b'5'), Err(Error::BeginString));
        assert_eq!(bad(&|m| m[12] = b'x'), Err(Error::BodyLength));
        assert_eq!(bad(&|m| m[13] = b'1'), Err(Error::Trailer), "a body length one too short");
        assert_eq!(bad(&|m| m[20] = b'B'), Err(Error::Checksum));
        let mut zero = b"8=FIX.4.4\x019=0\x01".to_vec();
        zero.extend_from_slice(b"10=000\x01");
        assert_eq!(frame(&zero), Err(Error::BodyLength));
        assert_eq!(frame(b"8=FIX.4.4\x019=123456\x01"), Err(Error::BodyLength));
        // Well framed, badly formed: a body that does not start with 35, an empty value, a tag
        // with a leading zero, a data field longer than the message.
        for (body, error) in [
            (&b"49=SG\x0135=A\x01"[..], Error::MsgType),
            (b"35=A\x0149=\x01", Error::Field),
            (b"35=A\x01049=SG\x01", Error::Field),
            (b"35=A\x0195=50\x0196=ab\x01", Error::Field),
            (b"35=A\x01=SG\x01", Error::Field),
        ] {
            let mut m = HEADER.to_vec();
            m.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
            m.push(SOH);
            m.extend_from_slice(body);
            let sum = m.iter().fold(0u8, |s, b| s.wrapping_add(*b));
            m.extend_from_slice(format!("10={sum:03}\x01").as_bytes());
            assert_eq!(frame(&m), Ok(Some(m.len())));
            assert_eq!(Message::parse(&m).err(), Some(error), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn timestamps_refuse_what_is_not_one() {
        let read = |v: &str| {
            let mut out = Vec::new();
            let mut e = Encoder::new(&mut out, b"0");
            e.str(52, v);
            e.finish();
            Message::parse(&out).unwrap().timestamp(52)
        };
        assert_eq!(read("19700101-00:00:00"), Ok(Some(0)));
        assert_eq!(read("20240229-23:59:60.123456789"), Ok(Some(1_709_251_200 * SECOND + 123_456_789)));
        for v in [
            "20230229-00:00:00",
            "20261207-24:00:00",
            "20261207-16:28",
            "20261207-16:28:34.5",
            "2026120-16:28:34",
            "26201207-16:28:35.000",
        ] {
            assert_eq!(read(v), Err(Error::Value(52)), "{v}");
        }
    }
}
