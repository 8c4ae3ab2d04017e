#![allow(clippy::unwrap_used, reason = "tests unwrap")]
use super::*;
use crate::api_key::{ApiKey, TenantSnapshot};
use crate::ids::TenantId;
use crate::tenant::{PriorityTier, Region, TenantSlug, TenantStatus};

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn record(key: Uuid, tenant: Uuid, rpm: Option<u32>) -> KeyRecord {
    KeyRecord {
        key: ApiKey {
            id: key,
            tenant_id: TenantId(tenant),
            name: "ci".into(),
            scopes: vec!["read".into()],
            prefix: "qd_live_".into(),
            last_four: "abcd".into(),
            requests_per_minute: rpm,
            created_by: None,
            created_at: t0(),
            expires_at: None,
            last_used_at: None,
            rolled_at: None,
            revoked_at: None,
        },
        secret_not_after: None,
        tenant: TenantSnapshot {
            id: TenantId(tenant),
            slug: TenantSlug::parse("acme").unwrap(),
            status: TenantStatus::Active,
            tier: PriorityTier::Standard,
            region: Region::from_stored("eu-west".into()),
            deleted: false,
        },
        budget_block: None,
    }
}

fn change(seq: i64, kind: ChangeKind, subject: Uuid) -> DataPlaneChange {
    DataPlaneChange { seq, kind, subject }
}

async fn cached(v: &Verifier, secret: &str, key: Uuid, tenant: Uuid) -> Digest {
    let d = digest(secret);
    let (_slot, lookup) = v.lookup_slot().await.unwrap();
    v.remember_key(lookup, d, record(key, tenant, None), t0());
    d
}

#[tokio::test]
async fn nothing_is_served_from_the_cache_before_the_feed_was_read_or_once_it_is_800_ms_old() {
    let v = Verifier::new();
    let d = cached(&v, "qd_live_a", Uuid::from_u128(1), Uuid::from_u128(9)).await;
    assert!(v.cached_key(&d, t0()).is_none(), "feed never read");
    v.start_feed(0, t0());
    // The first read drops what was cached before it.
    assert!(v.cached_key(&d, t0()).is_none());
    let d = cached(&v, "qd_live_a", Uuid::from_u128(1), Uuid::from_u128(9)).await;
    assert!(v.cached_key(&d, t0() + Duration::milliseconds(800)).is_some());
    assert!(
        v.cached_key(&d, t0() + Duration::milliseconds(801)).is_none(),
        "the feed has not been read for more than 800 ms: no cached positive"
    );
    v.feed_read(t0() + Duration::milliseconds(700));
    assert!(v.cached_key(&d, t0() + Duration::milliseconds(900)).is_some());
    assert!(
        v.cached_key(&d, t0() + MAX_AGE + Duration::milliseconds(1)).is_none(),
        "too old whatever the feed says"
    );
}

#[tokio::test]
async fn a_change_drops_the_key_or_every_key_of_the_tenant() {
    let v = Verifier::new();
    v.start_feed(10, t0());
    let (k1, k2, k3) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
    let (ta, tb) = (Uuid::from_u128(100), Uuid::from_u128(200));
    let d1 = cached(&v, "qd_live_1", k1, ta).await;
    let d2 = cached(&v, "qd_live_2", k2, ta).await;
    let d3 = cached(&v, "qd_live_3", k3, tb).await;
    v.apply(&[change(11, ChangeKind::ApiKey, k1)]);
    assert!(v.cached_key(&d1, t0()).is_none());
    assert!(v.cached_key(&d2, t0()).is_some());
    v.apply(&[change(12, ChangeKind::Tenant, ta)]);
    assert!(v.cached_key(&d2, t0()).is_none());
    assert!(v.cached_key(&d3, t0()).is_some());
    assert_eq!(v.cursor(), Some(12));
}

#[tokio::test]
async fn a_lookup_that_raced_with_a_change_does_not_put_back_what_the_change_dropped() {
    let v = Verifier::new();
    v.start_feed(0, t0());
    let d = digest("qd_live_x");
    let (_slot, lookup) = v.lookup_slot().await.unwrap();
    // The database was read, then the revocation was applied before the insert.
    v.apply(&[change(1, ChangeKind::ApiKey, Uuid::from_u128(1))]);
    let entry = v.remember_key(lookup, d, record(Uuid::from_u128(1), Uuid::from_u128(9), None), t0());
    assert_eq!(entry.record.key.id, Uuid::from_u128(1), "the answer itself stands");
    assert!(v.cached_key(&d, t0()).is_none(), "but it is not cached");
}

#[tokio::test]
async fn unknown_keys_are_remembered_for_a_minute() {
    let v = Verifier::new();
    let d = digest("qd_live_nope");
    v.remember_unknown_key(d, t0());
    assert!(v.known_unknown_key(&d, t0() + Duration::seconds(59)));
    assert!(!v.known_unknown_key(&d, t0() + Duration::seconds(60)));
}

#[test]
fn a_full_cache_evicts_the_least_recently_used_of_a_sample() {
    let s: Shards<Unknown> = Shards::new(SHARDS * 4);
    for i in 0..10_000u32 {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d[0] = 7; // one shard
        s.insert_if(d, Unknown { until_ms: i64::from(i) }, || true);
    }
    assert_eq!(s.len(), 4, "bounded per shard");
    let newest = [7, 0, 0x27, 0x0f];
    let mut d = [0u8; 32];
    d[..4].copy_from_slice(&newest);
    assert!(s.get(&d).is_some(), "the last insert stays");
}

#[test]
fn only_well_formed_secrets_are_looked_up() {
    let key = "qd_live_abcdefghijklmnopqrstuvwxyz0123456789-_ABCDEFG";
    assert!(well_formed(&key[..51], 44, 63));
    assert!(!well_formed("qd_live_short", 44, 63));
    assert!(!well_formed(
        "qd_live_abcdefghijklmnopqrstuvwxyz0123456789 ABCDEFG",
        44,
        63
    ));
    assert!(!well_formed(&"a".repeat(64), 44, 63));
}

#[test]
fn touches_are_collected_once_per_key_per_flush() {
    let v = Verifier::new();
    let d = digest("qd_live_t");
    let e = v.remember_key(
        Lookup { epoch: 0 },
        d,
        record(Uuid::from_u128(5), Uuid::from_u128(9), None),
        t0(),
    );
    v.touch_key(&e);
    v.touch_key(&e);
    assert_eq!(v.take_touched().0, [Uuid::from_u128(5)]);
    assert!(v.take_touched().0.is_empty());
    v.touch_key(&e);
    assert_eq!(v.take_touched().0, [Uuid::from_u128(5)]);
}

#[tokio::test]
async fn a_flood_of_made_up_service_tokens_leaves_the_keys_lookup_slots_free() {
    let v = Verifier::new();
    let mut held = Vec::new();
    for _ in 0..MAX_TOKEN_LOOKUPS {
        held.push(v.token_lookup_slot().await.unwrap());
    }
    assert!(
        matches!(v.token_lookup_slot().await, Err(crate::Error::Busy)),
        "the tokens' slots are all taken"
    );
    let started = std::time::Instant::now();
    let key_slot = v.lookup_slot().await;
    assert!(key_slot.is_ok(), "a key's miss still gets a slot");
    assert!(started.elapsed() < LOOKUP_WAIT, "at once");
}
