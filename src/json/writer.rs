//! Appends JSON to a reused buffer.

use crate::fixed;

/// Writes JSON into a borrowed `Vec<u8>`; commas are placed automatically.
pub struct Writer<'b> {
    out: &'b mut Vec<u8>,
    need_comma: bool,
}

impl<'b> Writer<'b> {
    /// A writer appending to `out`.
    pub fn new(out: &'b mut Vec<u8>) -> Self {
        Writer { out, need_comma: false }
    }

    fn before_value(&mut self) {
        if self.need_comma {
            self.out.push(b',');
        }
        self.need_comma = true;
    }

    /// `{`
    pub fn begin_object(&mut self) -> &mut Self {
        self.before_value();
        self.out.push(b'{');
        self.need_comma = false;
        self
    }

    /// `}`
    pub fn end_object(&mut self) -> &mut Self {
        self.out.push(b'}');
        self.need_comma = true;
        self
    }

    /// `[`
    pub fn begin_array(&mut self) -> &mut Self {
        self.before_value();
        self.out.push(b'[');
        self.need_comma = false;
        self
    }

    /// `]`
    pub fn end_array(&mut self) -> &mut Self {
        self.out.push(b']');
        self.need_comma = true;
        self
    }

    /// A member key; the next call writes its value.
    pub fn key(&mut self, k: &str) -> &mut Self {
        self.before_value();
        self.escaped(k);
        self.out.push(b':');
        self.need_comma = false;
        self
    }

    /// A string value.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.before_value();
        self.escaped(s);
        self
    }

    /// An unsigned integer value.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.before_value();
        self.out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self
    }

    /// A signed integer value.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.before_value();
        self.out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self
    }

    /// A boolean value.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.before_value();
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        self
    }

    /// `null`.
    pub fn null(&mut self) -> &mut Self {
        self.before_value();
        self.out.extend_from_slice(b"null");
        self
    }

    /// A fixed-point decimal as a JSON string (`"12.50"`).
    pub fn decimal(&mut self, raw: i64, decimals: u8, min_decimals: u8) -> &mut Self {
        self.before_value();
        self.out.push(b'"');
        fixed::write_decimal(self.out, raw, decimals, min_decimals);
        self.out.push(b'"');
        self
    }

    /// Raw text inside a string value being built piecewise: opens the quote.
    pub fn begin_string(&mut self) -> &mut Self {
        self.before_value();
        self.out.push(b'"');
        self
    }

    /// Appends escaped text to a string opened with [`Writer::begin_string`].
    pub fn string_part(&mut self, s: &str) -> &mut Self {
        escape_into(self.out, s);
        self
    }

    /// Appends an integer to a string opened with [`Writer::begin_string`].
    pub fn string_int(&mut self, v: i64) -> &mut Self {
        self.out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self
    }

    /// Appends a decimal to a string opened with [`Writer::begin_string`].
    pub fn string_decimal(&mut self, raw: i64, decimals: u8, min_decimals: u8) -> &mut Self {
        fixed::write_decimal(self.out, raw, decimals, min_decimals);
        self
    }

    /// Closes a string opened with [`Writer::begin_string`].
    pub fn end_string(&mut self) -> &mut Self {
        self.out.push(b'"');
        self
    }

    fn escaped(&mut self, s: &str) {
        self.out.push(b'"');
        escape_into(self.out, s);
        self.out.push(b'"');
    }
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_documents_with_commas() {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        w.begin_object();
        w.key("a").u64(1);
        w.key("b").begin_array().str("x\"y\u{1}").null().bool(true).end_array();
        w.key("c").begin_object().key("d").decimal(1250, 2, 2).end_object();
        w.key("e").begin_string().string_part("n=").string_int(-3).end_string();
        w.end_object();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"a":1,"b":["x\"y\u0001",null,true],"c":{"d":"12.50"},"e":"n=-3"}"#
        );
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["b"][0], "x\"y\u{1}");
    }
}
