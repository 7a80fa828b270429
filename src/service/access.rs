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

use super::Iam;
use crate::{
    domain::{
        Result, Violations,
        access::{Decision, Policy, ResourceFacts, Scope, UserFacts},
        tenant::Tenant,
        user::User,
    },
    store::{
        ChangeScope, PolicyChange, departments, ownership, roles,
        sessions::{self, SessionFacts},
        tenants, users,
    },
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

/// Reads and compiles a tenant's rules (catalog, roles, department tree) through `conn`: the
/// pool for the cache, or a transaction when a write must decide on current rules.
pub async fn compile_policy(conn: &impl crate::store::Conn, tenant_id: &str) -> Result<Policy> {
    tenants::get_settings(conn, tenant_id).await?;
    let catalog = roles::catalog(conn, tenant_id).await?;
    let mut policy = Policy::new(&catalog);
    for row in roles::all(conn, tenant_id).await? {
        let permissions = roles::permissions(&row, &catalog)?;
        policy.add_role(row.role_id, row.name, &permissions);
    }
    for d in departments::all(conn, tenant_id).await? {
        policy.parents.insert(d.department_id, d.parent_department_id);
        policy.department_names.insert(d.department_id, d.name);
    }
    Ok(policy)
}

impl Iam {
    /// The cache entry of an existing tenant, made (with the tenant's row) on first use. A tenant
    /// that does not exist gets none (TENANT_NOT_FOUND): ids nobody has cost nothing to keep.
    async fn tenant_entry(&self, tenant_id: &str) -> Result<Arc<TenantEntry>> {
        if let Some(e) = self.access.cached(tenant_id) {
            return Ok(e);
        }
        let flushes = self.access.tenant_flushes.load(Ordering::SeqCst);
        let tenant = tenants::get_settings(self.db.conn(), tenant_id).await?;
        let entry = TenantEntry::new();
        let _ = entry.tenant.set(Arc::new(tenant));
        if self.access.tenant_flushes.load(Ordering::SeqCst) != flushes {
            // A flush raced with the read: use it once, keep nothing.
            return Ok(entry);
        }
        Ok(self.access.tenants.entry(tenant_id.to_owned()).or_insert(entry).clone())
    }

    /// The compiled policy of a tenant (loaded once per invalidation; concurrent callers share the load).
    async fn policy(&self, tenant: &TenantEntry, tenant_id: &str) -> Result<Arc<Policy>> {
        tenant.policy.get_or_try_init(|| self.load_policy(tenant, tenant_id)).await.cloned()
    }

    /// Loads the tenant's rules and, for tenants of up to [`PREFETCH_MAX_USERS`], every user's facts.
    async fn load_policy(&self, tenant: &TenantEntry, tenant_id: &str) -> Result<Arc<Policy>> {
        self.access.stats.policy_loads.fetch_add(1, Ordering::Relaxed);
        let conn = self.db.conn();
        let policy = compile_policy(conn, tenant_id).await?;

        let generation = tenant.generation.load(Ordering::SeqCst);
        if users::count_in_tenant(conn, tenant_id).await? <= PREFETCH_MAX_USERS {
            let all = users::facts_of_tenant(conn, tenant_id).await?;
            let mut role_ids = roles::of_tenant_users(conn, tenant_id).await?;
            // Store only if no user changed while we read; otherwise users load one by one.
            if tenant.generation.load(Ordering::SeqCst) == generation {
                for (user_id, state, department_id) in all {
                    let facts =
                        UserFacts { state, department_id, role_ids: role_ids.remove(&user_id).unwrap_or_default() };
                    tenant
                        .users
                        .entry(user_id)
                        .or_insert_with(|| Arc::new(OnceCell::new_with(Some(Some(Arc::new(facts))))));
                }
                tenant.complete.store(tenant.generation.load(Ordering::SeqCst) == generation, Ordering::SeqCst);
            }
        }
        Ok(Arc::new(policy))
    }

    /// A user's facts (None: not a user of this tenant).
    async fn user_facts(&self, tenant: &TenantEntry, tenant_id: &str, user_id: Uuid) -> Result<Option<Arc<UserFacts>>> {
        if let Some(cell) = tenant.users.get(&user_id).map(|c| c.clone()) {
            // Prefetched (tenants of up to PREFETCH_MAX_USERS users), or reloaded after a change.
            if let Some(facts) = cell.get() {
                self.access.stats.user_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(facts.clone());
            }
            return self.load_user_cell(&cell, tenant_id, user_id).await;
        }
        if tenant.complete.load(Ordering::SeqCst) {
            self.access.stats.user_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        // A large tenant: users one by one, in the byte-bounded cache.
        let key = (Arc::<str>::from(tenant_id), user_id);
        if let Some(hit) = self.access.bounded.users.get(&key).filter(|e| e.epoch == tenant.epoch) {
            self.access.stats.user_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit.value);
        }
        self.access.stats.user_misses.fetch_add(1, Ordering::Relaxed);
        let generation = tenant.generation.load(Ordering::SeqCst);
        let facts = self.read_user_facts(tenant_id, user_id).await?;
        if tenant.generation.load(Ordering::SeqCst) == generation {
            self.access.bounded.users.insert(key, Epoched { epoch: tenant.epoch, value: facts.clone() });
        } else {
            self.access.stats.stale_loads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(facts)
    }

    async fn load_user_cell(&self, cell: &UserCell, tenant_id: &str, user_id: Uuid) -> Result<Option<Arc<UserFacts>>> {
        self.access.stats.user_misses.fetch_add(1, Ordering::Relaxed);
        cell.get_or_try_init(|| self.read_user_facts(tenant_id, user_id)).await.cloned()
    }

    async fn read_user_facts(&self, tenant_id: &str, user_id: Uuid) -> Result<Option<Arc<UserFacts>>> {
        let conn = self.db.conn();
        Ok(match users::find(conn, tenant_id, user_id).await? {
            Some(row) => Some(Arc::new(UserFacts {
                state: users::state(&row)?,
                department_id: row.department_id,
                role_ids: roles::of_user(conn, user_id).await?,
            })),
            None => None,
        })
    }

    /// A user's profile with their roles (what GetUser answers), cached until a committed write
    /// to the user's row or roles. Not found is not cached.
    pub async fn user_profile(&self, tenant_id: &str, user_id: Uuid) -> Result<Arc<User>> {
        let tenant = self.tenant_entry(tenant_id).await?;
        let cell = match tenant.profiles.get(&user_id) {
            Some(cell) => cell.clone(),
            None => {
                if tenant.profiles.len() >= MAX_CACHED_PROFILES {
                    tenant.profiles.clear();
                }
                tenant.profiles.entry(user_id).or_default().clone()
            }
        };
        if let Some(user) = cell.get() {
            self.access.stats.profile_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(user.clone());
        }
        self.access.stats.profile_misses.fetch_add(1, Ordering::Relaxed);
        let conn = self.db.conn();
        let user = cell
            .get_or_try_init(async || {
                let row = self.user_row(conn, tenant_id, user_id).await?;
                self.to_user_in(conn, row).await.map(Arc::new)
            })
            .await?;
        Ok(user.clone())
    }

    /// The tenant with its settings (seats not counted), cached until the tenant changes.
    pub async fn tenant_settings(&self, tenant_id: &str) -> Result<Arc<Tenant>> {
        let entry = self.tenant_entry(tenant_id).await?;
        let tenant = entry
            .tenant
            .get_or_try_init(async || tenants::get_settings(self.db.conn(), tenant_id).await.map(Arc::new))
            .await?;
        Ok(tenant.clone())
    }

    /// A login session's facts (cached; every session-ending change flushes its user's sessions).
    /// None: no such session in the tenant.
    pub async fn session_facts(&self, tenant_id: &str, session_id: Uuid) -> Result<Option<SessionFacts>> {
        let tenant = self.tenant_entry(tenant_id).await?;
        if let Some(hit) = tenant.sessions.get(&session_id).map(|s| *s) {
            // Idle by this copy's clock: another replica may have refreshed it since; look again.
            if hit.ended || crate::domain::now() < hit.idle_end {
                return Ok(Some(hit));
            }
        }
        let generation = tenant.generation.load(Ordering::SeqCst);
        let facts = sessions::find(self.db.conn(), session_id)
            .await?
            .filter(|s| s.tenant_id == tenant_id)
            .map(|s| SessionFacts::of(&s));
        if let Some(facts) = facts {
            if tenant.sessions.len() >= MAX_CACHED_SESSIONS {
                tenant.sessions.clear();
            }
            let entry = tenant.sessions.entry(session_id);
            if tenant.generation.load(Ordering::SeqCst) == generation {
                entry.insert(facts);
            }
        }
        Ok(facts)
    }

    /// The registered owner of a record (cached in the byte-bounded cache; ownership changes
    /// drop the records they touched, or the tenant's whole registry).
    async fn registered_owner(
        &self,
        tenant: &TenantEntry,
        tenant_id: &str,
        module: &str,
        resource_id: &str,
    ) -> Result<Option<Uuid>> {
        let key: OwnerKey = (tenant_id.into(), module.to_owned(), resource_id.to_owned());
        let epoch = tenant.owner_epoch.load(Ordering::SeqCst);
        if let Some(hit) = self.access.bounded.owners.get(&key).filter(|e| e.epoch == epoch) {
            self.access.stats.owner_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit.value);
        }
        self.access.stats.owner_misses.fetch_add(1, Ordering::Relaxed);
        let generation = tenant.owner_generation.load(Ordering::SeqCst);
        let owner = ownership::owner_of(self.db.conn(), tenant_id, module, resource_id).await?;
        if tenant.owner_generation.load(Ordering::SeqCst) == generation {
            self.access.bounded.owners.insert(key, Epoched { epoch, value: owner });
        }
        Ok(owner)
    }

    /// Decides one check. Unknown modules or actions are INVALID_ARGUMENT naming `field_prefix`.
    async fn decide(
        &self,
        tenant: &TenantEntry,
        tenant_id: &str,
        policy: &Policy,
        check: &CheckInput,
    ) -> Result<Decision> {
        let user = self.user_facts(tenant, tenant_id, check.user_id).await?;
        let mut resource = std::borrow::Cow::Borrowed(&check.resource);
        // OWN and DEPARTMENT scopes on a record whose owner the caller did not pass: ask the registry.
        if let (Some(resource_id), None, None, Some(u)) =
            (&resource.resource_id, resource.owner_user_id, resource.department_id, user.as_deref())
            && let Some(p) = policy.permission(&check.module, &check.action)
            && matches!(policy.grant(u, p).scope, Scope::Own | Scope::Department)
        {
            let owner = self.registered_owner(tenant, tenant_id, &check.module, resource_id).await?;
            if owner.is_none() {
                return Ok(Decision::deny(format!(
                    "the owner of {}/{resource_id} is unknown: it is not in the ownership registry and the caller did not pass it",
                    check.module
                )));
            }
            resource.to_mut().owner_user_id = owner;
        }
        let resource = resource.as_ref();
        // DEPARTMENT scope needs the resource's department: the owner's, when only the owner is known.
        if resource.department_id.is_none()
            && let (Some(owner), Some(u)) = (resource.owner_user_id, user.as_deref())
            && owner != check.user_id
            && policy
                .permission(&check.module, &check.action)
                .is_some_and(|p| policy.grant(u, p).scope == Scope::Department)
        {
            let department_id = self.user_facts(tenant, tenant_id, owner).await?.and_then(|o| o.department_id);
            let resource = ResourceFacts { department_id, ..resource.clone() };
            return Ok(policy.decide(check.user_id, user.as_deref(), &check.module, &check.action, &resource));
        }
        Ok(policy.decide(check.user_id, user.as_deref(), &check.module, &check.action, resource))
    }

    fn check_names(policy: &Policy, v: &mut Violations, prefix: impl Fn() -> String, module: &str, action: &str) {
        if policy.has_action(module, action) {
            return;
        }
        if !policy.has_module(module) {
            v.add(format!("{}module", prefix()), format!("unknown module {module:?}: see GetPermissionCatalog"));
        } else {
            v.add(format!("{}action", prefix()), format!("module {module:?} has no action {action:?}"));
        }
    }

    /// Module/action names unknown to the tenant's catalog, as violations (for merging with the
    /// request's other bad fields; empty when the tenant cannot be loaded).
    pub async fn unknown_names(&self, tenant_id: &str, checks: &[(String, &CheckInput)]) -> Violations {
        let mut v = Violations::default();
        let Ok(tenant) = self.tenant_entry(tenant_id).await else { return v };
        if let Ok(policy) = self.policy(&tenant, tenant_id).await {
            for (prefix, c) in checks {
                if !c.module.is_empty() && !c.action.is_empty() {
                    Self::check_names(&policy, &mut v, || prefix.clone(), &c.module, &c.action);
                }
            }
        }
        v
    }

    /// `Access.Check`.
    pub async fn check(&self, tenant_id: &str, check: CheckInput) -> Result<Decision> {
        self.foreground.fetch_add(1, Ordering::Relaxed);
        let tenant = self.tenant_entry(tenant_id).await?;
        let policy = self.policy(&tenant, tenant_id).await?;
        let mut v = Violations::default();
        Self::check_names(&policy, &mut v, String::new, &check.module, &check.action);
        v.finish()?;
        self.decide(&tenant, tenant_id, &policy, &check).await
    }

    /// `Access.BatchCheck`: decisions in request order.
    pub async fn batch_check(&self, tenant_id: &str, checks: Vec<CheckInput>) -> Result<Vec<Decision>> {
        self.foreground.fetch_add(1, Ordering::Relaxed);
        let tenant = self.tenant_entry(tenant_id).await?;
        let policy = self.policy(&tenant, tenant_id).await?;
        let mut v = Violations::default();
        for (i, c) in checks.iter().enumerate() {
            Self::check_names(&policy, &mut v, || format!("checks[{i}]."), &c.module, &c.action);
        }
        v.finish()?;
        let mut out = Vec::with_capacity(checks.len());
        for c in &checks {
            out.push(self.decide(&tenant, tenant_id, &policy, c).await?);
        }
        Ok(out)
    }

    /// `RoleAdmin.GetEffectivePermissions`.
    pub async fn effective_permissions(&self, tenant_id: &str, user_id: Uuid) -> Result<Effective> {
        let tenant = self.tenant_entry(tenant_id).await?;
        let policy = self.policy(&tenant, tenant_id).await?;
        let user = self.user_facts(&tenant, tenant_id, user_id).await?.ok_or_else(|| users::not_found(user_id))?;
        let permissions = policy.effective(&user).into_iter().map(|((m, a), (s, r))| (m, a, s, r)).collect();
        let department_ids = user.department_id.map(|d| policy.subtree(d)).unwrap_or_default();
        Ok(Effective {
            user_id,
            active: user.state == crate::domain::user::UserState::Active,
            permissions,
            department_ids,
        })
    }
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
