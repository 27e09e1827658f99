//! Answers to signals that carried a `signal_id`, kept for a while so that a retried signal
//! gets the original answer instead of a second order.
//!
//! Bounded: records expire after the configured time to live, and when the store is full the
//! oldest record is dropped early (counted in `evicted`). The map is sized once, up front, so
//! inserting never allocates in steady state (see `new` for the headroom that takes).

use std::collections::{HashMap, VecDeque};

use super::event::SignalAnswer;
use super::types::{AccountId, Nanos, SignalKey};

type Key = (AccountId, SignalKey);

/// The idempotency records of the node.
#[derive(Debug)]
pub struct IdempotencyStore {
    answers: HashMap<Key, (Nanos, SignalAnswer)>,
    by_age: VecDeque<(Nanos, Key)>,
    capacity: usize,
    ttl: Nanos,
    /// Records dropped before their time because the store was full.
    pub evicted: u64,
}

impl IdempotencyStore {
    /// A store for at most `capacity` records of `ttl` nanoseconds each.
    pub fn new(capacity: usize, ttl: Nanos) -> Self {
        IdempotencyStore {
            // Twice the bound: with deletions the table fills with tombstones, and hashbrown
            // cleans them in place (no allocation) only while it is at most half full.
            answers: HashMap::with_capacity(2 * capacity),
            by_age: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            ttl,
            evicted: 0,
        }
    }

    /// The answer recorded for this signal, if it is still live at `now`.
    pub fn get(&self, account: AccountId, signal: &SignalKey, now: Nanos) -> Option<&SignalAnswer> {
        let (at, answer) = self.answers.get(&(account, *signal))?;
        (now < at + self.ttl).then_some(answer)
    }

    /// Records an answer given at `at`.
    pub fn insert(&mut self, account: AccountId, signal: SignalKey, answer: SignalAnswer, at: Nanos) {
        self.expire(at);
        let key = (account, signal);
        if self.answers.insert(key, (at, answer)).is_some() {
            // A replayed expired record for the same key: its old age entry is skipped on expiry.
            self.by_age.retain(|(_, k)| *k != key);
        }
        if self.by_age.len() == self.capacity {
            if let Some((_, old)) = self.by_age.pop_front() {
                self.answers.remove(&old);
                self.evicted += 1;
            }
        }
        self.by_age.push_back((at, key));
    }

    /// Drops records older than the time to live.
    pub fn expire(&mut self, now: Nanos) {
        while let Some(&(at, key)) = self.by_age.front() {
            if now < at + self.ttl {
                break;
            }
            self.by_age.pop_front();
            self.answers.remove(&key);
        }
    }

    /// Drops every record of `account` (it moved to another node).
    pub fn forget_account(&mut self, account: AccountId) {
        self.answers.retain(|k, _| k.0 != account);
        self.by_age.retain(|(_, k)| k.0 != account);
    }

    /// Every record, oldest first: `(account, signal id, answered at, answer)`.
    pub fn records(&self) -> impl Iterator<Item = (AccountId, SignalKey, Nanos, SignalAnswer)> + '_ {
        self.by_age.iter().filter_map(|(at, key)| {
            let (answered, answer) = self.answers.get(key)?;
            // An age entry left behind by a re-inserted key is skipped.
            (answered == at).then_some((key.0, key.1, *at, *answer))
        })
    }

    /// Live records.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::PositionView;
    use crate::engine::types::SymbolId;

    fn answer(qty: i64) -> SignalAnswer {
        SignalAnswer { order: None, position: PositionView { symbol: SymbolId(0), qty, avg_price: 0 } }
    }

    #[test]
    fn remembers_until_the_ttl_then_forgets() {
        let mut s = IdempotencyStore::new(10, 100);
        let k = SignalKey::new("abc").unwrap();
        s.insert(AccountId(1), k, answer(1), 1000);
        assert_eq!(s.get(AccountId(1), &k, 1099), Some(&answer(1)));
        assert_eq!(s.get(AccountId(2), &k, 1050), None, "per account");
        assert_eq!(s.get(AccountId(1), &k, 1100), None);
        s.expire(1100);
        assert!(s.is_empty());
    }

    #[test]
    fn evicts_the_oldest_when_full() {
        let mut s = IdempotencyStore::new(2, 1_000_000);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            s.insert(AccountId(1), SignalKey::new(name).unwrap(), answer(i as i64), i as u64);
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.evicted, 1);
        assert!(s.get(AccountId(1), &SignalKey::new("a").unwrap(), 5).is_none());
        assert!(s.get(AccountId(1), &SignalKey::new("c").unwrap(), 5).is_some());
    }
}
