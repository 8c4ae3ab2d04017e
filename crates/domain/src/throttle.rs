//! Failed sign-in throttling, per (account, client address), per address and per account.
//!
//! After a few failures a key is held back for an exponentially growing time (capped), then
//! may try again, while online guessing is slowed to a crawl. Unknown accounts are throttled
//! the same way as known ones, so the throttle reveals nothing.
//!
//! The sign-in throttle ([`judge_guess`]) keeps three keys apart so that nobody can lock a
//! user out (ASVS 6.3.1): a client is held back for its own failures on an account and for its
//! address's failures overall; the account-wide back-off (guesses spread over many addresses)
//! holds back only clients whose address has already failed on that account — a client that
//! has not failed (the real user, from their own address) is never blocked by it. Its state is
//! shared by every node: one [`ThrottleRow`] per key in the control database
//! (`crate::store::LimitStore`), judged here. The per-network limit on guessing secret-bearing
//! links (`core/limits.rs`) backs off by the same rows under its own keys.

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

/// A throttle key's state as the control database keeps it (shared by every node). Its
/// "blocked until" is not stored: it is `last_failure` + the back-off of `failures`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleRow {
    pub failures: u32,
    pub last_failure: Option<OffsetDateTime>,
    /// Guesses being checked right now (by any node), this one included when the row comes
    /// from `begin_guess`: they count as failures until their outcome is known.
    pub pending: u32,
}

impl ThrottlePolicy {
    /// The failures on record (0 once forgotten).
    pub fn failures(&self, row: &ThrottleRow, now: OffsetDateTime) -> u32 {
        match row.last_failure {
            Some(at) if now - at < self.forget_after => row.failures,
            _ => 0,
        }
    }

    /// `Some(seconds)` to wait if the key is held back now (rounded up): the back-off runs
    /// from the last failure, 2 s doubling with each failure past the free ones, capped.
    pub fn wait(&self, row: &ThrottleRow, now: OffsetDateTime) -> Option<u64> {
        let failures = self.failures(row, now);
        let last = row.last_failure?;
        if failures <= self.free_attempts {
            return None;
        }
        let exp = (failures - self.free_attempts - 1).min(20);
        let until = last + (self.base * 2i32.pow(exp)).min(self.max);
        // Rounded up: a client that waits as long as told is let in (a stored time keeps
        // microseconds, the clock nanoseconds).
        let left = until - now;
        let secs = left.whole_seconds() + i64::from(left.subsec_nanoseconds() > 0);
        (until > now).then(|| u64::try_from(secs).unwrap_or(1).max(1))
    }
}

/// How the store asks whether a guess may go ahead, given its rows (see `LimitStore::begin_guess`).
pub type GuessJudge = dyn Fn(&[ThrottleRow]) -> Result<(), u64> + Send + Sync;

/// Whether a guess may be checked now, from the rows of its (account, address) pair, its
/// address and its account, the pair's and the address's `pending` counting this guess:
/// `Err(seconds)` to wait. Past the free attempts a client's guesses go one at a time, each
/// waiting out its back-off (enforced once the one in flight has failed), so a burst of
/// parallel guesses gets no more than the free attempts a sequence would.
pub fn judge_guess(
    pair: &ThrottleRow,
    address: &ThrottleRow,
    account: &ThrottleRow,
    now: OffsetDateTime,
) -> Result<(), u64> {
    let (pp, ap) = (ThrottlePolicy::ACCOUNT, ThrottlePolicy::ADDRESS);
    let pair_failures = pp.failures(pair, now);
    let account_wide = if pair_failures > 0 {
        ThrottlePolicy::ACCOUNT.wait(account, now)
    } else {
        None
    };
    if let Some(wait) = [pp.wait(pair, now), ap.wait(address, now), account_wide]
        .into_iter()
        .flatten()
        .max()
    {
        return Err(wait);
    }
    let in_pair = pair.pending.saturating_sub(1);
    let in_address = address.pending.saturating_sub(1);
    if (in_pair > 0 && pair_failures + in_pair > pp.free_attempts)
        || (in_address > 0 && ap.failures(address, now) + in_address > ap.free_attempts)
    {
        return Err(1);
    }
    Ok(())
}

/// The keys a guess is counted under: (account, address), address, account — each the
/// SHA-256 (hex, 64 characters) of its parts, so the control database keeps no email or
/// address in the clear and a key's size never depends on what a client typed.
pub fn guess_keys(account: &str, address: &str) -> [String; 3] {
    use sha2::{Digest, Sha256};
    let key = |s: String| hex::encode(Sha256::digest(s.as_bytes()));
    [
        key(format!("p\u{1f}{address}\u{1f}{account}")),
        key(format!("n\u{1f}{address}")),
        key(format!("a\u{1f}{account}")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The rows' arithmetic as the store does it, in memory.
    #[derive(Default)]
    struct Rows(HashMap<String, ThrottleRow>);

    impl Rows {
        fn begin(&mut self, account: &str, address: &str, now: OffsetDateTime) -> Result<(), u64> {
            let [p, n, a] = guess_keys(account, address);
            self.0.entry(p.clone()).or_default().pending += 1;
            self.0.entry(n.clone()).or_default().pending += 1;
            let r = judge_guess(
                &self.0[&p],
                &self.0[&n],
                &self.0.get(&a).copied().unwrap_or_default(),
                now,
            );
            if r.is_err() {
                self.release(account, address);
            }
            r
        }
        fn release(&mut self, account: &str, address: &str) {
            let [p, n, _] = guess_keys(account, address);
            for k in [p, n] {
                let e = self.0.entry(k).or_default();
                e.pending = e.pending.saturating_sub(1);
            }
        }
        fn fail(&mut self, account: &str, address: &str, now: OffsetDateTime) {
            for k in guess_keys(account, address) {
                let e = self.0.entry(k).or_default();
                if e.last_failure
                    .is_none_or(|at| now - at >= ThrottlePolicy::ACCOUNT.forget_after)
                {
                    e.failures = 0;
                }
                e.failures += 1;
                e.last_failure = Some(now);
            }
        }
    }

    #[test]
    fn parallel_guesses_get_no_more_than_the_free_attempts() {
        let mut t = Rows::default();
        let now = OffsetDateTime::UNIX_EPOCH;
        let free = ThrottlePolicy::ACCOUNT.free_attempts + 1;
        for _ in 0..free {
            t.begin("acct", "1.2.3.4", now).unwrap();
        }
        assert!(t.begin("acct", "1.2.3.4", now).is_err(), "one guess too many in flight");
        assert!(
            t.begin("acct", "5.6.7.8", now).is_ok(),
            "another client is not held back"
        );
        for _ in 0..free {
            t.release("acct", "1.2.3.4");
        }
        assert!(t.begin("acct", "1.2.3.4", now).is_ok(), "the slots come back");
    }

    #[test]
    fn back_off_grows_then_lets_the_owner_back_in() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let row = |failures| ThrottleRow {
            failures,
            last_failure: Some(now),
            pending: 0,
        };
        assert_eq!(ThrottlePolicy::ACCOUNT.wait(&row(5), now), None);
        assert_eq!(ThrottlePolicy::ACCOUNT.wait(&row(6), now), Some(2));
        assert_eq!(ThrottlePolicy::ACCOUNT.wait(&row(7), now), Some(4));
        assert_eq!(ThrottlePolicy::ACCOUNT.wait(&row(7), now + Duration::seconds(5)), None);
        assert_eq!(ThrottlePolicy::ACCOUNT.wait(&row(40), now), Some(900));
    }

    #[test]
    fn guesses_from_many_addresses_never_block_a_client_that_has_not_failed() {
        let mut t = Rows::default();
        let now = OffsetDateTime::UNIX_EPOCH;
        for i in 0..50 {
            let addr = format!("10.0.0.{i}");
            assert!(t.begin("victim", &addr, now).is_ok(), "a fresh address is answered");
            t.release("victim", &addr);
            t.fail("victim", &addr, now);
        }
        assert!(t.begin("victim", "192.0.2.1", now).is_ok(), "the real user gets in");
        t.release("victim", "192.0.2.1");
        assert!(t.begin("victim", "10.0.0.1", now).is_err(), "a guesser waits");
        for _ in 0..6 {
            t.fail("other", "198.51.100.1", now);
        }
        assert!(t.begin("other", "198.51.100.1", now).is_err());
        assert!(t.begin("other", "198.51.100.2", now).is_ok());
    }
}
