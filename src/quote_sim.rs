//! The built-in quote simulator: a random walk per symbol, deterministic for a seed.
//!
//! Pure: it makes quotes from its state and the time it is given; the server's timer loop feeds
//! them to the engine like any other market data.

use crate::engine::market::Quote;
use crate::engine::symbol::SymbolSpec;
use crate::engine::types::Nanos;

/// SplitMix64: small, fast, and good enough for a demo market.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Roughly normal with mean 0 and standard deviation 1, in thousandths (sum of 12 uniforms).
    fn normal_milli(&mut self) -> i64 {
        let sum: i64 = (0..12).map(|_| (self.next() % 1000) as i64).sum();
        sum - 6000 + 6
    }
}

struct Walk {
    spec: SymbolSpec,
    mid: i64,
    volatility_bps: u32,
}

/// The simulator.
pub struct QuoteSimulator {
    rng: Rng,
    walks: Vec<Walk>,
}

impl QuoteSimulator {
    /// A simulator over `symbols`, each starting at its initial price with its volatility.
    pub fn new(seed: u64, symbols: impl IntoIterator<Item = (SymbolSpec, i64, u32)>) -> Self {
        QuoteSimulator {
            rng: Rng(seed),
            walks: symbols.into_iter().map(|(spec, mid, volatility_bps)| Walk { spec, mid, volatility_bps }).collect(),
        }
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.walks.len()
    }

    /// Whether it simulates nothing.
    pub fn is_empty(&self) -> bool {
        self.walks.is_empty()
    }

    /// The next quote of symbol number `i`.
    pub fn next(&mut self, i: usize, now: Nanos) -> Quote {
        let n = self.rng.normal_milli();
        let size_a = 1 + (self.rng.next() % 1000) as i64;
        let size_b = 1 + (self.rng.next() % 1000) as i64;
        let w = &mut self.walks[i];
        let tick = w.spec.tick;
        let step = i128::from(w.mid) * i128::from(w.volatility_bps) * i128::from(n) / 10_000_000;
        let mid = (w.mid + step as i64).max(tick * 10);
        w.mid = mid - mid % tick;
        // Spread of about one basis point, at least one tick.
        let half = ((w.mid / 20_000) / tick * tick).max(tick);
        let lots = w.spec.lot * (w.spec.max_order_qty / w.spec.lot / 100).max(1);
        Quote {
            symbol: w.spec.id,
            bid: w.mid - half,
            ask: w.mid + half,
            bid_size: lots * size_b,
            ask_size: lots * size_a,
            ts: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::SymbolId;

    fn spec() -> SymbolSpec {
        SymbolSpec {
            id: SymbolId(0),
            name: "X".into(),
            price_decimals: 2,
            qty_decimals: 2,
            tick: 5,
            lot: 10,
            max_order_qty: 100_000,
        }
    }

    #[test]
    fn quotes_are_on_tick_uncrossed_and_deterministic() {
        let mut a = QuoteSimulator::new(7, [(spec(), 1_000_000, 50)]);
        let mut b = QuoteSimulator::new(7, [(spec(), 1_000_000, 50)]);
        let mut moved = false;
        let mut last = 0;
        for t in 0..10_000 {
            let q = a.next(0, t);
            assert_eq!(q, b.next(0, t));
            assert!(q.bid > 0 && q.bid < q.ask, "{q:?}");
            assert_eq!(q.bid % 5, 0);
            assert_eq!(q.ask % 5, 0);
            assert!(q.bid_size > 0 && q.bid_size % 10 == 0);
            moved |= last != 0 && q.mid() != last;
            last = q.mid();
        }
        assert!(moved);
        let mut c = QuoteSimulator::new(8, [(spec(), 1_000_000, 50)]);
        assert_ne!(
            (0..10).map(|t| c.next(0, t).bid).collect::<Vec<_>>(),
            (0..10).map(|t| a.next(0, t).bid).collect::<Vec<_>>()
        );
    }
}
