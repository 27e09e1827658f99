//! Reading signal and order bodies into engine commands, without allocating.
//!
//! Two steps, so that authentication can sit between them: [`OrderFields::parse`] checks the
//! JSON and the field names (and finds a TradingView `passphrase`); [`OrderFields::resolve`]
//! turns the values into a [`SignalSpec`] in the symbol's units.

use crate::engine::risk::RejectCode;
use crate::engine::symbol::SymbolTable;
use crate::engine::types::{OrderType, SignalKey, Tag, Tif};
use crate::engine::{Intent, SignalSpec, Size};
use crate::error::Code;
use crate::error::{ApiError, Detail};
use crate::fixed::{parse_decimal, MONEY_DECIMALS};
use crate::json::{JsonStr, Reader, Value};

/// Which body is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `POST /v1/signals`: `action` (buy, sell, close, target).
    Signal,
    /// `POST /v1/orders`: `side` (buy, sell) and `qty`.
    Order,
}

/// The raw fields of a signal or order body, borrowed from it.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrderFields<'a> {
    /// `symbol`
    pub symbol: Option<Value<'a>>,
    /// `action` (signals)
    pub action: Option<Value<'a>>,
    /// `side` (orders)
    pub side: Option<Value<'a>>,
    /// `qty`
    pub qty: Option<Value<'a>>,
    /// `notional` (signals)
    pub notional: Option<Value<'a>>,
    /// `target` (signals)
    pub target: Option<Value<'a>>,
    /// `order_type`
    pub order_type: Option<Value<'a>>,
    /// `limit_price`
    pub limit_price: Option<Value<'a>>,
    /// `tif`
    pub tif: Option<Value<'a>>,
    /// `strategy`
    pub strategy: Option<Value<'a>>,
    /// `signal_id` (signals)
    pub signal_id: Option<Value<'a>>,
    /// `passphrase`: the API key, for senders that cannot set headers.
    pub passphrase: Option<JsonStr<'a>>,
}

const SIGNAL_UNKNOWN: &str = "unknown field (expected one of: symbol, action, qty, notional, target, order_type, \
     limit_price, tif, strategy, signal_id, passphrase): ";
const ORDER_UNKNOWN: &str =
    "unknown field (expected one of: symbol, side, qty, order_type, limit_price, tif, strategy, passphrase): ";

fn slot<'f, 'a>(f: &'f mut OrderFields<'a>, kind: BodyKind, name: &str) -> Option<&'f mut Option<Value<'a>>> {
    let common = match name {
        "symbol" => Some(&mut f.symbol),
        "qty" => Some(&mut f.qty),
        "order_type" => Some(&mut f.order_type),
        "limit_price" => Some(&mut f.limit_price),
        "tif" => Some(&mut f.tif),
        "strategy" => Some(&mut f.strategy),
        _ => None,
    };
    if common.is_some() {
        return common;
    }
    match (kind, name) {
        (BodyKind::Signal, "action") => Some(&mut f.action),
        (BodyKind::Signal, "notional") => Some(&mut f.notional),
        (BodyKind::Signal, "target") => Some(&mut f.target),
        (BodyKind::Signal, "signal_id") => Some(&mut f.signal_id),
        (BodyKind::Order, "side") => Some(&mut f.side),
        _ => None,
    }
}

/// Static spellings of the field names, so error messages need no allocation.
fn static_name(name: &str) -> &'static str {
    const NAMES: [&str; 12] = [
        "symbol",
        "action",
        "side",
        "qty",
        "notional",
        "target",
        "order_type",
        "limit_price",
        "tif",
        "strategy",
        "signal_id",
        "passphrase",
    ];
    NAMES.iter().find(|n| **n == name).copied().unwrap_or("field")
}

fn syntax<'a>(doc: &'a [u8]) -> impl Fn(crate::json::SyntaxError) -> ApiError<'a> {
    move |e| ApiError::with(Code::JsonMalformed, Detail::Syntax(e, doc))
}

impl<'a> OrderFields<'a> {
    /// Reads the body's JSON object; checks syntax, field names and duplicates.
    pub fn parse(doc: &'a [u8], kind: BodyKind) -> Result<Self, ApiError<'a>> {
        let mut f = OrderFields::default();
        let mut r = Reader::new(doc);
        let err = syntax(doc);
        r.begin_object().map_err(&err)?;
        while let Some(key) = r.next_key().map_err(&err)? {
            let mut buf = [0u8; 32];
            let name = match key.plain() {
                Some(n) => n,
                None => key.decode(&mut buf).unwrap_or(""),
            };
            let value = r.value().map_err(&err)?;
            if name == "passphrase" {
                match value {
                    Value::Str(s) => f.passphrase = Some(s),
                    Value::Null => {}
                    _ => return Err(ApiError::invalid("passphrase", "must be a string")),
                }
                continue;
            }
            let Some(slot) = slot(&mut f, kind, name) else {
                let raw = key.plain().unwrap_or("(escaped name)");
                let message = match kind {
                    BodyKind::Signal => SIGNAL_UNKNOWN,
                    BodyKind::Order => ORDER_UNKNOWN,
                };
                return Err(ApiError::with(Code::RequestUnknownField, Detail::TextWith(message, raw)));
            };
            if slot.is_some() {
                return Err(ApiError::with(
                    Code::RequestDuplicateField,
                    Detail::Field(static_name(name), "appears twice"),
                ));
            }
            match value {
                Value::Object | Value::Array => {
                    return Err(ApiError::invalid(static_name(name), "must be a string or a number, not a container"));
                }
                Value::Null => {}
                v => *slot = Some(v),
            }
        }
        r.end().map_err(&err)?;
        Ok(f)
    }

    /// Turns the fields into an engine command.
    pub fn resolve(&self, kind: BodyKind, symbols: &SymbolTable) -> Result<SignalSpec, ApiError<'a>> {
        let symbol_name = text(self.symbol, "symbol")?.ok_or(ApiError::missing("symbol"))?;
        let spec = symbols.find(symbol_name).ok_or(ApiError::with(
            Code::Engine(RejectCode::UnknownSymbol),
            Detail::TextWith("unknown symbol: ", symbol_name),
        ))?;
        let qd = spec.qty_decimals;
        let positive = |v: Option<Value<'a>>, field: &'static str, decimals: u8| -> Result<Option<i64>, ApiError<'a>> {
            match decimal(v, field, decimals)? {
                Some(x) if x <= 0 => Err(ApiError::invalid(field, "must be positive")),
                other => Ok(other),
            }
        };
        let qty = positive(self.qty, "qty", qd)?;
        let intent = match kind {
            BodyKind::Order => {
                let side = text(self.side, "side")?.ok_or(ApiError::missing("side"))?;
                let q = qty.ok_or(ApiError::missing("qty"))?;
                match side {
                    s if s.eq_ignore_ascii_case("buy") => Intent::Buy(Size::Qty(q)),
                    s if s.eq_ignore_ascii_case("sell") => Intent::Sell(Size::Qty(q)),
                    _ => return Err(ApiError::invalid("side", "must be \"buy\" or \"sell\"")),
                }
            }
            BodyKind::Signal => {
                let action = text(self.action, "action")?.ok_or(ApiError::missing("action"))?;
                let notional = positive(self.notional, "notional", MONEY_DECIMALS)?;
                let target = decimal(self.target, "target", qd)?;
                let size = |qty: Option<i64>| -> Result<Size, ApiError<'a>> {
                    if target.is_some() {
                        return Err(ApiError::invalid("target", "is only for the target action"));
                    }
                    match (qty, notional) {
                        (Some(q), None) => Ok(Size::Qty(q)),
                        (None, Some(n)) => Ok(Size::Notional(n)),
                        (Some(_), Some(_)) => Err(ApiError::invalid("qty", "and notional cannot both be given")),
                        (None, None) => Err(ApiError::missing("qty")),
                    }
                };
                let nothing_else = |what: &'static str| -> Result<(), ApiError<'a>> {
                    if qty.is_some() || notional.is_some() {
                        return Err(ApiError::invalid(what, "takes no qty or notional"));
                    }
                    Ok(())
                };
                match action {
                    a if a.eq_ignore_ascii_case("buy") => Intent::Buy(size(qty)?),
                    a if a.eq_ignore_ascii_case("sell") => Intent::Sell(size(qty)?),
                    a if a.eq_ignore_ascii_case("close") => {
                        nothing_else("close")?;
                        if target.is_some() {
                            return Err(ApiError::invalid("target", "is only for the target action"));
                        }
                        Intent::Close
                    }
                    a if a.eq_ignore_ascii_case("target") => {
                        nothing_else("target")?;
                        Intent::Target(target.ok_or(ApiError::missing("target"))?)
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "action",
                            "must be one of \"buy\", \"sell\", \"close\", \"target\"",
                        ))
                    }
                }
            }
        };
        let limit_price = positive(self.limit_price, "limit_price", spec.price_decimals)?;
        let order_type = match text(self.order_type, "order_type")? {
            None if limit_price.is_some() => OrderType::Limit,
            None => OrderType::Market,
            Some(t) if t.eq_ignore_ascii_case("market") => OrderType::Market,
            Some(t) if t.eq_ignore_ascii_case("limit") => OrderType::Limit,
            Some(_) => return Err(ApiError::invalid("order_type", "must be \"market\" or \"limit\"")),
        };
        let limit_price = match (order_type, limit_price) {
            (OrderType::Limit, Some(p)) => p,
            (OrderType::Limit, None) => return Err(ApiError::missing("limit_price")),
            (OrderType::Market, Some(_)) => return Err(ApiError::invalid("limit_price", "is only for limit orders")),
            (OrderType::Market, None) => 0,
        };
        let tif = match text(self.tif, "tif")? {
            None if order_type == OrderType::Market => Tif::Ioc,
            None => Tif::Gtc,
            Some(t) if t.eq_ignore_ascii_case("ioc") => Tif::Ioc,
            Some(t) if t.eq_ignore_ascii_case("gtc") => Tif::Gtc,
            Some(t) if t.eq_ignore_ascii_case("day") => Tif::Day,
            Some(_) => return Err(ApiError::invalid("tif", "must be \"ioc\", \"gtc\" or \"day\"")),
        };
        if order_type == OrderType::Market && tif != Tif::Ioc {
            return Err(ApiError::invalid("tif", "of a market order can only be \"ioc\""));
        }
        let strategy = match text(self.strategy, "strategy")? {
            None => Tag::EMPTY,
            Some(s) => Tag::new(s).ok_or(ApiError::invalid("strategy", "must be at most 32 bytes"))?,
        };
        let signal_id = match text(self.signal_id, "signal_id")? {
            None => None,
            Some("") => return Err(ApiError::invalid("signal_id", "must not be empty")),
            Some(s) => Some(SignalKey::new(s).ok_or(ApiError::invalid("signal_id", "must be at most 64 bytes"))?),
        };
        Ok(SignalSpec { symbol: spec.id, intent, order_type, limit_price, tif, strategy, signal_id })
    }
}

/// A string field without escapes (names, enums, ids never need them).
fn text<'a>(v: Option<Value<'a>>, field: &'static str) -> Result<Option<&'a str>, ApiError<'a>> {
    match v {
        None => Ok(None),
        Some(Value::Str(s)) => s.plain().map(Some).ok_or(ApiError::invalid(field, "must not contain escape sequences")),
        Some(_) => Err(ApiError::invalid(field, "must be a string")),
    }
}

/// A decimal field given as a JSON string or number.
pub fn decimal<'a>(v: Option<Value<'a>>, field: &'static str, decimals: u8) -> Result<Option<i64>, ApiError<'a>> {
    let raw = match v {
        None => return Ok(None),
        Some(Value::Num(n)) => n,
        Some(Value::Str(s)) => s.raw(),
        Some(_) => return Err(ApiError::invalid(field, "must be a decimal string or a number")),
    };
    parse_decimal(raw, decimals).map(Some).map_err(|e| ApiError::number(field, raw, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::symbol::SymbolSpec;
    use crate::engine::types::SymbolId;

    fn symbols() -> SymbolTable {
        SymbolTable::new(vec![SymbolSpec {
            id: SymbolId(0),
            name: "BTC-USD".into(),
            price_decimals: 2,
            qty_decimals: 4,
            tick: 1,
            lot: 1,
            max_order_qty: 1_000_000,
        }])
    }

    fn signal(body: &str) -> Result<SignalSpec, (u16, &'static str, String)> {
        let err = |e: ApiError<'_>| {
            let mut out = Vec::new();
            e.write(&mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            (e.status, e.code.as_str(), v["error"]["message"].as_str().unwrap().to_string())
        };
        let f = OrderFields::parse(body.as_bytes(), BodyKind::Signal).map_err(err)?;
        f.resolve(BodyKind::Signal, &symbols()).map_err(err)
    }

    #[test]
    fn reads_every_action() {
        let s = signal(r#"{"symbol":"BTC-USD","action":"buy","qty":"0.5"}"#).unwrap();
        assert_eq!((s.intent, s.order_type, s.tif), (Intent::Buy(Size::Qty(5000)), OrderType::Market, Tif::Ioc));
        let s = signal(r#"{"symbol":"BTC-USD","action":"SELL","notional":250}"#).unwrap();
        assert_eq!(s.intent, Intent::Sell(Size::Notional(25_000_000_000)));
        assert_eq!(signal(r#"{"symbol":"BTC-USD","action":"close"}"#).unwrap().intent, Intent::Close);
        assert_eq!(
            signal(r#"{"symbol":"BTC-USD","action":"target","target":"-1.25"}"#).unwrap().intent,
            Intent::Target(-12_500)
        );
        let s = signal(r#"{"symbol":"BTC-USD","action":"buy","qty":1,"limit_price":"100.5","tif":"day","strategy":"s1","signal_id":"x-1"}"#).unwrap();
        assert_eq!((s.order_type, s.limit_price, s.tif), (OrderType::Limit, 10_050, Tif::Day));
        assert_eq!(s.strategy.as_str(), "s1");
        assert_eq!(s.signal_id.unwrap().as_str(), "x-1");
    }

    #[test]
    fn explains_every_bad_field() {
        let cases: &[(&str, u16, &str, &str)] = &[
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":"0.00001"}"#,
                400,
                "request.invalid_number",
                "qty 0.00001 has more decimals than allowed",
            ),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":"NaN"}"#,
                400,
                "request.invalid_number",
                "qty NaN is not a decimal number",
            ),
            (r#"{"symbol":"BTC-USD","action":"buy","qty":-1}"#, 400, "request.invalid_field", "qty must be positive"),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":"1e30"}"#,
                400,
                "request.invalid_number",
                "qty 1e30 is too large",
            ),
            (r#"{"symbol":"BTC-USD","action":"buy"}"#, 400, "request.missing_field", "qty is required"),
            (r#"{"action":"buy","qty":1}"#, 400, "request.missing_field", "symbol is required"),
            (r#"{"symbol":"DOGE","action":"buy","qty":1}"#, 422, "symbol.unknown", "unknown symbol: DOGE"),
            (
                r#"{"symbol":"BTC-USD","action":"hold","qty":1}"#,
                400,
                "request.invalid_field",
                "action must be one of \"buy\", \"sell\", \"close\", \"target\"",
            ),
            (r#"{"symbol":"BTC-USD","action":"buy","qty":1,"colour":"red"}"#, 400, "request.unknown_field", ""),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":1,"qty":2}"#,
                400,
                "request.duplicate_field",
                "qty appears twice",
            ),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":1,"notional":5}"#,
                400,
                "request.invalid_field",
                "qty and notional cannot both be given",
            ),
            (
                r#"{"symbol":"BTC-USD","action":"close","qty":1}"#,
                400,
                "request.invalid_field",
                "close takes no qty or notional",
            ),
            (r#"{"symbol":"BTC-USD","action":"target"}"#, 400, "request.missing_field", "target is required"),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":1,"order_type":"limit"}"#,
                400,
                "request.missing_field",
                "limit_price is required",
            ),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":1,"order_type":"market","limit_price":5}"#,
                400,
                "request.invalid_field",
                "limit_price is only for limit orders",
            ),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":1,"tif":"gtc"}"#,
                400,
                "request.invalid_field",
                "tif of a market order can only be \"ioc\"",
            ),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":{"a":1}}"#,
                400,
                "request.invalid_field",
                "qty must be a string or a number, not a container",
            ),
            (r#"{"symbol":7,"action":"buy","qty":1}"#, 400, "request.invalid_field", "symbol must be a string"),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":1,"signal_id":""}"#,
                400,
                "request.invalid_field",
                "signal_id must not be empty",
            ),
            (
                r#"{"symbol":"BTC-USD","action":"buy","qty":1"#,
                400,
                "json.malformed",
                "malformed JSON at line 1, column 43 (byte 42): expected ',' or '}'",
            ),
            ("[]", 400, "json.malformed", "malformed JSON at line 1, column 1 (byte 0): expected '{'"),
        ];
        for (body, status, code, message) in cases {
            let (s, c, m) = signal(body).unwrap_err();
            assert_eq!((s, c), (*status, *code), "{body}: {m}");
            if !message.is_empty() {
                assert_eq!(m, *message, "{body}");
            }
        }
    }

    #[test]
    fn null_means_absent_and_passphrase_is_found() {
        let f = OrderFields::parse(
            br#"{"symbol":"BTC-USD","action":"buy","qty":1,"limit_price":null,"passphrase":"k"}"#,
            BodyKind::Signal,
        )
        .unwrap();
        assert_eq!(f.passphrase.unwrap().plain(), Some("k"));
        assert_eq!(f.resolve(BodyKind::Signal, &symbols()).unwrap().order_type, OrderType::Market);
    }

    #[test]
    fn orders_use_side_and_refuse_signal_fields() {
        let f = OrderFields::parse(br#"{"symbol":"BTC-USD","side":"buy","qty":"2"}"#, BodyKind::Order).unwrap();
        assert_eq!(f.resolve(BodyKind::Order, &symbols()).unwrap().intent, Intent::Buy(Size::Qty(20_000)));
        assert!(OrderFields::parse(br#"{"symbol":"BTC-USD","action":"buy","qty":"2"}"#, BodyKind::Order).is_err());
    }
}
