//! The SQL both backends share, written once.
//!
//! `impl_store!(StoreType, DbType)` implements every store trait for a backend struct that has
//! a `pool: sqlx::Pool<DbType>` field and, in scope where the macro is invoked:
//! `type Ts` with `enc_ts(OffsetDateTime) -> Ts` / `dec_ts(Ts) -> OffsetDateTime` (how the
//! backend stores time), `OUTBOX_CLAIM_LOCK` (the row-locking clause of the outbox claim's
//! subquery: `FOR UPDATE SKIP LOCKED` on PostgreSQL, empty on SQLite), and the inherent methods `provision_tenant_db`, `drop_tenant_db` and
//! `migrate_tenant_db`. Tables are named without a schema (see the crate docs).

macro_rules! impl_store {
    ($Store:ty, $Db:ty) => {
        use quarterdeck_domain::audit::{AuditEvent, AuditFilter, AuditHead, AuditKey, NewEvent};
        use quarterdeck_domain::email::EmailAddress;
        use quarterdeck_domain::error::{Error, Result};
        use quarterdeck_domain::ids::{EventId, TenantId, UserId};
        use quarterdeck_domain::session::Session;
        use quarterdeck_domain::mail::Email;
        use quarterdeck_domain::store::{AuditStore, OutboxMessage, OutboxStore, SessionStore, TenantStore, UserStore};
        use quarterdeck_domain::tenant::{
            Metadata, PriorityTier, Region, StatusCounts, Tenant, TenantFilter, TenantName, TenantSlug,
            TenantStatus,
        };
        use quarterdeck_domain::token::TokenHash;
        use quarterdeck_domain::impersonation::{Impersonation, ImpersonationEnd};
        use quarterdeck_domain::store::{ImpersonationStore, TokenStore};
        use quarterdeck_domain::pat::{PersonalAccessToken, TokenScope};
        use quarterdeck_domain::user::{Credential, Delivery, Directory, InvitationState, NewInvitation, StoredCredential, User, UserStatus};
        use sqlx::types::Json;
        use sqlx::{Pool, Row, Transaction};
        use $crate::WriterPermit;
        use time::OffsetDateTime;
        use uuid::Uuid;

        type DbRow = <$Db as sqlx::Database>::Row;

        const TENANT_COLUMNS: &str =
            "id, slug, name, region, tier, status, metadata, created_at, updated_at";

        fn tenant_from_row(r: &DbRow) -> Result<Tenant> {
            let get_s = |c: &str| r.try_get::<String, _>(c).map_err(db_err);
            let Json(metadata): Json<Metadata> = r.try_get("metadata").map_err(db_err)?;
            Ok(Tenant {
                id: TenantId(r.try_get::<Uuid, _>("id").map_err(db_err)?),
                slug: TenantSlug::parse(&get_s("slug")?)?,
                name: TenantName::parse(&get_s("name")?)?,
                region: Region::from_stored(get_s("region")?),
                tier: PriorityTier::parse(&get_s("tier")?)?,
                status: TenantStatus::parse(&get_s("status")?)?,
                metadata,
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                updated_at: dec_ts(r.try_get("updated_at").map_err(db_err)?),
            })
        }

        fn event_from_row(r: &DbRow) -> Result<AuditEvent> {
            let Json(details): Json<serde_json::Value> = r.try_get("details").map_err(db_err)?;
            Ok(AuditEvent {
                seq: r.try_get("seq").map_err(db_err)?,
                id: EventId(r.try_get("id").map_err(db_err)?),
                ts: dec_ts(r.try_get("ts").map_err(db_err)?),
                event_type: r.try_get("event_type").map_err(db_err)?,
                actor_id: r.try_get::<Option<Uuid>, _>("actor_id").map_err(db_err)?.map(UserId),
                actor_email: r.try_get("actor_email").map_err(db_err)?,
                tenant_id: r.try_get::<Option<Uuid>, _>("tenant_id").map_err(db_err)?.map(TenantId),
                details,
                prev_hash: r.try_get("prev_hash").map_err(db_err)?,
                hash: r.try_get("hash").map_err(db_err)?,
            })
        }

        fn session_from_row(r: &DbRow) -> Result<Session> {
            Ok(Session {
                id_hash: TokenHash(r.try_get("id_hash").map_err(db_err)?),
                user_id: UserId(r.try_get("user_id").map_err(db_err)?),
                tenant_id: r.try_get::<Option<Uuid>, _>("tenant_id").map_err(db_err)?.map(TenantId),
                csrf_token: r.try_get("csrf_token").map_err(db_err)?,
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                last_seen_at: dec_ts(r.try_get("last_seen_at").map_err(db_err)?),
                expires_at: dec_ts(r.try_get("expires_at").map_err(db_err)?),
                user_agent: r.try_get("user_agent").map_err(db_err)?,
                ip: r.try_get("ip").map_err(db_err)?,
                impersonation_id: r.try_get("impersonation_id").map_err(db_err)?,
                must_change_password: r.try_get("must_change_password").map_err(db_err)?,
            })
        }

        /// Escape LIKE wildcards in user input and wrap it for a substring match.
        fn like_pattern(s: &str) -> String {
            let escaped = s
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        }

        impl $Store {
            /// The key audit events are keyed with (every event written after migration 0003).
            pub fn with_audit_key(mut self, key: AuditKey) -> Self {
                self.audit_key = Some(key);
                self
            }

            /// The key intents' email bodies are sealed with (see `ControlPlan::into_payload`).
            pub fn with_intent_key(mut self, key: quarterdeck_domain::sso::SecretKey) -> Self {
                self.intent_key = Some(key);
                self
            }

            /// Begin a write transaction whose first statement appends `event` to the chain.
            /// Updating the chain head first takes the write lock at once (SQLite) or the head
            /// row's lock (PostgreSQL): audited writers are serialised and the chain cannot fork.
            ///
            /// The writer permit (SQLite: one audited writer at a time, queued fairly in the
            /// process instead of in SQLite's sleeping busy handler) is held until it is dropped,
            /// after the commit.
            async fn begin_audited(&self, event: &NewEvent) -> Result<(Transaction<'static, $Db>, Option<WriterPermit>)> {
                let permit = self.writer_permit().await;
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                Self::append_in(&mut tx, event, self.audit_key.as_ref()).await?;
                Ok((tx, permit))
            }

            /// Append one more event inside an audited transaction: keyed with the audit key
            /// from the head's `keyed_from` on (always, once migration 0003 ran), and the head
            /// moved to it with a fresh MAC.
            async fn append_in(tx: &mut Transaction<'static, $Db>, event: &NewEvent, key: Option<&AuditKey>) -> Result<()> {
                let head = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash, keyed_from, mac")
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(db_err)?;
                let seq: i64 = head.try_get("seq").map_err(db_err)?;
                let prev_hash: String = head.try_get("hash").map_err(db_err)?;
                let keyed_from: i64 = head.try_get("keyed_from").map_err(db_err)?;
                let prev_mac: Option<String> = head.try_get("mac").map_err(db_err)?;
                let key = if seq >= keyed_from {
                    Some(key.ok_or_else(|| Error::internal("the audit chain is keyed and this store has no audit key"))?)
                } else {
                    None
                };
                // Never build on a head that this key did not sign: a head moved back (the tail
                // deleted) would otherwise be signed afresh by the next write, and `audit
                // verify` would find nothing. Writes stop until an operator looks.
                if let Some(k) = key
                    && seq > keyed_from
                    && prev_mac.as_deref() != Some(quarterdeck_domain::audit::head_mac(k, seq - 1, &prev_hash, keyed_from).as_str())
                {
                    return Err(Error::internal(
                        "the audit chain's head is not the one this server wrote (its MAC does not match): refusing to extend it; run `quarterdeck audit verify`",
                    ));
                }
                let actor_id = event.actor.user_id;
                let hash = quarterdeck_domain::audit::chain_hash(
                    key,
                    &prev_hash,
                    seq,
                    event.id,
                    event.ts,
                    event.event_type.as_str(),
                    actor_id,
                    event.actor.email.as_deref(),
                    event.tenant_id,
                    &event.details,
                );
                sqlx::query(
                    "INSERT INTO tenant_audit (seq, id, ts, event_type, actor_id, actor_email, tenant_id, details, prev_hash, hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(seq)
                .bind(event.id.0)
                .bind(enc_ts(event.ts))
                .bind(event.event_type.as_str())
                .bind(actor_id.map(|u| u.0))
                .bind(event.actor.email.as_deref())
                .bind(event.tenant_id.map(|t| t.0))
                .bind(Json(&event.details))
                .bind(&prev_hash)
                .bind(&hash)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
                let mac = key.map(|k| quarterdeck_domain::audit::head_mac(k, seq, &hash, keyed_from));
                sqlx::query("UPDATE audit_head SET hash = $1, mac = $2 WHERE id = 1")
                    .bind(&hash)
                    .bind(mac)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Self::publish_in(tx, event).await
            }

            /// Queue an email in the outbox, inside a control-database transaction.
            async fn enqueue(
                tx: &mut Transaction<'static, $Db>,
                email: &Email,
                tenant: Option<TenantId>,
                user: Option<UserId>,
                at: OffsetDateTime,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO outbox (id, tenant_id, user_id, to_addr, subject, body_text, body_html, status, attempts, next_attempt_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8)",
                )
                .bind(Uuid::now_v7())
                .bind(tenant.map(|t| t.0))
                .bind(user.map(|u| u.0))
                .bind(&email.to)
                .bind(&email.subject)
                .bind(&email.text)
                .bind(&email.html)
                .bind(enc_ts(at))
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            /// Cancel a user's pending emails (their link died).
            /// End each impersonation in `ending` that is still live, with its event, and
            /// delete its sessions, inside an audited control-database transaction.
            async fn end_impersonations_in(&self, tx: &mut Transaction<'static, $Db>, ending: &[ImpersonationEnd]) -> Result<()> {
                for end in ending {
                    let done = sqlx::query(
                        "UPDATE impersonation SET ended_at = $2, end_reason = $3, handoff_hash = NULL WHERE id = $1 AND ended_at IS NULL",
                    )
                    .bind(end.id)
                    .bind(enc_ts(end.at))
                    .bind(end.reason)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                    if done.rows_affected() == 1 {
                        Self::append_in(tx, &end.event, self.audit_key.as_ref()).await?;
                    }
                    sqlx::query("DELETE FROM session WHERE impersonation_id = $1").bind(end.id).execute(&mut **tx).await.map_err(db_err)?;
                }
                Ok(())
            }

            async fn cancel_pending(tx: &mut Transaction<'static, $Db>, user: UserId) -> Result<()> {
                sqlx::query("UPDATE outbox SET status = 'cancelled', body_text = '', body_html = '' WHERE user_id = $1 AND status = 'pending'")
                    .bind(user.0)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

        }

        async fn user_roles(pool: &Pool<$Db>, id: UserId) -> Result<Vec<String>> {
            let rows = sqlx::query("SELECT role FROM user_role WHERE user_id = $1 ORDER BY role")
                .bind(id.0)
                .fetch_all(pool)
                .await
                .map_err(db_err)?;
            rows.iter().map(|r| r.try_get("role").map_err(db_err)).collect()
        }

        async fn user_from_row(pool: &Pool<$Db>, dir: Directory, r: &DbRow) -> Result<User> {
            let id = UserId(r.try_get("id").map_err(db_err)?);
            let email: String = r.try_get("email").map_err(db_err)?;
            let status: String = r.try_get("status").map_err(db_err)?;
            Ok(User {
                id,
                email: EmailAddress::parse(&email)?,
                name: r.try_get("name").map_err(db_err)?,
                status: UserStatus::parse(&status)?,
                roles: user_roles(pool, id).await?,
                tenant_id: dir.tenant_id(),
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
            })
        }

        async fn insert_user(
            tx: &mut Transaction<'static, $Db>,
            user: &User,
            credential: Option<&Credential>,
            invitation: Option<&NewInvitation>,
        ) -> Result<()> {
            sqlx::query(
                "INSERT INTO app_user (id, email, name, password_hash, otp_expires_at, must_change_password, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            )
            .bind(user.id.0)
            .bind(user.email.as_str())
            .bind(user.name.as_deref())
            .bind(credential.map(|c| c.hash.as_str()))
            .bind(credential.and_then(|c| c.otp_expires_at).map(enc_ts))
            .bind(credential.is_some_and(|c| c.must_change))
            .bind(user.status.as_str())
            .bind(enc_ts(user.created_at))
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
            insert_roles(tx, user.id, &user.roles).await?;
            if let Some(inv) = invitation {
                sqlx::query("INSERT INTO invitation (user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                    .bind(user.id.0)
                    .bind(inv.token_hash.as_str())
                    .bind(enc_ts(inv.created_at))
                    .bind(enc_ts(inv.expires_at))
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
            }
            Ok(())
        }

        async fn insert_roles(tx: &mut Transaction<'static, $Db>, user: UserId, roles: &[String]) -> Result<()> {
            for role in roles {
                sqlx::query("INSERT INTO user_role (user_id, role) VALUES ($1, $2)")
                    .bind(user.0)
                    .bind(role)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
            }
            Ok(())
        }

        const USER_COLUMNS: &str = "id, email, name, status, created_at, password_hash, otp_expires_at, otp_used_at, must_change_password";

        #[async_trait::async_trait]
        impl TenantStore for $Store {
            async fn create_tenant(&self, tenant: &Tenant, event: NewEvent) -> Result<()> {
                let db_name = self.provision_tenant_db(tenant.id, tenant.region.as_str()).await?;
                let result = async {
                    let (mut tx, _writer) = self.begin_audited(&event).await?;
                    sqlx::query(
                        "INSERT INTO tenant (id, slug, name, region, tier, status, metadata, db_name, created_at, updated_at, schema_version) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(tenant.id.0)
                    .bind(tenant.slug.as_str())
                    .bind(tenant.name.as_str())
                    .bind(tenant.region.as_str())
                    .bind(tenant.tier.as_str())
                    .bind(tenant.status.as_str())
                    .bind(Json(&tenant.metadata))
                    .bind(&db_name)
                    .bind(enc_ts(tenant.created_at))
                    .bind(enc_ts(tenant.updated_at))
                    .bind(tenant_schema_version())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    tx.commit().await.map_err(db_err)
                }
                .await;
                if result.is_err() {
                    // The tenant row did not commit: remove the database made for it.
                    if let Err(e) = self.drop_tenant_db(tenant.id, &db_name).await {
                        tracing::warn!(tenant_id = %tenant.id, error = %e, "could not remove the database of a tenant that failed to be created");
                    }
                }
                result
            }

            async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
                let sql = format!("SELECT {TENANT_COLUMNS} FROM tenant WHERE id = $1 AND deleted_at IS NULL");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.0).fetch_optional(&self.pool).await.map_err(db_err)?;
                row.as_ref().map(tenant_from_row).transpose()
            }

            async fn tenant_by_slug(&self, slug: &TenantSlug) -> Result<Option<Tenant>> {
                let sql = format!("SELECT {TENANT_COLUMNS} FROM tenant WHERE slug = $1 AND deleted_at IS NULL");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(slug.as_str()).fetch_optional(&self.pool).await.map_err(db_err)?;
                row.as_ref().map(tenant_from_row).transpose()
            }

            async fn slug_taken(&self, slug: &TenantSlug) -> Result<bool> {
                let row = sqlx::query("SELECT 1 AS one FROM tenant WHERE slug = $1")
                    .bind(slug.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(row.is_some())
            }

            async fn list_tenants(&self, f: &TenantFilter) -> Result<(Vec<Tenant>, u64)> {
                let search = f.search.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(like_pattern);
                let status = f.status.map(|s| s.as_str());
                let filter = "deleted_at IS NULL \
                    AND ($1 IS NULL OR lower(slug) LIKE $1 ESCAPE '\\' OR lower(name) LIKE $1 ESCAPE '\\') \
                    AND ($2 IS NULL OR status = $2)";
                let sql = format!(
                    "SELECT {TENANT_COLUMNS} FROM tenant WHERE {filter} ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(search.as_deref())
                    .bind(status)
                    .bind(i64::from(f.limit))
                    .bind(i64::from(f.offset))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                let count_sql = format!("SELECT COUNT(*) AS n FROM tenant WHERE {filter}");
                let total: i64 = sqlx::query(sqlx::AssertSqlSafe(count_sql))
                    .bind(search.as_deref())
                    .bind(status)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?
                    .try_get("n")
                    .map_err(db_err)?;
                let tenants = rows.iter().map(tenant_from_row).collect::<Result<Vec<_>>>()?;
                Ok((tenants, u64::try_from(total).unwrap_or(0)))
            }

            async fn tenant_counts(&self) -> Result<StatusCounts> {
                let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tenant WHERE deleted_at IS NULL GROUP BY status")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                let mut c = StatusCounts::default();
                for r in rows {
                    let status: String = r.try_get("status").map_err(db_err)?;
                    let n = u64::try_from(r.try_get::<i64, _>("n").map_err(db_err)?).unwrap_or(0);
                    match TenantStatus::parse(&status)? {
                        TenantStatus::Active => c.active = n,
                        TenantStatus::ReadOnly => c.read_only = n,
                        TenantStatus::Suspended => c.suspended = n,
                    }
                }
                Ok(c)
            }

            async fn update_tenant(&self, t: &Tenant, read: &Tenant, event: NewEvent) -> Result<()> {
                // A tenant's database stays where it was created: a region whose databases
                // live elsewhere would need the data moved.
                if t.region != read.region && !self.same_place(read.region.as_str(), t.region.as_str()) {
                    return Err(Error::field(
                        "region",
                        "region_moves_data",
                        "This region keeps its tenant databases elsewhere; a tenant cannot be moved there.",
                    ));
                }
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let done = sqlx::query(
                    "UPDATE tenant SET name = $2, region = $3, tier = $4, metadata = $5, status = $6, updated_at = $7 \
                     WHERE id = $1 AND deleted_at IS NULL AND status = $8 AND updated_at = $9",
                )
                .bind(t.id.0)
                .bind(t.name.as_str())
                .bind(t.region.as_str())
                .bind(t.tier.as_str())
                .bind(Json(&t.metadata))
                .bind(t.status.as_str())
                .bind(enc_ts(t.updated_at))
                .bind(read.status.as_str())
                .bind(enc_ts(read.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    let exists = sqlx::query("SELECT 1 AS one FROM tenant WHERE id = $1 AND deleted_at IS NULL")
                        .bind(t.id.0)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    return Err(if exists {
                        Error::Conflict {
                            code: "tenant_changed",
                            message: "The tenant was changed meanwhile. Reload it and try again.".to_owned(),
                        }
                    } else {
                        Error::NotFound
                    });
                }
                // Verification caches re-read the tenant (status, region, tier).
                Self::note_change(&mut tx, quarterdeck_domain::store::ChangeKind::Tenant, t.id.0, t.updated_at).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn delete_tenant(&self, id: TenantId, at: OffsetDateTime, event: NewEvent) -> Result<()> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let done = sqlx::query("UPDATE tenant SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                    .bind(id.0)
                    .bind(enc_ts(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Err(Error::NotFound);
                }
                // Sessions on the tenant's host end with it.
                sqlx::query("DELETE FROM session WHERE tenant_id = $1")
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                // Its keys stop verifying on every node.
                Self::note_change(&mut tx, quarterdeck_domain::store::ChangeKind::Tenant, id.0, at).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn purge_tenants(&self, deleted_before: OffsetDateTime) -> Result<Vec<TenantId>> {
                let rows = sqlx::query("SELECT id, db_name FROM tenant WHERE deleted_at IS NOT NULL AND deleted_at < $1")
                    .bind(enc_ts(deleted_before))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                let mut purged = Vec::new();
                for r in rows {
                    let id = TenantId(r.try_get("id").map_err(db_err)?);
                    let db_name: String = r.try_get("db_name").map_err(db_err)?;
                    self.drop_tenant_db(id, &db_name).await?;
                    sqlx::query("DELETE FROM tenant WHERE id = $1")
                        .bind(id.0)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err)?;
                    purged.push(id);
                }
                Ok(purged)
            }

            async fn tenant_ids(&self) -> Result<Vec<TenantId>> {
                let rows = sqlx::query("SELECT id FROM tenant WHERE deleted_at IS NULL ORDER BY created_at")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter().map(|r| Ok(TenantId(r.try_get("id").map_err(db_err)?))).collect()
            }

            async fn migrate_tenant(&self, id: TenantId) -> Result<usize> {
                let row = sqlx::query("SELECT db_name FROM tenant WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .ok_or(Error::NotFound)?;
                let db_name: String = row.try_get("db_name").map_err(db_err)?;
                let applied = self.migrate_tenant_db(id, &db_name).await?;
                // Recorded only after success; never moved back (a newer node may have gone further).
                sqlx::query("UPDATE tenant SET schema_version = $2 WHERE id = $1 AND schema_version < $2")
                    .bind(id.0)
                    .bind(tenant_schema_version())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(applied)
            }

            async fn tenants_behind(&self) -> Result<Vec<TenantId>> {
                let rows = sqlx::query("SELECT id FROM tenant WHERE deleted_at IS NULL AND schema_version < $1 ORDER BY created_at")
                    .bind(tenant_schema_version())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter().map(|r| Ok(TenantId(r.try_get("id").map_err(db_err)?))).collect()
            }
        }

        /// A write to a user directory with its audit events: the control transaction (which
        /// holds the events, sessions and the outbox) and, for a tenant, the tenant database's.
        /// The tenant's commits first, then the control one: the events are written last. So
        /// that a crash (or a failed control commit) between the two cannot lose the control
        /// side, the tenant's transaction also writes an intent (`pending_event`: `plan`, what
        /// the control side holds), deleted once the control side has committed; the reconcile
        /// pass (`sql_reconcile.rs`) writes the control side of an intent left behind.
        struct DirTx {
            control: Transaction<'static, $Db>,
            tenant: Option<Transaction<'static, $Db>>,
            _writer: Option<WriterPermit>,
            /// The tenant's pool stays leased (not closed for another tenant) until the end.
            _lease: Option<$crate::pools::TenantPool<$Db>>,
            /// The control side, recorded as it is written (tenant writes only).
            plan: $crate::sql_reconcile::ControlPlan,
            /// Seals the plan in the stored intent.
            intent_key: Option<quarterdeck_domain::sso::SecretKey>,
            /// The tenant whose database is written (the sealed plan is bound to it).
            tenant_id: Option<TenantId>,
        }

        impl DirTx {
            /// Where the user tables are.
            fn users(&mut self) -> &mut <$Db as sqlx::Database>::Connection {
                match &mut self.tenant {
                    Some(t) => &mut **t,
                    None => &mut *self.control,
                }
            }

            /// Queue an email in the control transaction (and in the plan).
            async fn enqueue(&mut self, email: &Email, tenant: Option<TenantId>, user: Option<UserId>, at: OffsetDateTime) -> Result<()> {
                <$Store>::enqueue(&mut self.control, email, tenant, user, at).await?;
                self.plan.ops.push($crate::sql_reconcile::ControlOp::Email {
                    to: email.to.clone(),
                    subject: email.subject.clone(),
                    text: email.text.clone(),
                    html: email.html.clone(),
                    tenant_id: tenant.map(|t| t.0),
                    user_id: user.map(|u| u.0),
                    at: $crate::sql_reconcile::nanos(at),
                });
                Ok(())
            }

            /// Delete a user's sessions in the control transaction (and in the plan).
            async fn delete_sessions(&mut self, user: UserId) -> Result<()> {
                sqlx::query("DELETE FROM session WHERE user_id = $1").bind(user.0).execute(&mut *self.control).await.map_err(db_err)?;
                self.plan.ops.push($crate::sql_reconcile::ControlOp::DeleteSessions { user_id: user.0 });
                Ok(())
            }

            /// Cancel a user's pending emails in the control transaction (and in the plan).
            async fn cancel_pending(&mut self, user: UserId) -> Result<()> {
                <$Store>::cancel_pending(&mut self.control, user).await?;
                self.plan.ops.push($crate::sql_reconcile::ControlOp::CancelPending { user_id: user.0 });
                Ok(())
            }

            /// End impersonations in the control transaction (and in the plan).
            async fn end_impersonations(&mut self, store: &$Store, ending: &[ImpersonationEnd]) -> Result<()> {
                store.end_impersonations_in(&mut self.control, ending).await?;
                for end in ending {
                    self.plan.ops.push($crate::sql_reconcile::ControlOp::EndImpersonation {
                        id: end.id,
                        at: $crate::sql_reconcile::nanos(end.at),
                        reason: end.reason.to_owned(),
                        event: Box::new($crate::sql_reconcile::PlannedEvent::from_event(&end.event)),
                    });
                }
                Ok(())
            }

            /// Commit: the tenant's transaction with the intent, then the control one, then
            /// the intent is deleted. A failed control commit leaves the intent for the
            /// reconcile pass (the change is not taken back: it may already be seen).
            async fn commit(self) -> Result<()> {
                let DirTx { control, tenant, _writer, _lease, plan, intent_key, tenant_id } = self;
                let Some(mut tenant) = tenant else {
                    return control.commit().await.map_err(db_err);
                };
                let intent = match plan.events.first().map(|first| (first.id(), first.ts())) {
                    // Nothing audited, nothing to reconcile.
                    None => None,
                    Some((id, first_ts)) => {
                        let payload = plan
                            .into_payload(intent_key.as_ref(), tenant_id.map_or(Uuid::nil(), |t| t.0), id)
                            .map_err(|e| Error::internal(format!("cannot record an intent: {e}")))?;
                        sqlx::query("INSERT INTO pending_event (event_id, created_at, attempts, payload) VALUES ($1, $2, 0, $3)")
                            .bind(id)
                            .bind(enc_ts(first_ts))
                            .bind(payload)
                            .execute(&mut *tenant)
                            .await
                            .map_err(db_err)?;
                        Some((id, first_ts))
                    }
                };
                tenant.commit().await.map_err(db_err)?;
                if let Err(e) = control.commit().await {
                    tracing::error!(event_id = ?intent.map(|(id, _)| id), error = %e, "a change committed in the tenant's database but its control side did not; the reconcile pass will write it");
                    return Err(db_err(e));
                }
                drop(_writer);
                // Settled, and kept an hour (not deleted): a backup that copied the control
                // database before this commit and this tenant's after still holds the intent
                // that lets the restored server write the event (see `Core::reconcile`).
                if let (Some((id, at)), Some(pool)) = (intent, &_lease) {
                    if let Err(e) = sqlx::query("UPDATE pending_event SET settled_at = $2 WHERE event_id = $1")
                        .bind(id)
                        .bind(enc_ts(at))
                        .execute(&**pool)
                        .await
                    {
                        tracing::warn!(event_id = %id, error = %e, "could not mark an intent settled (the reconcile pass will find its event written)");
                    }
                }
                Ok(())
            }
        }

        impl $Store {
            /// The one tenant-status check of every write in a tenant: the tenant's status,
            /// read under the audit lock that every audited write takes, so a write cannot slip
            /// in after a concurrent suspension (or switch to read-only) commits.
            async fn check_writable_in(control: &mut Transaction<'static, $Db>, t: TenantId) -> Result<()> {
                let row = sqlx::query("SELECT status FROM tenant WHERE id = $1 AND deleted_at IS NULL")
                    .bind(t.0)
                    .fetch_optional(&mut **control)
                    .await
                    .map_err(db_err)?
                    .ok_or(Error::NotFound)?;
                let status: String = row.try_get("status").map_err(db_err)?;
                TenantStatus::parse(&status)?.check_writable()
            }
        }

        impl $Store {
            async fn begin_dir(&self, dir: Directory, events: &[NewEvent]) -> Result<DirTx> {
                // The tenant's pool first, before any lock or control connection is held: a
                // wait for the connection budget must never hold up the audit chain.
                let lease = match dir {
                    Directory::Platform => None,
                    Directory::Tenant(_) => Some(self.dir_pool(dir).await?),
                };
                let writer = self.writer_permit().await;
                let mut control = self.pool.begin().await.map_err(db_err)?;
                for e in events {
                    Self::append_in(&mut control, e, self.audit_key.as_ref()).await?;
                }
                if let Directory::Tenant(t) = dir {
                    Self::check_writable_in(&mut control, t).await?;
                }
                let tenant = match &lease {
                    None => None,
                    Some(pool) => Some(pool.begin().await.map_err(db_err)?),
                };
                let plan = match dir {
                    Directory::Platform => $crate::sql_reconcile::ControlPlan::default(),
                    Directory::Tenant(_) => $crate::sql_reconcile::ControlPlan::new(events),
                };
                Ok(DirTx { control, tenant, _writer: writer, _lease: lease, plan, intent_key: self.intent_key.clone(), tenant_id: dir.tenant_id() })
            }
        }

        impl $Store {
            /// Insert a user with its roles, password or invitation (its email queued) or
            /// external identity, and its event. For a tenant user the tenant database commits
            /// first (with its intent); if the control database's commit (the event, the
            /// email) then fails, the reconcile pass writes it later.
            async fn insert_user_with(
                &self,
                user: &User,
                credential: Option<&Credential>,
                invitation: Option<&NewInvitation>,
                identity: Option<(Uuid, &quarterdeck_domain::sso::ExternalLogin)>,
                event: NewEvent,
            ) -> Result<()> {
                let dir = user.directory();
                let mut tx = self.begin_dir(dir, std::slice::from_ref(&event)).await?;
                if let Some(inv) = invitation {
                    tx.enqueue(&inv.email, dir.tenant_id(), Some(user.id), inv.created_at).await?;
                }
                match &mut tx.tenant {
                    Some(t) => insert_user(t, user, credential, invitation).await?,
                    None => insert_user(&mut tx.control, user, credential, invitation).await?,
                }
                if let Some((provider, login)) = identity {
                    insert_identity(tx.users(), user.id, provider, login, user.created_at).await?;
                }
                tx.commit().await
            }

        }

        #[async_trait::async_trait]
        impl UserStore for $Store {
            async fn owner_exists(&self) -> Result<bool> {
                let row = sqlx::query(
                    "SELECT 1 AS one FROM app_user u JOIN user_role r ON r.user_id = u.id WHERE r.role = 'owner' LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(row.is_some())
            }

            async fn create_user(
                &self,
                user: &User,
                credential: Option<&Credential>,
                invitation: Option<&NewInvitation>,
                event: NewEvent,
            ) -> Result<()> {
                self.insert_user_with(user, credential, invitation, None, event).await
            }

            async fn user_by_email(&self, dir: Directory, email: &EmailAddress) -> Result<Option<(User, Option<StoredCredential>)>> {
                let pool = self.dir_pool(dir).await?;
                let sql = format!("SELECT {USER_COLUMNS} FROM app_user WHERE email = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(email.as_str()).fetch_optional(&*pool).await.map_err(db_err)?;
                match row {
                    None => Ok(None),
                    Some(r) => {
                        let hash: Option<String> = r.try_get("password_hash").map_err(db_err)?;
                        let credential = match hash {
                            None => None,
                            Some(hash) => Some(StoredCredential {
                                hash,
                                otp_expires_at: r.try_get::<Option<Ts>, _>("otp_expires_at").map_err(db_err)?.map(dec_ts),
                                otp_used_at: r.try_get::<Option<Ts>, _>("otp_used_at").map_err(db_err)?.map(dec_ts),
                                must_change: r.try_get("must_change_password").map_err(db_err)?,
                            }),
                        };
                        Ok(Some((user_from_row(&pool, dir, &r).await?, credential)))
                    }
                }
            }

            async fn user(&self, dir: Directory, id: UserId) -> Result<Option<User>> {
                let pool = self.dir_pool(dir).await?;
                let sql = format!("SELECT {USER_COLUMNS} FROM app_user WHERE id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.0).fetch_optional(&*pool).await.map_err(db_err)?;
                match row {
                    None => Ok(None),
                    Some(r) => Ok(Some(user_from_row(&pool, dir, &r).await?)),
                }
            }

            async fn list_users(&self, dir: Directory) -> Result<Vec<User>> {
                let pool = self.dir_pool(dir).await?;
                let sql = format!("SELECT {USER_COLUMNS} FROM app_user ORDER BY created_at, id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&*pool).await.map_err(db_err)?;
                let mut users = Vec::with_capacity(rows.len());
                for r in &rows {
                    users.push(user_from_row(&pool, dir, r).await?);
                }
                Ok(users)
            }

            async fn invitation_state(&self, dir: Directory, user: UserId) -> Result<Option<InvitationState>> {
                let pool = self.dir_pool(dir).await?;
                let Some(inv) = sqlx::query("SELECT expires_at, spent_at, revoked_at FROM invitation WHERE user_id = $1")
                    .bind(user.0)
                    .fetch_optional(&*pool)
                    .await
                    .map_err(db_err)?
                else {
                    return Ok(None);
                };
                let mail = sqlx::query("SELECT status, attempts FROM outbox WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1")
                    .bind(user.0)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                let (delivery, attempts) = match mail {
                    None => (None, 0),
                    Some(m) => {
                        let status: String = m.try_get("status").map_err(db_err)?;
                        let attempts: i64 = m.try_get::<i32, _>("attempts").map(i64::from).or_else(|_| m.try_get::<i64, _>("attempts")).map_err(db_err)?;
                        let d = match status.as_str() {
                            "pending" => Some(Delivery::Pending),
                            "sent" => Some(Delivery::Sent),
                            "failed" => Some(Delivery::Failed),
                            _ => None,
                        };
                        (d, attempts)
                    }
                };
                Ok(Some(InvitationState {
                    expires_at: dec_ts(inv.try_get("expires_at").map_err(db_err)?),
                    spent: inv.try_get::<Option<Ts>, _>("spent_at").map_err(db_err)?.is_some(),
                    revoked: inv.try_get::<Option<Ts>, _>("revoked_at").map_err(db_err)?.is_some(),
                    delivery,
                    attempts,
                }))
            }

            async fn set_password(&self, dir: Directory, id: UserId, credential: &Credential, end_sessions: bool, event: NewEvent) -> Result<()> {
                let at = event.ts;
                let mut tx = self.begin_dir(dir, std::slice::from_ref(&event)).await?;
                let done = sqlx::query(
                    "UPDATE app_user SET password_hash = $2, otp_expires_at = $3, otp_used_at = NULL, must_change_password = $4, updated_at = $5 \
                     WHERE id = $1",
                )
                .bind(id.0)
                .bind(&credential.hash)
                .bind(credential.otp_expires_at.map(enc_ts))
                .bind(credential.must_change)
                .bind(enc_ts(at))
                .execute(tx.users())
                .await
                .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Err(Error::NotFound);
                }
                if end_sessions {
                    tx.delete_sessions(id).await?;
                }
                tx.commit().await
            }

            async fn spend_otp(&self, dir: Directory, id: UserId, hash: &str, at: OffsetDateTime) -> Result<bool> {
                let pool = self.dir_pool(dir).await?;
                let done = sqlx::query(
                    "UPDATE app_user SET otp_used_at = $2 \
                     WHERE id = $1 AND password_hash = $3 AND otp_used_at IS NULL AND otp_expires_at > $2",
                )
                .bind(id.0)
                .bind(enc_ts(at))
                .bind(hash)
                .execute(&*pool)
                .await
                .map_err(db_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn set_roles(&self, dir: Directory, id: UserId, roles: &[String], events: Vec<NewEvent>, ending: &[ImpersonationEnd]) -> Result<()> {
                let mut tx = self.begin_dir(dir, &events).await?;
                sqlx::query("DELETE FROM user_role WHERE user_id = $1").bind(id.0).execute(tx.users()).await.map_err(db_err)?;
                match &mut tx.tenant {
                    Some(t) => insert_roles(t, id, roles).await?,
                    None => insert_roles(&mut tx.control, id, roles).await?,
                }
                tx.end_impersonations(self, ending).await?;
                tx.commit().await
            }

            async fn set_user_status(&self, dir: Directory, id: UserId, status: UserStatus, event: NewEvent, ending: &[ImpersonationEnd]) -> Result<()> {
                let at = event.ts;
                let mut tx = self.begin_dir(dir, std::slice::from_ref(&event)).await?;
                let done = sqlx::query("UPDATE app_user SET status = $2, updated_at = $3 WHERE id = $1")
                    .bind(id.0)
                    .bind(status.as_str())
                    .bind(enc_ts(at))
                    .execute(tx.users())
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Err(Error::NotFound);
                }
                tx.end_impersonations(self, ending).await?;
                if status != UserStatus::Active {
                    tx.delete_sessions(id).await?;
                }
                tx.commit().await
            }

            async fn delete_user(&self, dir: Directory, id: UserId, event: NewEvent, ending: &[ImpersonationEnd]) -> Result<()> {
                let mut tx = self.begin_dir(dir, std::slice::from_ref(&event)).await?;
                sqlx::query("DELETE FROM invitation WHERE user_id = $1").bind(id.0).execute(tx.users()).await.map_err(db_err)?;
                sqlx::query("DELETE FROM user_identity WHERE user_id = $1").bind(id.0).execute(tx.users()).await.map_err(db_err)?;
                sqlx::query("DELETE FROM user_role WHERE user_id = $1").bind(id.0).execute(tx.users()).await.map_err(db_err)?;
                let done = sqlx::query("DELETE FROM app_user WHERE id = $1").bind(id.0).execute(tx.users()).await.map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Err(Error::NotFound);
                }
                tx.end_impersonations(self, ending).await?;
                tx.delete_sessions(id).await?;
                tx.cancel_pending(id).await?;
                tx.commit().await
            }

            async fn replace_invitation(
                &self,
                dir: Directory,
                user: UserId,
                invitation: Option<&NewInvitation>,
                at: OffsetDateTime,
                event: NewEvent,
            ) -> Result<()> {
                let mut tx = self.begin_dir(dir, std::slice::from_ref(&event)).await?;
                tx.cancel_pending(user).await?;
                match invitation {
                    Some(inv) => {
                        sqlx::query("DELETE FROM invitation WHERE user_id = $1").bind(user.0).execute(tx.users()).await.map_err(db_err)?;
                        sqlx::query("INSERT INTO invitation (user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                            .bind(user.0)
                            .bind(inv.token_hash.as_str())
                            .bind(enc_ts(inv.created_at))
                            .bind(enc_ts(inv.expires_at))
                            .execute(tx.users())
                            .await
                            .map_err(db_err)?;
                        tx.enqueue(&inv.email, dir.tenant_id(), Some(user), inv.created_at).await?;
                    }
                    None => {
                        sqlx::query("UPDATE invitation SET revoked_at = $2 WHERE user_id = $1 AND spent_at IS NULL")
                            .bind(user.0)
                            .bind(enc_ts(at))
                            .execute(tx.users())
                            .await
                            .map_err(db_err)?;
                    }
                }
                tx.commit().await
            }

            async fn invited_user(&self, dir: Directory, token: &TokenHash, now: OffsetDateTime) -> Result<Option<User>> {
                let pool = self.dir_pool(dir).await?;
                let row = sqlx::query(
                    "SELECT u.id, u.email, u.name, u.status, u.created_at FROM invitation i JOIN app_user u ON u.id = i.user_id \
                     WHERE i.token_hash = $1 AND i.spent_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > $2 AND u.status = 'INVITED'",
                )
                .bind(token.as_str())
                .bind(enc_ts(now))
                .fetch_optional(&*pool)
                .await
                .map_err(db_err)?;
                match row {
                    None => Ok(None),
                    Some(r) => Ok(Some(user_from_row(&pool, dir, &r).await?)),
                }
            }

            async fn accept_invitation(
                &self,
                dir: Directory,
                token: &TokenHash,
                now: OffsetDateTime,
                password_hash: &str,
                event: NewEvent,
            ) -> Result<Option<User>> {
                let mut tx = self.begin_dir(dir, std::slice::from_ref(&event)).await?;
                let claimed = sqlx::query(
                    "UPDATE invitation SET spent_at = $2 \
                     WHERE token_hash = $1 AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > $2 RETURNING user_id",
                )
                .bind(token.as_str())
                .bind(enc_ts(now))
                .fetch_optional(tx.users())
                .await
                .map_err(db_err)?;
                let Some(claimed) = claimed else {
                    return Ok(None);
                };
                let user_id = UserId(claimed.try_get("user_id").map_err(db_err)?);
                let done = sqlx::query("UPDATE app_user SET password_hash = $2, status = 'ACTIVE', updated_at = $3 WHERE id = $1 AND status = 'INVITED'")
                    .bind(user_id.0)
                    .bind(password_hash)
                    .bind(enc_ts(now))
                    .execute(tx.users())
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Ok(None);
                }
                tx.commit().await?;
                self.user(dir, user_id).await
            }

            async fn put_setup_token(&self, hash: &TokenHash, expires_at: OffsetDateTime) -> Result<()> {
                sqlx::query(
                    "INSERT INTO setup_token (id, token_hash, expires_at) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO UPDATE SET token_hash = excluded.token_hash, expires_at = excluded.expires_at",
                )
                .bind(hash.as_str())
                .bind(enc_ts(expires_at))
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn setup_token_valid(&self, hash: &TokenHash, now: OffsetDateTime) -> Result<bool> {
                let row = sqlx::query("SELECT 1 AS one FROM setup_token WHERE token_hash = $1 AND expires_at > $2")
                    .bind(hash.as_str())
                    .bind(enc_ts(now))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(row.is_some())
            }

            async fn create_owner_with_setup_token(
                &self,
                hash: &TokenHash,
                now: OffsetDateTime,
                user: &User,
                password_hash: &str,
                event: NewEvent,
            ) -> Result<bool> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let spent = sqlx::query("DELETE FROM setup_token WHERE token_hash = $1 AND expires_at > $2")
                    .bind(hash.as_str())
                    .bind(enc_ts(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if spent.rows_affected() != 1 {
                    return Ok(false);
                }
                insert_user(&mut tx, user, Some(&Credential::password(password_hash.to_owned())), None).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }
        }

        #[async_trait::async_trait]
        impl SessionStore for $Store {
            async fn create_session(&self, s: &Session) -> Result<()> {
                sqlx::query(
                    "INSERT INTO session (id_hash, user_id, tenant_id, csrf_token, created_at, last_seen_at, expires_at, user_agent, ip, impersonation_id, must_change_password) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(s.id_hash.as_str())
                .bind(s.user_id.0)
                .bind(s.tenant_id.map(|t| t.0))
                .bind(&s.csrf_token)
                .bind(enc_ts(s.created_at))
                .bind(enc_ts(s.last_seen_at))
                .bind(enc_ts(s.expires_at))
                .bind(s.user_agent.as_deref())
                .bind(s.ip.as_deref())
                .bind(s.impersonation_id)
                .bind(s.must_change_password)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn session(&self, id_hash: &TokenHash) -> Result<Option<Session>> {
                let row = sqlx::query(
                    "SELECT id_hash, user_id, tenant_id, csrf_token, created_at, last_seen_at, expires_at, user_agent, ip, impersonation_id, must_change_password \
                     FROM session WHERE id_hash = $1",
                )
                .bind(id_hash.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                row.as_ref().map(session_from_row).transpose()
            }

            async fn touch_session(&self, id_hash: &TokenHash, at: OffsetDateTime) -> Result<()> {
                sqlx::query("UPDATE session SET last_seen_at = $2 WHERE id_hash = $1")
                    .bind(id_hash.as_str())
                    .bind(enc_ts(at))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn delete_session(&self, id_hash: &TokenHash) -> Result<()> {
                sqlx::query("DELETE FROM session WHERE id_hash = $1")
                    .bind(id_hash.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn delete_user_sessions(&self, user: UserId, keep: Option<&TokenHash>) -> Result<u64> {
                let done = sqlx::query("DELETE FROM session WHERE user_id = $1 AND ($2 IS NULL OR id_hash <> $2)")
                    .bind(user.0)
                    .bind(keep.map(TokenHash::as_str))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn delete_tenant_sessions(&self, tenant: TenantId) -> Result<u64> {
                let done = sqlx::query("DELETE FROM session WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn delete_expired_sessions(&self, idle_before: OffsetDateTime, now: OffsetDateTime) -> Result<u64> {
                let done = sqlx::query("DELETE FROM session WHERE last_seen_at < $1 OR expires_at <= $2")
                    .bind(enc_ts(idle_before))
                    .bind(enc_ts(now))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(done.rows_affected())
            }
        }

        #[async_trait::async_trait]
        impl AuditStore for $Store {
            async fn append_event(&self, event: NewEvent) -> Result<()> {
                let (tx, _writer) = self.begin_audited(&event).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn list_events(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>> {
                let actor = f.actor.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(like_pattern);
                let rows = sqlx::query(
                    "SELECT seq, id, ts, event_type, actor_id, actor_email, tenant_id, details, prev_hash, hash \
                     FROM tenant_audit \
                     WHERE ($1 IS NULL OR event_type = $1) \
                       AND ($2 IS NULL OR tenant_id = $2) \
                       AND ($3 IS NULL OR lower(actor_email) LIKE $3 ESCAPE '\\') \
                       AND ($4 IS NULL OR ts >= $4) \
                       AND ($5 IS NULL OR ts < $5) \
                       AND ($6 IS NULL OR seq < $6) \
                     ORDER BY seq DESC LIMIT $7",
                )
                .bind(f.event_type.as_deref())
                .bind(f.tenant_id.map(|t| t.0))
                .bind(actor.as_deref())
                .bind(f.from.map(enc_ts))
                .bind(f.to.map(enc_ts))
                .bind(f.before_seq)
                .bind(i64::from(f.limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter().map(event_from_row).collect()
            }

            async fn event(&self, id: EventId) -> Result<Option<AuditEvent>> {
                let row = sqlx::query(
                    "SELECT seq, id, ts, event_type, actor_id, actor_email, tenant_id, details, prev_hash, hash \
                     FROM tenant_audit WHERE id = $1",
                )
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                row.as_ref().map(event_from_row).transpose()
            }

            async fn audit_head(&self) -> Result<AuditHead> {
                let r = sqlx::query("SELECT seq, hash, keyed_from, mac FROM audit_head WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .ok_or_else(|| Error::internal("the audit chain's head row is missing"))?;
                Ok(AuditHead {
                    seq: r.try_get("seq").map_err(db_err)?,
                    hash: r.try_get("hash").map_err(db_err)?,
                    keyed_from: r.try_get("keyed_from").map_err(db_err)?,
                    mac: r.try_get("mac").map_err(db_err)?,
                })
            }

            async fn events_after(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>> {
                let rows = sqlx::query(
                    "SELECT seq, id, ts, event_type, actor_id, actor_email, tenant_id, details, prev_hash, hash \
                     FROM tenant_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter().map(event_from_row).collect()
            }
        }

        fn outbox_from_row(r: &DbRow) -> Result<OutboxMessage> {
            Ok(OutboxMessage {
                id: r.try_get("id").map_err(db_err)?,
                email: Email {
                    to: r.try_get("to_addr").map_err(db_err)?,
                    subject: r.try_get("subject").map_err(db_err)?,
                    text: r.try_get("body_text").map_err(db_err)?,
                    html: r.try_get("body_html").map_err(db_err)?,
                },
                attempts: r.try_get::<i32, _>("attempts").map(i64::from).or_else(|_| r.try_get::<i64, _>("attempts")).map_err(db_err)?,
            })
        }

        #[async_trait::async_trait]
        impl OutboxStore for $Store {
            async fn due_messages(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<OutboxMessage>> {
                let rows = sqlx::query(
                    "SELECT id, to_addr, subject, body_text, body_html, attempts FROM outbox \
                     WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY created_at LIMIT $2",
                )
                .bind(enc_ts(now))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter().map(outbox_from_row).collect()
            }

            async fn claim_due_messages(
                &self,
                now: OffsetDateTime,
                lease: Uuid,
                lease_until: OffsetDateTime,
                limit: u32,
            ) -> Result<Vec<OutboxMessage>> {
                // One statement: the rows it picks are the rows it leases. SQLite runs it under
                // the database's write lock; PostgreSQL locks the picked rows and skips rows
                // another worker is claiming (`OUTBOX_CLAIM_LOCK`), and re-checks the lease
                // condition on rows that changed meanwhile. The pick is a MATERIALIZED CTE, run
                // once: as an `IN (subquery)` PostgreSQL re-ran it when a row had changed under
                // the update, and with SKIP LOCKED each run picked other rows, so one claim
                // took hundreds of messages instead of `limit`.
                let sql = format!(
                    "WITH picked AS MATERIALIZED (\
                       SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1 \
                       AND (leased_until IS NULL OR leased_until <= $1) ORDER BY created_at LIMIT $2{lock}) \
                     UPDATE outbox SET lease_token = $3, leased_until = $4 \
                     WHERE id IN (SELECT id FROM picked) \
                     AND status = 'pending' AND (leased_until IS NULL OR leased_until <= $1) \
                     RETURNING id, to_addr, subject, body_text, body_html, attempts, created_at",
                    lock = OUTBOX_CLAIM_LOCK
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(enc_ts(now))
                    .bind(i64::from(limit))
                    .bind(lease)
                    .bind(enc_ts(lease_until))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let created: Ts = r.try_get("created_at").map_err(db_err)?;
                    out.push((dec_ts(created), outbox_from_row(r)?));
                }
                out.sort_by_key(|(created, _)| *created);
                Ok(out.into_iter().map(|(_, m)| m).collect())
            }

            async fn mark_sent(&self, id: Uuid, lease: Uuid, at: OffsetDateTime) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE outbox SET status = 'sent', sent_at = $2, attempts = attempts + 1, last_error = NULL, body_text = '', body_html = '', \
                     lease_token = NULL, leased_until = NULL \
                     WHERE id = $1 AND lease_token = $3",
                )
                .bind(id)
                .bind(enc_ts(at))
                .bind(lease)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn release_message_lease(&self, lease: Uuid, except: Option<Uuid>) -> Result<u64> {
                let done = match except {
                    None => sqlx::query(
                        "UPDATE outbox SET lease_token = NULL, leased_until = NULL WHERE lease_token = $1 AND status = 'pending'",
                    )
                    .bind(lease),
                    Some(id) => sqlx::query(
                        "UPDATE outbox SET lease_token = NULL, leased_until = NULL WHERE lease_token = $1 AND status = 'pending' AND id <> $2",
                    )
                    .bind(lease)
                    .bind(id),
                }
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn mark_attempt_failed(&self, id: Uuid, lease: Uuid, retry_at: Option<OffsetDateTime>, error: &str) -> Result<bool> {
                let error: String = error.chars().take(500).collect();
                let done = match retry_at {
                    Some(at) => sqlx::query(
                        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3, lease_token = NULL, leased_until = NULL \
                         WHERE id = $1 AND lease_token = $4",
                    )
                    .bind(id)
                    .bind(enc_ts(at))
                    .bind(&error)
                    .bind(lease)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?,
                    None => sqlx::query(
                        "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = $2, body_text = '', body_html = '', \
                         lease_token = NULL, leased_until = NULL WHERE id = $1 AND lease_token = $3",
                    )
                    .bind(id)
                    .bind(&error)
                    .bind(lease)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?,
                };
                Ok(done.rows_affected() == 1)
            }
        }

        fn impersonation_from_row(r: &DbRow) -> Result<Impersonation> {
            Ok(Impersonation {
                id: r.try_get("id").map_err(db_err)?,
                impersonator_id: UserId(r.try_get("impersonator_id").map_err(db_err)?),
                impersonator_email: r.try_get("impersonator_email").map_err(db_err)?,
                tenant_id: TenantId(r.try_get("tenant_id").map_err(db_err)?),
                reason: r.try_get("reason").map_err(db_err)?,
                started_at: dec_ts(r.try_get("started_at").map_err(db_err)?),
                expires_at: dec_ts(r.try_get("expires_at").map_err(db_err)?),
                ended_at: r.try_get::<Option<Ts>, _>("ended_at").map_err(db_err)?.map(dec_ts),
            })
        }

        const IMPERSONATION_COLUMNS: &str = "id, impersonator_id, impersonator_email, tenant_id, reason, started_at, expires_at, ended_at";

        #[async_trait::async_trait]
        impl ImpersonationStore for $Store {
            async fn start_impersonation(&self, imp: &Impersonation, handoff: &TokenHash, handoff_expires_at: OffsetDateTime, event: NewEvent) -> Result<()> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                sqlx::query(
                    "INSERT INTO impersonation (id, impersonator_id, impersonator_email, tenant_id, reason, started_at, expires_at, handoff_hash, handoff_expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(imp.id)
                .bind(imp.impersonator_id.0)
                .bind(&imp.impersonator_email)
                .bind(imp.tenant_id.0)
                .bind(&imp.reason)
                .bind(enc_ts(imp.started_at))
                .bind(enc_ts(imp.expires_at))
                .bind(handoff.as_str())
                .bind(enc_ts(handoff_expires_at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            }

            async fn take_handoff(&self, handoff: &TokenHash, now: OffsetDateTime) -> Result<Option<Impersonation>> {
                let row = sqlx::query(
                    "UPDATE impersonation SET handoff_hash = NULL, handoff_expires_at = NULL \
                     WHERE handoff_hash = $1 AND handoff_expires_at > $2 AND ended_at IS NULL RETURNING id",
                )
                .bind(handoff.as_str())
                .bind(enc_ts(now))
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                match row {
                    None => Ok(None),
                    Some(r) => self.impersonation(r.try_get("id").map_err(db_err)?).await,
                }
            }

            async fn impersonation(&self, id: Uuid) -> Result<Option<Impersonation>> {
                let sql = format!("SELECT {IMPERSONATION_COLUMNS} FROM impersonation WHERE id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await.map_err(db_err)?;
                row.as_ref().map(impersonation_from_row).transpose()
            }

            async fn live_impersonations_of(&self, impersonator: UserId) -> Result<Vec<Impersonation>> {
                let sql = format!("SELECT {IMPERSONATION_COLUMNS} FROM impersonation WHERE impersonator_id = $1 AND ended_at IS NULL");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(impersonator.0).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter().map(impersonation_from_row).collect()
            }

            async fn expired_impersonations(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Impersonation>> {
                let sql = format!("SELECT {IMPERSONATION_COLUMNS} FROM impersonation WHERE ended_at IS NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(enc_ts(now)).bind(i64::from(limit)).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter().map(impersonation_from_row).collect()
            }

            async fn end_impersonation(&self, id: Uuid, at: OffsetDateTime, reason: &str, event: NewEvent) -> Result<bool> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let done = sqlx::query("UPDATE impersonation SET ended_at = $2, end_reason = $3, handoff_hash = NULL WHERE id = $1 AND ended_at IS NULL")
                    .bind(id)
                    .bind(enc_ts(at))
                    .bind(reason)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    // Ended already (a race between stop and expiry): no second event.
                    return Ok(false);
                }
                sqlx::query("DELETE FROM session WHERE impersonation_id = $1").bind(id).execute(&mut *tx).await.map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }
        }

        const PAT_COLUMNS: &str = "id, name, scope, owner_id, owner_email, owner_tenant_id, restrict_tenant_id, created_at, expires_at, last_used_at, revoked_at";

        fn pat_from_row(r: &DbRow) -> Result<PersonalAccessToken> {
            let scope: String = r.try_get("scope").map_err(db_err)?;
            Ok(PersonalAccessToken {
                id: r.try_get("id").map_err(db_err)?,
                name: r.try_get("name").map_err(db_err)?,
                scope: TokenScope::parse(&scope)?,
                owner_id: UserId(r.try_get("owner_id").map_err(db_err)?),
                owner_email: r.try_get("owner_email").map_err(db_err)?,
                owner_tenant_id: r.try_get::<Option<Uuid>, _>("owner_tenant_id").map_err(db_err)?.map(TenantId),
                restrict_tenant_id: r.try_get::<Option<Uuid>, _>("restrict_tenant_id").map_err(db_err)?.map(TenantId),
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                expires_at: dec_ts(r.try_get("expires_at").map_err(db_err)?),
                last_used_at: r.try_get::<Option<Ts>, _>("last_used_at").map_err(db_err)?.map(dec_ts),
                revoked_at: r.try_get::<Option<Ts>, _>("revoked_at").map_err(db_err)?.map(dec_ts),
            })
        }

        #[async_trait::async_trait]
        impl TokenStore for $Store {
            async fn create_pat(&self, pat: &PersonalAccessToken, hash: &TokenHash, event: NewEvent) -> Result<()> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                // A tenant user's token is a write in their tenant.
                if let Some(t) = pat.owner_tenant_id {
                    Self::check_writable_in(&mut tx, t).await?;
                }
                sqlx::query(
                    "INSERT INTO personal_access_token (id, token_hash, name, scope, owner_id, owner_email, owner_tenant_id, restrict_tenant_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(pat.id)
                .bind(hash.as_str())
                .bind(&pat.name)
                .bind(pat.scope.as_str())
                .bind(pat.owner_id.0)
                .bind(&pat.owner_email)
                .bind(pat.owner_tenant_id.map(|t| t.0))
                .bind(pat.restrict_tenant_id.map(|t| t.0))
                .bind(enc_ts(pat.created_at))
                .bind(enc_ts(pat.expires_at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            }

            async fn pats_of(&self, owner: UserId) -> Result<Vec<PersonalAccessToken>> {
                let sql = format!("SELECT {PAT_COLUMNS} FROM personal_access_token WHERE owner_id = $1 ORDER BY created_at DESC");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(owner.0).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter().map(pat_from_row).collect()
            }

            async fn pat_by_hash(&self, hash: &TokenHash) -> Result<Option<PersonalAccessToken>> {
                let sql = format!("SELECT {PAT_COLUMNS} FROM personal_access_token WHERE token_hash = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(hash.as_str()).fetch_optional(&self.pool).await.map_err(db_err)?;
                row.as_ref().map(pat_from_row).transpose()
            }

            async fn revoke_pat(&self, id: Uuid, owner: UserId, at: OffsetDateTime, event: NewEvent) -> Result<bool> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let done = sqlx::query("UPDATE personal_access_token SET revoked_at = $3 WHERE id = $1 AND owner_id = $2 AND revoked_at IS NULL")
                    .bind(id)
                    .bind(owner.0)
                    .bind(enc_ts(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            async fn touch_pat(&self, id: Uuid, at: OffsetDateTime) -> Result<()> {
                sqlx::query("UPDATE personal_access_token SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(enc_ts(at))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_store;
