//! The data-plane tables (service tokens, API keys and their secrets, rate windows, the change
//! feed, provider credentials and their read tallies), for both backends (see `sql.rs`;
//! invoked beside `impl_store!`, whose helpers and imports it uses).

macro_rules! impl_data_plane_store {
    ($Store:ty, $Db:ty) => {
        use quarterdeck_domain::api_key::{ApiKey, KeyRecord, TenantSnapshot};
        use quarterdeck_domain::provider::{CredentialReads, ProviderCredential, SecretHint};
        use quarterdeck_domain::service_token::{ServiceScope, ServiceToken};
        use quarterdeck_domain::store::{ChangeKind, DataPlaneChange, DataPlaneStore, KeyRoll};
        use std::collections::BTreeMap;

        const SERVICE_TOKEN_COLUMNS: &str =
            "id, name, scopes, region, created_by, created_at, expires_at, last_used_at, revoked_at";
        const API_KEY_COLUMNS: &str = "k.id, k.tenant_id, k.name, k.scopes, k.prefix, k.last_four, k.requests_per_minute, \
             k.created_by, k.created_at, k.expires_at, k.last_used_at, k.rolled_at, k.revoked_at";
        const CREDENTIAL_COLUMNS: &str =
            "id, tenant_id, provider, fields, hints, sealed, updated_by, created_at, updated_at";
        const READ_COLUMNS: &str =
            "token_id, credential_id, window_start, tenant_id, provider, token_name, reads, first_at, last_at";

        fn opt_ts(r: &DbRow, c: &str) -> Result<Option<OffsetDateTime>> {
            Ok(r.try_get::<Option<Ts>, _>(c).map_err(db_err)?.map(dec_ts))
        }

        fn service_token_from_row(r: &DbRow) -> Result<ServiceToken> {
            let Json(scopes): Json<Vec<String>> = r.try_get("scopes").map_err(db_err)?;
            Ok(ServiceToken {
                id: r.try_get("id").map_err(db_err)?,
                name: r.try_get("name").map_err(db_err)?,
                scopes: scopes.iter().filter_map(|s| ServiceScope::parse(s)).collect(),
                region: r.try_get("region").map_err(db_err)?,
                created_by: r.try_get("created_by").map_err(db_err)?,
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                expires_at: opt_ts(r, "expires_at")?,
                last_used_at: opt_ts(r, "last_used_at")?,
                revoked_at: opt_ts(r, "revoked_at")?,
            })
        }

        fn api_key_from_row(r: &DbRow) -> Result<ApiKey> {
            let Json(scopes): Json<Vec<String>> = r.try_get("scopes").map_err(db_err)?;
            let rpm: Option<i32> = r.try_get("requests_per_minute").map_err(db_err)?;
            Ok(ApiKey {
                id: r.try_get("id").map_err(db_err)?,
                tenant_id: TenantId(r.try_get("tenant_id").map_err(db_err)?),
                name: r.try_get("name").map_err(db_err)?,
                scopes,
                prefix: r.try_get("prefix").map_err(db_err)?,
                last_four: r.try_get("last_four").map_err(db_err)?,
                requests_per_minute: rpm.and_then(|n| u32::try_from(n).ok()),
                created_by: r.try_get("created_by").map_err(db_err)?,
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                expires_at: opt_ts(r, "expires_at")?,
                last_used_at: opt_ts(r, "last_used_at")?,
                rolled_at: opt_ts(r, "rolled_at")?,
                revoked_at: opt_ts(r, "revoked_at")?,
            })
        }

        fn credential_from_row(r: &DbRow) -> Result<ProviderCredential> {
            let Json(fields): Json<BTreeMap<String, String>> = r.try_get("fields").map_err(db_err)?;
            let Json(hints): Json<BTreeMap<String, SecretHint>> = r.try_get("hints").map_err(db_err)?;
            Ok(ProviderCredential {
                id: r.try_get("id").map_err(db_err)?,
                tenant_id: TenantId(r.try_get("tenant_id").map_err(db_err)?),
                provider: r.try_get("provider").map_err(db_err)?,
                fields,
                hints,
                sealed: r.try_get("sealed").map_err(db_err)?,
                updated_by: r.try_get("updated_by").map_err(db_err)?,
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                updated_at: dec_ts(r.try_get("updated_at").map_err(db_err)?),
            })
        }

        fn reads_from_row(r: &DbRow) -> Result<CredentialReads> {
            Ok(CredentialReads {
                token_id: r.try_get("token_id").map_err(db_err)?,
                token_name: r.try_get("token_name").map_err(db_err)?,
                credential_id: r.try_get("credential_id").map_err(db_err)?,
                tenant_id: TenantId(r.try_get("tenant_id").map_err(db_err)?),
                provider: r.try_get("provider").map_err(db_err)?,
                window_start: r.try_get("window_start").map_err(db_err)?,
                reads: r.try_get("reads").map_err(db_err)?,
                first_at: dec_ts(r.try_get("first_at").map_err(db_err)?),
                last_at: dec_ts(r.try_get("last_at").map_err(db_err)?),
            })
        }

        /// Ids per statement of a last-use flush.
        const TOUCH_CHUNK: usize = 500;

        impl $Store {
            /// Set `last_used_at` of many rows of `table` (`api_key` or `service_token`), a
            /// statement per [`TOUCH_CHUNK`] ids in one transaction: a flush of the last use of
            /// 10,000 keys is 20 statements, not 10,000.
            async fn touch_rows(&self, table: &'static str, ids: &[Uuid], at: OffsetDateTime) -> Result<()> {
                let _writer = self.writer_permit().await;
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                for chunk in ids.chunks(TOUCH_CHUNK) {
                    let placeholders: Vec<String> = (2..chunk.len() + 2).map(|n| format!("${n}")).collect();
                    let sql = format!(
                        "UPDATE {table} SET last_used_at = $1 WHERE id IN ({}) AND (last_used_at IS NULL OR last_used_at < $1)",
                        placeholders.join(", ")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(enc_ts(at));
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    q.execute(&mut *tx).await.map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)
            }

            /// Append to the change feed inside a write's transaction.
            async fn note_change(tx: &mut Transaction<'static, $Db>, kind: ChangeKind, subject: Uuid, at: OffsetDateTime) -> Result<()> {
                sqlx::query("INSERT INTO data_plane_change (kind, subject, at) VALUES ($1, $2, $3)")
                    .bind(kind.as_str())
                    .bind(subject)
                    .bind(enc_ts(at))
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl DataPlaneStore for $Store {
            async fn create_service_token(&self, t: &ServiceToken, hash: &TokenHash, event: NewEvent) -> Result<()> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                sqlx::query(
                    "INSERT INTO service_token (id, token_hash, name, scopes, region, created_by, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(t.id)
                .bind(hash.as_str())
                .bind(&t.name)
                .bind(Json(&scopes))
                .bind(&t.region)
                .bind(&t.created_by)
                .bind(enc_ts(t.created_at))
                .bind(t.expires_at.map(enc_ts))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            }

            async fn service_tokens(&self) -> Result<Vec<ServiceToken>> {
                let sql = format!("SELECT {SERVICE_TOKEN_COLUMNS} FROM service_token ORDER BY created_at DESC");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter().map(service_token_from_row).collect()
            }

            async fn service_token_by_hash(&self, hash: &TokenHash) -> Result<Option<ServiceToken>> {
                let sql = format!("SELECT {SERVICE_TOKEN_COLUMNS} FROM service_token WHERE token_hash = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(hash.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(service_token_from_row).transpose()
            }

            async fn revoke_service_token(&self, id: Uuid, at: OffsetDateTime, event: NewEvent) -> Result<bool> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let done = sqlx::query("UPDATE service_token SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .bind(enc_ts(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                Self::note_change(&mut tx, ChangeKind::ServiceToken, id, at).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            async fn touch_service_tokens(&self, ids: &[Uuid], at: OffsetDateTime) -> Result<()> {
                if ids.is_empty() {
                    return Ok(());
                }
                self.touch_rows("service_token", ids, at).await
            }

            async fn create_api_key(&self, key: &ApiKey, hash: &TokenHash, event: NewEvent) -> Result<()> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                Self::check_writable_in(&mut tx, key.tenant_id).await?;
                sqlx::query(
                    "INSERT INTO api_key (id, tenant_id, name, scopes, prefix, last_four, requests_per_minute, created_by, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(key.id)
                .bind(key.tenant_id.0)
                .bind(&key.name)
                .bind(Json(&key.scopes))
                .bind(&key.prefix)
                .bind(&key.last_four)
                .bind(key.requests_per_minute.and_then(|n| i32::try_from(n).ok()))
                .bind(&key.created_by)
                .bind(enc_ts(key.created_at))
                .bind(key.expires_at.map(enc_ts))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                sqlx::query("INSERT INTO api_key_secret (secret_hash, key_id, created_at) VALUES ($1, $2, $3)")
                    .bind(hash.as_str())
                    .bind(key.id)
                    .bind(enc_ts(key.created_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            }

            async fn api_keys_of(&self, tenant: TenantId) -> Result<Vec<ApiKey>> {
                let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_key k WHERE k.tenant_id = $1 ORDER BY k.created_at DESC, k.id DESC");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.0).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter().map(api_key_from_row).collect()
            }

            async fn api_key(&self, tenant: TenantId, id: Uuid) -> Result<Option<ApiKey>> {
                let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_key k WHERE k.tenant_id = $1 AND k.id = $2");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant.0)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(api_key_from_row).transpose()
            }

            async fn api_key_count(&self, tenant: TenantId) -> Result<u64> {
                let row = sqlx::query("SELECT COUNT(*) AS n FROM api_key WHERE tenant_id = $1 AND revoked_at IS NULL")
                    .bind(tenant.0)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?;
                let n: i64 = row.try_get("n").map_err(db_err)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn roll_api_key(&self, tenant: TenantId, id: Uuid, roll: &KeyRoll, event: NewEvent) -> Result<bool> {
                let KeyRoll { new_hash, last_four, old_until, at } = roll;
                let (old_until, at) = (*old_until, *at);
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                Self::check_writable_in(&mut tx, tenant).await?;
                let done = sqlx::query(
                    "UPDATE api_key SET last_four = $3, rolled_at = $4 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
                )
                .bind(tenant.0)
                .bind(id)
                .bind(last_four)
                .bind(enc_ts(at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                // Every secret still working stops at the grace end (one already ending
                // sooner keeps its own end).
                sqlx::query(
                    "UPDATE api_key_secret SET not_after = $2 WHERE key_id = $1 AND (not_after IS NULL OR not_after > $2)",
                )
                .bind(id)
                .bind(enc_ts(old_until))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                // Secrets whose grace has ended are of no more use.
                sqlx::query("DELETE FROM api_key_secret WHERE key_id = $1 AND not_after <= $2")
                    .bind(id)
                    .bind(enc_ts(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query("INSERT INTO api_key_secret (secret_hash, key_id, created_at) VALUES ($1, $2, $3)")
                    .bind(new_hash.as_str())
                    .bind(id)
                    .bind(enc_ts(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Self::note_change(&mut tx, ChangeKind::ApiKey, id, at).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            async fn revoke_api_key(&self, tenant: TenantId, id: Uuid, at: OffsetDateTime, event: NewEvent) -> Result<bool> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let done = sqlx::query("UPDATE api_key SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL")
                    .bind(tenant.0)
                    .bind(id)
                    .bind(enc_ts(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                Self::note_change(&mut tx, ChangeKind::ApiKey, id, at).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            async fn key_for_verification(&self, hash: &TokenHash) -> Result<Option<KeyRecord>> {
                let sql = format!(
                    "SELECT {API_KEY_COLUMNS}, s.not_after, t.slug AS t_slug, t.status AS t_status, t.tier AS t_tier, \
                     t.region AS t_region, t.deleted_at AS t_deleted_at, b.until AS budget_until \
                     FROM api_key_secret s JOIN api_key k ON k.id = s.key_id JOIN tenant t ON t.id = k.tenant_id \
                     LEFT JOIN budget_block b ON b.tenant_id = t.id \
                     WHERE s.secret_hash = $1"
                );
                let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(hash.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                else {
                    return Ok(None);
                };
                let key = api_key_from_row(&r)?;
                let get_s = |c: &str| r.try_get::<String, _>(c).map_err(db_err);
                let tenant = TenantSnapshot {
                    id: key.tenant_id,
                    slug: TenantSlug::parse(&get_s("t_slug")?)?,
                    status: TenantStatus::parse(&get_s("t_status")?)?,
                    tier: PriorityTier::parse(&get_s("t_tier")?)?,
                    region: Region::from_stored(get_s("t_region")?),
                    deleted: opt_ts(&r, "t_deleted_at")?.is_some(),
                };
                Ok(Some(KeyRecord {
                    key,
                    secret_not_after: opt_ts(&r, "not_after")?,
                    tenant,
                    budget_block: opt_ts(&r, "budget_until")?,
                }))
            }

            async fn touch_api_keys(&self, ids: &[Uuid], at: OffsetDateTime) -> Result<()> {
                if ids.is_empty() {
                    return Ok(());
                }
                self.touch_rows("api_key", ids, at).await
            }

            async fn add_key_hits(&self, window: i64, hits: &[(Uuid, u64)]) -> Result<Vec<(Uuid, u64, u64)>> {
                let _writer = self.writer_permit().await;
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                sqlx::query("DELETE FROM api_key_rate WHERE window_start < $1")
                    .bind(window - 1)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                for (id, n) in hits {
                    sqlx::query(
                        "INSERT INTO api_key_rate (key_id, window_start, hits) VALUES ($1, $2, $3) \
                         ON CONFLICT (key_id, window_start) DO UPDATE SET hits = api_key_rate.hits + excluded.hits",
                    )
                    .bind(id)
                    .bind(window)
                    .bind(i64::try_from(*n).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
                let rows = sqlx::query("SELECT key_id, window_start, hits FROM api_key_rate WHERE window_start >= $1")
                    .bind(window - 1)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                let mut totals: BTreeMap<Uuid, (u64, u64)> = BTreeMap::new();
                for r in rows {
                    let id: Uuid = r.try_get("key_id").map_err(db_err)?;
                    let w: i64 = r.try_get("window_start").map_err(db_err)?;
                    let n = u64::try_from(r.try_get::<i64, _>("hits").map_err(db_err)?).unwrap_or(0);
                    let e = totals.entry(id).or_default();
                    if w == window {
                        e.0 = n;
                    } else {
                        e.1 = n;
                    }
                }
                Ok(totals.into_iter().map(|(id, (cur, prev))| (id, cur, prev)).collect())
            }

            async fn data_plane_changes(&self, after: i64, limit: u32) -> Result<Vec<DataPlaneChange>> {
                let rows = sqlx::query("SELECT seq, kind, subject FROM data_plane_change WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        let kind: String = r.try_get("kind").map_err(db_err)?;
                        Ok(DataPlaneChange {
                            seq: r.try_get("seq").map_err(db_err)?,
                            kind: ChangeKind::parse(&kind).ok_or_else(|| Error::internal(format!("unknown change kind {kind:?}")))?,
                            subject: r.try_get("subject").map_err(db_err)?,
                        })
                    })
                    .collect()
            }

            async fn data_plane_head(&self) -> Result<i64> {
                let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM data_plane_change")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.try_get::<i64, _>("seq").map_err(db_err)
            }

            async fn put_provider_credential(&self, c: &ProviderCredential, event: NewEvent) -> Result<()> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                Self::check_writable_in(&mut tx, c.tenant_id).await?;
                sqlx::query(
                    "INSERT INTO provider_credential (id, tenant_id, provider, fields, hints, sealed, updated_by, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (tenant_id, provider) DO UPDATE SET fields = excluded.fields, hints = excluded.hints, \
                     sealed = excluded.sealed, updated_by = excluded.updated_by, updated_at = excluded.updated_at \
                     WHERE provider_credential.id = excluded.id",
                )
                .bind(c.id)
                .bind(c.tenant_id.0)
                .bind(&c.provider)
                .bind(Json(&c.fields))
                .bind(Json(&c.hints))
                .bind(&c.sealed)
                .bind(&c.updated_by)
                .bind(enc_ts(c.created_at))
                .bind(enc_ts(c.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)
                .and_then(|done| {
                    if done.rows_affected() == 1 {
                        Ok(())
                    } else {
                        // Deleted and stored anew meanwhile (another id): the form is stale.
                        Err(Error::Conflict {
                            code: "credential_changed",
                            message: "This credential was changed meanwhile. Reload and try again.".to_owned(),
                        })
                    }
                })?;
                tx.commit().await.map_err(db_err)
            }

            async fn provider_credentials(&self, tenant: TenantId) -> Result<Vec<ProviderCredential>> {
                let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM provider_credential WHERE tenant_id = $1 ORDER BY provider");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.0).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter().map(credential_from_row).collect()
            }

            async fn provider_credential(&self, tenant: TenantId, provider: &str) -> Result<Option<ProviderCredential>> {
                let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM provider_credential WHERE tenant_id = $1 AND provider = $2");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant.0)
                    .bind(provider)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(credential_from_row).transpose()
            }

            async fn delete_provider_credential(&self, tenant: TenantId, provider: &str, event: NewEvent) -> Result<bool> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let done = sqlx::query("DELETE FROM provider_credential WHERE tenant_id = $1 AND provider = $2")
                    .bind(tenant.0)
                    .bind(provider)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            async fn count_credential_read(&self, read: &CredentialReads) -> Result<()> {
                let _writer = self.writer_permit().await;
                sqlx::query(
                    "INSERT INTO credential_read (token_id, credential_id, window_start, tenant_id, provider, token_name, reads, first_at, last_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (token_id, credential_id, window_start) DO UPDATE SET reads = credential_read.reads + excluded.reads, \
                     last_at = excluded.last_at",
                )
                .bind(read.token_id)
                .bind(read.credential_id)
                .bind(read.window_start)
                .bind(read.tenant_id.0)
                .bind(&read.provider)
                .bind(&read.token_name)
                .bind(read.reads)
                .bind(enc_ts(read.first_at))
                .bind(enc_ts(read.last_at))
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn closed_credential_reads(&self, window: i64, limit: u32) -> Result<Vec<CredentialReads>> {
                let sql = format!(
                    "SELECT {READ_COLUMNS} FROM credential_read WHERE window_start < $1 ORDER BY window_start, first_at LIMIT $2"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(window)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter().map(reads_from_row).collect()
            }

            async fn record_credential_reads(&self, t: &CredentialReads, event: NewEvent) -> Result<bool> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let done = sqlx::query(
                    "DELETE FROM credential_read WHERE token_id = $1 AND credential_id = $2 AND window_start = $3 AND reads = $4",
                )
                .bind(t.token_id)
                .bind(t.credential_id)
                .bind(t.window_start)
                .bind(t.reads)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }
        }
    };
}

pub(crate) use impl_data_plane_store;
