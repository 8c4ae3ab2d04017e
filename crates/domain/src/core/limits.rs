//! Limits every node enforces alike, kept in the control database (`LimitStore`): the sign-in
//! throttle, the per-network limits on secret-bearing links and single sign-on starts, the
//! Automation API's per-token rate and `Idempotency-Key` replies, usage ingestion's events
//! per service token, and the leases of jobs that must run on one node at a time.
//!
//! Over 600 lines on purpose for now: the throttle, the shared counts, idempotency and job
//! leases, with their unit tests; one module per limit is issue 16's tidy.

use super::Core;
use crate::error::{Error, Result};
use crate::store::{IdempotencySlot, KeptReply, Store};
use crate::throttle::{ThrottlePolicy, guess_keys, judge_guess};
use std::collections::HashMap;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// Requests an Automation API token may make per minute (a fixed window of the clock's
/// minute, counted over every node).
pub const API_REQUESTS_PER_MINUTE: u64 = 300;
/// How long a reply kept for an `Idempotency-Key` is replayed.
pub const IDEMPOTENT_REPLY_KEPT: Duration = Duration::hours(24);
/// Usage events are counted per service token in windows of this length (see
/// [`Core::take_usage_budget`]).
pub const USAGE_WINDOW: Duration = Duration::seconds(2);
/// `limit_count`'s name for usage events per service token.
pub const USAGE_COUNTER: &str = "usage_events";
/// `limit_count`'s name for single sign-on starts per network.
pub const SSO_START_COUNTER: &str = "sso_start";
/// Single sign-on starts a network may make per clock minute, over every node.
pub const SSO_STARTS_PER_MINUTE: u64 = 60;
/// Misses on secret-bearing links a network may make before it backs off.
pub const LINK_FREE_MISSES: u32 = 20;
/// The link misses' back-off: from the request after the [`LINK_FREE_MISSES`]-th miss, 2 s
/// doubling, at most 15 minutes; forgotten after an hour without a miss (as the sign-in
/// throttle's rows, which housekeeping prunes alike).
pub const LINK_MISS_POLICY: ThrottlePolicy = ThrottlePolicy {
    free_attempts: LINK_FREE_MISSES - 1,
    base: Duration::seconds(2),
    max: Duration::minutes(15),
    forget_after: Duration::hours(1),
};

/// The throttle key of a network's link misses (SHA-256 hex: a bounded size, not secrecy).
pub fn link_miss_key(address: &str) -> String {
    hashed_key("l", address)
}

/// The `limit_count` key of a network's single sign-on starts (SHA-256 hex).
pub fn sso_start_key(address: &str) -> String {
    hashed_key("s", address)
}

fn hashed_key(kind: &str, address: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("{kind}\u{1f}{address}").as_bytes()))
}

/// How long a guess in flight counts at most (a node that died mid-guess): longer than the
/// password hasher's queue (10 s) and one verification.
pub const GUESS_IN_FLIGHT: Duration = Duration::seconds(60);

/// A sign-in guess being checked: counted as a failure (for the free attempts) on every node
/// until [`Guess::failed`] or [`Guess::succeeded`] has recorded how it ended. Dropped before
/// that write committed (an error, the client gone, the request timed out), it is given back
/// in a detached task; a guess nobody gives back (its node died) lapses on its own after
/// [`GUESS_IN_FLIGHT`].
#[doc(hidden)]
pub struct Guess {
    store: Arc<dyn Store>,
    id: uuid::Uuid,
    keys: [String; 3],
    began: OffsetDateTime,
    done: bool,
}

impl Guess {
    /// The guess was wrong: a failure on the pair, the address and the account.
    pub(crate) async fn failed(mut self, now: OffsetDateTime) -> Result<()> {
        let forget = now - ThrottlePolicy::ACCOUNT.forget_after;
        self.store.end_guess(self.id, &self.keys, &[], now, forget).await?;
        // Only once the write committed: dropped before, the guess is given back.
        self.done = true;
        Ok(())
    }

    /// The right password: this client's and the account's slate is clean (the address's
    /// is not: one good account does not excuse guesses at others).
    pub(crate) async fn succeeded(mut self, now: OffsetDateTime) -> Result<()> {
        let cleared = [self.keys[0].clone(), self.keys[2].clone()];
        self.store.end_guess(self.id, &[], &cleared, now, now).await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Guess {
    fn drop(&mut self) {
        if !self.done {
            give_back(&self.store, self.id, self.began, "sign-in guess");
        }
    }
}

/// Give a guess in flight back in a detached task (its request went away or failed before
/// its end was written): only its own in-flight rows go. A guess nobody gives back lapses on
/// its own.
fn give_back(store: &Arc<dyn Store>, id: uuid::Uuid, began: OffsetDateTime, what: &'static str) {
    let store = store.clone();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            // `began` judges nothing here: no key fails or is cleared.
            if let Err(e) = store.end_guess(id, &[], &[], began, began).await {
                tracing::warn!(error = %e, what, "could not give back a guess in flight; it lapses on its own");
            }
        });
    }
}

/// A guess at a secret-bearing link being answered (see [`Core::begin_link_guess`]): it
/// counts as a miss of its network on every node until [`LinkGuess::missed`] or
/// [`LinkGuess::not_missed`] has recorded how it ended. Dropped before that write committed
/// (a handler that panicked, the client gone, the request timed out), it is given back in a
/// detached task; one nobody gives back (its node died) lapses on its own when its time in
/// flight is over.
#[must_use = "a link guess is settled with `missed` or `not_missed` (dropped, it is given back)"]
pub struct LinkGuess {
    store: Arc<dyn Store>,
    clock: Arc<dyn crate::clock::Clock>,
    id: uuid::Uuid,
    key: String,
    began: OffsetDateTime,
    done: bool,
}

impl LinkGuess {
    /// The answer said the secret was no good: one more miss on the network (and no longer in
    /// flight), in one transaction.
    pub async fn missed(mut self) -> Result<()> {
        let now = self.clock.now();
        self.store
            .end_guess(
                self.id,
                std::slice::from_ref(&self.key),
                &[],
                now,
                now - LINK_MISS_POLICY.forget_after,
            )
            .await?;
        // Only once the write committed: dropped before, the guess is given back.
        self.done = true;
        Ok(())
    }

    /// The answer was not about a bad secret (the link worked, a form to correct, a server
    /// error, a refusal before the handler): the guess is given back, nothing recorded.
    pub async fn not_missed(mut self) -> Result<()> {
        let now = self.clock.now();
        self.store.end_guess(self.id, &[], &[], now, now).await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for LinkGuess {
    fn drop(&mut self) {
        if !self.done {
            give_back(&self.store, self.id, self.began, "link guess");
        }
    }
}

impl std::fmt::Debug for LinkGuess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkGuess")
            .field("id", &self.id)
            .field("began", &self.began)
            .finish()
    }
}

/// Whether a guess at a secret-bearing link may be answered now, from its network's row
/// (`pending` counting the guesses in flight on every node, this one included):
/// `Err(seconds)` to wait. While the network backs off, none; otherwise only as many as the
/// misses left before the back-off, in flight or answered: a burst of parallel guesses gets
/// no more answers than a sequence would ([`LINK_FREE_MISSES`]), and past them one at a
/// time, each after the back-off the last miss started.
pub fn judge_link_guess(row: &crate::throttle::ThrottleRow, now: OffsetDateTime) -> std::result::Result<(), u64> {
    let policy = LINK_MISS_POLICY;
    if let Some(wait) = policy.wait(row, now) {
        return Err(wait);
    }
    let misses = policy.failures(row, now);
    let others = row.pending.saturating_sub(1);
    if others > 0 && misses.saturating_add(others) > policy.free_attempts {
        // Refused only for the guesses in flight, which end in moments: try again in a
        // second (then judged on how they ended), not after the back-off they may not earn.
        return Err(1);
    }
    Ok(())
}

/// Counts per key that every node adds to, kept in memory between flushes (the Automation
/// API's requests per token, usage events per service token): per key, every node's total for
/// the current window as the last flush (or read) returned it, the previous window's total as
/// last known, what a flush under way is adding, and what was counted here since. One lock: a
/// request's check and count, and a flush's hand-over, each see a consistent state. The maps
/// hold only the keys of the current and the previous window (a new window starts them
/// afresh), and every key is an authenticated token's id: never a memory problem.
#[derive(Debug)]
pub(crate) struct SharedCounts {
    /// The counter's name in `limit_count`; `None`: the Automation API's `api_rate`.
    counter: Option<&'static str>,
    /// A window's length (the Automation API's: the clock's minute).
    window_ms: i64,
    counts: std::sync::Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    window: i64,
    previous: HashMap<String, u64>,
    seen: HashMap<String, u64>,
    in_flight: HashMap<String, u64>,
    local: HashMap<String, u64>,
    /// What was counted here in the window just ended and not flushed before it ended: the
    /// next flush writes it to that window (other nodes read it as their previous window).
    left_over: Option<(i64, HashMap<String, u64>)>,
}

/// A key's counts as this node knows them: every node's total in the previous window, and in
/// this one (as last seen, plus in flight, plus counted here since).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Known {
    pub previous: u64,
    pub current: u64,
}

type Hits = Vec<(String, u64)>;

impl SharedCounts {
    /// The Automation API's requests per token, per clock minute (`api_rate`).
    pub(crate) fn api() -> Self {
        Self::new(None, 60_000)
    }

    pub(crate) fn new(counter: Option<&'static str>, window_ms: i64) -> Self {
        Self {
            counter,
            window_ms: window_ms.max(1),
            counts: std::sync::Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The window `now` is in, and how far into it (ms).
    pub(crate) fn window_of(&self, now: OffsetDateTime) -> (i64, i64) {
        let ms = i64::try_from(now.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX);
        (ms.div_euclid(self.window_ms), ms.rem_euclid(self.window_ms))
    }

    /// When a window's row may go: once it can no longer be anyone's previous window.
    fn expires_at(&self, window: i64) -> OffsetDateTime {
        let ms = window.saturating_add(3).saturating_mul(self.window_ms);
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Move to `window` if it is a later one: the totals known for the one before become the
    /// previous window's (counts not flushed yet included).
    fn roll(c: &mut Counts, window: i64) {
        if c.window >= window {
            // The same window, or an earlier one (a clock set back): nothing starts afresh.
            return;
        }
        let (previous, left_over) = if window == c.window + 1 {
            let mut p = std::mem::take(&mut c.seen);
            let left_over = (!c.local.is_empty()).then(|| (c.window, c.local.clone()));
            for (k, n) in c.in_flight.drain().chain(c.local.drain()) {
                *p.entry(k).or_default() += n;
            }
            (p, left_over)
        } else {
            (HashMap::new(), None)
        };
        *c = Counts {
            window,
            previous,
            left_over,
            ..Counts::default()
        };
    }

    fn known(c: &Counts, key: &str) -> Known {
        let get = |m: &HashMap<String, u64>| m.get(key).copied().unwrap_or(0);
        Known {
            previous: get(&c.previous),
            current: get(&c.seen) + get(&c.in_flight) + get(&c.local),
        }
    }

    /// Whether every node's count of `key` in `window` is known here (flushed or read since
    /// the window began).
    pub(crate) fn knows(&self, key: &str, window: i64) -> bool {
        let c = self.lock();
        c.window == window && c.seen.contains_key(key)
    }

    /// Every node's counts of `key`, as read from the database.
    pub(crate) fn learn(&self, key: &str, window: i64, previous: u64, current: u64) {
        let mut c = self.lock();
        Self::roll(&mut c, window);
        if c.window != window {
            return;
        }
        let p = c.previous.entry(key.to_owned()).or_default();
        *p = (*p).max(previous);
        let s = c.seen.entry(key.to_owned()).or_default();
        *s = (*s).max(current);
    }

    /// Count `n` of `key` in `window` if `admit` lets it in, judging what is known:
    /// `Err(seconds)` to wait (a refusal is not counted).
    pub(crate) fn try_add(
        &self,
        key: &str,
        window: i64,
        n: u64,
        admit: impl FnOnce(Known) -> std::result::Result<(), u64>,
    ) -> std::result::Result<(), u64> {
        let mut c = self.lock();
        Self::roll(&mut c, window);
        admit(Self::known(&c, key))?;
        *c.local.entry(key.to_owned()).or_default() += n;
        Ok(())
    }

    /// Hand what was counted here to a flush.
    fn take(&self) -> Option<(i64, Hits)> {
        let mut c = self.lock();
        // The window just ended first (its counts are no longer tracked as in flight: a
        // failed write of them is not retried).
        if let Some((window, hits)) = c.left_over.take() {
            return Some((window, hits.into_iter().collect()));
        }
        if c.local.is_empty() {
            return None;
        }
        let pending: Hits = std::mem::take(&mut c.local).into_iter().collect();
        for (t, n) in &pending {
            *c.in_flight.entry(t.clone()).or_default() += n;
        }
        Some((c.window, pending))
    }

    /// A flush committed: the totals it took back replace what was seen.
    fn settle(&self, window: i64, pending: &[(String, u64)], totals: &[(String, u64)]) {
        let mut c = self.lock();
        if c.window != window {
            return;
        }
        Self::unflight(&mut c, pending);
        for (t, total) in totals {
            c.seen.insert(t.clone(), *total);
        }
    }

    /// A flush failed: its counts wait for the next one.
    fn restore(&self, window: i64, pending: &[(String, u64)]) {
        let mut c = self.lock();
        if c.window != window {
            return;
        }
        Self::unflight(&mut c, pending);
        for (t, n) in pending {
            *c.local.entry(t.clone()).or_default() += n;
        }
    }

    fn unflight(c: &mut Counts, pending: &[(String, u64)]) {
        for (t, n) in pending {
            if let Some(f) = c.in_flight.get_mut(t) {
                *f = f.saturating_sub(*n);
                if *f == 0 {
                    c.in_flight.remove(t);
                }
            }
        }
    }
}

/// Whether `n` more fit a sliding window of `window_ms` holding at most `limit`, when the
/// window began `into_ms` ago: the previous window counts by the part of it still within the
/// last `window_ms`. `Err(seconds)` until they would fit.
pub(crate) fn sliding_verdict(
    k: Known,
    n: u64,
    limit: u64,
    into_ms: i64,
    window_ms: i64,
) -> std::result::Result<(), u64> {
    let w = u128::try_from(window_ms.max(1)).unwrap_or(1);
    let into = u128::try_from(into_ms.clamp(0, window_ms)).unwrap_or(0);
    let (prev, cur, n, limit) = (
        u128::from(k.previous),
        u128::from(k.current),
        u128::from(n),
        u128::from(limit),
    );
    if prev * (w - into) + (cur + n) * w <= limit * w {
        return Ok(());
    }
    let wait_ms = if cur + n <= limit {
        // Once enough of the previous window has slid out of the last `window_ms`.
        let room = (limit - cur - n) * w;
        (w - into).saturating_sub(room / prev.max(1))
    } else if n <= limit && cur > 0 {
        // Not within this window: after it, once enough of it has slid out.
        (w - into) + w - ((limit - n) * w) / cur
    } else {
        // More than a whole window holds: never, say a minute.
        60_000
    };
    Err(u64::try_from(wait_ms.div_ceil(1000)).unwrap_or(60).max(1))
}

/// What the Automation API does with a request that has an `Idempotency-Key`.
#[derive(Debug)]
pub enum IdempotencyStart {
    /// Run it; keep or release the key under this holder id afterwards.
    Run(uuid::Uuid),
    /// A new key, but the token holds [`IDEMPOTENCY_KEYS_PER_TOKEN`] live keys already.
    Full,
    /// Another request with the key is still running.
    Running { request: String },
    /// Replay this.
    Replay(KeptReply),
}

/// Live `Idempotency-Key`s (reserved or with a kept reply) a token may hold at once; past
/// it a request with a new key gets 429 `idempotency_limit`.
pub const IDEMPOTENCY_KEYS_PER_TOKEN: u64 = 1_000;

/// What an `Idempotency-Key` is bound to: the SHA-256 (hex) of the method, the path with its
/// query and the body (the raw request is never kept: its size is the client's choice).
pub fn request_digest(method: &str, path_and_query: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(path_and_query.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

impl Core {
    /// Start checking a sign-in guess of `address` (a client's network) at `account`, or
    /// `Throttled` with the seconds to wait. Judged before it is counted: a refused guess
    /// leaves no guess in flight.
    #[doc(hidden)]
    pub async fn begin_guess(&self, account: &str, address: &str, now: OffsetDateTime) -> Result<Guess> {
        let keys = guess_keys(account, address);
        let id = uuid::Uuid::new_v4();
        let judge = move |rows: &[crate::throttle::ThrottleRow]| match rows {
            [pair, address_row, account_row] => judge_guess(pair, address_row, account_row, now),
            _ => Err(1),
        };
        let admitted = self
            .store
            .begin_guess(
                id,
                &[keys[0].clone(), keys[1].clone()],
                &[keys[2].clone()],
                now,
                now + GUESS_IN_FLIGHT,
                &judge,
            )
            .await?;
        if let Err(retry_after_secs) = admitted {
            return Err(Error::Throttled { retry_after_secs });
        }
        Ok(Guess {
            store: self.store.clone(),
            id,
            keys,
            began: now,
            done: false,
        })
    }

    /// Count one Automation API request of an authenticated token (its id): `Some(seconds)`
    /// to wait when it is over [`API_REQUESTS_PER_MINUTE`] this minute, on whichever nodes.
    /// Counted in memory (no write per request): the judgement is on every node's total for
    /// this minute as the last flush saw it, plus what this node counted since (other nodes'
    /// requests are seen within a flush of theirs and ours, ~400 ms). Refused requests are not
    /// counted.
    pub async fn count_api_request(&self, token: &str) -> Result<Option<u64>> {
        let now = self.clock.now();
        let (window, into_ms) = self.api_rates.window_of(now);
        let retry = u64::try_from((60_000 - into_ms + 999) / 1000).unwrap_or(60).max(1);
        Ok(self
            .api_rates
            .try_add(token, window, 1, |k| {
                if k.current >= API_REQUESTS_PER_MINUTE {
                    Err(retry)
                } else {
                    Ok(())
                }
            })
            .err())
    }

    /// Take `n` usage events of a service token from its budget over every node: at most
    /// `2 × per_second` in any [`USAGE_WINDOW`] (a sliding window: the previous one counts by
    /// the part of it still within the last two seconds), so `per_second` sustained and twice
    /// that in a burst. Counted in memory and flushed with the API's counts; the first batch of
    /// a token in a window on this node reads every node's count first (one read on a primary
    /// key per token per window), so a budget spent on another node is refused here too.
    pub(crate) async fn take_usage_budget(&self, token: uuid::Uuid, n: usize, per_second: u32) -> Result<()> {
        let counts = &self.usage_counts;
        let now = self.clock.now();
        let key = token.to_string();
        let (window, into_ms) = counts.window_of(now);
        if !counts.knows(&key, window) {
            match self.store.read_counts(USAGE_COUNTER, &key, &[window - 1, window]).await {
                Ok(rows) => {
                    let get = |w: i64| rows.iter().find(|(x, _)| *x == w).map_or(0, |(_, n)| *n);
                    counts.learn(&key, window, get(window - 1), get(window));
                }
                // Judged on what this node knows; the flush tries the database again.
                Err(e) => tracing::warn!(error = %e, "could not read the usage rate counts; judging on this node's"),
            }
        }
        let limit = 2 * u64::from(per_second.max(1));
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        counts
            .try_add(&key, window, n, |k| {
                sliding_verdict(k, n, limit, into_ms, counts.window_ms)
            })
            .map_err(|retry_after_secs| Error::RateLimited { retry_after_secs })
    }

    /// Add what was counted on this node since the last flush (the Automation API's requests,
    /// usage events) to the control database, and take back every node's totals (the server
    /// calls this every ~200 ms, and once more at shutdown). On failure the counts are kept
    /// for the next one.
    pub async fn flush_limit_counts(&self) -> Result<()> {
        let api = self.flush_counts(&self.api_rates).await;
        let usage = self.flush_counts(&self.usage_counts).await;
        api.and(usage)
    }

    async fn flush_counts(&self, counts: &SharedCounts) -> Result<()> {
        let Some((window, pending)) = counts.take() else {
            return Ok(());
        };
        let added = match counts.counter {
            None => self.store.add_api_hits(window, &pending).await,
            Some(name) => {
                self.store
                    .add_counts(name, window, counts.expires_at(window), &pending)
                    .await
            }
        };
        match added {
            Ok(totals) => {
                counts.settle(window, &pending, &totals);
                Ok(())
            }
            Err(e) => {
                counts.restore(window, &pending);
                Err(e)
            }
        }
    }

    /// Before a request to an endpoint that takes a secret from a link or a form (invitation,
    /// setup and handoff links, single sign-on answers): reserve the guess of the client's
    /// network, or `Throttled` with the seconds to wait (judged by [`judge_link_guess`]: while
    /// the network backs off after [`LINK_FREE_MISSES`] misses, 2 s doubling, at most 15
    /// min; or when the guesses in flight would take it past them). A reserved guess counts
    /// as a miss until it is settled ([`LinkGuess`]), at most `running_for` (a node that dies
    /// mid-request). The misses and the guesses in flight are every node's
    /// (`sign_in_throttle` and `sign_in_guess`, under the network's hashed key), reserved by
    /// one transaction that locks the network's row, counts and judges: of concurrent guesses
    /// on any nodes each sees the ones reserved before it. A refused guess is not counted.
    pub async fn begin_link_guess(&self, address: &str, running_for: std::time::Duration) -> Result<LinkGuess> {
        let now = self.clock.now();
        let key = link_miss_key(address);
        let id = uuid::Uuid::new_v4();
        let until = now + Duration::try_from(running_for).unwrap_or(GUESS_IN_FLIGHT);
        // First a read that locks and writes nothing: a network backing off, or with its
        // allowance in flight already, is refused from it (a flood costs reads, and never
        // queues on the row's lock); only a guess it would admit takes the locking path.
        let mut seen = self.store.guess_state(&key, now).await?;
        seen.pending = seen.pending.saturating_add(1);
        if let Err(retry_after_secs) = judge_link_guess(&seen, now) {
            return Err(Error::Throttled { retry_after_secs });
        }
        let judge = move |rows: &[crate::throttle::ThrottleRow]| match rows {
            [row] => judge_link_guess(row, now),
            _ => Err(1),
        };
        let admitted = self
            .store
            .begin_guess(id, std::slice::from_ref(&key), &[], now, until, &judge)
            .await?;
        if let Err(retry_after_secs) = admitted {
            return Err(Error::Throttled { retry_after_secs });
        }
        Ok(LinkGuess {
            store: self.store.clone(),
            clock: self.clock.clone(),
            id,
            key,
            began: now,
            done: false,
        })
    }

    /// Before a request that takes no secret but is limited beside those that do (starting
    /// single sign-on): `Throttled` while the client's network backs off after its misses,
    /// judged from a read (nothing is reserved or written).
    pub async fn check_link_backoff(&self, address: &str) -> Result<()> {
        let now = self.clock.now();
        let row = self.store.guess_state(&link_miss_key(address), now).await?;
        match LINK_MISS_POLICY.wait(&row, now) {
            Some(retry_after_secs) => Err(Error::Throttled { retry_after_secs }),
            None => Ok(()),
        }
    }

    /// Count a single sign-on start of the client's network, before anything is written for
    /// it: `Throttled` past [`SSO_STARTS_PER_MINUTE`] in the clock's minute, over every node
    /// (`limit_count` under the network's hashed key: read first, and written only under the
    /// limit).
    pub async fn count_sso_start(&self, address: &str) -> Result<()> {
        let now = self.clock.now();
        let minute = now.unix_timestamp().div_euclid(60);
        let key = sso_start_key(address);
        let throttled = || {
            let retry_after_secs = u64::try_from(60 - now.unix_timestamp().rem_euclid(60))
                .unwrap_or(60)
                .max(1);
            Error::Throttled { retry_after_secs }
        };
        // Read first: a network already over its minute is refused without a write (a flood
        // of refused starts must not become a flood of writes on the control database).
        let seen = self.store.read_counts(SSO_START_COUNTER, &key, &[minute]).await?;
        if seen.iter().any(|(_, n)| *n >= SSO_STARTS_PER_MINUTE) {
            return Err(throttled());
        }
        let expires = OffsetDateTime::from_unix_timestamp((minute + 2) * 60).unwrap_or(now);
        let totals = self
            .store
            .add_counts(SSO_START_COUNTER, minute, expires, &[(key, 1)])
            .await?;
        if totals.first().is_some_and(|(_, n)| *n > SSO_STARTS_PER_MINUTE) {
            return Err(throttled());
        }
        Ok(())
    }

    /// Reserve `key` of the token for `request` while it runs (at most `running_for`: a node
    /// that dies mid-request leaves the key in use no longer than that), or say what the key
    /// stands for already.
    pub async fn start_idempotent(
        &self,
        token_hash: &str,
        key: &str,
        request: &str,
        running_for: std::time::Duration,
    ) -> Result<IdempotencyStart> {
        let now = self.clock.now();
        let holder = uuid::Uuid::new_v4();
        let until = now + Duration::try_from(running_for).unwrap_or(Duration::minutes(5));
        Ok(
            match self
                .store
                .reserve_idempotency_key(token_hash, key, request, holder, now, until, IDEMPOTENCY_KEYS_PER_TOKEN)
                .await?
            {
                IdempotencySlot::Reserved => IdempotencyStart::Run(holder),
                IdempotencySlot::Running { request } => IdempotencyStart::Running { request },
                IdempotencySlot::Done(reply) => IdempotencyStart::Replay(reply),
                IdempotencySlot::Full => IdempotencyStart::Full,
            },
        )
    }

    /// Keep the reply of a reserved key for [`IDEMPOTENT_REPLY_KEPT`] (it holds no secret:
    /// the caller blanked them).
    pub async fn keep_idempotent(
        &self,
        token_hash: &str,
        key: &str,
        holder: uuid::Uuid,
        reply: &KeptReply,
    ) -> Result<()> {
        let expires = self.clock.now() + IDEMPOTENT_REPLY_KEPT;
        self.store
            .keep_idempotent_reply(token_hash, key, holder, reply, expires)
            .await
    }

    /// Give a reserved key back (its request failed or went away).
    pub async fn release_idempotent(&self, token_hash: &str, key: &str, holder: uuid::Uuid) -> Result<()> {
        self.store.release_idempotency_key(token_hash, key, holder).await
    }

    /// Forget the replies kept for a token (its id) that no longer authenticates.
    pub async fn forget_idempotent(&self, token_hash: &str) -> Result<()> {
        self.store.forget_idempotent_replies(token_hash).await
    }

    /// Take the lease of job `name` for `holder` (a node) for `lease` if nobody holds it:
    /// `true` if this node may run it now. One conditional statement: one node wins, and a
    /// node that dies holding it holds it no longer than `lease`.
    pub async fn claim_job(&self, name: &str, holder: &str, lease: Duration) -> Result<bool> {
        let now = self.clock.now();
        self.store.claim_job(name, holder, now, now + lease).await
    }

    /// Keep this node's lease of the job until `until` (a periodic job: the end of the
    /// period its run covered, so no node runs it again before).
    pub async fn hold_job_until(&self, name: &str, holder: &str, until: OffsetDateTime) -> Result<bool> {
        self.store.extend_job(name, holder, until).await
    }

    /// End this node's lease of the job now (at shutdown, a run it did not finish).
    pub async fn release_job(&self, name: &str, holder: &str) -> Result<()> {
        self.store.release_job(name, holder, self.clock.now()).await
    }

    /// Housekeeping: throttle rows forgotten, past rate windows, expired idempotency rows.
    pub async fn prune_limits(&self) -> Result<u64> {
        let now = self.clock.now();
        self.store
            .prune_limits(
                now,
                now - ThrottlePolicy::ACCOUNT.forget_after,
                now.unix_timestamp().div_euclid(60) - 1,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;

    const W: i64 = 2_000;

    fn known(previous: u64, current: u64) -> Known {
        Known { previous, current }
    }

    #[test]
    fn guesses_at_links_in_flight_count_as_misses_and_past_the_free_ones_go_one_at_a_time() {
        use crate::throttle::ThrottleRow;
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(1);
        let row = |misses: u32, ago: i64, pending: u32| ThrottleRow {
            failures: misses,
            last_failure: (misses > 0).then(|| now - Duration::seconds(ago)),
            pending,
        };
        // `pending` counts the guess being judged.
        assert_eq!(judge_link_guess(&row(0, 0, 20), now), Ok(()), "the 20th in flight");
        assert_eq!(
            judge_link_guess(&row(0, 0, 21), now),
            Err(1),
            "the 21st: once those in flight have ended"
        );
        assert_eq!(
            judge_link_guess(&row(15, 0, 5), now),
            Ok(()),
            "15 misses and 4 others in flight"
        );
        assert_eq!(judge_link_guess(&row(15, 0, 6), now), Err(1));
        assert_eq!(judge_link_guess(&row(20, 0, 1), now), Err(2), "backing off");
        assert_eq!(
            judge_link_guess(&row(20, 2, 1), now),
            Ok(()),
            "the back-off over: one guess"
        );
        assert_eq!(judge_link_guess(&row(20, 2, 2), now), Err(1), "and only one at a time");
        assert_eq!(judge_link_guess(&row(30, 0, 1), now), Err(900), "at most 15 minutes");
        assert_eq!(
            judge_link_guess(&row(25, 3_600, 20), now),
            Ok(()),
            "misses an hour old are forgotten"
        );
    }

    #[test]
    fn a_sliding_window_takes_its_limit_at_once_and_says_when_the_rest_fits() {
        assert_eq!(sliding_verdict(known(0, 0), 20, 20, 0, W), Ok(()));
        assert!(sliding_verdict(known(0, 0), 21, 20, 0, W).is_err());
        // A full previous window slides out: 1 more fits once 1/20 of it has (100 ms).
        assert_eq!(sliding_verdict(known(20, 0), 1, 20, 0, W), Err(1));
        assert!(sliding_verdict(known(20, 0), 1, 20, 99, W).is_err());
        assert_eq!(sliding_verdict(known(20, 0), 1, 20, 100, W), Ok(()));
        // This window full: after it ends (1.5 s), and 100 ms into the next: 1.6 s, said 2.
        assert_eq!(sliding_verdict(known(0, 20), 1, 20, 500, W), Err(2));
        // More than a window holds never fits.
        assert_eq!(sliding_verdict(known(0, 0), 41, 20, 0, W), Err(60));
    }

    #[test]
    fn other_nodes_counts_read_or_flushed_count_and_a_new_window_keeps_them_as_previous() {
        let c = SharedCounts::new(Some("t"), W);
        let limit = |k: Known| if k.current + 5 > 10 { Err(1) } else { Ok(()) };
        assert!(!c.knows("a", 7));
        c.learn("a", 7, 3, 6);
        assert!(c.knows("a", 7));
        assert_eq!(c.try_add("a", 7, 5, limit), Err(1), "6 counted elsewhere + 5 > 10");
        assert_eq!(
            c.try_add("a", 7, 4, |k| if k.current + 4 > 10 { Err(1) } else { Ok(()) }),
            Ok(())
        );
        let (window, pending) = c.take().unwrap();
        assert_eq!((window, pending.clone()), (7, vec![("a".to_owned(), 4)]));
        // A failed flush keeps the count; a good one takes back the cluster's total.
        c.restore(window, &pending);
        let (window, pending) = c.take().unwrap();
        c.settle(window, &pending, &[("a".to_owned(), 12)]);
        c.try_add("a", 8, 0, |k| {
            assert_eq!(k, known(12, 0), "the last window's total is the previous one's");
            Ok(())
        })
        .unwrap();
        assert!(!c.knows("a", 8), "a new window is read again");
        c.try_add("a", 10, 0, |k| {
            assert_eq!(k, known(0, 0), "a window skipped: nothing previous");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn what_was_counted_just_before_a_window_ended_is_still_written_to_that_window() {
        let c = SharedCounts::new(Some("t"), W);
        c.try_add("a", 7, 3, |_| Ok(())).unwrap();
        // The window ends before the flush: its 3 go to window 7, then the new window's.
        c.try_add("a", 8, 2, |k| {
            assert_eq!(k.previous, 3, "this node's own count of the window before");
            Ok(())
        })
        .unwrap();
        assert_eq!(c.take(), Some((7, vec![("a".to_owned(), 3)])));
        assert_eq!(c.take(), Some((8, vec![("a".to_owned(), 2)])));
        assert_eq!(c.take(), None);
    }
}
