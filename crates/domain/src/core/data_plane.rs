//! What the product's data plane asks: who is behind a tenant API key
//! (`POST /v1/data-plane/keys/verify`), with the callers' service tokens authenticated here.

use super::Core;
use crate::api_key::{KeyRecord, Refusal};
use crate::error::{Error, Result};
use crate::rate::{RateVerdict, window_of};
use crate::service_token::{SERVICE_TOKEN_PREFIX, ServiceScope, ServiceToken};
use crate::token::TokenHash;
use crate::verifier::{digest, well_formed};
use std::sync::Arc;

/// A data-plane caller: a live service token.
#[derive(Clone, Debug)]
pub struct ServiceCaller {
    pub token: Arc<ServiceToken>,
}

impl ServiceCaller {
    /// `InsufficientScope` unless the token carries `scope`.
    pub fn require(&self, scope: ServiceScope) -> Result<()> {
        if self.token.has(scope) {
            Ok(())
        } else {
            Err(Error::InsufficientScope)
        }
    }

    /// The audit actor of what this token does: no user, the token's id.
    pub fn actor(&self) -> crate::access::Actor {
        let mut a = crate::access::Actor::system();
        a.token_id = Some(self.token.id);
        a
    }
}

/// The answer to a verification.
#[derive(Clone, Debug, PartialEq)]
pub enum Verification {
    Valid {
        record: Arc<KeyRecord>,
        limits: Limits,
    },
    Invalid {
        refusal: Refusal,
        /// For `rate_limited`: when to try again.
        retry_after_secs: Option<u64>,
    },
}

/// The key's rate limit as it stands after this request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub remaining: Option<u64>,
    pub reset_seconds: Option<u64>,
}

impl Verification {
    pub fn invalid(refusal: Refusal) -> Self {
        Self::Invalid {
            refusal,
            retry_after_secs: None,
        }
    }
}

/// The shortest and longest tenant API key that can exist: a prefix of 1 to 20 characters
/// plus 43 of base64url ([`crate::token::Secret::generate`]).
const KEY_CHARS: (usize, usize) = (1 + 43, 20 + 43);
/// Every service token is `qd_svc_` plus 43 characters.
const TOKEN_CHARS: usize = SERVICE_TOKEN_PREFIX.len() + 43;
/// How many changes one read of the feed takes.
const FEED_PAGE: u32 = 1000;

/// A lookup the database could not answer: the request fails with 503 (`busy`), never with a
/// stale answer from the cache.
fn unavailable(e: Error) -> Error {
    match e {
        Error::Internal(detail) => {
            tracing::warn!(error = %detail, "a data-plane lookup failed; answering busy");
            Error::Busy
        }
        other => other,
    }
}

impl Core {
    /// The live service token behind a bearer value, or `Unauthenticated` (unknown, revoked,
    /// expired, or not a service token at all). Answered from the verifier's cache while the
    /// change feed is fresh; last use is marked in memory and written by
    /// [`Core::flush_key_use`].
    pub async fn authenticate_service(&self, bearer: &str) -> Result<ServiceCaller> {
        if !bearer.starts_with(SERVICE_TOKEN_PREFIX) || !well_formed(bearer, TOKEN_CHARS, TOKEN_CHARS) {
            return Err(Error::Unauthenticated);
        }
        let now = self.clock.now();
        let v = &self.verifier;
        let d = digest(bearer);
        let entry = match v.cached_token(&d, now) {
            Some(e) => e,
            None => {
                if v.known_unknown_token(&d, now) {
                    return Err(Error::Unauthenticated);
                }
                let (_slot, lookup) = v.token_lookup_slot().await?;
                // Another request may have looked it up while this one waited for the slot.
                if let Some(e) = v.cached_token(&d, now) {
                    e
                } else if v.known_unknown_token(&d, now) {
                    return Err(Error::Unauthenticated);
                } else {
                    v.note_lookup();
                    match self
                        .store
                        .service_token_by_hash(&TokenHash(hex::encode(d)))
                        .await
                        .map_err(unavailable)?
                    {
                        Some(token) => v.remember_token(lookup, d, token, now),
                        None => {
                            v.remember_unknown_token(d, now);
                            return Err(Error::Unauthenticated);
                        }
                    }
                }
            }
        };
        if !entry.token.is_live(now) {
            return Err(Error::Unauthenticated);
        }
        v.touch_token(&entry);
        Ok(ServiceCaller {
            token: entry.token.clone(),
        })
    }

    /// Who is behind a tenant API key. Anything that is not a live key of a reachable tenant
    /// is `{"valid": false}` with the reason; only the caller's own faults are errors, and
    /// `busy` when the answer cannot be had in time (see [`crate::verifier`]).
    pub async fn verify_api_key(&self, caller: &ServiceCaller, key: &str) -> Result<Verification> {
        let result = self.judge_api_key(caller, key).await;
        self.meters.key_verification(match &result {
            Ok(Verification::Valid { .. }) => "valid",
            Ok(Verification::Invalid { refusal, .. }) => refusal.as_str(),
            Err(Error::Busy) => "busy",
            Err(_) => "error",
        });
        result
    }

    async fn judge_api_key(&self, caller: &ServiceCaller, key: &str) -> Result<Verification> {
        caller.require(ServiceScope::KeysVerify)?;
        if !well_formed(key, KEY_CHARS.0, KEY_CHARS.1) {
            return Ok(Verification::invalid(Refusal::Unknown));
        }
        let now = self.clock.now();
        let v = &self.verifier;
        let d = digest(key);
        let entry = match v.cached_key(&d, now) {
            Some(e) => e,
            None => {
                if v.known_unknown_key(&d, now) {
                    return Ok(Verification::invalid(Refusal::Unknown));
                }
                let (_slot, lookup) = v.lookup_slot().await?;
                // Another request may have looked it up while this one waited for the slot.
                if let Some(e) = v.cached_key(&d, now) {
                    e
                } else if v.known_unknown_key(&d, now) {
                    return Ok(Verification::invalid(Refusal::Unknown));
                } else {
                    v.note_lookup();
                    match self
                        .store
                        .key_for_verification(&TokenHash(hex::encode(d)))
                        .await
                        .map_err(unavailable)?
                    {
                        Some(record) => v.remember_key(lookup, d, record, now),
                        None => {
                            v.remember_unknown_key(d, now);
                            return Ok(Verification::invalid(Refusal::Unknown));
                        }
                    }
                }
            }
        };
        let record = &entry.record;
        if !caller.token.reaches(record.tenant.region.as_str()) {
            return Ok(Verification::invalid(Refusal::Unknown));
        }
        if let Err(refusal) = record.judge(now) {
            return Ok(Verification::invalid(refusal));
        }
        let mut limits = Limits {
            requests_per_minute: record.key.requests_per_minute,
            ..Limits::default()
        };
        if let Some(rate) = &entry.rate {
            match rate.try_hit(now) {
                RateVerdict::Limited { retry_after_secs } => {
                    return Ok(Verification::Invalid {
                        refusal: Refusal::RateLimited,
                        retry_after_secs: Some(retry_after_secs),
                    });
                }
                RateVerdict::Allowed {
                    remaining,
                    reset_seconds,
                } => {
                    limits.remaining = Some(remaining);
                    limits.reset_seconds = Some(reset_seconds);
                }
            }
        }
        v.touch_key(&entry);
        Ok(Verification::Valid {
            record: record.clone(),
            limits,
        })
    }

    /// Read the change feed to its end and forget what it names (the server calls this every
    /// ~200 ms). The feed's `seq` order is its commit order: every writer of it is an audited
    /// change, and audited changes are serialised (the audit chain's lock), so a reader that
    /// has seen `seq` n has seen everything before it, and reading `seq > cursor` misses
    /// nothing.
    pub async fn sync_verifier(&self) -> Result<()> {
        let v = &self.verifier;
        if v.feed_paused.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let started = self.clock.now();
        let Some(mut after) = v.cursor() else {
            let head = self.store.data_plane_head().await?;
            v.start_feed(head, started);
            return Ok(());
        };
        loop {
            let changes = self.store.data_plane_changes(after, FEED_PAGE).await?;
            v.apply(&changes);
            for c in &changes {
                self.usage.forget(c.kind, c.subject);
            }
            match changes.last() {
                Some(last) if changes.len() == FEED_PAGE as usize => after = last.seq,
                _ => break,
            }
        }
        v.feed_read(started);
        Ok(())
    }

    /// Hand the requests counted here to the cluster's per-key minute totals and take back
    /// everyone's (one call; the server calls this every ~200 ms).
    pub async fn flush_key_hits(&self) -> Result<()> {
        let rates = &self.verifier.rates;
        let pending = rates.take();
        if pending.is_empty() {
            return Ok(());
        }
        let (window, _) = window_of(self.clock.now());
        match self.store.add_key_hits(window, &pending.hits()).await {
            Ok(totals) => {
                rates.settle(pending, window, &totals);
                Ok(())
            }
            Err(e) => {
                rates.restore(pending);
                Err(e)
            }
        }
    }

    /// Write the last use of the keys and service tokens used since the last call (one
    /// statement each; the server calls this every ~1 s).
    pub async fn flush_key_use(&self) -> Result<()> {
        let (keys, tokens) = self.verifier.take_touched();
        let now = self.clock.now();
        if !keys.is_empty() {
            self.store.touch_api_keys(&keys, now).await?;
        }
        if !tokens.is_empty() {
            self.store.touch_service_tokens(&tokens, now).await?;
        }
        Ok(())
    }

    /// How many database lookups verification misses have made on this node.
    pub fn verifier_lookups(&self) -> u64 {
        self.verifier.db_lookups()
    }

    /// Stop (or resume) reading the change feed, as if the database could not be read: for
    /// tests of the stale-feed rule.
    #[cfg(feature = "test-support")]
    pub fn pause_verifier_feed(&self, paused: bool) {
        self.verifier
            .feed_paused
            .store(paused, std::sync::atomic::Ordering::Release);
    }
}
