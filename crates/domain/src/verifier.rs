//! The in-process side of data-plane verification: caches of verified tenant API keys and
//! service tokens, of unknown ones, the change-feed position that keeps them honest, the rate
//! counters and the coalesced last-use marks. [`crate::core::Core`] owns one and drives it; it
//! knows nothing of the database.
//!
//! The guarantee: after a revocation, a roll's grace end or a tenant's suspension, no node
//! accepts the key more than 1 s later.
//! - Time-based ends (expiry, grace end) are judged at every verification from the cached
//!   record with the injected clock ([`crate::api_key::KeyRecord::judge`]).
//! - Everything else changes only with an entry in the change feed (`data_plane_change`),
//!   polled every ~200 ms. A cached positive answer is served only while the feed has been
//!   read successfully within [`STALE_AFTER`] (measured from the start of that read): a read
//!   started at or after the change's commit sees it, so a change is applied here before
//!   `commit + poll interval + read` ≤ 1 s, or the node stops answering from its cache.
//! - A lookup racing with a change cannot re-insert what the change dropped: inserts carry the
//!   invalidation epoch read before their database read and are refused once it moved.

use crate::api_key::KeyRecord;
use crate::rate::{KeyRate, RateTable};
use crate::service_token::ServiceToken;
use crate::store::{ChangeKind, DataPlaneChange};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// SHA-256 of a secret, the cache's key (the database keeps its hex).
pub type Digest = [u8; 32];

/// At most this many verified keys are cached (≈ 0.5 KB each: ≤ ~100 MB).
pub const MAX_KEYS: usize = 200_000;
/// At most this many service tokens.
pub const MAX_TOKENS: usize = 10_000;
/// At most this many unknown secrets (keys and tokens each; 32 bytes + 8 each).
pub const MAX_UNKNOWN: usize = 100_000;
/// An unknown secret is answered from memory this long.
pub const UNKNOWN_TTL: Duration = Duration::seconds(60);
/// A positive entry is re-read after this long whatever the feed says (a safety net).
pub const MAX_AGE: Duration = Duration::milliseconds(MAX_AGE_MS);
/// Without a successful read of the feed for this long, positive entries are not served.
pub const STALE_AFTER: Duration = Duration::milliseconds(STALE_AFTER_MS);
/// At most this many database lookups for cache misses at once on a node.
pub const MAX_LOOKUPS: usize = 16;
/// How long a miss waits for a lookup slot before the answer is 503 `busy`.
pub const LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

const SHARDS: usize = 32;
const STALE_AFTER_MS: i64 = 800;
const MAX_AGE_MS: i64 = 5 * 60 * 1000;

/// SHA-256 of a secret, once per request.
pub fn digest(secret: &str) -> Digest {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `s` can be a secret made by [`crate::token::Secret::generate`] with a prefix of
/// 1 to 20 characters: prefix + 43 characters, all of `[A-Za-z0-9_-]`. Anything else is
/// refused before any hashing or lookup.
pub fn well_formed(s: &str, min_len: usize, max_len: usize) -> bool {
    (min_len..=max_len).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What eviction compares: the lower, the sooner it goes.
trait Recency {
    fn recency(&self) -> i64;
}

/// A cached verified key.
#[derive(Debug)]
pub struct KeyEntry {
    pub record: Arc<KeyRecord>,
    /// The key's counters, if it has a limit.
    pub rate: Option<Arc<KeyRate>>,
    cached_ms: i64,
    last_hit_ms: AtomicI64,
    touched: AtomicU64,
}

/// A cached service token.
#[derive(Debug)]
pub struct TokenEntry {
    pub token: Arc<ServiceToken>,
    cached_ms: i64,
    last_hit_ms: AtomicI64,
    touched: AtomicU64,
}

/// A secret the database does not know, until `until_ms`.
#[derive(Clone, Copy, Debug)]
struct Unknown {
    until_ms: i64,
}

impl Recency for Arc<KeyEntry> {
    fn recency(&self) -> i64 {
        self.last_hit_ms.load(Ordering::Relaxed)
    }
}
impl Recency for Arc<TokenEntry> {
    fn recency(&self) -> i64 {
        self.last_hit_ms.load(Ordering::Relaxed)
    }
}
impl Recency for Unknown {
    fn recency(&self) -> i64 {
        self.until_ms
    }
}

/// A hash map split in shards by the digest's first byte, each under its own lock, bounded:
/// a full shard evicts, per insert, the least recently used of a sample of 16 (approximate
/// LRU, as Redis does it).
struct Shards<V> {
    shards: Vec<RwLock<HashMap<Digest, V>>>,
    per_shard: usize,
}

impl<V: Clone + Recency> Shards<V> {
    fn new(max: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            per_shard: max.div_ceil(SHARDS).max(1),
        }
    }
    fn shard(&self, d: &Digest) -> &RwLock<HashMap<Digest, V>> {
        &self.shards[usize::from(d[0]) % SHARDS]
    }
    fn get(&self, d: &Digest) -> Option<V> {
        self.shard(d)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(d)
            .cloned()
    }
    /// Insert unless `allowed` (checked under the shard's lock) says no.
    fn insert_if(&self, d: Digest, v: V, allowed: impl FnOnce() -> bool) -> bool {
        let mut map = self
            .shard(&d)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !allowed() {
            return false;
        }
        if map.len() >= self.per_shard && !map.contains_key(&d) {
            let victim = map.iter().take(16).min_by_key(|(_, v)| v.recency()).map(|(k, _)| *k);
            if let Some(k) = victim {
                map.remove(&k);
            }
        }
        map.insert(d, v);
        true
    }
    fn remove(&self, d: &Digest) {
        self.shard(d)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(d);
    }
    fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for s in &self.shards {
            s.write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|_, v| keep(v));
        }
    }
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(std::sync::PoisonError::into_inner).len())
            .sum()
    }
}

/// A miss's ticket: the invalidation epoch before its database read.
#[derive(Clone, Copy, Debug)]
pub struct Lookup {
    epoch: u64,
}

/// The caches, the feed position, the counters. See the module documentation.
pub struct Verifier {
    keys: Shards<Arc<KeyEntry>>,
    tokens: Shards<Arc<TokenEntry>>,
    unknown_keys: Shards<Unknown>,
    unknown_tokens: Shards<Unknown>,
    pub rates: RateTable,
    lookups: tokio::sync::Semaphore,
    /// The last change applied; `i64::MIN` until the feed was first read.
    cursor: AtomicI64,
    /// When the last successful read of the feed started (unix ms); `i64::MIN`: never.
    fresh_ms: AtomicI64,
    /// Moves with every applied batch of changes (see [`Lookup`]).
    epoch: AtomicU64,
    touch_epoch: AtomicU64,
    touched_keys: Mutex<Vec<Uuid>>,
    touched_tokens: Mutex<Vec<Uuid>>,
    db_lookups: AtomicU64,
    /// Tests stop the poller with this, to see the stale-feed rule work.
    pub(crate) feed_paused: AtomicBool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("cursor", &self.cursor.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    pub fn new() -> Self {
        Self {
            keys: Shards::new(MAX_KEYS),
            tokens: Shards::new(MAX_TOKENS),
            unknown_keys: Shards::new(MAX_UNKNOWN),
            unknown_tokens: Shards::new(MAX_UNKNOWN),
            rates: RateTable::default(),
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
            cursor: AtomicI64::new(i64::MIN),
            fresh_ms: AtomicI64::new(i64::MIN),
            epoch: AtomicU64::new(0),
            touch_epoch: AtomicU64::new(1),
            touched_keys: Mutex::new(Vec::new()),
            touched_tokens: Mutex::new(Vec::new()),
            db_lookups: AtomicU64::new(0),
            feed_paused: AtomicBool::new(false),
        }
    }

    /// Whether positive entries may be served at `now`: the feed was read within
    /// [`STALE_AFTER`].
    pub fn fresh(&self, now: OffsetDateTime) -> bool {
        let at = self.fresh_ms.load(Ordering::Acquire);
        at != i64::MIN && millis(now).saturating_sub(at) <= STALE_AFTER_MS
    }

    fn servable(&self, cached_ms: i64, last_hit: &AtomicI64, now: OffsetDateTime) -> bool {
        let now_ms = millis(now);
        if !self.fresh(now) || now_ms.saturating_sub(cached_ms) > MAX_AGE_MS {
            return false;
        }
        if last_hit.load(Ordering::Relaxed) < now_ms - 1000 {
            last_hit.store(now_ms, Ordering::Relaxed);
        }
        true
    }

    /// The cached key behind `d`, if it may be served at `now`.
    pub fn cached_key(&self, d: &Digest, now: OffsetDateTime) -> Option<Arc<KeyEntry>> {
        self.keys
            .get(d)
            .filter(|e| self.servable(e.cached_ms, &e.last_hit_ms, now))
    }

    pub fn cached_token(&self, d: &Digest, now: OffsetDateTime) -> Option<Arc<TokenEntry>> {
        self.tokens
            .get(d)
            .filter(|e| self.servable(e.cached_ms, &e.last_hit_ms, now))
    }

    /// Whether `d` is a key the database did not know within [`UNKNOWN_TTL`]. No
    /// invalidation needed: a secret only comes to exist by being generated (256 random bits,
    /// at creation or a roll), so no one looked it up before unless they guessed it.
    pub fn known_unknown_key(&self, d: &Digest, now: OffsetDateTime) -> bool {
        self.unknown_keys.get(d).is_some_and(|u| u.until_ms > millis(now))
    }

    pub fn known_unknown_token(&self, d: &Digest, now: OffsetDateTime) -> bool {
        self.unknown_tokens.get(d).is_some_and(|u| u.until_ms > millis(now))
    }

    /// A slot for a database lookup: at most [`MAX_LOOKUPS`] at once. A miss that finds none
    /// within [`LOOKUP_WAIT`] is answered 503 `busy`, not `unknown`: the key may well be
    /// real (cold after a restart, evicted), and a definite "unknown" would make the data
    /// plane refuse a legitimate caller, while `busy` says "retry" — and costs an attacker
    /// flooding unknown keys as much as it costs them.
    pub async fn lookup_slot(&self) -> crate::Result<(tokio::sync::SemaphorePermit<'_>, Lookup)> {
        let permit = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire())
            .await
            .map_err(|_| crate::Error::Busy)?
            .map_err(|_| crate::Error::Busy)?;
        self.db_lookups.fetch_add(1, Ordering::Relaxed);
        let lookup = Lookup {
            epoch: self.epoch.load(Ordering::SeqCst),
        };
        Ok((permit, lookup))
    }

    /// How many database lookups misses have made (for tests and metrics).
    pub fn db_lookups(&self) -> u64 {
        self.db_lookups.load(Ordering::Relaxed)
    }

    /// Keep what a lookup read, unless a change was applied since it began.
    pub fn remember_key(&self, lookup: Lookup, d: Digest, record: KeyRecord, now: OffsetDateTime) -> Arc<KeyEntry> {
        let rate = record
            .key
            .requests_per_minute
            .map(|limit| self.rates.of(record.key.id, limit));
        let now_ms = millis(now);
        let entry = Arc::new(KeyEntry {
            record: Arc::new(record),
            rate,
            cached_ms: now_ms,
            last_hit_ms: AtomicI64::new(now_ms),
            touched: AtomicU64::new(0),
        });
        self.keys
            .insert_if(d, entry.clone(), || self.epoch.load(Ordering::SeqCst) == lookup.epoch);
        entry
    }

    pub fn remember_token(
        &self,
        lookup: Lookup,
        d: Digest,
        token: ServiceToken,
        now: OffsetDateTime,
    ) -> Arc<TokenEntry> {
        let now_ms = millis(now);
        let entry = Arc::new(TokenEntry {
            token: Arc::new(token),
            cached_ms: now_ms,
            last_hit_ms: AtomicI64::new(now_ms),
            touched: AtomicU64::new(0),
        });
        self.tokens
            .insert_if(d, entry.clone(), || self.epoch.load(Ordering::SeqCst) == lookup.epoch);
        entry
    }

    pub fn remember_unknown_key(&self, d: Digest, now: OffsetDateTime) {
        let until_ms = millis(now + UNKNOWN_TTL);
        self.unknown_keys.insert_if(d, Unknown { until_ms }, || true);
    }

    pub fn remember_unknown_token(&self, d: Digest, now: OffsetDateTime) {
        let until_ms = millis(now + UNKNOWN_TTL);
        self.unknown_tokens.insert_if(d, Unknown { until_ms }, || true);
    }

    /// Mark the key used (written by the next touch flush); one lock per key per flush.
    pub fn touch_key(&self, e: &KeyEntry) {
        let epoch = self.touch_epoch.load(Ordering::Acquire);
        if e.touched.swap(epoch, Ordering::AcqRel) != epoch {
            lock(&self.touched_keys).push(e.record.key.id);
        }
    }

    pub fn touch_token(&self, e: &TokenEntry) {
        let epoch = self.touch_epoch.load(Ordering::Acquire);
        if e.touched.swap(epoch, Ordering::AcqRel) != epoch {
            lock(&self.touched_tokens).push(e.token.id);
        }
    }

    /// The keys and tokens used since the last call, each once.
    pub fn take_touched(&self) -> (Vec<Uuid>, Vec<Uuid>) {
        self.touch_epoch.fetch_add(1, Ordering::AcqRel);
        let dedupe = |v: Vec<Uuid>| -> Vec<Uuid> {
            let set: HashSet<Uuid> = v.into_iter().collect();
            let mut v: Vec<Uuid> = set.into_iter().collect();
            v.sort_unstable();
            v
        };
        let keys = std::mem::take(&mut *lock(&self.touched_keys));
        let tokens = std::mem::take(&mut *lock(&self.touched_tokens));
        (dedupe(keys), dedupe(tokens))
    }

    /// The last change applied, or `None` before the feed was first read.
    pub fn cursor(&self) -> Option<i64> {
        Some(self.cursor.load(Ordering::Acquire)).filter(|c| *c != i64::MIN)
    }

    /// The first read of the feed: start at its head. What was cached before is dropped (it
    /// was never served: the feed was not fresh), since changes before the head are not
    /// replayed.
    pub fn start_feed(&self, head: i64, read_started: OffsetDateTime) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.keys.retain(|_| false);
        self.tokens.retain(|_| false);
        self.cursor.store(head, Ordering::Release);
        self.fresh_ms.store(millis(read_started), Ordering::Release);
    }

    /// Forget what a batch of changes (oldest first) touches and move the cursor past it.
    pub fn apply(&self, changes: &[DataPlaneChange]) {
        let Some(last) = changes.last() else { return };
        let mut keys = HashSet::new();
        let mut tenants = HashSet::new();
        let mut tokens = HashSet::new();
        for c in changes {
            match c.kind {
                ChangeKind::ApiKey => keys.insert(c.subject),
                ChangeKind::Tenant => tenants.insert(c.subject),
                ChangeKind::ServiceToken => tokens.insert(c.subject),
            };
        }
        // First the epoch, then the shards: a lookup that read the database before this
        // batch either inserted already (removed below, under the same shard lock) or sees
        // the new epoch and does not insert.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if !keys.is_empty() || !tenants.is_empty() {
            self.keys
                .retain(|e| !keys.contains(&e.record.key.id) && !tenants.contains(&e.record.tenant.id.0));
        }
        if !tokens.is_empty() {
            self.tokens.retain(|e| !tokens.contains(&e.token.id));
        }
        self.cursor.store(last.seq, Ordering::Release);
    }

    /// The feed was read to its end by a read that started at `read_started`.
    pub fn feed_read(&self, read_started: OffsetDateTime) {
        self.fresh_ms.fetch_max(millis(read_started), Ordering::AcqRel);
    }

    /// Drop a cached unknown (tests).
    pub fn forget_unknown_key(&self, d: &Digest) {
        self.unknown_keys.remove(d);
    }

    /// How many keys are cached.
    pub fn cached_keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
#[path = "verifier_tests.rs"]
mod tests;
