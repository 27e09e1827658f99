//! Fixed-point decimals: text ⇄ integer conversion for prices, quantities and money.
//!
//! Every amount in the node is an `i64` with an implied number of decimals (a per-symbol scale
//! for prices and quantities, [`MONEY_DECIMALS`] for cash, fees and P&L). This module never uses
//! floating point and never rounds silently: a value that does not fit the scale is an error.

/// Implied decimals of every money amount (cash, notional, fees, P&L).
pub const MONEY_DECIMALS: u8 = 8;

/// Why a decimal could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalError {
    /// Nothing to parse.
    Empty,
    /// Not a decimal number (letters, `NaN`, `Infinity`, a stray sign or dot…).
    Invalid,
    /// More significant decimals than the scale allows.
    TooManyDecimals,
    /// Does not fit in 64 bits at this scale.
    Overflow,
}

impl DecimalError {
    /// A short human explanation, used in error answers.
    pub fn describe(self) -> &'static str {
        match self {
            DecimalError::Empty => "is empty",
            DecimalError::Invalid => "is not a decimal number",
            DecimalError::TooManyDecimals => "has more decimals than allowed",
            DecimalError::Overflow => "is too large",
        }
    }
}

/// Powers of ten that fit an `i128` comfortably.
const fn pow10(n: u32) -> i128 {
    let mut v: i128 = 1;
    let mut i = 0;
    while i < n {
        v *= 10;
        i += 1;
    }
    v
}

/// Largest number of significant digits accepted in a mantissa.
const MAX_DIGITS: u32 = 36;

/// Parses a decimal such as `12.5`, `-0.001`, `1e3` or `2.50E-1` into an integer with `decimals`
/// implied decimals. Trailing zeros beyond the scale are accepted (`1.50` at one decimal is 15);
/// any other digit beyond the scale is [`DecimalError::TooManyDecimals`].
pub fn parse_decimal(s: &[u8], decimals: u8) -> Result<i64, DecimalError> {
    if s.is_empty() {
        return Err(DecimalError::Empty);
    }
    let mut i = 0;
    let negative = match s[0] {
        b'-' => {
            i = 1;
            true
        }
        b'+' => {
            i = 1;
            false
        }
        _ => false,
    };
    let mut mantissa: i128 = 0;
    let mut significant: u32 = 0;
    let mut any_digit = false;
    let mut frac_digits: i64 = 0;
    let mut seen_dot = false;
    while i < s.len() {
        let c = s[i];
        match c {
            b'0'..=b'9' => {
                any_digit = true;
                if mantissa != 0 || c != b'0' {
                    significant += 1;
                    if significant > MAX_DIGITS {
                        return Err(DecimalError::Overflow);
                    }
                }
                mantissa = mantissa * 10 + i128::from(c - b'0');
                if seen_dot {
                    frac_digits += 1;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            b'e' | b'E' => break,
            _ => return Err(DecimalError::Invalid),
        }
        i += 1;
    }
    if !any_digit {
        return Err(DecimalError::Invalid);
    }
    let mut exponent: i64 = 0;
    if i < s.len() {
        // s[i] is 'e' or 'E'
        i += 1;
        let mut exp_negative = false;
        if i < s.len() && (s[i] == b'-' || s[i] == b'+') {
            exp_negative = s[i] == b'-';
            i += 1;
        }
        if i == s.len() {
            return Err(DecimalError::Invalid);
        }
        while i < s.len() {
            let c = s[i];
            if !c.is_ascii_digit() {
                return Err(DecimalError::Invalid);
            }
            exponent = exponent * 10 + i64::from(c - b'0');
            if exponent > 1000 {
                return Err(if mantissa == 0 { DecimalError::Invalid } else { DecimalError::Overflow });
            }
            i += 1;
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    let shift = exponent - frac_digits + i64::from(decimals);
    let scaled = if mantissa == 0 {
        0
    } else if shift >= 0 {
        if shift > 38 {
            return Err(DecimalError::Overflow);
        }
        mantissa.checked_mul(pow10(shift as u32)).ok_or(DecimalError::Overflow)?
    } else {
        let drop = -shift;
        if drop > 38 {
            return Err(DecimalError::TooManyDecimals);
        }
        let div = pow10(drop as u32);
        if mantissa % div != 0 {
            return Err(DecimalError::TooManyDecimals);
        }
        mantissa / div
    };
    let signed = if negative { -scaled } else { scaled };
    i64::try_from(signed).map_err(|_| DecimalError::Overflow)
}

/// Appends `raw` (with `decimals` implied decimals) to `out`, keeping at least `min_decimals`
/// decimals and dropping trailing zeros beyond them.
pub fn write_decimal(out: &mut Vec<u8>, raw: i64, decimals: u8, min_decimals: u8) {
    let mut buf = itoa::Buffer::new();
    let magnitude = raw.unsigned_abs();
    if raw < 0 {
        out.push(b'-');
    }
    if decimals == 0 {
        out.extend_from_slice(buf.format(magnitude).as_bytes());
        return;
    }
    let scale = 10u64.pow(u32::from(decimals));
    out.extend_from_slice(buf.format(magnitude / scale).as_bytes());
    let mut frac = magnitude % scale;
    let mut shown = decimals;
    while shown > min_decimals && frac.is_multiple_of(10) {
        frac /= 10;
        shown -= 1;
    }
    if shown == 0 {
        return;
    }
    out.push(b'.');
    let digits = buf.format(frac).as_bytes();
    for _ in digits.len()..usize::from(shown) {
        out.push(b'0');
    }
    out.extend_from_slice(digits);
}

/// `raw` at `decimals` as text, without trailing zeros (`write_decimal` into a new string).
pub fn decimal_string(raw: i64, decimals: u8) -> String {
    let mut out = Vec::with_capacity(24);
    write_decimal(&mut out, raw, decimals, 0);
    String::from_utf8(out).unwrap_or_default()
}

/// Converts `value` from `from` decimals to `to` decimals, rounding half away from zero.
pub fn rescale(value: i128, from: u8, to: u8) -> i128 {
    if to >= from {
        value * pow10(u32::from(to - from))
    } else {
        let div = pow10(u32::from(from - to));
        let q = value / div;
        let r = value % div;
        if r.abs() * 2 >= div {
            q + value.signum()
        } else {
            q
        }
    }
}

/// Divides rounding half away from zero. `d` must not be zero.
pub fn div_round(n: i128, d: i128) -> i128 {
    // Most operands fit in 64 bits, where division is several times cheaper.
    if let (Ok(n), Ok(d)) = (i64::try_from(n), i64::try_from(d)) {
        if n != i64::MIN {
            let (q, r) = (n / d, n % d);
            let away = r.unsigned_abs() * 2 >= d.unsigned_abs();
            return i128::from(if away { q + if (n < 0) != (d < 0) { -1 } else { 1 } } else { q });
        }
    }
    let q = n / d;
    let r = n % d;
    if r.abs() * 2 >= d.abs() {
        q + if (n < 0) != (d < 0) { -1 } else { 1 }
    } else {
        q
    }
}

/// Divides rounding up (toward +∞) for non-negative numerators and positive divisors.
pub fn div_ceil(n: i128, d: i128) -> i128 {
    (n + d - 1).div_euclid(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, d: u8) -> Result<i64, DecimalError> {
        parse_decimal(s.as_bytes(), d)
    }

    #[test]
    fn parses_plain_and_scaled_numbers() {
        assert_eq!(p("12.5", 2), Ok(1250));
        assert_eq!(p("0.01", 2), Ok(1));
        assert_eq!(p("-0.5", 4), Ok(-5000));
        assert_eq!(p("7", 0), Ok(7));
        assert_eq!(p("1.50", 1), Ok(15));
        assert_eq!(p("000.100", 1), Ok(1));
        assert_eq!(p(".5", 1), Ok(5));
        assert_eq!(p("5.", 1), Ok(50));
        assert_eq!(p("+3", 0), Ok(3));
        assert_eq!(p("0", 8), Ok(0));
        assert_eq!(p("-0", 8), Ok(0));
    }

    #[test]
    fn parses_exponents_exactly() {
        assert_eq!(p("1e3", 0), Ok(1000));
        assert_eq!(p("2.5E-1", 2), Ok(25));
        assert_eq!(p("1e-2", 2), Ok(1));
        assert_eq!(p("1e-3", 2), Err(DecimalError::TooManyDecimals));
        assert_eq!(p("0e999", 2), Ok(0));
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        for s in ["NaN", "nan", "inf", "Infinity", "-", ".", "1..2", "1e", "1e+", "0x10", "1,5", " 1", "--1"] {
            assert_eq!(p(s, 2), Err(DecimalError::Invalid), "{s}");
        }
        assert_eq!(p("", 2), Err(DecimalError::Empty));
    }

    #[test]
    fn rejects_precision_loss_and_overflow() {
        assert_eq!(p("0.001", 2), Err(DecimalError::TooManyDecimals));
        assert_eq!(p("92233720368547758.08", 2), Err(DecimalError::Overflow));
        assert_eq!(p("92233720368547758.07", 2), Ok(i64::MAX));
        assert_eq!(p("1e40", 0), Err(DecimalError::Overflow));
        assert_eq!(p("1234567890123456789012345678901234567", 0), Err(DecimalError::Overflow));
    }

    #[test]
    fn writes_with_minimum_decimals() {
        let mut out = Vec::new();
        write_decimal(&mut out, 123_450, 4, 2);
        assert_eq!(out, b"12.345");
        out.clear();
        write_decimal(&mut out, -5, 2, 2);
        assert_eq!(out, b"-0.05");
        out.clear();
        write_decimal(&mut out, 1_000_000_000, 8, 2);
        assert_eq!(out, b"10.00");
        out.clear();
        write_decimal(&mut out, 1_000_000_000, 8, 0);
        assert_eq!(out, b"10");
        out.clear();
        write_decimal(&mut out, 42, 0, 0);
        assert_eq!(out, b"42");
    }

    #[test]
    fn rounding_helpers_round_half_away_from_zero() {
        assert_eq!(rescale(15, 1, 0), 2);
        assert_eq!(rescale(-15, 1, 0), -2);
        assert_eq!(rescale(14, 1, 0), 1);
        assert_eq!(rescale(3, 0, 2), 300);
        assert_eq!(div_round(7, 2), 4);
        assert_eq!(div_round(-7, 2), -4);
        assert_eq!(div_round(5, 3), 2);
        assert_eq!(div_round(-5, 3), -2);
        assert_eq!(div_round(5, -2), -3);
        assert_eq!(div_round(i128::from(i64::MAX) * 4 + 2, 4), i128::from(i64::MAX) + 1);
        assert_eq!(div_round(i128::from(i64::MIN), 2), i128::from(i64::MIN) / 2);
        assert_eq!(div_ceil(7, 2), 4);
        assert_eq!(div_ceil(6, 2), 3);
        assert_eq!(div_ceil(0, 2), 0);
    }

    proptest::proptest! {
        #[test]
        fn div_round_agrees_with_wide_arithmetic(n in proptest::num::i64::ANY, d in proptest::num::i64::ANY) {
            proptest::prop_assume!(d != 0);
            let (n, d) = (i128::from(n), i128::from(d));
            let (q, r) = (n / d, n % d);
            let want = if r.abs() * 2 >= d.abs() { q + if (n < 0) != (d < 0) { -1 } else { 1 } } else { q };
            proptest::prop_assert_eq!(div_round(n, d), want);
        }

        #[test]
        fn write_then_parse_round_trips(raw in proptest::num::i64::ANY, decimals in 0u8..=12) {
            let mut out = Vec::new();
            write_decimal(&mut out, raw, decimals, 0);
            proptest::prop_assert_eq!(parse_decimal(&out, decimals), Ok(raw));
        }
    }
}
