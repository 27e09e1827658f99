//! Small `Copy` domain values shared by the engine and its adapters.

use std::fmt;

pub use crate::time::{Nanos, DAY, SECOND};

/// The most one order may be worth, in money units (10^17: a billion of the account currency).
/// A symbol's highest price keeps its largest order within it ([`super::symbol::SymbolSpec::max_price`]),
/// so one fill, with its slippage (at most 100%) and fee (at most 100%), moves cash by less than
/// three times this.
pub const MAX_ORDER_MONEY: i64 = 100_000_000_000_000_000;

/// How far an account's cash or a position's cost may reach, in money units (4·10^18, half of
/// `i64`): an order that could carry either past it is refused, so no sum of fills overflows.
pub const MAX_BOOK_MONEY: i64 = 4_000_000_000_000_000_000;

/// The most cash an account may start with, in money units (10^18: ten billion).
pub const MAX_START_CASH: i64 = MAX_BOOK_MONEY / 4;

/// `v` as an `i64`, the nearest end of the range when it does not fit: for figures that only
/// inform (equity, exposure, unrealized P&L) under quotes far from any order's price.
pub fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// Index of a configured symbol.
    SymbolId(u16)
);
id_type!(
    /// An account, numbered from 1.
    AccountId(u32)
);
id_type!(
    /// An API key, numbered from 1.
    KeyId(u32)
);
id_type!(
    /// An order, numbered from 1 across the node.
    OrderId(u64)
);

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Side {
    /// Buy.
    Buy,
    /// Sell.
    Sell,
}

impl Side {
    /// `1` for buy, `-1` for sell.
    pub fn sign(self) -> i64 {
        match self {
            Side::Buy => 1,
            Side::Sell => -1,
        }
    }

    /// The opposite side.
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }

    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// Market or limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum OrderType {
    /// Fill at the touch.
    Market,
    /// Fill at the limit price or better.
    Limit,
}

impl OrderType {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderType::Market => "market",
            OrderType::Limit => "limit",
        }
    }
}

/// Time in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Tif {
    /// Immediate or cancel: whatever does not fill at once is canceled.
    Ioc,
    /// Good till canceled.
    Gtc,
    /// Expires at the end of the UTC day.
    Day,
}

impl Tif {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Tif::Ioc => "ioc",
            Tif::Gtc => "gtc",
            Tif::Day => "day",
        }
    }
}

/// Serializes these types as their `as_str()` text (for `journal inspect --json`).
macro_rules! serialize_as_str {
    ($($t:ty),*) => {
        $(impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        })*
    };
}
pub(crate) use serialize_as_str;

serialize_as_str!(Side, OrderType, Tif);

impl<const N: usize> serde::Serialize for ShortStr<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Serializes bytes as lowercase hex.
pub fn serialize_hex<S: serde::Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    s.serialize_str(&out)
}

/// A short string stored inline (no heap), for tags and client ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShortStr<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> ShortStr<N> {
    /// The empty string.
    pub const EMPTY: Self = ShortStr { len: 0, bytes: [0; N] };

    /// Copies `s`; `None` when it is longer than `N` bytes.
    pub fn new(s: &str) -> Option<Self> {
        if s.len() > N || s.len() > usize::from(u8::MAX) {
            return None;
        }
        let mut bytes = [0; N];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(ShortStr { len: s.len() as u8, bytes })
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Built from a `&str` cut at its own length; a value read back from disk is checked anyway.
        self.bytes.get(..usize::from(self.len)).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("")
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> Default for ShortStr<N> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<const N: usize> fmt::Debug for ShortStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A strategy tag attached to orders (at most 32 bytes).
pub type Tag = ShortStr<32>;
/// A client-chosen signal id (at most 64 bytes).
pub type SignalKey = ShortStr<64>;

/// The UTC day number of a timestamp.
pub fn day_of(ts: Nanos) -> u32 {
    (ts / DAY) as u32
}

/// Hasher for keys the node itself makes (sequential ids, SHA-256 digests): a multiply-fold,
/// much cheaper than SipHash. Never used for keys a client chooses, like signal ids, which keep
/// the standard randomly seeded hasher against collision attacks.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

/// `BuildHasher` for [`IdHasher`].
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;
