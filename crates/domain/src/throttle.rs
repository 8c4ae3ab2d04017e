//! Failed sign-in throttling, per (account, client address), per address and per account.
//!
//! After a few failures a key is held back for an exponentially growing time (capped), then
//! may try again, while online guessing is slowed to a crawl. Unknown accounts are throttled
//! the same way as known ones, so the throttle reveals nothing.
//!
//! [`SignInThrottle`] keeps the three apart so that nobody can lock a user out (ASVS 6.3.1):
//! a client is held back for its own failures on an account and for its address's failures
//! overall; the account-wide back-off (guesses spread over many addresses) holds back only
//! clients whose address has already failed on that account — a client that has not failed
//! (the real user, from their own address) is never blocked by it. The state is in memory: it
//! is per process, and a restart forgets it (documented in docs/ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::Mutex;
use time::{Duration, OffsetDateTime};

#[derive(Clone, Copy, Debug)]
pub struct ThrottlePolicy {
    /// Failures allowed before the back-off starts.
    pub free_attempts: u32,
    /// First back-off; doubles with each further failure.
    pub base: Duration,
    pub max: Duration,
    /// A key with no failure for this long is forgotten.
    pub forget_after: Duration,
}

impl ThrottlePolicy {
    pub const ACCOUNT: Self = Self {
        free_attempts: 5,
        base: Duration::seconds(2),
        max: Duration::minutes(15),
        forget_after: Duration::hours(1),
    };
    pub const ADDRESS: Self = Self {
        free_attempts: 20,
        base: Duration::seconds(2),
        max: Duration::minutes(15),
        forget_after: Duration::hours(1),
    };
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last_failure: OffsetDateTime,
    blocked_until: OffsetDateTime,
}

#[derive(Debug)]
pub struct Throttle {
    policy: ThrottlePolicy,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds)` to wait if `key` is held back now.
    pub fn check(&self, key: &str, now: OffsetDateTime) -> Option<u64> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(key)?;
        (e.blocked_until > now).then(|| (e.blocked_until - now).whole_seconds().max(1) as u64)
    }

    pub fn record_failure(&self, key: &str, now: OffsetDateTime) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            let forget = self.policy.forget_after;
            map.retain(|_, e| now - e.last_failure < forget);
        }
        let e = map.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            blocked_until: now,
        });
        if now - e.last_failure >= self.policy.forget_after {
            e.failures = 0;
        }
        e.failures += 1;
        e.last_failure = now;
        if e.failures > self.policy.free_attempts {
            let exp = (e.failures - self.policy.free_attempts - 1).min(20);
            let wait = (self.policy.base * 2i32.pow(exp)).min(self.policy.max);
            e.blocked_until = now + wait;
        }
    }

    pub fn record_success(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// The failures `key` has on record (0 once forgotten).
    pub fn failures(&self, key: &str, now: OffsetDateTime) -> u32 {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|e| now - e.last_failure < self.policy.forget_after)
            .map_or(0, |e| e.failures)
    }
}

/// The sign-in throttle: per (account, address), per address, and per account for clients
/// that have failed on it (see the module's documentation). Password changes count against
/// it too: a wrong current password is a guess like any other.
#[derive(Debug)]
pub struct SignInThrottle {
    pair: Throttle,
    address: Throttle,
    account: Throttle,
    /// Guesses being checked right now, per pair and per address: they count as failures
    /// until they are known not to be, so a burst of parallel guesses gets no more than the
    /// free attempts a sequence of them would.
    pending: Mutex<HashMap<String, u32>>,
}

/// A guess being checked: counted in the throttle until dropped.
#[derive(Debug)]
pub struct PendingGuess<'a> {
    throttle: &'a SignInThrottle,
    keys: [String; 2],
}

impl Drop for PendingGuess<'_> {
    fn drop(&mut self) {
        let mut pending = self.throttle.pending.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            if let Some(n) = pending.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pending.remove(key);
                }
            }
        }
    }
}

impl Default for SignInThrottle {
    fn default() -> Self {
        Self {
            pair: Throttle::new(ThrottlePolicy::ACCOUNT),
            address: Throttle::new(ThrottlePolicy::ADDRESS),
            account: Throttle::new(ThrottlePolicy::ACCOUNT),
            pending: Mutex::new(HashMap::new()),
        }
    }
}

fn pair_key(account: &str, address: &str) -> String {
    format!("{address}\u{1f}{account}")
}

impl SignInThrottle {
    /// `Some(seconds)` to wait before `address` may try `account` again.
    pub fn check(&self, account: &str, address: &str, now: OffsetDateTime) -> Option<u64> {
        let pair = pair_key(account, address);
        let account_wide = if self.pair.failures(&pair, now) > 0 {
            self.account.check(account, now)
        } else {
            None
        };
        [
            self.pair.check(&pair, now),
            self.address.check(address, now),
            account_wide,
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Start checking a guess: `Err(seconds)` to wait, else a [`PendingGuess`] that counts as
    /// a failure (for the free attempts) until it is dropped — after `record_failure` or
    /// `record_success`.
    pub fn begin(&self, account: &str, address: &str, now: OffsetDateTime) -> Result<PendingGuess<'_>, u64> {
        if let Some(wait) = self.check(account, address, now) {
            return Err(wait);
        }
        let pair = pair_key(account, address);
        let address_key = format!("\u{1e}{address}");
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let in_pair = pending.get(&pair).copied().unwrap_or(0);
        let in_address = pending.get(&address_key).copied().unwrap_or(0);
        // Past the free attempts a client's guesses go one at a time, each waiting out its
        // back-off (which `check` enforces once the one in flight has failed).
        if (in_pair > 0 && self.pair.failures(&pair, now) + in_pair > self.pair.policy.free_attempts)
            || (in_address > 0 && self.address.failures(address, now) + in_address > self.address.policy.free_attempts)
        {
            return Err(1);
        }
        *pending.entry(pair.clone()).or_insert(0) += 1;
        *pending.entry(address_key.clone()).or_insert(0) += 1;
        Ok(PendingGuess {
            throttle: self,
            keys: [pair, address_key],
        })
    }

    pub fn record_failure(&self, account: &str, address: &str, now: OffsetDateTime) {
        self.pair.record_failure(&pair_key(account, address), now);
        self.address.record_failure(address, now);
        self.account.record_failure(account, now);
    }

    /// The right password: this client's and the account's slate is clean (the address's
    /// is not: one good account does not excuse guesses at others).
    pub fn record_success(&self, account: &str, address: &str) {
        self.pair.record_success(&pair_key(account, address));
        self.account.record_success(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_guesses_get_no_more_than_the_free_attempts() {
        let t = SignInThrottle::default();
        let now = OffsetDateTime::UNIX_EPOCH;
        let free = ThrottlePolicy::ACCOUNT.free_attempts + 1;
        let held: Vec<_> = (0..free).map(|_| t.begin("acct", "1.2.3.4", now).unwrap()).collect();
        assert!(t.begin("acct", "1.2.3.4", now).is_err(), "one guess too many in flight");
        assert!(
            t.begin("acct", "5.6.7.8", now).is_ok(),
            "another client is not held back"
        );
        drop(held);
        assert!(t.begin("acct", "1.2.3.4", now).is_ok(), "the slots come back");
    }

    #[test]
    fn back_off_grows_then_lets_the_owner_back_in() {
        let t = Throttle::new(ThrottlePolicy::ACCOUNT);
        let now = OffsetDateTime::UNIX_EPOCH;
        for _ in 0..5 {
            assert!(t.check("a", now).is_none());
            t.record_failure("a", now);
        }
        assert!(t.check("a", now).is_none());
        t.record_failure("a", now);
        assert_eq!(t.check("a", now), Some(2));
        t.record_failure("a", now);
        assert_eq!(t.check("a", now), Some(4));
        assert!(t.check("a", now + Duration::seconds(5)).is_none());
    }

    #[test]
    fn guesses_from_many_addresses_never_block_a_client_that_has_not_failed() {
        let t = SignInThrottle::default();
        let now = OffsetDateTime::UNIX_EPOCH;
        for i in 0..50 {
            let addr = format!("10.0.0.{i}");
            assert!(t.check("victim", &addr, now).is_none(), "a fresh address is answered");
            t.record_failure("victim", &addr, now);
        }
        assert!(t.check("victim", "192.0.2.1", now).is_none(), "the real user gets in");
        assert!(t.check("victim", "10.0.0.1", now).is_some(), "a guesser waits");
        for _ in 0..6 {
            t.record_failure("other", "198.51.100.1", now);
        }
        assert!(t.check("other", "198.51.100.1", now).is_some());
        assert!(t.check("other", "198.51.100.2", now).is_none());
    }
}
