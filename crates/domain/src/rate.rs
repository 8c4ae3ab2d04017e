//! Per-key requests-per-minute limits, shared across nodes.
//!
//! Each node counts the requests it lets through in memory ([`KeyRate::try_hit`]) and, every
//! ~200 ms, adds what it counted to the key's minute in the database in one call
//! ([`crate::store::DataPlaneStore::add_key_hits`]), taking back every node's totals for this
//! minute and the one before. A request is judged on the cluster's totals as last seen, plus
//! what is in flight to the database, plus what this node counted since: a sliding-window
//! estimate, the previous minute weighted by the part of it still inside the last 60 s plus
//! the current minute. Other nodes' requests are seen within one flush and one poll of theirs
//! (~400 ms), inside the 1 s bound. Refused requests are not counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use time::OffsetDateTime;
use uuid::Uuid;

/// One key's counts on this node, under one lock (a request's check and count, and a flush's
/// hand-over, each see a consistent state: nothing is counted twice or missed in between).
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    /// Unix minute of the cluster totals below, as the last flush returned them.
    window: i64,
    current: u64,
    previous: u64,
    /// Handed to the flush under way, not yet in `current`.
    in_flight: u64,
    /// Counted here and not yet handed to a flush.
    local: u64,
}

/// One limited key's counters on this node.
#[derive(Debug)]
pub struct KeyRate {
    limit: u64,
    counts: Mutex<Counts>,
}

/// The verdict of the rate limit on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateVerdict {
    /// Counted; what is left of the limit and when the minute ends.
    Allowed { remaining: u64, reset_seconds: u64 },
    /// Not counted; when a request may succeed again.
    Limited { retry_after_secs: u64 },
}

/// The unix minute of `now` and the seconds elapsed in it.
pub fn window_of(now: OffsetDateTime) -> (i64, f64) {
    let secs = now.unix_timestamp();
    #[expect(clippy::cast_precision_loss, reason = "0..60 and nanoseconds are exact in f64")]
    let elapsed = secs.rem_euclid(60) as f64 + f64::from(now.nanosecond()) / 1e9;
    (secs.div_euclid(60), elapsed)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "clamped to 1..=120 seconds first"
)]
fn whole_seconds(s: f64) -> u64 {
    s.ceil().clamp(1.0, 120.0) as u64
}

#[expect(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
fn f(n: u64) -> f64 {
    n as f64
}

/// When the estimate falls low enough for one more request: within this minute as the
/// previous one's weight fades, or in the next one as this one's does.
fn retry_after(previous: u64, current: u64, limit: u64, elapsed: f64) -> u64 {
    if current < limit && previous > 0 {
        // previous * (1 - t/60) + current + 1 <= limit
        let t = 60.0 * (1.0 - f(limit - current - 1) / f(previous));
        whole_seconds(t - elapsed)
    } else {
        // next minute, at s: current * (1 - s/60) + 1 <= limit
        let s = 60.0 * (1.0 - f(limit.saturating_sub(1)) / f(current.max(1)));
        whole_seconds(60.0 - elapsed + s.max(0.0))
    }
}

impl KeyRate {
    pub fn new(limit: u32) -> Self {
        Self {
            limit: u64::from(limit),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Count one request at `now` if the estimate leaves room for it.
    pub fn try_hit(&self, now: OffsetDateTime) -> RateVerdict {
        let (window, elapsed) = window_of(now);
        let mut c = lock(&self.counts);
        let (previous, current) = if c.window == window {
            (c.previous, c.current)
        } else if c.window == window - 1 {
            (c.current, 0)
        } else {
            (0, 0)
        };
        let current = current + c.in_flight + c.local;
        let estimate = f(previous) * (60.0 - elapsed) / 60.0 + f(current);
        if estimate + 1.0 > f(self.limit) {
            return RateVerdict::Limited {
                retry_after_secs: retry_after(previous, current, self.limit, elapsed),
            };
        }
        c.local += 1;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "non-negative and at most the limit"
        )]
        let remaining = (f(self.limit) - estimate - 1.0).floor().max(0.0) as u64;
        RateVerdict::Allowed {
            remaining,
            reset_seconds: whole_seconds(60.0 - elapsed).min(60),
        }
    }
}

/// Every limited key this node has seen recently, by key id.
#[derive(Debug, Default)]
pub struct RateTable {
    keys: Mutex<HashMap<Uuid, Arc<KeyRate>>>,
}

/// What one flush hands to the database: per key, the requests counted since the last one.
#[derive(Debug)]
pub struct PendingHits {
    taken: Vec<(Arc<KeyRate>, Uuid, u64)>,
}

impl PendingHits {
    /// The `(key, hits)` pairs to add (keys with nothing new are left out).
    pub fn hits(&self) -> Vec<(Uuid, u64)> {
        self.taken
            .iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(_, id, n)| (*id, *n))
            .collect()
    }
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }
}

impl RateTable {
    /// The counters of a key (made on first sight; a key's limit does not change).
    pub fn of(&self, id: Uuid, limit: u32) -> Arc<KeyRate> {
        lock(&self.keys)
            .entry(id)
            .or_insert_with(|| Arc::new(KeyRate::new(limit)))
            .clone()
    }

    /// Take every key's local count for a flush (moved to in-flight).
    pub fn take(&self) -> PendingHits {
        let keys: Vec<(Uuid, Arc<KeyRate>)> = lock(&self.keys).iter().map(|(id, r)| (*id, r.clone())).collect();
        let taken = keys
            .into_iter()
            .map(|(id, r)| {
                let n = {
                    let mut c = lock(&r.counts);
                    let n = std::mem::take(&mut c.local);
                    c.in_flight += n;
                    n
                };
                (r, id, n)
            })
            .collect();
        PendingHits { taken }
    }

    /// The flush of `window` succeeded with these cluster totals `(key, current, previous)`.
    /// Keys no cache entry refers to any more and with nothing counted are forgotten.
    pub fn settle(&self, pending: PendingHits, window: i64, totals: &[(Uuid, u64, u64)]) {
        let totals: HashMap<Uuid, (u64, u64)> = totals.iter().map(|(id, c, p)| (*id, (*c, *p))).collect();
        for (r, id, n) in &pending.taken {
            let (current, previous) = totals.get(id).copied().unwrap_or_default();
            let mut c = lock(&r.counts);
            c.window = window;
            c.current = current;
            c.previous = previous;
            c.in_flight = c.in_flight.saturating_sub(*n);
        }
        drop(pending);
        lock(&self.keys).retain(|_, r| {
            let c = *lock(&r.counts);
            let idle = c.local == 0 && c.in_flight == 0 && c.current == 0 && c.previous == 0;
            Arc::strong_count(r) > 1 || !idle
        });
    }

    /// The flush failed: the counts go back to be flushed next time.
    pub fn restore(&self, pending: PendingHits) {
        for (r, _, n) in pending.taken {
            let mut c = lock(&r.counts);
            c.in_flight = c.in_flight.saturating_sub(n);
            c.local += n;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;
    use time::Duration;

    fn at(minute: i64, second: f64) -> OffsetDateTime {
        #[expect(clippy::cast_possible_truncation, reason = "test values")]
        let ms = (second * 1000.0) as i64;
        OffsetDateTime::from_unix_timestamp(minute * 60).unwrap() + Duration::milliseconds(ms)
    }

    #[test]
    fn a_key_gets_its_limit_then_a_retry_time_and_refusals_are_not_counted() {
        let r = KeyRate::new(3);
        for left in [2, 1, 0] {
            assert_eq!(
                r.try_hit(at(100, 10.0)),
                RateVerdict::Allowed {
                    remaining: left,
                    reset_seconds: 50
                }
            );
        }
        let RateVerdict::Limited { retry_after_secs } = r.try_hit(at(100, 10.0)) else {
            panic!("not limited")
        };
        // No previous minute: the next one, once this one's weight has faded below 2 of 3.
        assert_eq!(retry_after_secs, 50 + 20);
        assert_eq!(lock(&r.counts).local, 3);
    }

    #[test]
    fn the_previous_minute_counts_by_the_part_of_it_still_in_the_last_sixty_seconds() {
        let table = RateTable::default();
        let r = table.of(Uuid::nil(), 10);
        let p = table.take();
        table.settle(p, 100, &[(Uuid::nil(), 10, 0)]);
        // At 101:15, 10 * 45/60 = 7.5 of the previous minute: 2 more fit.
        assert!(matches!(r.try_hit(at(101, 15.0)), RateVerdict::Allowed { .. }));
        assert!(matches!(r.try_hit(at(101, 15.0)), RateVerdict::Allowed { .. }));
        assert!(matches!(r.try_hit(at(101, 15.0)), RateVerdict::Limited { .. }));
    }

    #[test]
    fn other_nodes_hits_count_once_flushed_and_a_failed_flush_keeps_the_count() {
        let table = RateTable::default();
        let id = Uuid::nil();
        let r = table.of(id, 5);
        assert!(matches!(r.try_hit(at(100, 1.0)), RateVerdict::Allowed { .. }));
        let p = table.take();
        assert_eq!(p.hits(), [(id, 1)]);
        // While in flight the count still holds.
        for _ in 0..4 {
            assert!(matches!(r.try_hit(at(100, 1.0)), RateVerdict::Allowed { .. }));
        }
        assert!(matches!(r.try_hit(at(100, 1.0)), RateVerdict::Limited { .. }));
        table.restore(p);
        let r2 = table.of(Uuid::from_u128(2), 5);
        let p = table.take();
        assert_eq!(p.hits(), [(id, 5)]);
        // Another node counted 4 for the second key.
        table.settle(p, 100, &[(id, 5, 0), (Uuid::from_u128(2), 4, 0)]);
        assert!(matches!(r.try_hit(at(100, 2.0)), RateVerdict::Limited { .. }));
        assert!(matches!(
            r2.try_hit(at(100, 2.0)),
            RateVerdict::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(r2.try_hit(at(100, 2.0)), RateVerdict::Limited { .. }));
    }
}
