//! Access decisions served from memory, always current.
//!
//! Per tenant the cache holds the compiled [`Policy`] (roles, department tree, catalog) and the
//! facts of the users asked about (state, department, roles). A committed change invalidates what
//! it touched before the writer is answered: `Db::write` reports the transaction's policy changes
//! after commit and [`AccessCache::apply`] drops the affected entries, so the next check on this
//! replica reloads them. A loader that raced with an invalidation never stores what it read: the
//! tenant entry is replaced on tenant-wide changes, and user entries are guarded by a generation
//! counter checked under the map's shard lock.
//!
//! The same invalidations keep a cache of user profiles (what GetUser answers): every store
//! function that writes a user's row or roles records a profile change in its transaction, so a
//! committed write drops the cached profile before the writer is answered; a profile-only change
//! (a login's last-login time) drops just the profile and leaves the access facts.
//!
//! Other replicas (PostgreSQL) hear the same changes through LISTEN/NOTIFY within milliseconds;
//! as a safety net every replica also polls the tenants' policy versions (default every second)
//! and flushes any tenant whose version moved past what it has seen, for example when a
//! notification was lost while its listener reconnected.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use dashmap::DashMap;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::{
    domain::{
        access::{Policy, ResourceFacts, Scope, UserFacts},
        tenant::Tenant,
        user::User,
    },
    store::{ChangeScope, PolicyChange, sessions::SessionFacts},
};

/// Tenants with at most this many users have every user's facts loaded with the policy, so
/// every lookup is answered from memory (an id that is not there is not a user of the tenant).
/// Users of larger tenants are cached one by one in the byte-weighed [`Bounded`] cache.
const PREFETCH_MAX_USERS: u64 = 100_000;

/// Cached sessions per tenant before the map is flushed.
const MAX_CACHED_SESSIONS: usize = 200_000;

/// Cached user profiles per tenant before the map is flushed.
const MAX_CACHED_PROFILES: usize = 50_000;

/// One user's facts, loaded once (concurrent lookups share the load). None: not a user here.
type UserCell = Arc<OnceCell<Option<Arc<UserFacts>>>>;

/// A record of the ownership registry, by tenant: (tenant, module, record id).
type OwnerKey = (Arc<str>, String, String);

/// A cached value of [`Bounded`], valid while its tenant entry's `epoch` is the one it was
/// loaded under (a tenant-wide flush makes every older value stale at once).
#[derive(Clone)]
struct Epoched<T> {
    epoch: u64,
    value: T,
}

/// What callers can make grow without bound: owners of any record id they ask about, users of a
/// large tenant by any id. Byte-weighed, evicted by W-TinyLFU (moka) within the configured budget,
/// so hot entries stay and a flood of one-off ids pushes out only itself.
struct Bounded {
    owners: BoundedCache<OwnerKey, Option<Uuid>>,
    users: BoundedCache<(Arc<str>, Uuid), Option<Arc<UserFacts>>>,
}

type BoundedCache<K, V> = moka::sync::Cache<K, Epoched<V>, foldhash::fast::RandomState>;

/// Per-entry bookkeeping of moka and our key/value headers (measured order of magnitude).
const ENTRY_OVERHEAD: usize = 160;

impl Bounded {
    fn new(budget_bytes: u64) -> Bounded {
        // Owners are the larger population (every record checked); users of large tenants the smaller.
        let weigh = |bytes: usize| u32::try_from(bytes + ENTRY_OVERHEAD).unwrap_or(u32::MAX);
        Bounded {
            owners: moka::sync::Cache::builder()
                .max_capacity(budget_bytes / 4 * 3)
                .weigher(move |k: &OwnerKey, _v: &Epoched<Option<Uuid>>| weigh(k.0.len() + k.1.len() + k.2.len()))
                .build_with_hasher(Default::default()),
            users: moka::sync::Cache::builder()
                .max_capacity(budget_bytes / 4)
                .weigher(move |k: &(Arc<str>, Uuid), v: &Epoched<Option<Arc<UserFacts>>>| {
                    weigh(k.0.len() + v.value.as_ref().map_or(0, |f| 64 + f.role_ids.len() * 16))
                })
                .build_with_hasher(Default::default()),
        }
    }
}

/// Epochs of tenant entries: every entry gets a new one, so values cached for an entry that was
/// dropped never match its successor.
static EPOCHS: AtomicU64 = AtomicU64::new(1);

fn next_epoch() -> u64 {
    EPOCHS.fetch_add(1, Ordering::Relaxed)
}

struct TenantEntry {
    /// This entry's epoch (see [`Epoched`]); the owners' epoch moves on a whole-registry flush.
    epoch: u64,
    owner_epoch: AtomicU64,
    policy: OnceCell<Arc<Policy>>,
    /// Whether `users` holds every user of the tenant (set by the prefetch).
    complete: std::sync::atomic::AtomicBool,
    users: DashMap<Uuid, UserCell, foldhash::fast::RandomState>,
    /// Bumped by every user invalidation; a prefetch that saw it move stores nothing.
    generation: AtomicU64,
    /// Bumped by every ownership change; a lookup that saw it move stores nothing.
    owner_generation: AtomicU64,
    /// Login sessions asked about (by access-token checks); flushed with their user's facts.
    sessions: DashMap<Uuid, SessionFacts, foldhash::fast::RandomState>,
    /// The tenant's row (settings, state; seats not counted), read by logins, refreshes, password
    /// policy and MFA checks, and by reads that check the tenant exists (a tenant that does not
    /// exist is not cached). Every tenant update is a tenant-wide policy change, which drops it.
    tenant: OnceCell<Arc<Tenant>>,
    /// Profiles asked for by GetUser, loaded once (concurrent requests share the load). An
    /// invalidation removes the cell; a load still running fills a cell nobody can reach.
    profiles: DashMap<Uuid, ProfileCell, foldhash::fast::RandomState>,
}

type ProfileCell = Arc<OnceCell<Arc<User>>>;

impl TenantEntry {
    fn new() -> Arc<TenantEntry> {
        let epoch = next_epoch();
        Arc::new(TenantEntry {
            epoch,
            owner_epoch: AtomicU64::new(epoch),
            policy: OnceCell::new(),
            complete: std::sync::atomic::AtomicBool::new(false),
            users: DashMap::default(),
            generation: AtomicU64::new(0),
            owner_generation: AtomicU64::new(0),
            sessions: DashMap::default(),
            tenant: OnceCell::new(),
            profiles: DashMap::default(),
        })
    }
}

/// The in-memory access cache of one replica.
pub struct AccessCache {
    tenants: DashMap<String, Arc<TenantEntry>, foldhash::fast::RandomState>,
    /// Bumped by every tenant-wide flush: an entry made from a read that raced with one is not kept.
    tenant_flushes: AtomicU64,
    bounded: Bounded,
    /// Highest policy version seen per tenant (from local commits and notifications).
    seen: DashMap<String, i64, foldhash::fast::RandomState>,
    pub stats: CacheStats,
}

/// Counters of the access cache (exported as metrics).
#[derive(Default, Debug)]
pub struct CacheStats {
    pub user_hits: AtomicU64,
    pub user_misses: AtomicU64,
    pub policy_loads: AtomicU64,
    pub owner_hits: AtomicU64,
    pub owner_misses: AtomicU64,
    /// Loads not stored because an invalidation raced with them.
    pub stale_loads: AtomicU64,
    pub invalidations: AtomicU64,
    pub profile_hits: AtomicU64,
    pub profile_misses: AtomicU64,
}

impl Default for AccessCache {
    fn default() -> Self {
        AccessCache::new(DEFAULT_BUDGET)
    }
}

/// The default of `access_cache_budget`.
pub const DEFAULT_BUDGET: u64 = 256 * 1024 * 1024;

impl AccessCache {
    /// A cache whose caller-driven parts (record owners, users of large tenants) hold at most
    /// `budget_bytes`.
    pub fn new(budget_bytes: u64) -> AccessCache {
        AccessCache {
            tenants: DashMap::default(),
            tenant_flushes: AtomicU64::new(0),
            bounded: Bounded::new(budget_bytes),
            seen: DashMap::default(),
            stats: CacheStats::default(),
        }
    }

    /// Bytes held by the bounded parts (owners, users of large tenants), as weighed.
    pub fn bounded_bytes(&self) -> u64 {
        self.bounded.owners.run_pending_tasks();
        self.bounded.users.run_pending_tasks();
        self.bounded.owners.weighted_size() + self.bounded.users.weighted_size()
    }

    /// Tenants with an entry.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// The cached entry of a tenant, if any.
    fn cached(&self, tenant_id: &str) -> Option<Arc<TenantEntry>> {
        self.tenants.get(tenant_id).map(|e| e.clone())
    }

    /// Drops everything cached for a tenant.
    pub fn invalidate_tenant(&self, tenant_id: &str) {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        self.tenant_flushes.fetch_add(1, Ordering::SeqCst);
        self.tenants.remove(tenant_id);
    }

    /// Drops one user's cached facts: the next lookup loads them again. A load still running
    /// from before fills a cell nobody can reach any more.
    pub fn invalidate_user(&self, tenant_id: &str, user_id: Uuid) {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        self.bounded.users.invalidate(&(Arc::from(tenant_id), user_id));
        if let Some(e) = self.tenants.get(tenant_id) {
            e.generation.fetch_add(1, Ordering::SeqCst);
            if e.complete.load(Ordering::SeqCst) {
                // Every user stays in the map (an id not there is not a user): load this one again.
                e.users.insert(user_id, Arc::new(OnceCell::new()));
            } else {
                e.users.remove(&user_id);
            }
            e.sessions.retain(|_, s| s.user_id != user_id);
            e.profiles.remove(&user_id);
        }
    }

    /// Drops one user's cached profile (a change that does not touch their access).
    pub fn invalidate_profile(&self, tenant_id: &str, user_id: Uuid) {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.tenants.get(tenant_id) {
            e.profiles.remove(&user_id);
        }
    }

    /// Drops the cached owners of a tenant's records (they go stale at once, and are evicted
    /// from the bounded cache in time).
    pub fn invalidate_owners(&self, tenant_id: &str) {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.tenants.get(tenant_id) {
            e.owner_generation.fetch_add(1, Ordering::SeqCst);
            e.owner_epoch.store(next_epoch(), Ordering::SeqCst);
        }
    }

    /// Drops the cached owners of some records (a local commit that knows what it changed).
    pub fn invalidate_owner_keys(&self, tenant_id: &str, keys: &[(String, String)]) {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.tenants.get(tenant_id) {
            // Lookups already running may have read an old owner: they store nothing.
            e.owner_generation.fetch_add(1, Ordering::SeqCst);
            let tenant: Arc<str> = tenant_id.into();
            for (module, resource_id) in keys {
                self.bounded.owners.invalidate(&(tenant.clone(), module.clone(), resource_id.clone()));
            }
        }
    }

    /// Drops everything (used when notifications may have been missed).
    pub fn clear(&self) {
        self.tenant_flushes.fetch_add(1, Ordering::SeqCst);
        self.tenants.clear();
        self.bounded.owners.invalidate_all();
        self.bounded.users.invalidate_all();
    }

    /// Applies committed changes (local or announced by another replica).
    pub fn apply(&self, changes: &[PolicyChange]) {
        for c in changes {
            match c.scope {
                ChangeScope::User(u) => self.invalidate_user(&c.tenant_id, u),
                ChangeScope::Profile(u) => {
                    // Profile changes leave the policy version as it is: nothing to record as seen.
                    self.invalidate_profile(&c.tenant_id, u);
                    continue;
                }
                ChangeScope::Tenant => self.invalidate_tenant(&c.tenant_id),
                ChangeScope::Owners => match &c.owner_keys {
                    Some(keys) => self.invalidate_owner_keys(&c.tenant_id, keys),
                    None => self.invalidate_owners(&c.tenant_id),
                },
            }
            let mut seen = self.seen.entry(c.tenant_id.clone()).or_insert(0);
            if c.version > *seen {
                *seen = c.version;
            }
        }
    }

    /// From a poll of stored versions: flushes tenants that changed without us hearing of it.
    pub fn reconcile(&self, versions: &[(String, i64)]) -> usize {
        let mut flushed = 0;
        for (tenant_id, version) in versions {
            let mut seen = self.seen.entry(tenant_id.clone()).or_insert(*version);
            if *version > *seen {
                *seen = *version;
                drop(seen);
                self.invalidate_tenant(tenant_id);
                flushed += 1;
            }
        }
        flushed
    }
}

mod decisions;
mod loaders;

pub use decisions::{BatchCheckQuery, CheckQuery, MAX_BATCH};
pub use loaders::compile_policy;

/// A module/action to check, already parsed.
#[derive(Debug, Clone)]
pub struct CheckInput {
    pub user_id: Uuid,
    pub module: String,
    pub action: String,
    pub resource: ResourceFacts,
}

/// A user's rights, for sibling services that filter list queries.
#[derive(Debug, Clone)]
pub struct Effective {
    pub user_id: Uuid,
    pub active: bool,
    /// (module, action) → (scope, roles granting it at that scope)
    pub permissions: Vec<(String, String, Scope, Vec<Uuid>)>,
    /// The user's department and every department below it.
    pub department_ids: Vec<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_flushes_only_tenants_that_moved() {
        let cache = AccessCache::default();
        cache.apply(&[PolicyChange {
            tenant_id: "a".into(),
            scope: ChangeScope::Tenant,
            version: 3,
            owner_keys: None,
        }]);
        cache.tenants.insert("a".into(), TenantEntry::new());
        cache.tenants.insert("b".into(), TenantEntry::new());
        assert_eq!(cache.reconcile(&[("a".into(), 3), ("b".into(), 7)]), 0, "first sight of b sets its baseline");
        assert!(cache.tenants.contains_key("a") && cache.tenants.contains_key("b"));
        assert_eq!(cache.reconcile(&[("a".into(), 4), ("b".into(), 7)]), 1);
        assert!(!cache.tenants.contains_key("a") && cache.tenants.contains_key("b"));
    }

    #[test]
    fn user_invalidation_replaces_the_cell() {
        let cache = AccessCache::default();
        let e = TenantEntry::new();
        e.complete.store(true, Ordering::SeqCst);
        cache.tenants.insert("a".into(), e.clone());
        let u = Uuid::now_v7();
        let old: UserCell = Arc::new(OnceCell::new_with(Some(None)));
        e.users.insert(u, old.clone());
        cache.invalidate_user("a", u);
        let new = e.users.get(&u).unwrap().clone();
        assert!(!Arc::ptr_eq(&old, &new) && new.get().is_none(), "the next lookup loads again");
        assert_eq!(e.generation.load(Ordering::SeqCst), 1);
    }
}
