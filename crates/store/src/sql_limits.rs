//! State every node shares (the sign-in throttle and the link-guessing misses, the Automation
//! API's rate windows and idempotency replies, the shared counters of `limit_count`: usage
//! events per service token, single sign-on starts per network; job leases), for both
//! backends (see `sql.rs`; invoked beside `impl_store!`, whose helpers and imports it uses).
//! Each request costs one or two small statements on a primary key; housekeeping deletes what
//! has expired (`prune_limits`).

macro_rules! impl_limit_store {
    ($Store:ty, $Db:ty) => {
        use quarterdeck_domain::store::{IdempotencySlot, KeptReply, LimitStore};
        use quarterdeck_domain::throttle::ThrottleRow;

        fn throttle_row(r: &DbRow) -> Result<ThrottleRow> {
            let failures: i32 = r.try_get("failures").map_err(db_err)?;
            Ok(ThrottleRow {
                failures: u32::try_from(failures).unwrap_or(0),
                last_failure: r.try_get::<Option<Ts>, _>("last_failure").map_err(db_err)?.map(dec_ts),
                pending: 0,
            })
        }

        #[async_trait::async_trait]
        impl LimitStore for $Store {
            async fn begin_guess(
                &self,
                guess: Uuid,
                pending: &[String],
                read: &[String],
                now: OffsetDateTime,
                until: OffsetDateTime,
                judge: &quarterdeck_domain::throttle::GuessJudge,
            ) -> Result<std::result::Result<(), u64>> {
                let _writer = self.writer_permit().await;
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                if let Some(bound) = GUESS_LOCK_BOUND {
                    sqlx::query(bound).execute(&mut *tx).await.map_err(db_err)?;
                }
                let mut rows = vec![ThrottleRow::default(); pending.len() + read.len()];
                // The keys' rows locked in the order of the keys (as `end_guess` does: no two
                // transactions wait for each other), held until commit: of concurrent guesses
                // (on any node) each counts the ones admitted before it.
                let mut order: Vec<usize> = (0..pending.len()).collect();
                order.sort_by(|a, b| pending[*a].cmp(&pending[*b]));
                for i in order {
                    let key = &pending[i];
                    let r = sqlx::query(
                        "INSERT INTO sign_in_throttle (key, failures, last_failure) VALUES ($1, 0, NULL) \
                         ON CONFLICT (key) DO UPDATE SET failures = sign_in_throttle.failures \
                         RETURNING failures, last_failure",
                    )
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    let mut row = throttle_row(&r)?;
                    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM sign_in_guess WHERE key = $1 AND until > $2")
                        .bind(key)
                        .bind(enc_ts(now))
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    row.pending = u32::try_from(live).unwrap_or(u32::MAX).saturating_add(1);
                    rows[i] = row;
                }
                for (i, key) in read.iter().enumerate() {
                    let r = sqlx::query("SELECT failures, last_failure FROM sign_in_throttle WHERE key = $1")
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    if let Some(r) = r {
                        rows[pending.len() + i] = throttle_row(&r)?;
                    }
                }
                let verdict = judge(&rows);
                if verdict.is_err() {
                    // A refused guess leaves nothing behind: a row it created just to lock
                    // (no failure, no guess in flight) goes again, so refused guesses with
                    // ever new emails do not fill the table.
                    for key in pending {
                        sqlx::query(
                            "DELETE FROM sign_in_throttle WHERE key = $1 AND last_failure IS NULL \
                             AND NOT EXISTS (SELECT 1 FROM sign_in_guess g WHERE g.key = $1)",
                        )
                        .bind(key)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    }
                } else {
                    // Only an admitted guess is counted, each with its own expiry.
                    for key in pending {
                        sqlx::query("INSERT INTO sign_in_guess (key, guess, until) VALUES ($1, $2, $3)")
                            .bind(key)
                            .bind(guess)
                            .bind(enc_ts(until))
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    }
                }
                tx.commit().await.map_err(db_err)?;
                Ok(verdict)
            }

            async fn guess_state(&self, key: &str, now: OffsetDateTime) -> Result<ThrottleRow> {
                let r = sqlx::query(
                    "SELECT failures, last_failure, \
                     (SELECT count(*) FROM sign_in_guess g WHERE g.key = $1 AND g.until > $2) AS live \
                     FROM sign_in_throttle WHERE key = $1",
                )
                .bind(key)
                .bind(enc_ts(now))
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                let Some(r) = r else { return Ok(ThrottleRow::default()) };
                let mut row = throttle_row(&r)?;
                let live: i64 = r.try_get("live").map_err(db_err)?;
                row.pending = u32::try_from(live).unwrap_or(u32::MAX);
                Ok(row)
            }

            async fn end_guess(
                &self,
                guess: Uuid,
                failed: &[String],
                cleared: &[String],
                now: OffsetDateTime,
                forget_before: OffsetDateTime,
            ) -> Result<()> {
                let _writer = self.writer_permit().await;
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                // In the order of the keys, whatever is done to each (see `begin_guess`).
                let mut keys: Vec<(&String, bool)> =
                    failed.iter().map(|k| (k, true)).chain(cleared.iter().map(|k| (k, false))).collect();
                keys.sort();
                for (key, fail) in keys {
                    let q = if fail {
                        sqlx::query(
                            "INSERT INTO sign_in_throttle (key, failures, last_failure) VALUES ($1, 1, $2) \
                             ON CONFLICT (key) DO UPDATE SET \
                             failures = CASE WHEN sign_in_throttle.last_failure IS NULL OR sign_in_throttle.last_failure <= $3 \
                             THEN 1 ELSE sign_in_throttle.failures + 1 END, \
                             last_failure = $2",
                        )
                        .bind(key)
                        .bind(enc_ts(now))
                        .bind(enc_ts(forget_before))
                    } else {
                        sqlx::query("UPDATE sign_in_throttle SET failures = 0, last_failure = NULL WHERE key = $1").bind(key)
                    };
                    q.execute(&mut *tx).await.map_err(db_err)?;
                }
                sqlx::query("DELETE FROM sign_in_guess WHERE guess = $1")
                    .bind(guess)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            }

            async fn add_api_hits(&self, window: i64, hits: &[(String, u64)]) -> Result<Vec<(String, u64)>> {
                let _writer = self.writer_permit().await;
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let mut totals = Vec::with_capacity(hits.len());
                let mut hits = hits.to_vec();
                // In the order of the tokens: two nodes' flushes never wait for each other.
                hits.sort();
                for (token, n) in hits {
                    let total: i64 = sqlx::query_scalar(
                        "INSERT INTO api_rate (token_hash, window_start, hits) VALUES ($1, $2, $3) \
                         ON CONFLICT (token_hash, window_start) DO UPDATE SET hits = api_rate.hits + excluded.hits \
                         RETURNING hits",
                    )
                    .bind(&token)
                    .bind(window)
                    .bind(i64::try_from(n).unwrap_or(i64::MAX))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    totals.push((token, u64::try_from(total).unwrap_or(0)));
                }
                tx.commit().await.map_err(db_err)?;
                Ok(totals)
            }

            async fn add_counts(
                &self,
                counter: &str,
                window: i64,
                expires_at: OffsetDateTime,
                hits: &[(String, u64)],
            ) -> Result<Vec<(String, u64)>> {
                let _writer = self.writer_permit().await;
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let mut totals = Vec::with_capacity(hits.len());
                let mut hits = hits.to_vec();
                // In the order of the keys: two nodes' flushes never wait for each other.
                hits.sort();
                for (key, n) in hits {
                    let total: i64 = sqlx::query_scalar(
                        "INSERT INTO limit_count (counter, key, window_start, hits, expires_at) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (counter, key, window_start) DO UPDATE SET hits = limit_count.hits + excluded.hits \
                         RETURNING hits",
                    )
                    .bind(counter)
                    .bind(&key)
                    .bind(window)
                    .bind(i64::try_from(n).unwrap_or(i64::MAX))
                    .bind(enc_ts(expires_at))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    totals.push((key, u64::try_from(total).unwrap_or(0)));
                }
                tx.commit().await.map_err(db_err)?;
                Ok(totals)
            }

            async fn read_counts(&self, counter: &str, key: &str, windows: &[i64]) -> Result<Vec<(i64, u64)>> {
                let mut out = Vec::with_capacity(windows.len());
                for w in windows {
                    let hits: Option<i64> = sqlx::query_scalar(
                        "SELECT hits FROM limit_count WHERE counter = $1 AND key = $2 AND window_start = $3",
                    )
                    .bind(counter)
                    .bind(key)
                    .bind(*w)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                    if let Some(h) = hits {
                        out.push((*w, u64::try_from(h).unwrap_or(0)));
                    }
                }
                Ok(out)
            }

            async fn reserve_idempotency_key(
                &self,
                token_hash: &str,
                key: &str,
                request: &str,
                holder: Uuid,
                now: OffsetDateTime,
                reserved_until: OffsetDateTime,
                max_live: u64,
            ) -> Result<IdempotencySlot> {
                let _writer = self.writer_permit().await;
                // The count and the insert in one transaction that no other reservation of the
                // token interleaves with, on any node: on SQLite one that takes the write lock
                // at its start (`BEGIN IMMEDIATE`: every writer of the file waits its turn), on
                // PostgreSQL one that first takes the token's advisory lock. So a token never
                // holds more than `max_live` live keys, however many arrive at once.
                let mut tx = self.pool.begin_with(LOCKING_BEGIN).await.map_err(db_err)?;
                if let Some((bound, lock)) = IDEMPOTENCY_TOKEN_LOCK {
                    sqlx::query(bound).execute(&mut *tx).await.map_err(db_err)?;
                    if let Err(e) = sqlx::query(lock).bind(token_hash).execute(&mut *tx).await {
                        tracing::warn!(error = %e, "a token's idempotency lock was not had in time; answering busy");
                        return Err(Error::Busy);
                    }
                }
                // A new key past `max_live` is refused (a key the token holds already is
                // answered as usual).
                let live: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM api_idempotency WHERE token_hash = $1 AND key <> $2 \
                     AND expires_at > $3",
                )
                .bind(token_hash)
                .bind(key)
                .bind(enc_ts(now))
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
                if u64::try_from(live).unwrap_or(0) >= max_live {
                    let held: Option<i32> =
                        sqlx::query_scalar("SELECT 1 FROM api_idempotency WHERE token_hash = $1 AND key = $2 AND expires_at > $3")
                            .bind(token_hash)
                            .bind(key)
                            .bind(enc_ts(now))
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    if held.is_none() {
                        tx.commit().await.map_err(db_err)?;
                        return Ok(IdempotencySlot::Full);
                    }
                }
                // A new key, or one whose reservation ran out (its node died) or whose reply
                // expired, is taken by one conditional statement: of concurrent requests (on any
                // node) exactly one gets it.
                let taken: Option<Uuid> = sqlx::query_scalar(
                    "INSERT INTO api_idempotency (token_hash, key, request, holder, reserved_until, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) \
                     ON CONFLICT (token_hash, key) DO UPDATE SET request = excluded.request, holder = excluded.holder, \
                     reserved_until = excluded.reserved_until, expires_at = excluded.expires_at, \
                     status = NULL, content_type = NULL, body = NULL, redacted = NULL \
                     WHERE (api_idempotency.status IS NULL AND api_idempotency.reserved_until <= $6) \
                     OR api_idempotency.expires_at <= $6 \
                     RETURNING holder",
                )
                .bind(token_hash)
                .bind(key)
                .bind(request)
                .bind(holder)
                .bind(enc_ts(reserved_until))
                .bind(enc_ts(now))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                if taken == Some(holder) {
                    tx.commit().await.map_err(db_err)?;
                    return Ok(IdempotencySlot::Reserved);
                }
                let r = sqlx::query(
                    "SELECT request, status, content_type, body, redacted FROM api_idempotency \
                     WHERE token_hash = $1 AND key = $2",
                )
                .bind(token_hash)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                let Some(r) = r else {
                    // Deleted in between (its reservation given back): in use a moment ago.
                    return Ok(IdempotencySlot::Running {
                        request: request.to_owned(),
                    });
                };
                let request: String = r.try_get("request").map_err(db_err)?;
                let status: Option<i32> = r.try_get("status").map_err(db_err)?;
                Ok(match status {
                    None => IdempotencySlot::Running { request },
                    Some(status) => {
                        let redacted: Option<String> = r.try_get("redacted").map_err(db_err)?;
                        IdempotencySlot::Done(KeptReply {
                            request,
                            status: u16::try_from(status).unwrap_or(500),
                            content_type: r.try_get("content_type").map_err(db_err)?,
                            body: r.try_get::<Option<Vec<u8>>, _>("body").map_err(db_err)?.unwrap_or_default(),
                            redacted: redacted
                                .unwrap_or_default()
                                .split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect(),
                        })
                    }
                })
            }

            async fn keep_idempotent_reply(
                &self,
                token_hash: &str,
                key: &str,
                holder: Uuid,
                reply: &KeptReply,
                expires_at: OffsetDateTime,
            ) -> Result<()> {
                let _writer = self.writer_permit().await;
                sqlx::query(
                    "UPDATE api_idempotency SET status = $4, content_type = $5, body = $6, redacted = $7, expires_at = $8 \
                     WHERE token_hash = $1 AND key = $2 AND holder = $3 AND status IS NULL",
                )
                .bind(token_hash)
                .bind(key)
                .bind(holder)
                .bind(i32::from(reply.status))
                .bind(reply.content_type.as_deref())
                .bind(&reply.body)
                .bind(reply.redacted.join(", "))
                .bind(enc_ts(expires_at))
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn release_idempotency_key(&self, token_hash: &str, key: &str, holder: Uuid) -> Result<()> {
                let _writer = self.writer_permit().await;
                sqlx::query("DELETE FROM api_idempotency WHERE token_hash = $1 AND key = $2 AND holder = $3 AND status IS NULL")
                    .bind(token_hash)
                    .bind(key)
                    .bind(holder)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn forget_idempotent_replies(&self, token_hash: &str) -> Result<()> {
                let _writer = self.writer_permit().await;
                sqlx::query("DELETE FROM api_idempotency WHERE token_hash = $1")
                    .bind(token_hash)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn claim_job(&self, name: &str, holder: &str, now: OffsetDateTime, until: OffsetDateTime) -> Result<bool> {
                let _writer = self.writer_permit().await;
                let won: Option<String> = sqlx::query_scalar(
                    "INSERT INTO job_lease (name, holder, until) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
                     WHERE job_lease.until <= $4 \
                     RETURNING holder",
                )
                .bind(name)
                .bind(holder)
                .bind(enc_ts(until))
                .bind(enc_ts(now))
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(won.as_deref() == Some(holder))
            }

            async fn extend_job(&self, name: &str, holder: &str, until: OffsetDateTime) -> Result<bool> {
                let _writer = self.writer_permit().await;
                let n = sqlx::query("UPDATE job_lease SET until = $3 WHERE name = $1 AND holder = $2")
                    .bind(name)
                    .bind(holder)
                    .bind(enc_ts(until))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                Ok(n == 1)
            }

            async fn release_job(&self, name: &str, holder: &str, now: OffsetDateTime) -> Result<()> {
                let _writer = self.writer_permit().await;
                sqlx::query("UPDATE job_lease SET until = $3 WHERE name = $1 AND holder = $2 AND until > $3")
                    .bind(name)
                    .bind(holder)
                    .bind(enc_ts(now))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn prune_limits(&self, now: OffsetDateTime, forget_before: OffsetDateTime, window_before: i64) -> Result<u64> {
                let _writer = self.writer_permit().await;
                let mut n = 0;
                n += sqlx::query("DELETE FROM sign_in_guess WHERE until <= $1")
                    .bind(enc_ts(now))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                n += sqlx::query(
                    "DELETE FROM sign_in_throttle WHERE (last_failure IS NULL OR last_failure <= $1) \
                     AND NOT EXISTS (SELECT 1 FROM sign_in_guess g WHERE g.key = sign_in_throttle.key)",
                )
                .bind(enc_ts(forget_before))
                .execute(&self.pool)
                .await
                .map_err(db_err)?
                .rows_affected();
                n += sqlx::query("DELETE FROM api_rate WHERE window_start < $1")
                    .bind(window_before)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                n += sqlx::query("DELETE FROM limit_count WHERE expires_at <= $1")
                    .bind(enc_ts(now))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                n += sqlx::query("DELETE FROM api_idempotency WHERE expires_at <= $1 AND (status IS NOT NULL OR reserved_until <= $1)")
                    .bind(enc_ts(now))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                Ok(n)
            }
        }
    };
}

pub(crate) use impl_limit_store;
