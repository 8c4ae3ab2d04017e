//! The single sign-on tables, for both backends (see `sql.rs`; invoked beside `impl_store!`,
//! whose helpers and imports it uses).

macro_rules! impl_sso_store {
    ($Store:ty, $Db:ty) => {
        use quarterdeck_domain::sso::{
            ExternalLogin, IdentityProvider, ProtocolSettings, SignInMode, SsoAttempt,
        };
        use quarterdeck_domain::store::SsoStore;

        const PROVIDER_COLUMNS: &str = "id, tenant_id, display_name, mode, auto_provision, default_roles, \
             default_tenant_id, settings, sealed_secret, created_at, updated_at";

        fn provider_from_row(r: &DbRow) -> Result<IdentityProvider> {
            let Json(settings): Json<ProtocolSettings> = r.try_get("settings").map_err(db_err)?;
            let Json(default_roles): Json<Vec<String>> = r.try_get("default_roles").map_err(db_err)?;
            let mode: String = r.try_get("mode").map_err(db_err)?;
            Ok(IdentityProvider {
                id: r.try_get("id").map_err(db_err)?,
                tenant_id: r.try_get::<Option<Uuid>, _>("tenant_id").map_err(db_err)?.map(TenantId),
                display_name: r.try_get("display_name").map_err(db_err)?,
                mode: SignInMode::parse(&mode).map_err(|_| Error::internal(format!("unknown sign-in mode {mode:?}")))?,
                auto_provision: r.try_get("auto_provision").map_err(db_err)?,
                default_roles,
                default_tenant_id: r
                    .try_get::<Option<Uuid>, _>("default_tenant_id")
                    .map_err(db_err)?
                    .map(TenantId),
                settings,
                sealed_secret: r.try_get("sealed_secret").map_err(db_err)?,
                created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                updated_at: dec_ts(r.try_get("updated_at").map_err(db_err)?),
            })
        }

        async fn insert_identity(
            conn: &mut <$Db as sqlx::Database>::Connection,
            user: UserId,
            provider: Uuid,
            login: &ExternalLogin,
            at: OffsetDateTime,
        ) -> Result<()> {
            sqlx::query(
                "INSERT INTO user_identity (issuer, subject, user_id, provider_id, created_at, last_sign_in_at) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(&login.issuer)
            .bind(&login.subject)
            .bind(user.0)
            .bind(provider)
            .bind(enc_ts(at))
            .execute(conn)
            .await
            .map_err(db_err)?;
            Ok(())
        }

        #[async_trait::async_trait]
        impl SsoStore for $Store {
            async fn put_identity_provider(&self, p: &IdentityProvider, event: NewEvent) -> Result<()> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                sqlx::query("DELETE FROM identity_provider WHERE scope_key = $1")
                    .bind(quarterdeck_domain::sso::scope_key(p.directory()))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO identity_provider (id, scope_key, tenant_id, protocol, display_name, mode, auto_provision, \
                     default_roles, default_tenant_id, settings, sealed_secret, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(p.id)
                .bind(quarterdeck_domain::sso::scope_key(p.directory()))
                .bind(p.tenant_id.map(|t| t.0))
                .bind(p.protocol().as_str())
                .bind(&p.display_name)
                .bind(p.mode.as_str())
                .bind(p.auto_provision)
                .bind(Json(&p.default_roles))
                .bind(p.default_tenant_id.map(|t| t.0))
                .bind(Json(&p.settings))
                .bind(p.sealed_secret.as_deref())
                .bind(enc_ts(p.created_at))
                .bind(enc_ts(p.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            }

            async fn identity_provider(&self, dir: Directory) -> Result<Option<IdentityProvider>> {
                let sql = format!("SELECT {PROVIDER_COLUMNS} FROM identity_provider WHERE scope_key = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(quarterdeck_domain::sso::scope_key(dir))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(provider_from_row).transpose()
            }

            async fn delete_identity_provider(&self, dir: Directory, event: NewEvent) -> Result<bool> {
                let (mut tx, _writer) = self.begin_audited(&event).await?;
                let done = sqlx::query("DELETE FROM identity_provider WHERE scope_key = $1")
                    .bind(quarterdeck_domain::sso::scope_key(dir))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            async fn put_sso_attempt(&self, a: &SsoAttempt, max_pending: u64) -> Result<bool> {
                // The cap is per identity provider (so per directory): filling one tenant's
                // cannot stop another's sign-ins. Checked, then the row written: concurrent
                // starts may overshoot it by the requests in flight, which the per-address
                // limit bounds.
                let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM sso_attempt WHERE expires_at > $1 AND provider_id = $2")
                    .bind(enc_ts(a.created_at))
                    .bind(a.provider_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?;
                if u64::try_from(pending).unwrap_or(0) >= max_pending {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO sso_attempt (state_hash, provider_id, tenant_id, binding_hash, nonce, pkce_verifier, \
                     saml_request_id, outcome, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(a.state_hash.as_str())
                .bind(a.provider_id)
                .bind(a.tenant_id.map(|t| t.0))
                .bind(a.binding_hash.as_str())
                .bind(&a.nonce)
                .bind(&a.pkce_verifier)
                .bind(a.saml_request_id.as_deref())
                .bind(a.outcome.as_ref().map(Json))
                .bind(enc_ts(a.created_at))
                .bind(enc_ts(a.expires_at))
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(true)
            }

            async fn take_sso_attempt(&self, state: &TokenHash, now: OffsetDateTime) -> Result<Option<SsoAttempt>> {
                // DELETE … RETURNING: of concurrent answers with one state, one gets the row.
                let row = sqlx::query(
                    "DELETE FROM sso_attempt WHERE state_hash = $1 RETURNING state_hash, provider_id, tenant_id, \
                     binding_hash, nonce, pkce_verifier, saml_request_id, outcome, created_at, expires_at",
                )
                .bind(state.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                let Some(r) = row else { return Ok(None) };
                let expires_at = dec_ts(r.try_get("expires_at").map_err(db_err)?);
                if expires_at <= now {
                    return Ok(None);
                }
                let outcome: Option<Json<ExternalLogin>> = r.try_get("outcome").map_err(db_err)?;
                Ok(Some(SsoAttempt {
                    state_hash: TokenHash(r.try_get("state_hash").map_err(db_err)?),
                    provider_id: r.try_get("provider_id").map_err(db_err)?,
                    tenant_id: r.try_get::<Option<Uuid>, _>("tenant_id").map_err(db_err)?.map(TenantId),
                    binding_hash: TokenHash(r.try_get("binding_hash").map_err(db_err)?),
                    nonce: r.try_get("nonce").map_err(db_err)?,
                    pkce_verifier: r.try_get("pkce_verifier").map_err(db_err)?,
                    saml_request_id: r.try_get("saml_request_id").map_err(db_err)?,
                    outcome: outcome.map(|Json(o)| o),
                    created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                    expires_at,
                }))
            }

            async fn record_assertion_id(&self, provider: Uuid, id: &str, expires_at: OffsetDateTime) -> Result<bool> {
                let done = sqlx::query(
                    "INSERT INTO saml_assertion_seen (provider_id, assertion_id, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (provider_id, assertion_id) DO NOTHING",
                )
                .bind(provider)
                .bind(id)
                .bind(enc_ts(expires_at))
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn user_by_identity(
                &self,
                dir: Directory,
                issuer: &str,
                subject: &str,
                provider: Option<Uuid>,
            ) -> Result<Option<User>> {
                let pool = self.dir_pool(dir).await?;
                let sql = format!(
                    "SELECT {} FROM app_user u JOIN user_identity i ON i.user_id = u.id \
                     WHERE i.issuer = $1 AND i.subject = $2 AND ($3 IS NULL OR i.provider_id = $3)",
                    USER_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect::<Vec<_>>().join(", ")
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(issuer)
                    .bind(subject)
                    .bind(provider)
                    .fetch_optional(&*pool)
                    .await
                    .map_err(db_err)?;
                match row {
                    None => Ok(None),
                    Some(r) => Ok(Some(user_from_row(&pool, dir, &r).await?)),
                }
            }

            async fn link_identity(
                &self,
                dir: Directory,
                user: UserId,
                provider: Uuid,
                login: &ExternalLogin,
                at: OffsetDateTime,
                event: NewEvent,
            ) -> Result<()> {
                let mut tx = self.begin_dir(dir, std::slice::from_ref(&event)).await?;
                insert_identity(tx.users(), user, provider, login, at).await?;
                // Only an invited or active user is linked; a suspension that landed meanwhile wins.
                let done = sqlx::query(
                    "UPDATE app_user SET status = 'ACTIVE', updated_at = $2 WHERE id = $1 AND status IN ('INVITED', 'ACTIVE')",
                )
                .bind(user.0)
                .bind(enc_ts(at))
                .execute(tx.users())
                .await
                .map_err(db_err)?;
                if done.rows_affected() != 1 {
                    return Err(Error::NotFound);
                }
                sqlx::query("UPDATE invitation SET spent_at = $2 WHERE user_id = $1 AND spent_at IS NULL")
                    .bind(user.0)
                    .bind(enc_ts(at))
                    .execute(tx.users())
                    .await
                    .map_err(db_err)?;
                tx.cancel_pending(user).await?;
                tx.commit().await
            }

            async fn provision_user(&self, user: &User, provider: Uuid, login: &ExternalLogin, event: NewEvent) -> Result<()> {
                self.insert_user_with(user, None, None, Some((provider, login)), event).await
            }

            async fn touch_identity(&self, dir: Directory, issuer: &str, subject: &str, at: OffsetDateTime) -> Result<()> {
                let pool = self.dir_pool(dir).await?;
                sqlx::query("UPDATE user_identity SET last_sign_in_at = $3 WHERE issuer = $1 AND subject = $2")
                    .bind(issuer)
                    .bind(subject)
                    .bind(enc_ts(at))
                    .execute(&*pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn delete_expired_sso(&self, now: OffsetDateTime) -> Result<u64> {
                let mut n = 0;
                for table in ["sso_attempt", "saml_assertion_seen"] {
                    let sql = format!("DELETE FROM {table} WHERE expires_at <= $1");
                    n += sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(enc_ts(now))
                        .execute(&self.pool)
                        .await
                        .map_err(db_err)?
                        .rows_affected();
                }
                Ok(n)
            }
        }
    };
}

pub(crate) use impl_sso_store;
