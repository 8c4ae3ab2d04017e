//! Tenant connection pools: opened lazily, kept small, evicted when idle, capped overall.
//!
//! Thousands of tenants must not mean thousands of open files or connections: at most
//! `max_open` tenant pools exist at once (least recently used is closed first), each with at
//! most `connections_per_tenant` connections, and a pool unused for `idle` is closed.

use quarterdeck_domain::TenantId;
use sqlx::{Database, Pool};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    pub max_open: usize,
    pub connections_per_tenant: u32,
    pub idle: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_open: 64,
            connections_per_tenant: 2,
            idle: Duration::from_secs(300),
        }
    }
}

pub(crate) struct PoolCache<DB: Database> {
    limits: PoolLimits,
    pools: Mutex<HashMap<TenantId, (Pool<DB>, Instant)>>,
}

impl<DB: Database> PoolCache<DB> {
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            limits,
            pools: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// The tenant's pool, opening it with `open` if it is not cached.
    pub async fn get<F, Fut>(&self, id: TenantId, open: F) -> quarterdeck_domain::Result<Pool<DB>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = quarterdeck_domain::Result<Pool<DB>>>,
    {
        let mut pools = self.pools.lock().await;
        let now = Instant::now();
        if let Some((pool, used)) = pools.get_mut(&id) {
            *used = now;
            return Ok(pool.clone());
        }
        // Evict idle pools, then the least recently used ones while over the cap.
        let idle = self.limits.idle;
        let mut closing: Vec<Pool<DB>> = Vec::new();
        pools.retain(|_, (p, used)| {
            let keep = now.duration_since(*used) < idle;
            if !keep {
                closing.push(p.clone());
            }
            keep
        });
        while pools.len() >= self.limits.max_open.max(1) {
            let Some(oldest) = pools.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k) else {
                break;
            };
            if let Some((p, _)) = pools.remove(&oldest) {
                closing.push(p);
            }
        }
        let pool = open().await?;
        pools.insert(id, (pool.clone(), now));
        drop(pools);
        for p in closing {
            p.close().await;
        }
        Ok(pool)
    }

    /// Close and forget a tenant's pool (before its database is dropped).
    pub async fn remove(&self, id: TenantId) {
        let removed = self.pools.lock().await.remove(&id);
        if let Some((p, _)) = removed {
            p.close().await;
        }
    }

    pub async fn open_count(&self) -> usize {
        self.pools.lock().await.len()
    }
}
