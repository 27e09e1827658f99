//! The binary `COPY … FROM STDIN (FORMAT binary)` stream, written by hand: one buffer per table
//! and batch, values encoded the way PostgreSQL's binary send functions do.

/// PostgreSQL's epoch (2000-01-01 UTC) in Unix microseconds.
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

/// The rows of one `COPY`, in binary format.
pub struct CopyBuf {
    bytes: Vec<u8>,
    rows: usize,
}

impl Default for CopyBuf {
    fn default() -> Self {
        CopyBuf::new()
    }
}

impl CopyBuf {
    /// An empty stream (the header only).
    pub fn new() -> CopyBuf {
        let mut bytes = Vec::with_capacity(64 * 1024);
        bytes.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        bytes.extend_from_slice(&0i32.to_be_bytes()); // flags
        bytes.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyBuf { bytes, rows: 0 }
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Starts a row of `fields` values; write exactly that many next.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.rows += 1;
        self.bytes.extend_from_slice(&fields.to_be_bytes());
        self
    }

    fn field(&mut self, value: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(&(value.len() as i32).to_be_bytes());
        self.bytes.extend_from_slice(value);
        self
    }

    /// SQL NULL.
    pub fn null(&mut self) -> &mut Self {
        self.bytes.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    /// `integer`.
    pub fn int4(&mut self, v: i32) -> &mut Self {
        self.field(&v.to_be_bytes())
    }

    /// `bigint`.
    pub fn int8(&mut self, v: i64) -> &mut Self {
        self.field(&v.to_be_bytes())
    }

    /// `boolean`.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.field(&[u8::from(v)])
    }

    /// `text`.
    pub fn text(&mut self, v: &str) -> &mut Self {
        self.field(v.as_bytes())
    }

    /// `bytea`.
    pub fn bytea(&mut self, v: &[u8]) -> &mut Self {
        self.field(v)
    }

    /// `timestamptz` from Unix nanoseconds (PostgreSQL keeps microseconds: the rest is cut).
    pub fn timestamptz(&mut self, unix_ns: u64) -> &mut Self {
        let us = (unix_ns / 1_000) as i64 - PG_EPOCH_UNIX_US;
        self.field(&us.to_be_bytes())
    }

    /// `numeric` from a fixed-point integer with `decimals` digits after the point.
    pub fn numeric(&mut self, raw: i64, decimals: u8) -> &mut Self {
        let mut out = [0u8; 8 + 2 * 8];
        let n = encode_numeric(raw, decimals, &mut out);
        self.field(&out[..n])
    }

    /// The finished stream (with its trailer), leaving the buffer empty for the next batch.
    pub fn finish(&mut self) -> bytes::Bytes {
        self.bytes.extend_from_slice(&(-1i16).to_be_bytes());
        let done = std::mem::take(&mut self.bytes);
        *self = CopyBuf::new();
        bytes::Bytes::from(done)
    }
}

/// Writes `raw / 10^decimals` as PostgreSQL's binary numeric (base-10000 digits) into `out`;
/// returns the length. `out` holds the 8-byte header and up to 8 digits (an i64 with up to 18
/// decimals needs at most 7).
fn encode_numeric(raw: i64, decimals: u8, out: &mut [u8; 24]) -> usize {
    let negative = raw < 0;
    let mut magnitude = u128::from(raw.unsigned_abs());
    // Align the fraction to whole base-10000 digits.
    let frac_groups = usize::from(decimals).div_ceil(4);
    magnitude *= 10u128.pow((frac_groups * 4 - usize::from(decimals)) as u32);
    let mut groups = [0u16; 12];
    let mut count = 0;
    while magnitude > 0 {
        groups[count] = (magnitude % 10_000) as u16;
        magnitude /= 10_000;
        count += 1;
    }
    // groups[0] is the least significant. Digits before the point: count - frac_groups.
    let mut weight = count as i16 - frac_groups as i16 - 1;
    let mut low = 0;
    while low < count && groups[low] == 0 {
        low += 1;
    }
    let mut high = count;
    while high > low && groups[high - 1] == 0 {
        high -= 1;
        weight -= 1;
    }
    let digits = high - low;
    if digits == 0 {
        weight = 0;
    }
    let sign: u16 = if negative && digits > 0 { 0x4000 } else { 0 };
    out[0..2].copy_from_slice(&(digits as i16).to_be_bytes());
    out[2..4].copy_from_slice(&weight.to_be_bytes());
    out[4..6].copy_from_slice(&sign.to_be_bytes());
    out[6..8].copy_from_slice(&u16::from(decimals).to_be_bytes());
    for (i, g) in groups[low..high].iter().rev().enumerate() {
        out[8 + 2 * i..10 + 2 * i].copy_from_slice(&g.to_be_bytes());
    }
    8 + 2 * digits
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (ndigits, weight, sign, dscale, digits)
    fn numeric(raw: i64, decimals: u8) -> (i16, i16, u16, u16, Vec<u16>) {
        let mut out = [0u8; 24];
        let n = encode_numeric(raw, decimals, &mut out);
        let be = |i: usize| u16::from_be_bytes([out[i], out[i + 1]]);
        let digits = (8..n).step_by(2).map(be).collect();
        (be(0) as i16, be(2) as i16, be(4), be(6), digits)
    }

    #[test]
    fn numerics_match_postgres_binary_form() {
        // 12345.6789 at 8 decimals: 1|2345|6789
        assert_eq!(numeric(1_234_567_890_000, 8), (3, 1, 0, 8, vec![1, 2345, 6789]));
        // -0.5 at 2 decimals: weight -1, digit 5000
        assert_eq!(numeric(-50, 2), (1, -1, 0x4000, 2, vec![5000]));
        // 0
        assert_eq!(numeric(0, 8), (0, 0, 0, 8, vec![]));
        // 100000000 (1e8) with 0 decimals: 1|0000|0000 → trailing zero groups dropped, weight 2
        assert_eq!(numeric(100_000_000, 0), (1, 2, 0, 0, vec![1]));
        // 0.00000001 at 8 decimals: weight -2, digit 0001
        assert_eq!(numeric(1, 8), (1, -2, 0, 8, vec![1]));
        // i64::MIN does not overflow
        let (n, _, sign, _, _) = numeric(i64::MIN, 8);
        assert!(n > 0 && sign == 0x4000);
    }

    #[test]
    fn a_stream_has_header_rows_and_trailer() {
        let mut c = CopyBuf::new();
        c.row(2).int4(7).null();
        assert_eq!(c.rows(), 1);
        let b = c.finish();
        assert_eq!(&b[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&b[19..21], &2i16.to_be_bytes());
        assert_eq!(&b[21..25], &4i32.to_be_bytes());
        assert_eq!(&b[25..29], &7i32.to_be_bytes());
        assert_eq!(&b[29..33], &(-1i32).to_be_bytes());
        assert_eq!(&b[33..], &(-1i16).to_be_bytes());
        assert_eq!(c.rows(), 0, "finish leaves an empty stream");
    }

    #[test]
    fn timestamps_count_from_2000() {
        let mut c = CopyBuf::new();
        c.row(1).timestamptz(946_684_800_000_001_999);
        let b = c.finish();
        assert_eq!(&b[25..33], &1i64.to_be_bytes());
    }
}
