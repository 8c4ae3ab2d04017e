//! Failed sign-in throttling, per account and per client address.
//!
//! After a few failures a key is held back for an exponentially growing time (capped), then
//! may try again: a victim whose account an attacker hammers still gets in once the back-off
//! has passed, while online guessing is slowed to a crawl. Unknown accounts are throttled the
//! same way as known ones, so the throttle reveals nothing. The state is in memory: it is
//! per process, and a restart forgets it (documented in docs/ARCHITECTURE.md).

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
