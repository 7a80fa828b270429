//! Loading the cache: tenant entries, compiled policies, user facts, profiles, sessions and
//! record owners, each read from the store on a miss and kept until a change invalidates it.

use std::sync::{Arc, atomic::Ordering};

use uuid::Uuid;

use tokio::sync::OnceCell;

use super::{Epoched, MAX_CACHED_PROFILES, MAX_CACHED_SESSIONS, OwnerKey, PREFETCH_MAX_USERS, TenantEntry, UserCell};
use crate::{
    domain::{
        Result,
        access::{Policy, UserFacts},
        tenant::Tenant,
        user::User,
    },
    service::Iam,
    store::{
        departments, ownership, roles,
        sessions::{self, SessionFacts},
        tenants, users,
    },
};

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
    pub(super) async fn tenant_entry(&self, tenant_id: &str) -> Result<Arc<TenantEntry>> {
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

    /// The tenant's compiled policy (role and department names included) and its row, as cached:
    /// loaded on first use, replaced by every committed change to either.
    pub async fn cached_policy(&self, tenant_id: &str) -> Result<(Arc<Policy>, Option<Arc<Tenant>>)> {
        let entry = self.tenant_entry(tenant_id).await?;
        let policy = self.policy(&entry, tenant_id).await?;
        Ok((policy, entry.tenant.get().cloned()))
    }

    /// The compiled policy of a tenant (loaded once per invalidation; concurrent callers share the load).
    pub(super) async fn policy(&self, tenant: &TenantEntry, tenant_id: &str) -> Result<Arc<Policy>> {
        tenant.policy.get_or_try_init(|| self.load_policy(tenant, tenant_id)).await.cloned()
    }

    /// Loads the tenant's rules and, for tenants of up to [`PREFETCH_MAX_USERS`], every user's facts.
    pub(super) async fn load_policy(&self, tenant: &TenantEntry, tenant_id: &str) -> Result<Arc<Policy>> {
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
    pub(super) async fn user_facts(
        &self,
        tenant: &TenantEntry,
        tenant_id: &str,
        user_id: Uuid,
    ) -> Result<Option<Arc<UserFacts>>> {
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

    pub(super) async fn load_user_cell(
        &self,
        cell: &UserCell,
        tenant_id: &str,
        user_id: Uuid,
    ) -> Result<Option<Arc<UserFacts>>> {
        self.access.stats.user_misses.fetch_add(1, Ordering::Relaxed);
        cell.get_or_try_init(|| self.read_user_facts(tenant_id, user_id)).await.cloned()
    }

    pub(super) async fn read_user_facts(&self, tenant_id: &str, user_id: Uuid) -> Result<Option<Arc<UserFacts>>> {
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
        self.entry_tenant(&entry, tenant_id).await
    }

    /// The tenant's row of its cache entry (loaded again after the tenant changed).
    pub(super) async fn entry_tenant(&self, entry: &TenantEntry, tenant_id: &str) -> Result<Arc<Tenant>> {
        let tenant = entry
            .tenant
            .get_or_try_init(async || tenants::get_settings(self.db.conn(), tenant_id).await.map(Arc::new))
            .await?;
        Ok(tenant.clone())
    }

    /// The tenant's row, PERMISSION_DENIED (TENANT_SUSPENDED) while the platform has it
    /// suspended: what logins, refreshes, token and SCIM uses read.
    pub async fn open_tenant(&self, tenant_id: &str) -> Result<Arc<Tenant>> {
        let tenant = self.tenant_settings(tenant_id).await?;
        tenant.ensure_open()?;
        Ok(tenant)
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
    pub(super) async fn registered_owner(
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
}
