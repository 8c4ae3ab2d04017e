//! Limits every node enforces alike, kept in the control database (`LimitStore`): the sign-in
//! throttle, the Automation API's per-token rate and `Idempotency-Key` replies, and the
//! leases of jobs that must run on one node at a time.

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
        if self.done {
            return;
        }
        let (store, id, now) = (self.store.clone(), self.id, self.began);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // Only the guess's own in-flight rows go (`now` judges nothing here).
                if let Err(e) = store.end_guess(id, &[], &[], now, now).await {
                    tracing::warn!(error = %e, "could not give back a sign-in guess's count; it lapses within a minute");
                }
            });
        }
    }
}

/// Automation API requests per token (its id) on this node: every node's total for the
/// current minute as the last flush returned it, what a flush under way is adding, and what was
/// counted here since. One lock: a request's check and count, and a flush's hand-over, each
/// see a consistent state.
#[derive(Debug, Default)]
pub(crate) struct ApiRates(std::sync::Mutex<ApiCounts>);

#[derive(Debug, Default)]
struct ApiCounts {
    window: i64,
    seen: HashMap<String, u64>,
    in_flight: HashMap<String, u64>,
    local: HashMap<String, u64>,
}

type Hits = Vec<(String, u64)>;

impl ApiRates {
    fn lock(&self) -> std::sync::MutexGuard<'_, ApiCounts> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Count a request of `token` in `window` unless it would pass `limit`: `false` if not.
    fn try_hit(&self, token: &str, window: i64, limit: u64) -> bool {
        let mut c = self.lock();
        if c.window != window {
            // A new minute: what was counted for the last one no longer limits anyone.
            *c = ApiCounts {
                window,
                ..ApiCounts::default()
            };
        }
        let get = |m: &HashMap<String, u64>| m.get(token).copied().unwrap_or(0);
        if get(&c.seen) + get(&c.in_flight) + get(&c.local) >= limit {
            return false;
        }
        *c.local.entry(token.to_owned()).or_default() += 1;
        true
    }

    /// Hand what was counted here to a flush.
    fn take(&self) -> Option<(i64, Hits)> {
        let mut c = self.lock();
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

    fn unflight(c: &mut ApiCounts, pending: &[(String, u64)]) {
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
        let now = self.clock.now().unix_timestamp();
        let retry = u64::try_from(60 - now.rem_euclid(60)).unwrap_or(60).max(1);
        Ok((!self
            .api_rates
            .try_hit(token, now.div_euclid(60), API_REQUESTS_PER_MINUTE))
        .then_some(retry))
    }

    /// Add the Automation API requests counted on this node since the last flush to the
    /// control database, and take back every node's totals (the server calls this every
    /// ~200 ms, and once more at shutdown). On failure the counts are kept for the next one.
    pub async fn flush_api_hits(&self) -> Result<()> {
        let Some((window, pending)) = self.api_rates.take() else {
            return Ok(());
        };
        match self.store.add_api_hits(window, &pending).await {
            Ok(totals) => {
                self.api_rates.settle(window, &pending, &totals);
                Ok(())
            }
            Err(e) => {
                self.api_rates.restore(window, &pending);
                Err(e)
            }
        }
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
