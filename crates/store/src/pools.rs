//! Tenant connection pools: opened lazily, kept small, evicted when idle, capped overall, and
//! kept within a budget of connection slots.
//!
//! Thousands of tenants must not mean thousands of open files or connections. Every tenant pool
//! holds one slot of a semaphore shared by all tenant pools for as long as it exists, and opens
//! at most `connections_per_pool` connections (on PostgreSQL: one, so slots are connections).
//! A pool in use is *leased* ([`TenantPool`]); a pool nobody leases may be closed at any time to
//! give its slot to another tenant (the least recently used first), and is closed anyway once
//! unused for `idle` (a background task looks every half `idle`, at most every second). A slot
//! is given back only once the pool's connections are gone on the server too (PostgreSQL: their
//! backends have left `pg_stat_activity`, see [`Retire`]), so the budget holds on the server's
//! side, not only on ours. At most `max_open` pools exist. A caller that finds no slot free and no
//! pool to close waits for one up to `wait`, then gets [`Error::Busy`] (503 with `Retry-After`),
//! never the driver's own pool timeout.

use quarterdeck_domain::TenantId;
use quarterdeck_domain::error::{Error, Result};
use sqlx::{Database, Pool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    /// Most tenant pools open at once.
    pub max_open: usize,
    /// A tenant pool unused this long is closed.
    pub idle: Duration,
    /// PostgreSQL: the most connections Quarterdeck opens to the cluster, the control pool's
    /// and every tenant pool's together (`database_max_connections`).
    pub max_connections: u32,
    /// How long a request waits for a free connection slot before it is refused as busy.
    pub wait: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_open: 64,
            idle: Duration::from_secs(300),
            max_connections: 20,
            wait: Duration::from_secs(5),
        }
    }
}

impl PoolLimits {
    /// PostgreSQL: how the budget is split: (control pool connections, tenant slots). The
    /// control pool gets two fifths (at least 2), the tenant pools the rest (at least 1).
    pub fn pg_split(&self) -> (u32, usize) {
        let total = self.max_connections.max(3);
        let control = (total * 2 / 5).max(2);
        let tenants = total.saturating_sub(control).max(1);
        (control, usize::try_from(tenants).unwrap_or(1))
    }
}

/// The server-side ids of a pool's connections (PostgreSQL backend pids), recorded as they open.
pub(crate) type Backends = Arc<Mutex<Vec<i32>>>;

/// Waits until the given backends have ended on the server (PostgreSQL); called after a pool
/// is closed and before its slot is given back.
pub(crate) type Retire = Arc<dyn Fn(Vec<i32>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Entry<DB: Database> {
    pool: Pool<DB>,
    backends: Backends,
    /// This pool's slot, given back when the pool is closed.
    slot: OwnedSemaphorePermit,
    leases: usize,
    used: Instant,
    generation: u64,
}

struct Shared<DB: Database> {
    pools: Mutex<HashMap<TenantId, Entry<DB>>>,
    /// Signalled whenever a lease ends or a slot is given back.
    released: Notify,
    retire: Option<Retire>,
}

impl<DB: Database> Shared<DB> {
    /// Close a pool taken out of the map; its slot is free once its backends are gone.
    async fn close(&self, e: Entry<DB>) -> OwnedSemaphorePermit {
        e.pool.close().await;
        if let Some(retire) = &self.retire {
            let pids = std::mem::take(&mut *e.backends.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            if !pids.is_empty() {
                retire(pids).await;
            }
        }
        e.slot
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, Entry<DB>>> {
        // A panic while holding this lock leaves the map consistent (no invariant spans it).
        self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) struct PoolCache<DB: Database> {
    limits: PoolLimits,
    slots: Arc<Semaphore>,
    shared: Arc<Shared<DB>>,
    next_generation: std::sync::atomic::AtomicU64,
}

/// A pool in use: a tenant's (leased: it is not closed while this lives) or the control
/// database's. Derefs to the pool.
pub struct TenantPool<DB: Database> {
    pool: Pool<DB>,
    lease: Option<Lease<DB>>,
}

struct Lease<DB: Database> {
    id: TenantId,
    generation: u64,
    shared: Arc<Shared<DB>>,
}

impl<DB: Database> TenantPool<DB> {
    /// The control database's pool (nothing to lease).
    pub(crate) fn unleased(pool: Pool<DB>) -> Self {
        Self { pool, lease: None }
    }
}

impl<DB: Database> std::ops::Deref for TenantPool<DB> {
    type Target = Pool<DB>;
    fn deref(&self) -> &Pool<DB> {
        &self.pool
    }
}

impl<DB: Database> Drop for TenantPool<DB> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            {
                let mut pools = lease.shared.lock();
                if let Some(e) = pools.get_mut(&lease.id)
                    && e.generation == lease.generation
                {
                    e.leases = e.leases.saturating_sub(1);
                    e.used = Instant::now();
                }
            }
            lease.shared.released.notify_waiters();
        }
    }
}

impl<DB: Database> PoolCache<DB> {
    /// `slots`: how many tenant pools may exist at once within the connection budget;
    /// `retire`: how to wait for closed connections to be gone on the server.
    pub fn new(limits: PoolLimits, slots: usize, retire: Option<Retire>) -> Self {
        let shared = Arc::new(Shared {
            pools: Mutex::new(HashMap::new()),
            released: Notify::new(),
            retire,
        });
        // Close pools unused for `idle` even when nobody asks for a slot.
        let weak = Arc::downgrade(&shared);
        let every = (limits.idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let now = Instant::now();
                let stale: Vec<Entry<DB>> = {
                    let mut pools = shared.lock();
                    let ids: Vec<TenantId> = pools
                        .iter()
                        .filter(|(_, e)| e.leases == 0 && now.duration_since(e.used) >= limits.idle)
                        .map(|(k, _)| *k)
                        .collect();
                    ids.into_iter().filter_map(|k| pools.remove(&k)).collect()
                };
                for e in stale {
                    drop(shared.close(e).await);
                    shared.released.notify_waiters();
                }
            }
        });
        Self {
            limits,
            slots: Arc::new(Semaphore::new(slots.max(1))),
            shared,
            next_generation: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The tenant's pool, leased; opened with `open` (which must not connect: pools are lazy)
    /// if it is not cached. Waits up to `limits.wait` for a slot, then fails with `Busy`.
    /// `open` gets the list where the pool records its connections' backend ids.
    pub async fn get<F>(&self, id: TenantId, open: F) -> Result<TenantPool<DB>>
    where
        F: Fn(Backends) -> Pool<DB>,
    {
        let deadline = tokio::time::Instant::now() + self.limits.wait;
        loop {
            let released = self.shared.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let mut closing: Vec<Entry<DB>> = Vec::new();
            let mut slot = None;
            {
                let mut pools = self.shared.lock();
                let now = Instant::now();
                if let Some(e) = pools.get_mut(&id) {
                    e.leases += 1;
                    e.used = now;
                    return Ok(self.lease(id, e));
                }
                // Pools unused for `idle` are closed whoever asks.
                let idle = self.limits.idle;
                let stale: Vec<TenantId> = pools
                    .iter()
                    .filter(|(_, e)| e.leases == 0 && now.duration_since(e.used) >= idle)
                    .map(|(k, _)| *k)
                    .collect();
                for k in stale {
                    closing.extend(pools.remove(&k));
                }
                // Room for one more pool: under `max_open`, and a slot free or freed by closing
                // the least recently used pool nobody leases.
                let mut room = pools.len() < self.limits.max_open.max(1);
                if !room {
                    closing.extend(take_lru_unleased(&mut pools));
                    room = pools.len() < self.limits.max_open.max(1);
                }
                if room {
                    slot = self.slots.clone().try_acquire_owned().ok();
                    if slot.is_none() && closing.is_empty() {
                        closing.extend(take_lru_unleased(&mut pools));
                    }
                }
            }
            // Close outside the lock; a closed pool's slot goes to this caller, or back.
            for e in closing {
                let freed = self.shared.close(e).await;
                if slot.is_none() {
                    slot = Some(freed);
                } else {
                    drop(freed);
                    self.shared.released.notify_waiters();
                }
            }
            if let Some(slot) = slot {
                let mut pools = self.shared.lock();
                if let Some(e) = pools.get_mut(&id) {
                    // Someone opened it meanwhile: use theirs, give the slot back.
                    e.leases += 1;
                    e.used = Instant::now();
                    let lease = self.lease(id, e);
                    drop(pools);
                    drop(slot);
                    self.shared.released.notify_waiters();
                    return Ok(lease);
                }
                if pools.len() < self.limits.max_open.max(1) {
                    let generation = self.next_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let backends = Backends::default();
                    let e = pools.entry(id).or_insert(Entry {
                        pool: open(backends.clone()),
                        backends,
                        slot,
                        leases: 1,
                        used: Instant::now(),
                        generation,
                    });
                    return Ok(self.lease(id, e));
                }
                drop(pools);
                drop(slot);
                self.shared.released.notify_waiters();
                continue;
            }
            // Every slot is in use by a leased pool: wait for a lease to end, up to the deadline.
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                tracing::warn!(
                    tenant_id = %id,
                    "no database connection free within the budget (database_max_connections); refusing as busy"
                );
                return Err(Error::Busy);
            }
        }
    }

    fn lease(&self, id: TenantId, e: &Entry<DB>) -> TenantPool<DB> {
        TenantPool {
            pool: e.pool.clone(),
            lease: Some(Lease {
                id,
                generation: e.generation,
                shared: self.shared.clone(),
            }),
        }
    }

    /// Close and forget a tenant's pool (before its database is dropped).
    pub async fn remove(&self, id: TenantId) {
        let removed = self.shared.lock().remove(&id);
        if let Some(e) = removed {
            drop(self.shared.close(e).await);
            self.shared.released.notify_waiters();
        }
    }

    /// Whether the tenant's pool is open now.
    pub fn is_open(&self, id: TenantId) -> bool {
        self.shared.lock().contains_key(&id)
    }

    pub fn open_count(&self) -> usize {
        self.shared.lock().len()
    }
}

/// Remove the least recently used pool that nobody leases, if any.
fn take_lru_unleased<DB: Database>(pools: &mut HashMap<TenantId, Entry<DB>>) -> Option<Entry<DB>> {
    let oldest = pools
        .iter()
        .filter(|(_, e)| e.leases == 0)
        .min_by_key(|(_, e)| e.used)
        .map(|(k, _)| *k)?;
    pools.remove(&oldest)
}
