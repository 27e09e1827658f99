//! Pull reader over a complete JSON document in memory.

/// Deepest nesting the reader follows.
const MAX_DEPTH: usize = 8;

/// Where and why a document is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset of the problem.
    pub at: usize,
    /// What the reader expected there.
    pub expected: &'static str,
}

impl SyntaxError {
    /// 1-based line and column of [`SyntaxError::at`] in `doc`.
    pub fn line_column(&self, doc: &[u8]) -> (usize, usize) {
        let upto = &doc[..self.at.min(doc.len())];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = upto.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        (line, column)
    }
}

/// A JSON string as it appears in the document, quotes removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonStr<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// The string when it contains no escape sequence (the common case).
    pub fn plain(&self) -> Option<&'a str> {
        if self.escaped {
            None
        } else {
            // SAFETY-free: the reader validated UTF-8 when it scanned the string.
            std::str::from_utf8(self.raw).ok()
        }
    }

    /// Decodes the string into `buf` and returns it; `None` when it does not fit.
    pub fn decode<'b>(&self, buf: &'b mut [u8]) -> Option<&'b str>
    where
        'a: 'b,
    {
        let mut n = 0;
        let raw = self.raw;
        let mut i = 0;
        while i < raw.len() {
            let c = raw[i];
            if c != b'\\' {
                *buf.get_mut(n)? = c;
                n += 1;
                i += 1;
                continue;
            }
            let e = raw[i + 1];
            i += 2;
            let decoded = match e {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                _ => {
                    // \uXXXX, possibly a surrogate pair; validated by the reader.
                    let mut cp = hex4(&raw[i..i + 4]);
                    i += 4;
                    if (0xD800..0xDC00).contains(&cp) && raw.get(i) == Some(&b'\\') && raw.get(i + 1) == Some(&b'u') {
                        let low = hex4(&raw[i + 2..i + 6]);
                        if (0xDC00..0xE000).contains(&low) {
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                            i += 6;
                        }
                    }
                    let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
                    let mut tmp = [0u8; 4];
                    let s = ch.encode_utf8(&mut tmp);
                    let dst = buf.get_mut(n..n + s.len())?;
                    dst.copy_from_slice(s.as_bytes());
                    n += s.len();
                    continue;
                }
            };
            *buf.get_mut(n)? = decoded;
            n += 1;
        }
        std::str::from_utf8(&buf[..n]).ok()
    }

    /// The raw bytes between the quotes (escapes not decoded).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether the string contains escape sequences.
    pub fn is_escaped(&self) -> bool {
        self.escaped
    }
}

fn hex4(b: &[u8]) -> u32 {
    b.iter().fold(0, |acc, &c| acc * 16 + (c as char).to_digit(16).unwrap_or(0))
}

/// A scalar value, or the kind of a nested value that was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A string.
    Str(JsonStr<'a>),
    /// A number, as its text in the document.
    Num(&'a [u8]),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An object starts here; call [`Reader::begin_object`] to read it.
    Object,
    /// An array starts here; call [`Reader::begin_array`] to read it.
    Array,
}

impl Value<'_> {
    /// The JSON type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Num(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Null => "null",
            Value::Object => "an object",
            Value::Array => "an array",
        }
    }
}

/// Reads one JSON document token by token. Containers are entered explicitly, so a caller
/// reads exactly the shape it expects and reports anything else.
pub struct Reader<'a> {
    doc: &'a [u8],
    pos: usize,
    depth: usize,
    /// Per nesting level: whether the next member needs a leading comma.
    need_comma: [bool; MAX_DEPTH],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `doc`.
    pub fn new(doc: &'a [u8]) -> Self {
        Reader { doc, pos: 0, depth: 0, need_comma: [false; MAX_DEPTH] }
    }

    /// Current byte offset.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn err(&self, expected: &'static str) -> SyntaxError {
        SyntaxError { at: self.pos, expected }
    }

    fn skip_ws(&mut self) {
        while let Some(&c) = self.doc.get(self.pos) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.doc.get(self.pos).copied()
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        if self.depth + 1 >= MAX_DEPTH {
            return Err(self.err("less deeply nested JSON"));
        }
        self.pos += 1;
        self.depth += 1;
        self.need_comma[self.depth] = false;
        Ok(())
    }

    /// Consumes `{`.
    pub fn begin_object(&mut self) -> Result<(), SyntaxError> {
        if self.peek() != Some(b'{') {
            return Err(self.err("'{'"));
        }
        self.enter()
    }

    /// Consumes `[`.
    pub fn begin_array(&mut self) -> Result<(), SyntaxError> {
        if self.peek() != Some(b'[') {
            return Err(self.err("'['"));
        }
        self.enter()
    }

    /// The next member's key (and its `:`), or `None` after the closing `}`.
    pub fn next_key(&mut self) -> Result<Option<JsonStr<'a>>, SyntaxError> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                self.depth -= 1;
                self.need_comma[self.depth] = true;
                return Ok(None);
            }
            Some(b',') if self.need_comma[self.depth] => {
                self.pos += 1;
                self.skip_ws();
            }
            _ if self.need_comma[self.depth] => return Err(self.err("',' or '}'")),
            _ => {}
        }
        if self.doc.get(self.pos) != Some(&b'"') {
            return Err(self.err(if self.need_comma[self.depth] { "a key" } else { "a key or '}'" }));
        }
        let key = self.string()?;
        if self.peek() != Some(b':') {
            return Err(self.err("':'"));
        }
        self.pos += 1;
        self.need_comma[self.depth] = true;
        Ok(Some(key))
    }

    /// Whether another array element follows (consuming its `,`); `false` after the closing `]`.
    pub fn next_element(&mut self) -> Result<bool, SyntaxError> {
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                self.depth -= 1;
                self.need_comma[self.depth] = true;
                Ok(false)
            }
            Some(b',') if self.need_comma[self.depth] => {
                self.pos += 1;
                self.need_comma[self.depth] = true;
                Ok(true)
            }
            Some(_) if self.need_comma[self.depth] => Err(self.err("',' or ']'")),
            Some(_) => {
                self.need_comma[self.depth] = true;
                Ok(true)
            }
            None => Err(self.err("a value or ']'")),
        }
    }

    /// Reads a scalar; for `{` or `[` returns [`Value::Object`] / [`Value::Array`] without
    /// consuming anything.
    pub fn value(&mut self) -> Result<Value<'a>, SyntaxError> {
        match self.peek() {
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'{') => Ok(Value::Object),
            Some(b'[') => Ok(Value::Array),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("a value")),
        }
    }

    /// Skips one value of any kind, nested or not.
    pub fn skip_value(&mut self) -> Result<(), SyntaxError> {
        match self.value()? {
            Value::Object => {
                self.begin_object()?;
                while self.next_key()?.is_some() {
                    self.skip_value()?;
                }
            }
            Value::Array => {
                self.begin_array()?;
                while self.next_element()? {
                    self.skip_value()?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks that only whitespace follows the document.
    pub fn end(&mut self) -> Result<(), SyntaxError> {
        if self.peek().is_some() {
            return Err(self.err("the end of the document"));
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8], v: Value<'a>) -> Result<Value<'a>, SyntaxError> {
        if self.doc[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err("a value"))
        }
    }

    fn number(&mut self) -> Result<Value<'a>, SyntaxError> {
        let start = self.pos;
        let d = self.doc;
        let mut i = self.pos;
        if d.get(i) == Some(&b'-') {
            i += 1;
        }
        match d.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while matches!(d.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => {
                self.pos = i;
                return Err(self.err("a digit"));
            }
        }
        if d.get(i) == Some(&b'.') {
            i += 1;
            if !matches!(d.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return Err(self.err("a digit after '.'"));
            }
            while matches!(d.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        if matches!(d.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(d.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !matches!(d.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return Err(self.err("a digit in the exponent"));
            }
            while matches!(d.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        self.pos = i;
        Ok(Value::Num(&d[start..i]))
    }

    fn string(&mut self) -> Result<JsonStr<'a>, SyntaxError> {
        // self.doc[self.pos] == b'"'
        let d = self.doc;
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            match d.get(i) {
                None => {
                    self.pos = i;
                    return Err(self.err("a closing '\"'"));
                }
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    match d.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            let hex = d.get(i + 2..i + 6);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                self.pos = i;
                                return Err(self.err("four hex digits after \\u"));
                            }
                            i += 6;
                        }
                        _ => {
                            self.pos = i;
                            return Err(self.err("a valid escape sequence"));
                        }
                    }
                }
                Some(&c) if c < 0x20 => {
                    self.pos = i;
                    return Err(self.err("no control characters in a string"));
                }
                Some(_) => i += 1,
            }
        }
        let raw = &d[start..i];
        if std::str::from_utf8(raw).is_err() {
            self.pos = start;
            return Err(self.err("valid UTF-8"));
        }
        self.pos = i + 1;
        Ok(JsonStr { raw, escaped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_and_values(doc: &str) -> Result<Vec<(String, String)>, SyntaxError> {
        let mut r = Reader::new(doc.as_bytes());
        r.begin_object()?;
        let mut out = Vec::new();
        while let Some(k) = r.next_key()? {
            let mut kb = [0u8; 64];
            let key = k.decode(&mut kb).unwrap().to_string();
            let v = match r.value()? {
                Value::Str(s) => {
                    let mut b = [0u8; 64];
                    format!("s:{}", s.decode(&mut b).unwrap())
                }
                Value::Num(n) => format!("n:{}", std::str::from_utf8(n).unwrap()),
                Value::Bool(b) => format!("b:{b}"),
                Value::Null => "null".into(),
                other => {
                    let name = other.type_name().to_string();
                    r.skip_value()?;
                    name
                }
            };
            out.push((key, v));
        }
        r.end()?;
        Ok(out)
    }

    #[test]
    fn reads_flat_objects() {
        let got = keys_and_values(r#" {"a":"x","b":-1.5e3,"c":true,"d":null,"e":{"f":[1,2]}} "#).unwrap();
        let want = [("a", "s:x"), ("b", "n:-1.5e3"), ("c", "b:true"), ("d", "null"), ("e", "an object")];
        assert_eq!(got.len(), want.len());
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
        assert!(keys_and_values("{}").unwrap().is_empty());
    }

    #[test]
    fn decodes_escapes() {
        let got = keys_and_values(r#"{"k\u0065y":"a\"b\\c\n\u00e9\ud83d\ude00"}"#).unwrap();
        assert_eq!(got[0].0, "key");
        assert_eq!(got[0].1, "s:a\"b\\c\né😀");
    }

    #[test]
    fn reports_where_it_failed() {
        let cases: [(&str, usize, &str); 10] = [
            ("", 0, "'{'"),
            ("{\"a\" 1}", 5, "':'"),
            ("{\"a\":1 \"b\":2}", 7, "',' or '}'"),
            ("{\"a\":}", 5, "a value"),
            ("{\"a\":01}", 6, "',' or '}'"),
            ("{\"a\":1.}", 7, "a digit after '.'"),
            ("{\"a\":\"x", 7, "a closing '\"'"),
            ("{\"a\":tru}", 5, "a value"),
            ("{\"a\":1} x", 8, "the end of the document"),
            ("{\"a\":NaN}", 5, "a value"),
        ];
        for (doc, at, expected) in cases {
            let e = keys_and_values(doc).unwrap_err();
            assert_eq!((e.at, e.expected), (at, expected), "{doc}");
        }
    }

    #[test]
    fn rejects_deep_nesting_and_bad_strings() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(20), "]".repeat(20));
        assert_eq!(keys_and_values(&deep).unwrap_err().expected, "less deeply nested JSON");
        assert!(keys_and_values("{\"a\":\"\u{1}\"}").is_err());
        assert!(keys_and_values(r#"{"a":"\x"}"#).is_err());
        assert!(keys_and_values(r#"{"a":"\u12"}"#).is_err());
        let bad_utf8 = b"{\"a\":\"\xff\"}";
        let mut r = Reader::new(bad_utf8);
        r.begin_object().unwrap();
        assert_eq!(r.next_key().unwrap().unwrap().plain(), Some("a"));
        assert_eq!(r.value().unwrap_err().expected, "valid UTF-8");
    }

    #[test]
    fn reads_arrays_of_objects() {
        let mut r = Reader::new(br#"[{"a":1},{"a":2}]"#);
        r.begin_array().unwrap();
        let mut n = 0;
        while r.next_element().unwrap() {
            r.begin_object().unwrap();
            while r.next_key().unwrap().is_some() {
                r.value().unwrap();
                n += 1;
            }
        }
        r.end().unwrap();
        assert_eq!(n, 2);
        let mut r = Reader::new(b"[1 2]");
        r.begin_array().unwrap();
        assert!(r.next_element().unwrap());
        r.value().unwrap();
        assert_eq!(r.next_element().unwrap_err().expected, "',' or ']'");
    }

    #[test]
    fn line_and_column() {
        let doc = b"{\n  \"a\": x\n}";
        let e = keys_and_values(std::str::from_utf8(doc).unwrap()).unwrap_err();
        assert_eq!(e.line_column(doc), (2, 8));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(doc in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut r = Reader::new(&doc);
            let _ = r.skip_value().and_then(|_| r.end());
        }
    }
}
