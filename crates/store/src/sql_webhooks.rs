//! Webhooks for both backends (see `sql.rs`; invoked beside `impl_store!`, whose helpers and
//! imports it uses): endpoints, the published events (the outbox and the feed) and their
//! deliveries, all in the control database. `publish_in` is called by `append_in`, so an event
//! and its deliveries commit with the change that publishes them, or not at all.

macro_rules! impl_webhook_store {
    ($Store:ty, $Db:ty) => {
        use quarterdeck_domain::store::WebhookStore;
        use quarterdeck_domain::webhook::{Attempt, Claimed, DeliveryView, Endpoint, FeedEvent, Next, Subscription, Topic};

        const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, region, enabled, disabled_reason, secret_sealed, \
             previous_secret_sealed, previous_secret_until, failing_since, created_at, updated_at";

        const DELIVERY_VIEW: &str = "SELECT d.id, d.endpoint_id, e.id AS event_id, e.event_type, e.tenant_id, d.status, d.attempts, \
             d.last_status, d.last_response_ms, d.last_error, d.last_attempt_at, d.next_attempt_at, d.created_at \
             FROM webhook_delivery d JOIN webhook_event e ON e.seq = d.event_seq";

        fn endpoint_from_row(r: &DbRow) -> Result<Endpoint> {
            Ok(Endpoint {
                id: r.try_get("id").map_err(db_err)?,
                url: r.try_get("url").map_err(db_err)?,
                description: r.try_get("description").map_err(db_err)?,
                subscription: Subscription::parse_stored(&r.try_get::<String, _>("event_types").map_err(db_err)?),
                region: r.try_get("region").map_err(db_err)?,
                enabled: r.try_get("enabled").map_err(db_err)?,
                disabled_reason: r.try_get("disabled_reason").map_err(db_err)?,
                secret_sealed: r.try_get("secret_sealed").map_err(db_err)?,
                previous_secret_sealed: r.try_get("previous_secret_sealed").map_err(db_err)?,
                previous_secret_until: r.try_get::<Option<Ts>, _>("previous_secret_until").map_err(db_err)?.map(dec_ts),
                failing_since: r.try_get::<Option<Ts>, _>("failing_since").map_err(db_err)?.map(dec_ts),
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                updated_at: dec_ts(r.try_get("updated_at").map_err(db_err)?),
            })
        }

        fn small(v: Option<i64>) -> Option<u32> {
            v.and_then(|n| u32::try_from(n).ok())
        }

        fn delivery_from_row(r: &DbRow) -> Result<DeliveryView> {
            let status: String = r.try_get("status").map_err(db_err)?;
            let pending = status == "pending";
            Ok(DeliveryView {
                id: r.try_get("id").map_err(db_err)?,
                endpoint_id: r.try_get("endpoint_id").map_err(db_err)?,
                event_id: r.try_get("event_id").map_err(db_err)?,
                event_type: r.try_get("event_type").map_err(db_err)?,
                tenant_id: r.try_get("tenant_id").map_err(db_err)?,
                attempts: small(Some(r.try_get("attempts").map_err(db_err)?)).unwrap_or(u32::MAX),
                last_status: small(r.try_get("last_status").map_err(db_err)?).and_then(|s| u16::try_from(s).ok()),
                last_response_ms: small(r.try_get("last_response_ms").map_err(db_err)?),
                last_error: r.try_get("last_error").map_err(db_err)?,
                last_attempt_at: r.try_get::<Option<Ts>, _>("last_attempt_at").map_err(db_err)?.map(dec_ts),
                next_attempt_at: if pending {
                    Some(dec_ts(r.try_get("next_attempt_at").map_err(db_err)?))
                } else {
                    None
                },
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                status,
            })
        }

        impl $Store {
            /// Inside an audited transaction: write the event's public event (if it publishes
            /// one) and a delivery to every endpoint that subscribes, enabled or not (a disabled
            /// endpoint gets what is pending when it is enabled again).
            async fn publish_in(tx: &mut Transaction<'static, $Db>, event: &NewEvent) -> Result<()> {
                let Some(p) = &event.published else {
                    return Ok(());
                };
                let body = p.body(event.id.0, event.ts);
                let endpoints = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint")))
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(db_err)?;
                // The tenant's region (kept on the event, for filtering what is queued) is
                // looked up only when some endpoint may need it.
                let region: Option<String> = match (&p.region, p.tenant_id) {
                    (Some(r), _) => Some(r.clone()),
                    (None, Some(t)) if !endpoints.is_empty() => sqlx::query("SELECT region FROM tenant WHERE id = $1")
                        .bind(t.0)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(db_err)?
                        .map(|r| r.try_get("region"))
                        .transpose()
                        .map_err(db_err)?,
                    (None, _) => None,
                };
                let row = sqlx::query(
                    "INSERT INTO webhook_event (id, event_type, tenant_id, occurred_at, body, region, previous_region) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
                )
                .bind(event.id.0)
                .bind(p.topic.as_str())
                .bind(p.tenant_id.map(|t| t.0))
                .bind(enc_ts(event.ts))
                .bind(&body)
                .bind(region.as_deref())
                .bind(p.previous_region.as_deref())
                .fetch_one(&mut **tx)
                .await
                .map_err(db_err)?;
                let seq: i64 = row.try_get("seq").map_err(db_err)?;
                let order_key = p.tenant_id.map(|t| t.0.to_string()).unwrap_or_default();
                for r in &endpoints {
                    let e = endpoint_from_row(r)?;
                    if !e.wants(p.topic, region.as_deref(), p.previous_region.as_deref()) {
                        continue;
                    }
                    sqlx::query(
                        "INSERT INTO webhook_delivery (id, endpoint_id, event_seq, order_key, status, attempts, next_attempt_at, created_at) \
                         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(e.id)
                    .bind(seq)
                    .bind(&order_key)
                    .bind(enc_ts(event.ts))
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                }
                Ok(())
            }

            /// Cancels the endpoint's pending deliveries it would no longer be sent (its
            /// subscription or region narrowed): what is queued follows the endpoint as it is.
            async fn cancel_unwanted(tx: &mut Transaction<'static, $Db>, e: &Endpoint) -> Result<()> {
                let rows = sqlx::query(
                    "SELECT d.id, v.event_type, v.region, v.previous_region FROM webhook_delivery d \
                     JOIN webhook_event v ON v.seq = d.event_seq WHERE d.endpoint_id = $1 AND d.status = 'pending'",
                )
                .bind(e.id)
                .fetch_all(&mut **tx)
                .await
                .map_err(db_err)?;
                for r in &rows {
                    let topic: String = r.try_get("event_type").map_err(db_err)?;
                    let region: Option<String> = r.try_get("region").map_err(db_err)?;
                    let previous: Option<String> = r.try_get("previous_region").map_err(db_err)?;
                    let wanted = Topic::parse(&topic).is_some_and(|t| e.wants(t, region.as_deref(), previous.as_deref()));
                    if !wanted {
                        let id: Uuid = r.try_get("id").map_err(db_err)?;
                        sqlx::query(
                            "UPDATE webhook_delivery SET status = 'cancelled', last_error = 'not_subscribed', \
                             lease_token = NULL, leased_until = NULL WHERE id = $1 AND status = 'pending'",
                        )
                        .bind(id)
                        .execute(&mut **tx)
                        .await
                        .map_err(db_err)?;
                    }
                }
                Ok(())
            }

            async fn insert_endpoint(tx: &mut Transaction<'static, $Db>, e: &Endpoint) -> Result<()> {
                sqlx::query(
                    "INSERT INTO webhook_endpoint (url, description, event_types, region, enabled, disabled_reason, secret_sealed, \
                     previous_secret_sealed, previous_secret_until, failing_since, created_at, updated_at, id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(&e.url)
                .bind(&e.description)
                .bind(e.subscription.to_stored())
                .bind(e.region.as_deref())
                .bind(e.enabled)
                .bind(e.disabled_reason.as_deref())
                .bind(&e.secret_sealed)
                .bind(e.previous_secret_sealed.as_deref())
                .bind(e.previous_secret_until.map(enc_ts))
                .bind(e.failing_since.map(enc_ts))
                .bind(enc_ts(e.created_at))
                .bind(enc_ts(e.updated_at))
                .bind(e.id)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl WebhookStore for $Store {
            async fn webhook_endpoints(&self) -> Result<Vec<Endpoint>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint ORDER BY created_at, id"
                )))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter().map(endpoint_from_row).collect()
            }

            async fn webhook_endpoint(&self, id: Uuid) -> Result<Option<Endpoint>> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint WHERE id = $1")))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(endpoint_from_row).transpose()
            }

            async fn create_webhook_endpoint(&self, e: &Endpoint, max: usize, event: NewEvent) -> Result<()> {
                let (mut tx, _permit) = self.begin_audited(&event).await?;
                let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM webhook_endpoint")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .try_get("n")
                    .map_err(db_err)?;
                if usize::try_from(n).unwrap_or(usize::MAX) >= max {
                    return Err(Error::Conflict {
                        code: "too_many_endpoints",
                        message: format!("at most {max} webhook endpoints; delete one first"),
                    });
                }
                Self::insert_endpoint(&mut tx, e).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(())
            }

            async fn update_webhook_endpoint(
                &self,
                e: &Endpoint,
                read_at: OffsetDateTime,
                redeliver_from: Option<OffsetDateTime>,
                event: NewEvent,
            ) -> Result<()> {
                let (mut tx, _permit) = self.begin_audited(&event).await?;
                // Narrowed (other types or another region): what is queued is filtered after.
                let narrowed = match sqlx::query("SELECT event_types, region FROM webhook_endpoint WHERE id = $1")
                    .bind(e.id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?
                {
                    Some(r) => {
                        let types: String = r.try_get("event_types").map_err(db_err)?;
                        let region: Option<String> = r.try_get("region").map_err(db_err)?;
                        types != e.subscription.to_stored() || region != e.region
                    }
                    None => false,
                };
                // failing_since is the delivery loop's: left as it is, unless re-enabling.
                let done = sqlx::query(
                    "UPDATE webhook_endpoint SET url = $1, description = $2, event_types = $3, region = $4, enabled = $5, \
                     disabled_reason = $6, secret_sealed = $7, previous_secret_sealed = $8, previous_secret_until = $9, \
                     updated_at = $10, failing_since = CASE WHEN $11 THEN NULL ELSE failing_since END \
                     WHERE id = $12 AND updated_at = $13",
                )
                .bind(&e.url)
                .bind(&e.description)
                .bind(e.subscription.to_stored())
                .bind(e.region.as_deref())
                .bind(e.enabled)
                .bind(e.disabled_reason.as_deref())
                .bind(&e.secret_sealed)
                .bind(e.previous_secret_sealed.as_deref())
                .bind(e.previous_secret_until.map(enc_ts))
                .bind(enc_ts(e.updated_at))
                .bind(redeliver_from.is_some())
                .bind(e.id)
                .bind(enc_ts(read_at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    let exists = sqlx::query("SELECT 1 AS one FROM webhook_endpoint WHERE id = $1")
                        .bind(e.id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    return Err(match exists {
                        None => Error::NotFound,
                        Some(_) => quarterdeck_domain::webhook::endpoint_changed(),
                    });
                }
                if narrowed {
                    Self::cancel_unwanted(&mut tx, e).await?;
                }
                if let Some(at) = redeliver_from {
                    sqlx::query(
                        "UPDATE webhook_delivery SET next_attempt_at = $2, first_attempt_at = NULL \
                         WHERE endpoint_id = $1 AND status = 'pending'",
                    )
                    .bind(e.id)
                    .bind(enc_ts(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)?;
                Ok(())
            }

            async fn delete_webhook_endpoint(&self, id: Uuid, event: NewEvent) -> Result<()> {
                let (mut tx, _permit) = self.begin_audited(&event).await?;
                sqlx::query("DELETE FROM webhook_delivery WHERE endpoint_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let done = sqlx::query("DELETE FROM webhook_endpoint WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Err(Error::NotFound);
                }
                tx.commit().await.map_err(db_err)?;
                Ok(())
            }

            async fn disable_failing_endpoint(&self, id: Uuid, failing_since: OffsetDateTime, emails: &[Email], event: NewEvent) -> Result<bool> {
                let at = event.ts;
                let (mut tx, _permit) = self.begin_audited(&event).await?;
                let done = sqlx::query(
                    "UPDATE webhook_endpoint SET enabled = $3, disabled_reason = 'failing', updated_at = $4 \
                     WHERE id = $1 AND enabled = $5 AND failing_since = $2",
                )
                .bind(id)
                .bind(enc_ts(failing_since))
                .bind(false)
                .bind(enc_ts(at))
                .bind(true)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                for email in emails {
                    Self::enqueue(&mut tx, email, None, None, at).await?;
                }
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            async fn claim_webhook_deliveries(
                &self,
                now: OffsetDateTime,
                lease_until: OffsetDateTime,
                limit: u32,
                in_flight: &std::collections::HashMap<Uuid, u32>,
                per_endpoint: u32,
            ) -> Result<Vec<Claimed>> {
                // Candidates: the head of each (endpoint, tenant) queue (its lowest pending seq,
                // found by one pass over the pending rows of enabled endpoints: a backlog behind
                // a retried head costs a grouped index scan, not a probe per row), due and free, at most
                // `per_endpoint` per endpoint, taken round-robin across endpoints (each one's
                // earliest due first, then each one's second...), so one endpoint's backlog never
                // hides another's. Enough are read that skipping the endpoints this node already
                // has at its cap (at most what it has in flight) still leaves `limit`. Each is
                // then claimed by a conditional update that checks it all again: of two nodes
                // picking the same row one gets it, and a row that stopped qualifying is left.
                let rows = sqlx::query(
                    "SELECT id, endpoint_id FROM ( \
                       SELECT d.id, d.endpoint_id, d.next_attempt_at, d.seq, \
                         ROW_NUMBER() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.seq) AS rn \
                       FROM (SELECT MIN(q.seq) AS seq FROM webhook_delivery q \
                             WHERE q.status = 'pending' AND q.endpoint_id IN (SELECT id FROM webhook_endpoint WHERE enabled = $3) \
                             GROUP BY q.endpoint_id, q.order_key) heads_of \
                       JOIN webhook_delivery d ON d.seq = heads_of.seq \
                       WHERE d.next_attempt_at <= $1 AND (d.leased_until IS NULL OR d.leased_until <= $1) \
                     ) heads WHERE rn <= $4 ORDER BY rn, next_attempt_at, seq LIMIT $2",
                )
                .bind(enc_ts(now))
                .bind(i64::from(limit) + in_flight.values().map(|n| i64::from(*n)).sum::<i64>())
                .bind(true)
                .bind(i64::from(per_endpoint))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                let mut counts = in_flight.clone();
                let mut chosen: Vec<Uuid> = Vec::new();
                for r in &rows {
                    if chosen.len() >= limit as usize {
                        break;
                    }
                    let endpoint_id: Uuid = r.try_get("endpoint_id").map_err(db_err)?;
                    let count = counts.entry(endpoint_id).or_insert(0);
                    if *count < per_endpoint {
                        *count += 1;
                        chosen.push(r.try_get("id").map_err(db_err)?);
                    }
                }
                if chosen.is_empty() {
                    return Ok(Vec::new());
                }
                // One statement claims them all under this claim's own lease (a later claim of
                // any of them, by this node or another, has another).
                let lease = Uuid::new_v4();
                let marks: Vec<String> = (0..chosen.len()).map(|i| format!("${}", i + 5)).collect();
                let sql = format!(
                    "UPDATE webhook_delivery SET lease_token = $1, leased_until = $2, \
                     first_attempt_at = COALESCE(first_attempt_at, $3) \
                     WHERE id IN ({}) AND status = 'pending' AND next_attempt_at <= $3 \
                       AND (leased_until IS NULL OR leased_until <= $3) \
                       AND EXISTS (SELECT 1 FROM webhook_endpoint w WHERE w.id = webhook_delivery.endpoint_id AND w.enabled = $4) \
                       AND NOT EXISTS (SELECT 1 FROM webhook_delivery p WHERE p.endpoint_id = webhook_delivery.endpoint_id \
                         AND p.order_key = webhook_delivery.order_key AND p.status = 'pending' AND p.seq < webhook_delivery.seq) \
                     RETURNING id, endpoint_id, event_seq, attempts, first_attempt_at",
                    marks.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(lease)
                    .bind(enc_ts(lease_until))
                    .bind(enc_ts(now))
                    .bind(true);
                for id in &chosen {
                    q = q.bind(*id);
                }
                let writer = self.writer_permit().await;
                let claimed = q.fetch_all(&self.pool).await.map_err(db_err)?;
                drop(writer);
                if claimed.is_empty() {
                    return Ok(Vec::new());
                }
                let mut by_id = std::collections::HashMap::new();
                let mut seqs = Vec::new();
                for r in &claimed {
                    let id: Uuid = r.try_get("id").map_err(db_err)?;
                    let event_seq: i64 = r.try_get("event_seq").map_err(db_err)?;
                    seqs.push(event_seq);
                    by_id.insert(id, r);
                }
                let marks: Vec<String> = (0..seqs.len()).map(|i| format!("${}", i + 1)).collect();
                let sql = format!("SELECT seq, id, event_type, body FROM webhook_event WHERE seq IN ({})", marks.join(", "));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for seq in &seqs {
                    q = q.bind(*seq);
                }
                let mut events = std::collections::HashMap::new();
                for ev in q.fetch_all(&self.pool).await.map_err(db_err)? {
                    let seq: i64 = ev.try_get("seq").map_err(db_err)?;
                    events.insert(seq, ev);
                }
                let mut out = Vec::with_capacity(claimed.len());
                for id in chosen {
                    let Some(r) = by_id.get(&id) else { continue };
                    let event_seq: i64 = r.try_get("event_seq").map_err(db_err)?;
                    let Some(ev) = events.get(&event_seq) else { continue };
                    let attempts: i64 = r.try_get("attempts").map_err(db_err)?;
                    let first: Option<Ts> = r.try_get("first_attempt_at").map_err(db_err)?;
                    out.push(Claimed {
                        delivery_id: id,
                        lease,
                        leased_until: lease_until,
                        endpoint_id: r.try_get("endpoint_id").map_err(db_err)?,
                        event_id: ev.try_get("id").map_err(db_err)?,
                        topic: ev.try_get("event_type").map_err(db_err)?,
                        body: ev.try_get("body").map_err(db_err)?,
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        first_attempt_at: first.map(dec_ts),
                    });
                }
                Ok(out)
            }

            async fn release_webhook_lease(&self, delivery: Uuid, lease: Uuid) -> Result<()> {
                let _writer = self.writer_permit().await;
                sqlx::query("UPDATE webhook_delivery SET lease_token = NULL, leased_until = NULL WHERE id = $1 AND lease_token = $2")
                    .bind(delivery)
                    .bind(lease)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn finish_webhook_attempt(
                &self,
                delivery: Uuid,
                lease: Uuid,
                at: OffsetDateTime,
                attempt: &Attempt,
                next: Next,
            ) -> Result<Option<Option<OffsetDateTime>>> {
                let _writer = self.writer_permit().await;
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let (status, next_at) = match next {
                    Next::Delivered => ("delivered", at),
                    Next::RetryAt(t) => ("pending", t),
                    Next::GaveUp => ("failed", at),
                };
                let row = sqlx::query(
                    "UPDATE webhook_delivery SET status = $3, attempts = attempts + 1, next_attempt_at = $4, last_attempt_at = $5, \
                     last_status = $6, last_response_ms = $7, last_error = $8, lease_token = NULL, leased_until = NULL \
                     WHERE id = $1 AND lease_token = $2 AND status = 'pending' RETURNING endpoint_id",
                )
                .bind(delivery)
                .bind(lease)
                .bind(status)
                .bind(enc_ts(next_at))
                .bind(enc_ts(at))
                .bind(attempt.status().map(i64::from))
                .bind(i64::from(attempt.millis()))
                .bind(attempt.error())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let endpoint: Uuid = row.try_get("endpoint_id").map_err(db_err)?;
                // The endpoint's row is written only when its state changes (the first failure,
                // the first success after failures): concurrent attempts to one endpoint do not
                // queue on its row lock.
                let since = if attempt.ok() {
                    sqlx::query("UPDATE webhook_endpoint SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                        .bind(endpoint)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    None
                } else {
                    sqlx::query("UPDATE webhook_endpoint SET failing_since = $2 WHERE id = $1 AND failing_since IS NULL")
                        .bind(endpoint)
                        .bind(enc_ts(at))
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    let row = sqlx::query("SELECT failing_since FROM webhook_endpoint WHERE id = $1")
                        .bind(endpoint)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    match row {
                        Some(r) => r.try_get::<Option<Ts>, _>("failing_since").map_err(db_err)?.map(dec_ts),
                        None => None,
                    }
                };
                tx.commit().await.map_err(db_err)?;
                Ok(Some(since))
            }

            async fn webhook_deliveries(&self, endpoint: Uuid, limit: u32, before: Option<Uuid>) -> Result<Vec<DeliveryView>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{DELIVERY_VIEW} WHERE d.endpoint_id = $1 \
                     AND ($3 IS NULL OR d.seq < (SELECT seq FROM webhook_delivery WHERE id = $3)) \
                     ORDER BY d.seq DESC LIMIT $2"
                )))
                .bind(endpoint)
                .bind(i64::from(limit))
                .bind(before)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter().map(delivery_from_row).collect()
            }

            async fn webhook_delivery(&self, id: Uuid) -> Result<Option<DeliveryView>> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!("{DELIVERY_VIEW} WHERE d.id = $1")))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(delivery_from_row).transpose()
            }

            async fn resend_webhook_delivery(&self, delivery: Uuid, new_id: Uuid, now: OffsetDateTime, event: NewEvent) -> Result<DeliveryView> {
                let (mut tx, _permit) = self.begin_audited(&event).await?;
                // Only what the endpoint, as it is now, would be sent.
                let row = sqlx::query(
                    "SELECT d.endpoint_id, v.event_type AS v_type, v.region AS v_region, v.previous_region AS v_previous \
                     FROM webhook_delivery d JOIN webhook_event v ON v.seq = d.event_seq WHERE d.id = $1",
                )
                .bind(delivery)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .ok_or(Error::NotFound)?;
                let endpoint_id: Uuid = row.try_get("endpoint_id").map_err(db_err)?;
                let endpoint_row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint WHERE id = $1")))
                    .bind(endpoint_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .ok_or(Error::NotFound)?;
                let endpoint = endpoint_from_row(&endpoint_row)?;
                let topic: String = row.try_get("v_type").map_err(db_err)?;
                let region: Option<String> = row.try_get("v_region").map_err(db_err)?;
                let previous: Option<String> = row.try_get("v_previous").map_err(db_err)?;
                if !Topic::parse(&topic).is_some_and(|t| endpoint.wants(t, region.as_deref(), previous.as_deref())) {
                    return Err(Error::Conflict {
                        code: "not_subscribed",
                        message: "the endpoint no longer subscribes to this event (its types or region changed)".to_owned(),
                    });
                }
                let done = sqlx::query(
                    "INSERT INTO webhook_delivery (id, endpoint_id, event_seq, order_key, status, attempts, next_attempt_at, created_at) \
                     SELECT $1, endpoint_id, event_seq, order_key, 'pending', 0, $3, $3 FROM webhook_delivery WHERE id = $2",
                )
                .bind(new_id)
                .bind(delivery)
                .bind(enc_ts(now))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Err(Error::NotFound);
                }
                let row = sqlx::query(sqlx::AssertSqlSafe(format!("{DELIVERY_VIEW} WHERE d.id = $1")))
                    .bind(new_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let view = delivery_from_row(&row)?;
                tx.commit().await.map_err(db_err)?;
                Ok(view)
            }

            async fn published_after(&self, after: i64, topics: &[String], limit: u32) -> Result<Vec<FeedEvent>> {
                // Catalog names only, each once (at most the catalog's size), bound as parameters.
                let known: std::collections::BTreeSet<&str> = topics.iter().filter_map(|t| Topic::parse(t)).map(Topic::as_str).collect();
                if !topics.is_empty() && known.is_empty() {
                    return Ok(Vec::new());
                }
                let filter = if known.is_empty() {
                    String::new()
                } else {
                    let marks: Vec<String> = (0..known.len()).map(|i| format!("${}", i + 3)).collect();
                    format!(" AND event_type IN ({})", marks.join(", "))
                };
                let sql = format!(
                    "SELECT seq, id, event_type, body, occurred_at FROM webhook_event WHERE seq > $1{filter} ORDER BY seq LIMIT $2"
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after).bind(i64::from(limit));
                for t in &known {
                    q = q.bind(*t);
                }
                let rows = q.fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(FeedEvent {
                            seq: r.try_get("seq").map_err(db_err)?,
                            id: r.try_get("id").map_err(db_err)?,
                            topic: r.try_get("event_type").map_err(db_err)?,
                            body: r.try_get("body").map_err(db_err)?,
                            occurred_at: dec_ts(r.try_get("occurred_at").map_err(db_err)?),
                        })
                    })
                    .collect()
            }

            async fn prune_webhook_events(&self, before: OffsetDateTime) -> Result<u64> {
                // In batches, each its own short transaction, so a month of events is dropped
                // without holding the writer (on SQLite) or a long lock (on PostgreSQL).
                const BATCH: i64 = 1000;
                let mut pruned = 0;
                loop {
                    let _writer = self.writer_permit().await;
                    let mut tx = self.pool.begin().await.map_err(db_err)?;
                    let upto: Option<i64> = sqlx::query(
                        "SELECT MAX(seq) AS upto FROM (SELECT seq FROM webhook_event WHERE occurred_at < $1 ORDER BY seq LIMIT $2) oldest",
                    )
                    .bind(enc_ts(before))
                    .bind(BATCH)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .try_get("upto")
                    .map_err(db_err)?;
                    let Some(upto) = upto else { break };
                    sqlx::query("DELETE FROM webhook_delivery WHERE event_seq <= $1 AND event_seq IN (SELECT seq FROM webhook_event WHERE occurred_at < $2)")
                        .bind(upto)
                        .bind(enc_ts(before))
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    let done = sqlx::query("DELETE FROM webhook_event WHERE seq <= $1 AND occurred_at < $2")
                        .bind(upto)
                        .bind(enc_ts(before))
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    tx.commit().await.map_err(db_err)?;
                    pruned += done.rows_affected();
                    if done.rows_affected() < BATCH as u64 {
                        break;
                    }
                }
                Ok(pruned)
            }
        }
    };
}

pub(crate) use impl_webhook_store;
