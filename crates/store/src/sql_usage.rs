//! Usage for both backends (see `sql.rs`; invoked beside `impl_store!`, whose helpers and
//! imports it uses): the per-region ingestion journal (`journal_pool`: a file per region on
//! SQLite, the control database on PostgreSQL), raw events and hourly rollups in each tenant's
//! database, the control database's monthly summary, and budgets.
//!
//! Over 600 lines on purpose for now: journal, sweep, rollups and reports share one macro body
//! for both backends; splitting the store macros into modules is issue 16's.

macro_rules! impl_usage_store {
    ($Store:ty, $Db:ty) => {
        use quarterdeck_domain::budget::{Budget, Crossing};
        use quarterdeck_domain::store::{Applied, UsageStore};
        use quarterdeck_domain::usage::{
            Aggregation, JournalCursor, JournalEntry, JournalKey, JournalRow, JournalTake, MeterCatalog, MeterTotal,
            Month, Rollup, UsageSubject, decode_entries, encode_entries,
        };
        use std::collections::{BTreeSet, HashMap};
        type UsageByMonth = std::collections::BTreeMap<Month, Vec<MeterTotal>>;

        /// Rows per multi-row statement: well under SQLite's 32,766 parameters at 10 a row.
        const ROWS_PER_STATEMENT: usize = 300;
        /// Rows per `json_each` statement (SQLite): a few MB of JSON at most.
        const JSON_ROWS_PER_STATEMENT: usize = 5_000;

        const JOURNAL_COLUMNS: &str =
            "seq, tenant_id, api_key_id, source, event_id, meter, event_time, value, dims, received_at";

        /// `($1, $2, …), (…)` for `rows` rows of `cols` parameters numbered from `first` — or, on
        /// SQLite, plain `?`s: sqlx-sqlite looks every numbered parameter's name up, and SQLite
        /// finds it by walking a list of all of them, so a statement of n `$N` costs O(n²)
        /// (the benchmark found 56 % of the server's CPU there with 3,000 parameters).
        fn placeholders(rows: usize, cols: usize, first: usize) -> String {
            let mut out = String::with_capacity(rows * cols * 5);
            for r in 0..rows {
                if r > 0 {
                    out.push_str(", ");
                }
                out.push('(');
                for c in 0..cols {
                    if c > 0 {
                        out.push_str(", ");
                    }
                    push_param(&mut out, first + r * cols + c);
                }
                out.push(')');
            }
            out
        }

        /// `$first, …` (or `?, …` on SQLite) for `n` parameters.
        fn list(n: usize, first: usize) -> String {
            let mut out = String::with_capacity(n * 5);
            for i in first..first + n {
                if i > first {
                    out.push_str(", ");
                }
                push_param(&mut out, i);
            }
            out
        }

        /// One parameter; only for statements whose parameters are all written by these
        /// helpers, in order, starting at 1.
        fn push_param(out: &mut String, n: usize) {
            if NUMBERED_PARAMS {
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push('?');
            }
        }

        fn journal_from_row(r: &DbRow) -> Result<(i64, JournalEntry)> {
            Ok((
                r.try_get("seq").map_err(db_err)?,
                JournalEntry {
                    tenant_id: TenantId(r.try_get("tenant_id").map_err(db_err)?),
                    api_key_id: r.try_get("api_key_id").map_err(db_err)?,
                    source: r.try_get("source").map_err(db_err)?,
                    event_id: r.try_get("event_id").map_err(db_err)?,
                    meter: r.try_get("meter").map_err(db_err)?,
                    time: dec_ts(r.try_get("event_time").map_err(db_err)?),
                    value: r.try_get("value").map_err(db_err)?,
                    dims: r.try_get("dims").map_err(db_err)?,
                    received_at: dec_ts(r.try_get("received_at").map_err(db_err)?),
                },
            ))
        }

        fn budget_from_row(r: &DbRow) -> Result<Budget> {
            let threshold: i32 = r.try_get("threshold_percent").map_err(db_err)?;
            Ok(Budget {
                tenant_id: TenantId(r.try_get("tenant_id").map_err(db_err)?),
                amount: r.try_get("amount").map_err(db_err)?,
                threshold_percent: u8::try_from(threshold).unwrap_or(80),
                hard_limit: r.try_get("hard_limit").map_err(db_err)?,
                updated_by: r.try_get::<Option<Uuid>, _>("updated_by").map_err(db_err)?.map(UserId),
                updated_at: dec_ts(r.try_get("updated_at").map_err(db_err)?),
            })
        }

        fn total_from_row(r: &DbRow, meters: &MeterCatalog) -> Result<MeterTotal> {
            let meter: String = r.try_get("meter").map_err(db_err)?;
            let by_max = meters.get(&meter).is_some_and(|m| m.aggregation == Aggregation::Max);
            Ok(MeterTotal {
                value: r.try_get(if by_max { "largest" } else { "total" }).map_err(db_err)?,
                meter,
                dims: r.try_get("dims").map_err(db_err)?,
                events: r.try_get("events").map_err(db_err)?,
            })
        }

        /// One meter and dimension values over a span (by `usage_rollup_series_idx`). SQLite's
        /// SUM fails on overflow and PostgreSQL's is numeric: both kept within `i64` by the
        /// saturating rollups and the per-event cap, and capped here on PostgreSQL's side.
        const SERIES_SQL: &str = "SELECT CAST(SUM(value) AS BIGINT) AS total, MAX(value) AS largest, \
             CAST(SUM(events) AS BIGINT) AS events FROM usage_rollup \
             WHERE meter = $1 AND dims = $2 AND hour >= $3 AND hour < $4";

        const TOTALS_SQL: &str = "SELECT meter, dims, CAST(SUM(value) AS BIGINT) AS total, MAX(value) AS largest, \
             CAST(SUM(events) AS BIGINT) AS events FROM usage_rollup WHERE hour >= $1 AND hour < $2 \
             GROUP BY meter, dims ORDER BY meter, dims";

        async fn tenant_totals<'c, E>(
            conn: E,
            from: OffsetDateTime,
            to: OffsetDateTime,
            meters: &MeterCatalog,
        ) -> Result<Vec<MeterTotal>>
        where
            E: sqlx::Executor<'c, Database = $Db>,
        {
            let rows = sqlx::query(TOTALS_SQL)
                .bind(enc_ts(from))
                .bind(enc_ts(to))
                .fetch_all(conn)
                .await
                .map_err(db_err)?;
            rows.iter().map(|r| total_from_row(r, meters)).collect()
        }

        #[async_trait::async_trait]
        impl UsageStore for $Store {
            fn sweep_parallelism(&self) -> usize {
                self.sweep_parallel
            }

            async fn usage_subjects(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, UsageSubject)>> {
                let mut out = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "SELECT id, region, status, tier FROM tenant WHERE deleted_at IS NULL AND id IN ({})",
                        list(chunk.len(), 1)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    for r in q.fetch_all(&self.pool).await.map_err(db_err)? {
                        let id: Uuid = r.try_get("id").map_err(db_err)?;
                        let status: String = r.try_get("status").map_err(db_err)?;
                        out.push((
                            id,
                            UsageSubject {
                                tenant_id: TenantId(id),
                                api_key_id: None,
                                region: r.try_get("region").map_err(db_err)?,
                                suspended: TenantStatus::parse(&status)? == TenantStatus::Suspended,
                                tier: PriorityTier::parse(&r.try_get::<String, _>("tier").map_err(db_err)?)?,
                            },
                        ));
                    }
                    let sql = format!(
                        "SELECT k.id AS key_id, t.id AS tenant_id, t.region, t.status, t.tier FROM api_key k \
                         JOIN tenant t ON t.id = k.tenant_id WHERE t.deleted_at IS NULL AND k.id IN ({})",
                        list(chunk.len(), 1)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    for r in q.fetch_all(&self.pool).await.map_err(db_err)? {
                        let key: Uuid = r.try_get("key_id").map_err(db_err)?;
                        let status: String = r.try_get("status").map_err(db_err)?;
                        out.push((
                            key,
                            UsageSubject {
                                tenant_id: TenantId(r.try_get("tenant_id").map_err(db_err)?),
                                api_key_id: Some(key),
                                region: r.try_get("region").map_err(db_err)?,
                                suspended: TenantStatus::parse(&status)? == TenantStatus::Suspended,
                                tier: PriorityTier::parse(&r.try_get::<String, _>("tier").map_err(db_err)?)?,
                            },
                        ));
                    }
                }
                Ok(out)
            }

            async fn journal_append(&self, region: &str, entries: &[JournalEntry]) -> Result<()> {
                if entries.is_empty() {
                    return Ok(());
                }
                let (pool, lock) = self.journal_pool(region).await?;
                if JOURNAL_BATCH_ROWS {
                    // One row for the whole batch: one statement of four parameters, however
                    // many events (the entries of one append share their `received_at`).
                    let payload = encode_entries(entries);
                    let received_at = entries.iter().map(|e| e.received_at).min().unwrap_or(OffsetDateTime::UNIX_EPOCH);
                    let n = i64::try_from(entries.len()).unwrap_or(i64::MAX);
                    let _writer = match &lock {
                        Some(l) => Some(l.lock().await),
                        None => None,
                    };
                    sqlx::query("INSERT INTO usage_journal_batch (region, received_at, entries, payload) VALUES ($1, $2, $3, $4)")
                        .bind(region)
                        .bind(enc_ts(received_at))
                        .bind(n)
                        .bind(payload)
                        .execute(&pool)
                        .await
                        .map_err(db_err)?;
                    return Ok(());
                }
                let _writer = match &lock {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                let mut tx = pool.begin().await.map_err(db_err)?;
                for chunk in entries.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "INSERT INTO usage_journal (region, tenant_id, api_key_id, source, event_id, meter, event_time, value, dims, received_at) VALUES {}",
                        placeholders(chunk.len(), 10, 1)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for e in chunk {
                        q = q
                            .bind(region)
                            .bind(e.tenant_id.0)
                            .bind(e.api_key_id)
                            .bind(&e.source)
                            .bind(&e.event_id)
                            .bind(&e.meter)
                            .bind(enc_ts(e.time))
                            .bind(e.value)
                            .bind(&e.dims)
                            .bind(enc_ts(e.received_at));
                    }
                    q.execute(&mut *tx).await.map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)
            }

            async fn journal_take(&self, region: &str, after: JournalCursor, limit: u32) -> Result<JournalTake> {
                let (pool, _) = self.journal_pool(region).await?;
                let limit = usize::try_from(limit).unwrap_or(usize::MAX).max(1);
                let mut take = JournalTake {
                    next: after,
                    ..JournalTake::default()
                };
                // Per-event rows first (an older node's, or PostgreSQL's).
                let sql = format!(
                    "SELECT {JOURNAL_COLUMNS} FROM usage_journal WHERE region = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(region)
                    .bind(after.event)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&pool)
                    .await
                    .map_err(db_err)?;
                take.rows.reserve(rows.len());
                for r in &rows {
                    let (seq, e) = journal_from_row(r)?;
                    take.next.event = seq;
                    take.rows.push(JournalRow {
                        key: JournalKey::Event(seq),
                        entries: vec![e],
                    });
                }
                take.entries = rows.len();
                drop(rows);
                // Then batch rows, a page at a time, until the limit (a row is taken whole).
                const PAGE: i64 = 64;
                'pages: while JOURNAL_BATCH_ROWS && take.entries < limit {
                    let rows = sqlx::query(
                        "SELECT seq, received_at, payload FROM usage_journal_batch WHERE region = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    )
                    .bind(region)
                    .bind(take.next.batch)
                    .bind(PAGE)
                    .fetch_all(&pool)
                    .await
                    .map_err(db_err)?;
                    let last_page = rows.len() < PAGE as usize;
                    for r in &rows {
                        let seq: i64 = r.try_get("seq").map_err(db_err)?;
                        let received_at = dec_ts(r.try_get("received_at").map_err(db_err)?);
                        let payload: &[u8] = r.try_get("payload").map_err(db_err)?;
                        let entries = decode_entries(payload, received_at)?;
                        take.next.batch = seq;
                        take.entries += entries.len();
                        take.rows.push(JournalRow {
                            key: JournalKey::Batch(seq),
                            entries,
                        });
                        if take.entries >= limit {
                            break 'pages;
                        }
                    }
                    if last_page {
                        break;
                    }
                }
                take.full = take.entries >= limit;
                Ok(take)
            }

            async fn journal_settle(
                &self,
                region: &str,
                done: &[JournalKey],
                kept: &[(JournalKey, Vec<JournalEntry>)],
            ) -> Result<()> {
                if done.is_empty() && kept.is_empty() {
                    return Ok(());
                }
                let (pool, lock) = self.journal_pool(region).await?;
                let _writer = match &lock {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                let mut tx = pool.begin().await.map_err(db_err)?;
                // Contiguous runs go as ranges (a sweep's take usually is one run); the rest by
                // list. Never `seq <= max`: on PostgreSQL a smaller seq may commit later.
                for (table, is_batch) in [("usage_journal", false), ("usage_journal_batch", true)] {
                    let mut sorted: Vec<i64> = done
                        .iter()
                        .filter_map(|k| match (k, is_batch) {
                            (JournalKey::Event(s), false) | (JournalKey::Batch(s), true) => Some(*s),
                            _ => None,
                        })
                        .collect();
                    if sorted.is_empty() {
                        continue;
                    }
                    sorted.sort_unstable();
                    let mut runs: Vec<(i64, i64)> = Vec::new();
                    for s in sorted {
                        match runs.last_mut() {
                            Some((_, end)) if *end + 1 == s => *end = s,
                            _ => runs.push((s, s)),
                        }
                    }
                    let sql = format!("DELETE FROM {table} WHERE seq >= $1 AND seq <= $2");
                    for (start, end) in runs {
                        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                            .bind(start)
                            .bind(end)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    }
                }
                // A batch row some of whose tenants were held back keeps just their entries
                // (and its place: the cursor has passed it). A per-event row is all or nothing.
                for (key, entries) in kept {
                    if let JournalKey::Batch(seq) = key {
                        sqlx::query("UPDATE usage_journal_batch SET entries = $1, payload = $2 WHERE seq = $3")
                            .bind(i64::try_from(entries.len()).unwrap_or(i64::MAX))
                            .bind(encode_entries(entries))
                            .bind(*seq)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    }
                }
                tx.commit().await.map_err(db_err)
            }

            async fn journal_backlog(&self, region: &str) -> Result<(u64, Option<OffsetDateTime>)> {
                let (pool, _) = self.journal_pool(region).await?;
                let r = sqlx::query("SELECT COUNT(*) AS n, MIN(received_at) AS oldest FROM usage_journal WHERE region = $1")
                    .bind(region)
                    .fetch_one(&pool)
                    .await
                    .map_err(db_err)?;
                let n: i64 = r.try_get("n").map_err(db_err)?;
                let mut oldest: Option<Ts> = r.try_get("oldest").map_err(db_err)?;
                let mut n = u64::try_from(n).unwrap_or(0);
                if JOURNAL_BATCH_ROWS {
                    let r = sqlx::query(
                        "SELECT CAST(COALESCE(SUM(entries), 0) AS BIGINT) AS n, MIN(received_at) AS oldest FROM usage_journal_batch WHERE region = $1",
                    )
                    .bind(region)
                    .fetch_one(&pool)
                    .await
                    .map_err(db_err)?;
                    let more: i64 = r.try_get("n").map_err(db_err)?;
                    n += u64::try_from(more).unwrap_or(0);
                    let batch_oldest: Option<Ts> = r.try_get("oldest").map_err(db_err)?;
                    oldest = match (oldest, batch_oldest) {
                        (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                        (a, b) => a.or(b),
                    };
                }
                Ok((n, oldest.map(dec_ts)))
            }

            async fn claim_sweep(&self, region: &str, holder: Uuid, now: OffsetDateTime, until: OffsetDateTime) -> Result<bool> {
                let (pool, lock) = self.journal_pool(region).await?;
                let _writer = match &lock {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                let row = sqlx::query(
                    "INSERT INTO usage_journal_state (region, holder, lease_until) VALUES ($1, $2, $3) \
                     ON CONFLICT (region) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until \
                     WHERE usage_journal_state.holder = excluded.holder OR usage_journal_state.holder IS NULL \
                        OR usage_journal_state.lease_until IS NULL OR usage_journal_state.lease_until < $4 \
                     RETURNING region",
                )
                .bind(region)
                .bind(holder)
                .bind(enc_ts(until))
                .bind(enc_ts(now))
                .fetch_optional(&pool)
                .await
                .map_err(db_err)?;
                Ok(row.is_some())
            }

            async fn renew_sweep(&self, region: &str, holder: Uuid, until: OffsetDateTime) -> Result<bool> {
                let (pool, lock) = self.journal_pool(region).await?;
                let _writer = match &lock {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                // Only while `holder` holds it: a node that took it over (once it lapsed) keeps it.
                let n = sqlx::query("UPDATE usage_journal_state SET lease_until = $3 WHERE region = $1 AND holder = $2")
                    .bind(region)
                    .bind(holder)
                    .bind(enc_ts(until))
                    .execute(&pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                Ok(n == 1)
            }

            async fn release_sweep(&self, region: &str, holder: Uuid) -> Result<bool> {
                let (pool, lock) = self.journal_pool(region).await?;
                let _writer = match &lock {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                let n = sqlx::query(
                    "UPDATE usage_journal_state SET holder = NULL, lease_until = NULL WHERE region = $1 AND holder = $2",
                )
                .bind(region)
                .bind(holder)
                .execute(&pool)
                .await
                .map_err(db_err)?
                .rows_affected();
                Ok(n == 1)
            }

            async fn set_swept_through(&self, region: &str, holder: Uuid, through: OffsetDateTime) -> Result<()> {
                let (pool, lock) = self.journal_pool(region).await?;
                let _writer = match &lock {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                sqlx::query("UPDATE usage_journal_state SET swept_through = $2 WHERE region = $1 AND holder = $3")
                    .bind(region)
                    .bind(enc_ts(through))
                    .bind(holder)
                    .execute(&pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn swept_through(&self, region: &str) -> Result<Option<OffsetDateTime>> {
                let (pool, _) = self.journal_pool(region).await?;
                let row = sqlx::query("SELECT swept_through FROM usage_journal_state WHERE region = $1")
                    .bind(region)
                    .fetch_optional(&pool)
                    .await
                    .map_err(db_err)?;
                match row {
                    Some(r) => Ok(r.try_get::<Option<Ts>, _>("swept_through").map_err(db_err)?.map(dec_ts)),
                    None => Ok(None),
                }
            }

            async fn apply_usage(&self, tenant: TenantId, entries: &[JournalEntry], meters: &MeterCatalog) -> Result<Applied> {
                // One entry per (source, id): a batch may repeat an event.
                let mut seen: HashMap<(&str, &str), usize> = HashMap::with_capacity(entries.len());
                let mut fresh: Vec<&JournalEntry> = Vec::with_capacity(entries.len());
                for e in entries {
                    if let std::collections::hash_map::Entry::Vacant(v) = seen.entry((e.source.as_str(), e.event_id.as_str())) {
                        v.insert(fresh.len());
                        fresh.push(e);
                    }
                }
                // Which of `fresh` the database did not have yet.
                let mut new = vec![false; fresh.len()];
                let mut inserted = 0_u64;
                let pool = self.dir_pool(Directory::Tenant(tenant)).await?;
                // The journal's entries are deleted once this commits: the commit must be as
                // durable as the journal's (SQLite: FULL for this transaction; NORMAL would
                // lose it in a power loss after the journal forgot the events).
                let mut conn = pool.acquire().await.map_err(db_err)?;
                if let Some((durable, _)) = DURABLE_COMMIT {
                    sqlx::query(durable).execute(&mut *conn).await.map_err(db_err)?;
                }
                let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db_err)?;
                let mut mark_new = |source: &str, event_id: &str| {
                    if let Some(i) = seen.get(&(source, event_id))
                        && let Some(slot) = new.get_mut(*i)
                        && !*slot
                    {
                        *slot = true;
                        inserted += 1;
                    }
                };
                if USAGE_ROWS_AS_JSON {
                    // Numbers as JSON numbers (`->>` gives INTEGER), text as JSON strings; in
                    // chunks, so one parameter stays far below SQLite's length limit.
                    for chunk in fresh.chunks(JSON_ROWS_PER_STATEMENT) {
                        let rows: Vec<_> = chunk
                            .iter()
                            .map(|e| {
                                (
                                    &e.source,
                                    &e.event_id,
                                    &e.meter,
                                    enc_ts(e.time),
                                    e.api_key_id.map(|k| k.to_string()).unwrap_or_default(),
                                    e.value,
                                    &e.dims,
                                    enc_ts(e.received_at),
                                )
                            })
                            .collect();
                        let json = serde_json::to_string(&rows).map_err(|e| Error::Internal(e.to_string()))?;
                        let returned = sqlx::query(
                            "INSERT INTO usage_event (source, event_id, meter, event_time, api_key_id, value, dims, received_at) \
                             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7 \
                             FROM json_each($1) WHERE true \
                             ON CONFLICT (source, event_id) DO NOTHING RETURNING source, event_id",
                        )
                        .bind(json)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_err)?;
                        for r in returned {
                            mark_new(r.try_get(0).map_err(db_err)?, r.try_get(1).map_err(db_err)?);
                        }
                    }
                } else {
                    for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
                        let sql = format!(
                            "INSERT INTO usage_event (source, event_id, meter, event_time, api_key_id, value, dims, received_at) VALUES {} \
                             ON CONFLICT (source, event_id) DO NOTHING RETURNING source, event_id",
                            placeholders(chunk.len(), 8, 1)
                        );
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                        for e in chunk {
                            q = q
                                .bind(&e.source)
                                .bind(&e.event_id)
                                .bind(&e.meter)
                                .bind(enc_ts(e.time))
                                .bind(e.api_key_id.map(|k| k.to_string()).unwrap_or_default())
                                .bind(e.value)
                                .bind(&e.dims)
                                .bind(enc_ts(e.received_at));
                        }
                        for r in q.fetch_all(&mut *tx).await.map_err(db_err)? {
                            mark_new(r.try_get(0).map_err(db_err)?, r.try_get(1).map_err(db_err)?);
                        }
                    }
                }
                // Fold what was new into its hours.
                let mut folds: BTreeMap<(OffsetDateTime, &str, &str, String), (i64, i64)> = BTreeMap::new();
                for e in fresh.iter().zip(&new).filter(|(_, n)| **n).map(|(e, _)| e) {
                    let agg = meters.get(&e.meter).map_or(Aggregation::Sum, |m| m.aggregation);
                    let key = (
                        quarterdeck_domain::usage::hour_of(e.time),
                        e.meter.as_str(),
                        e.dims.as_str(),
                        e.api_key_id.map(|k| k.to_string()).unwrap_or_default(),
                    );
                    let slot = folds.entry(key).or_insert((if agg == Aggregation::Max { i64::MIN } else { 0 }, 0));
                    slot.0 = agg.fold(slot.0, e.value);
                    slot.1 += 1;
                }
                for by_max in [false, true] {
                    let rows: Vec<_> = folds
                        .iter()
                        .filter(|((_, m, _, _), _)| meters.get(m).is_some_and(|m| m.aggregation == Aggregation::Max) == by_max)
                        .collect();
                    // Saturating, never failing: an overflow here would fail the tenant's every
                    // later sweep.
                    let value = if by_max {
                        format!("{GREATEST}(usage_rollup.value, excluded.value)")
                    } else {
                        "CASE WHEN usage_rollup.value > 9223372036854775807 - excluded.value THEN 9223372036854775807 \
                         ELSE usage_rollup.value + excluded.value END"
                            .to_owned()
                    };
                    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                        let sql = format!(
                            "INSERT INTO usage_rollup (hour, meter, dims, api_key_id, value, events) VALUES {} \
                             ON CONFLICT (hour, meter, dims, api_key_id) DO UPDATE SET value = {value}, \
                             events = CASE WHEN usage_rollup.events > 9223372036854775807 - excluded.events \
                             THEN 9223372036854775807 ELSE usage_rollup.events + excluded.events END",
                            placeholders(chunk.len(), 6, 1)
                        );
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                        for ((hour, meter, dims, key), (v, n)) in chunk {
                            q = q.bind(enc_ts(*hour)).bind(*meter).bind(*dims).bind(key.as_str()).bind(*v).bind(*n);
                        }
                        q.execute(&mut *tx).await.map_err(db_err)?;
                    }
                }
                tx.commit().await.map_err(db_err)?;
                if let Some((_, usual)) = DURABLE_COMMIT {
                    sqlx::query(usual).execute(&mut *conn).await.map_err(db_err)?;
                }
                drop(conn);
                // What the entries touch, even when nothing was new (a sweep repeated after a
                // crash must still write the summary it did not get to write): the month
                // totals of each meter and dimension values touched, recomputed from the
                // rollups (an index range each), never added to.
                let mut touched: BTreeSet<(Month, &str, &str)> = BTreeSet::new();
                for e in &fresh {
                    touched.insert((Month::of(e.time), e.meter.as_str(), e.dims.as_str()));
                }
                let mut by_month: UsageByMonth = UsageByMonth::new();
                for (m, meter, dims) in touched {
                    let r = sqlx::query(SERIES_SQL)
                        .bind(meter)
                        .bind(dims)
                        .bind(enc_ts(m.start()))
                        .bind(enc_ts(m.end()))
                        .fetch_one(&*pool)
                        .await
                        .map_err(db_err)?;
                    let by_max = meters.get(meter).is_some_and(|x| x.aggregation == Aggregation::Max);
                    let value: Option<i64> = r.try_get(if by_max { "largest" } else { "total" }).map_err(db_err)?;
                    let events: Option<i64> = r.try_get("events").map_err(db_err)?;
                    by_month.entry(m).or_default().push(MeterTotal {
                        meter: meter.to_owned(),
                        dims: dims.to_owned(),
                        value: value.unwrap_or(0),
                        events: events.unwrap_or(0),
                    });
                }
                let out: Vec<_> = by_month.into_iter().collect();
                Ok(Applied {
                    inserted,
                    months: out,
                })
            }

            async fn usage_rollups(&self, tenant: TenantId, from: OffsetDateTime, to: OffsetDateTime) -> Result<Vec<Rollup>> {
                let pool = self.dir_pool(Directory::Tenant(tenant)).await?;
                let rows = sqlx::query(
                    "SELECT hour, meter, dims, api_key_id, value, events FROM usage_rollup \
                     WHERE hour >= $1 AND hour < $2 ORDER BY hour, meter, dims, api_key_id",
                )
                .bind(enc_ts(from))
                .bind(enc_ts(to))
                .fetch_all(&*pool)
                .await
                .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        let key: String = r.try_get("api_key_id").map_err(db_err)?;
                        Ok(Rollup {
                            hour: dec_ts(r.try_get("hour").map_err(db_err)?),
                            meter: r.try_get("meter").map_err(db_err)?,
                            dims: r.try_get("dims").map_err(db_err)?,
                            api_key_id: Uuid::parse_str(&key).ok(),
                            value: r.try_get("value").map_err(db_err)?,
                            events: r.try_get("events").map_err(db_err)?,
                        })
                    })
                    .collect()
            }

            async fn usage_totals(
                &self,
                tenant: TenantId,
                from: OffsetDateTime,
                to: OffsetDateTime,
                meters: &MeterCatalog,
            ) -> Result<Vec<MeterTotal>> {
                let pool = self.dir_pool(Directory::Tenant(tenant)).await?;
                tenant_totals(&*pool, from, to, meters).await
            }

            async fn prune_usage_events(&self, tenant: TenantId, before: OffsetDateTime) -> Result<u64> {
                let pool = self.dir_pool(Directory::Tenant(tenant)).await?;
                let done = sqlx::query("DELETE FROM usage_event WHERE received_at < $1")
                    .bind(enc_ts(before))
                    .execute(&*pool)
                    .await
                    .map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn usage_event_count(&self, tenant: TenantId) -> Result<u64> {
                let pool = self.dir_pool(Directory::Tenant(tenant)).await?;
                let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM usage_event")
                    .fetch_one(&*pool)
                    .await
                    .and_then(|r| r.try_get("n"))
                    .map_err(db_err)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn put_usage_months(&self, rows: &[(Month, TenantId, Vec<MeterTotal>)]) -> Result<()> {
                if rows.is_empty() {
                    return Ok(());
                }
                let _writer = self.writer_permit().await;
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let flat: Vec<(String, Uuid, &MeterTotal)> = rows
                    .iter()
                    .flat_map(|(m, t, totals)| totals.iter().map(move |x| (m.to_string(), t.0, x)))
                    .collect();
                for chunk in flat.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "INSERT INTO usage_month (month, tenant_id, meter, dims, value, events) VALUES {} \
                         ON CONFLICT (month, tenant_id, meter, dims) DO UPDATE SET value = excluded.value, events = excluded.events \
                         WHERE excluded.events >= usage_month.events",
                        placeholders(chunk.len(), 6, 1)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for (m, t, x) in chunk {
                        q = q.bind(m.as_str()).bind(*t).bind(&x.meter).bind(&x.dims).bind(x.value).bind(x.events);
                    }
                    q.execute(&mut *tx).await.map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)
            }

            async fn usage_month(&self, month: Month) -> Result<Vec<(TenantId, MeterTotal)>> {
                let rows = sqlx::query(
                    "SELECT tenant_id, meter, dims, value, events FROM usage_month WHERE month = $1 ORDER BY tenant_id, meter, dims",
                )
                .bind(month.to_string())
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            TenantId(r.try_get("tenant_id").map_err(db_err)?),
                            MeterTotal {
                                meter: r.try_get("meter").map_err(db_err)?,
                                dims: r.try_get("dims").map_err(db_err)?,
                                value: r.try_get("value").map_err(db_err)?,
                                events: r.try_get("events").map_err(db_err)?,
                            },
                        ))
                    })
                    .collect()
            }

            async fn usage_month_of(&self, month: Month, tenant: TenantId) -> Result<Vec<MeterTotal>> {
                let rows = sqlx::query(
                    "SELECT meter, dims, value, events FROM usage_month WHERE month = $1 AND tenant_id = $2 ORDER BY meter, dims",
                )
                .bind(month.to_string())
                .bind(tenant.0)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(MeterTotal {
                            meter: r.try_get("meter").map_err(db_err)?,
                            dims: r.try_get("dims").map_err(db_err)?,
                            value: r.try_get("value").map_err(db_err)?,
                            events: r.try_get("events").map_err(db_err)?,
                        })
                    })
                    .collect()
            }

            async fn put_budget(&self, budget: &Budget, month: &str, event: NewEvent) -> Result<()> {
                let (mut tx, _permit) = self.begin_audited(&event).await?;
                let live = sqlx::query("SELECT id FROM tenant WHERE id = $1 AND deleted_at IS NULL")
                    .bind(budget.tenant_id.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if live.is_none() {
                    return Err(Error::NotFound);
                }
                sqlx::query(
                    "INSERT INTO tenant_budget (tenant_id, amount, threshold_percent, hard_limit, updated_by, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id) DO UPDATE SET amount = excluded.amount, \
                     threshold_percent = excluded.threshold_percent, hard_limit = excluded.hard_limit, \
                     updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                )
                .bind(budget.tenant_id.0)
                .bind(budget.amount)
                .bind(i32::from(budget.threshold_percent))
                .bind(budget.hard_limit)
                .bind(budget.updated_by.map(|u| u.0))
                .bind(enc_ts(budget.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                sqlx::query("DELETE FROM budget_crossing WHERE tenant_id = $1 AND month = $2")
                    .bind(budget.tenant_id.0)
                    .bind(month)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query("DELETE FROM budget_block WHERE tenant_id = $1")
                    .bind(budget.tenant_id.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Self::note_change(&mut tx, ChangeKind::Tenant, budget.tenant_id.0, budget.updated_at).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn delete_budget(&self, tenant: TenantId, event: NewEvent) -> Result<bool> {
                let at = event.ts;
                let (mut tx, _permit) = self.begin_audited(&event).await?;
                let gone = sqlx::query("DELETE FROM tenant_budget WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if gone.rows_affected() == 0 {
                    return Ok(false);
                }
                sqlx::query("DELETE FROM budget_block WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Self::note_change(&mut tx, ChangeKind::Tenant, tenant.0, at).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            async fn budget(&self, tenant: TenantId) -> Result<Option<Budget>> {
                let row = sqlx::query(
                    "SELECT tenant_id, amount, threshold_percent, hard_limit, updated_by, updated_at FROM tenant_budget WHERE tenant_id = $1",
                )
                .bind(tenant.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                row.as_ref().map(budget_from_row).transpose()
            }

            async fn budgets(&self) -> Result<Vec<Budget>> {
                let rows = sqlx::query(
                    "SELECT b.tenant_id, b.amount, b.threshold_percent, b.hard_limit, b.updated_by, b.updated_at \
                     FROM tenant_budget b JOIN tenant t ON t.id = b.tenant_id WHERE t.deleted_at IS NULL",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter().map(budget_from_row).collect()
            }

            async fn budget_block(&self, tenant: TenantId) -> Result<Option<OffsetDateTime>> {
                let row = sqlx::query("SELECT until FROM budget_block WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                match row {
                    Some(r) => Ok(Some(dec_ts(r.try_get("until").map_err(db_err)?))),
                    None => Ok(None),
                }
            }

            async fn record_budget_crossing(
                &self,
                tenant: TenantId,
                month: &str,
                crossing: Crossing,
                budget_at: OffsetDateTime,
                block_until: Option<OffsetDateTime>,
                emails: &[Email],
                event: NewEvent,
            ) -> Result<bool> {
                let at = event.ts;
                let (mut tx, _permit) = self.begin_audited(&event).await?;
                let won = sqlx::query(
                    "INSERT INTO budget_crossing (tenant_id, month, kind, at) SELECT $1, $2, $3, $4 \
                     WHERE EXISTS (SELECT 1 FROM tenant WHERE id = $1 AND deleted_at IS NULL) \
                     AND EXISTS (SELECT 1 FROM tenant_budget WHERE tenant_id = $1 AND updated_at = $5) \
                     ON CONFLICT (tenant_id, month, kind) DO NOTHING",
                )
                .bind(tenant.0)
                .bind(month)
                .bind(crossing.as_str())
                .bind(enc_ts(at))
                .bind(enc_ts(budget_at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if won.rows_affected() == 0 {
                    // Dropping the transaction rolls the event back too.
                    return Ok(false);
                }
                for email in emails {
                    Self::enqueue(&mut tx, email, Some(tenant), None, at).await?;
                }
                if let Some(until) = block_until {
                    sqlx::query(
                        "INSERT INTO budget_block (tenant_id, until) VALUES ($1, $2) ON CONFLICT (tenant_id) DO UPDATE SET until = excluded.until",
                    )
                    .bind(tenant.0)
                    .bind(enc_ts(until))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    Self::note_change(&mut tx, ChangeKind::Tenant, tenant.0, at).await?;
                }
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }
        }
    };
}

pub(crate) use impl_usage_store;
