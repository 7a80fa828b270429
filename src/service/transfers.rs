//! The transfer worker: runs PENDING/RUNNING transfer jobs batch by batch, each batch one
//! transaction that moves records, saves the job's progress and writes one
//! `ownership.transferred` audit event. A job is held through a lease (owner + expiry) that each
//! batch extends; when a replica dies, its lease runs out and any replica takes the job over
//! exactly where the last committed batch left it.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Iam, Target,
    access::compile_policy,
    ownership::{TransferRef, resolve_targets},
};
use crate::{
    domain::{
        Error, Kind, Reason, Result,
        access::Right,
        audit::{AuditRecord, RequestContext},
        caller::Caller,
        now,
        ownership::{Transfer, TransferState, rule_for, spread},
        user::UserState,
    },
    store::{Tx, ownership, tenants, transfers},
};

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct TransferSettings {
    /// Records moved per transaction.
    pub batch_size: u64,
    /// How long a claim holds without being renewed.
    pub lease: Duration,
    /// How often idle workers look for jobs created through other replicas.
    pub poll_interval: Duration,
    /// While Access.Check traffic is being served, the worker pauses this fraction of each
    /// batch's duration after it (1.0: at most half of the time moving records), so the hot path
    /// keeps its latency; without traffic it runs flat out.
    pub yield_ratio: f64,
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            batch_size: 2000,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            yield_ratio: 1.0,
        }
    }
}

/// What one step of a job did.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Step {
    /// A batch moved this many records; more may follow.
    More(u64),
    /// The job reached a terminal state.
    Ended,
    /// Another replica holds the job now.
    Lost,
}

fn lost_lease() -> Error {
    Error::new(Kind::Aborted, Reason::Unavailable, "the transfer's lease was taken over")
}

fn lease_until(settings: &TransferSettings) -> chrono::DateTime<Utc> {
    now() + chrono::Duration::from_std(settings.lease).unwrap_or(chrono::Duration::seconds(30))
}

/// Runs jobs until `stop`: one at a time per replica, woken by new jobs of this replica and by
/// polling for those of others (and for expired leases).
pub async fn run_worker(iam: Iam, settings: TransferSettings, stop: CancellationToken) {
    let me = format!("replica-{}", Uuid::new_v4());
    let wake = iam.transfer_wake.clone();
    loop {
        if stop.is_cancelled() {
            return;
        }
        match iam.claim_next_transfer(&me, &settings).await {
            Ok(Some(id)) => {
                iam.run_transfer(&me, id, &settings, &stop).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "looking for transfer jobs failed; will retry"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
}

impl Iam {
    /// Claims the oldest job nobody holds (or whose holder's lease ran out).
    async fn claim_next_transfer(&self, me: &str, settings: &TransferSettings) -> Result<Option<Uuid>> {
        let ctx = RequestContext::system("transfer-worker");
        for id in transfers::runnable(self.db.conn(), now(), 8).await? {
            let until = lease_until(settings);
            if self.db.write(&ctx, async |tx| transfers::claim(tx, id, me, now(), until).await).await? {
                tracing::info!(transfer_id = %id, "transfer claimed");
                if let Err(e) = ownership::refresh_statistics(&self.db).await {
                    tracing::warn!(error = %e, "refreshing the registry's statistics failed");
                }
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    async fn run_transfer(&self, me: &str, id: Uuid, settings: &TransferSettings, stop: &CancellationToken) {
        let mut failures = 0u32;
        loop {
            if stop.is_cancelled() {
                // Hand the job over at once instead of letting the lease run out.
                let ctx = RequestContext::system("transfer-worker");
                if let Err(e) = self.db.write(&ctx, async |tx| transfers::release(tx, id, me).await).await {
                    tracing::warn!(transfer_id = %id, error = %e, "releasing the transfer failed");
                }
                return;
            }
            let started = std::time::Instant::now();
            let served = self.foreground.load(std::sync::atomic::Ordering::Relaxed);
            match self.transfer_step(me, id, settings).await {
                Ok(Step::More(moved)) => {
                    failures = 0;
                    metrics::counter!("crm_iam_transfer_records_moved_total").increment(moved);
                    // Foreground traffic during the batch: give it the cores for a while.
                    if self.foreground.load(std::sync::atomic::Ordering::Relaxed) != served
                        && settings.yield_ratio > 0.0
                    {
                        let pause = started.elapsed().mul_f64(settings.yield_ratio).min(Duration::from_secs(1));
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
                Ok(Step::Ended) => return,
                Ok(Step::Lost) => {
                    tracing::warn!(transfer_id = %id, "transfer lease lost to another replica");
                    return;
                }
                Err(e) if e.kind == Kind::Aborted && e.reason == Reason::Unavailable => {
                    tracing::warn!(transfer_id = %id, "transfer lease lost to another replica");
                    return;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(transfer_id = %id, error = %e, failures, "transfer batch failed; will retry");
                    // Retry with backoff while the lease lasts; after that another replica may take over.
                    let backoff = Duration::from_millis(200 * 2u64.pow(failures.min(6)));
                    if backoff >= settings.lease {
                        return;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }

    /// One transaction of a job: cancel, finish, fail, or move one batch.
    async fn transfer_step(&self, me: &str, id: Uuid, settings: &TransferSettings) -> Result<Step> {
        let ctx = RequestContext::system("transfer-worker");
        self.db
            .write(&ctx, async |tx| {
                let Some(tenant_id) = transfers::row(&**tx, id).await?.map(|r| r.tenant_id) else {
                    return Ok(Step::Lost);
                };
                // The tenant lock orders this batch with RecordOwnership and user lifecycle changes.
                tenants::lock(tx, &tenant_id).await?;
                let row = match transfers::row_for_update(tx, id).await? {
                    Some(r) if r.lease_owner.as_deref() == Some(me) => r,
                    _ => return Ok(Step::Lost),
                };
                let cancel = row.cancel_requested;
                let mut t = transfers::to_domain(row)?;
                if t.state.is_terminal() {
                    return Ok(Step::Ended);
                }
                if cancel {
                    return self.end_transfer(tx, me, settings, t, TransferState::Cancelled, String::new()).await;
                }
                let from = t.from_user_id;
                // The module being moved, else the first module (in name order) the rules cover
                // in which the user still owns records: records recorded meanwhile are found too.
                let module = match t.progress.iter().find(|p| !p.done) {
                    Some(p) => p.module.clone(),
                    None => {
                        let named: Option<Vec<String>> = (!t.rules.iter().any(|r| r.module.is_none()))
                            .then(|| t.rules.iter().filter_map(|r| r.module.clone()).collect());
                        match ownership::first_owned_module(&**tx, &tenant_id, from, named.as_deref()).await? {
                            Some(m) => {
                                let p = transfers::progress_of(&mut t, &m);
                                (p.done, p.after) = (false, None);
                                m
                            }
                            None => {
                                t.total = t.moved;
                                return self
                                    .end_transfer(tx, me, settings, t, TransferState::Succeeded, String::new())
                                    .await;
                            }
                        }
                    }
                };
                let target = rule_for(&t.rules, &module).expect("covered").target;
                if transfers::progress_of(&mut t, &module).targets.is_empty() {
                    // Targets are fixed when a module's first batch moves (round-robin members included).
                    let policy = compile_policy(&**tx, &tenant_id).await?;
                    match resolve_targets(&**tx, &policy, &tenant_id, from, &module, target).await? {
                        Ok(targets) => transfers::progress_of(&mut t, &module).targets = targets,
                        Err(v) => {
                            let error = format!("{}: {}", v.subject, v.description);
                            return self.end_transfer(tx, me, settings, t, TransferState::Failed, error).await;
                        }
                    }
                }
                let progress = transfers::progress_of(&mut t, &module);
                let targets = progress.targets.clone();
                let states = ownership::user_states(&**tx, &tenant_id, &targets).await?;
                if let Some(gone) = targets.iter().find(|u| states.get(u) != Some(&UserState::Active)) {
                    let error = format!("target user {gone} is no longer ACTIVE; what was moved stays moved");
                    return self.end_transfer(tx, me, settings, t, TransferState::Failed, error).await;
                }
                let ids =
                    ownership::owned_ids(tx, &tenant_id, &module, from, progress.after.as_deref(), settings.batch_size)
                        .await?;
                let mut moves = Vec::new();
                let mut moved = 0i64;
                if ids.is_empty() {
                    if progress.after.is_some() {
                        // Past the last record: look once more from the first id, for records
                        // recorded for the user meanwhile below the cursor.
                        progress.after = None;
                    } else {
                        progress.done = true;
                        // Count what is left in other modules (it grows when records are recorded
                        // for the user meanwhile); between counts the total keeps up with what moved.
                        let counts = ownership::counts(&**tx, &tenant_id, from).await?;
                        let left: i64 =
                            counts.iter().filter(|(m, _)| rule_for(&t.rules, m).is_some()).map(|(_, n)| n).sum();
                        t.total = t.moved + left;
                    }
                } else {
                    progress.after = ids.last().cloned();
                    // Consecutive slices of the batch, sized round-robin from the module's position.
                    let mut rest = ids.as_slice();
                    for (to, share) in targets.iter().zip(spread(ids.len() as i64, targets.len(), progress.next)) {
                        let (mine, others) = rest.split_at(share as usize);
                        rest = others;
                        if !mine.is_empty() {
                            let done = ownership::reassign(tx, &tenant_id, &module, *to, mine).await?;
                            moved += done.len() as i64;
                            moves.push(json!({ "to_user_id": to, "resource_ids": done }));
                        }
                    }
                    progress.next += moved as u64;
                    progress.moved += moved;
                    t.moved += moved;
                    t.total = t.total.max(t.moved);
                }
                t.state = TransferState::Running;
                t.start_time.get_or_insert_with(now);
                if !transfers::save_claimed(tx, &t, false, me, lease_until(settings)).await? {
                    return Err(lost_lease());
                }
                if moves.is_empty() {
                    return Ok(Step::More(0));
                }
                tx.owners_changed(&tenant_id, Some(ids.iter().map(|id| (module.clone(), id.clone())).collect()));
                tx.audit(
                    AuditRecord::new(Some(&tenant_id), "ownership.transferred", "transfer", t.transfer_id)
                        .with_detail("module", module.clone())
                        .with_detail("from_user_id", from.to_string())
                        .with_detail("count", moved)
                        .with_detail("worker", me)
                        .with_detail("moves", serde_json::Value::Array(moves)),
                );
                Ok(Step::More(moved as u64))
            })
            .await
    }

    /// Ends a job in `state` and records it.
    async fn end_transfer(
        &self,
        tx: &Tx,
        me: &str,
        settings: &TransferSettings,
        mut t: Transfer,
        state: TransferState,
        error: String,
    ) -> Result<Step> {
        t.state = state;
        t.error = error;
        t.end_time = Some(now());
        if !transfers::save_claimed(tx, &t, true, me, lease_until(settings)).await? {
            return Err(lost_lease());
        }
        let action = match state {
            TransferState::Succeeded => "transfer.succeeded",
            TransferState::Failed => "transfer.failed",
            _ => "transfer.cancelled",
        };
        let mut record = AuditRecord::new(Some(&t.tenant_id), action, "transfer", t.transfer_id)
            .with_detail("moved", t.moved)
            .with_detail("total", t.total);
        if !t.error.is_empty() {
            record = record.with_detail("error", t.error.clone());
        }
        tx.audit(record);
        tracing::info!(transfer_id = %t.transfer_id, state = state.as_str(), moved = t.moved, "transfer ended");
        Ok(Step::Ended)
    }
}

/// A watcher re-sends the job at least this often while it runs (a liveness signal).
const WATCH_MAX_SILENCE: Duration = Duration::from_secs(1);

struct Watch {
    iam: Iam,
    tenant_id: String,
    transfer_id: Uuid,
    scope: crate::domain::audit::EventScope,
    /// Audit position the watcher has looked through.
    cursor: i64,
    last: Transfer,
    pending: bool,
    last_sent: tokio::time::Instant,
    done: bool,
    user: Option<crate::domain::caller::UserCaller>,
    next_check: tokio::time::Instant,
    stop: CancellationToken,
    _slot: super::audit::StreamSlot,
}

impl Iam {
    /// How many transfer jobs are in each state (for metrics).
    pub async fn transfer_counts(&self) -> Result<Vec<(String, i64)>> {
        crate::store::transfers::count_by_state(self.db.conn()).await
    }
}

impl Iam {
    /// `OwnershipTransfer.WatchTransfer`: the job now, then again whenever one of its audit events
    /// is committed (every batch and state change writes one; other replicas' commits arrive by
    /// NOTIFY), re-sent at least every second while it runs, ending with its final state. No
    /// watcher polls the database: a watcher reads the job only when it changed. A user's watch
    /// ends when their session or users.view at TENANT scope does.
    /// Needs `users.view` at TENANT scope and a place in the stream caps; the first report
    /// comes at once (a missing transfer is NOT_FOUND before the stream starts).
    pub async fn watch_transfer(
        &self,
        caller: &Caller,
        q: TransferRef,
    ) -> Result<impl futures::Stream<Item = Result<Transfer>> + Send + 'static> {
        let (tenant_id, transfer_id) = (q.tenant_id.as_str(), q.transfer_id);
        self.authorize(caller, tenant_id, Right::USERS_VIEW, Target::Tenant).await?;
        let slot = self.audit.open_stream(caller, tenant_id)?;
        let user = caller.user().ok().cloned();
        let cursor = self.audit.head();
        let first = self.transfer(tenant_id, transfer_id).await?;
        let w = Watch {
            iam: self.clone(),
            tenant_id: tenant_id.to_owned(),
            transfer_id,
            scope: crate::domain::audit::EventScope::Tenant(tenant_id.to_owned()),
            cursor,
            last: first,
            pending: true,
            last_sent: tokio::time::Instant::now(),
            done: false,
            user,
            next_check: tokio::time::Instant::now() + super::audit::ACCESS_RECHECK,
            stop: self.stop.clone(),
            _slot: slot,
        };
        Ok(futures::stream::unfold(w, |mut w| async move {
            if w.done {
                return None;
            }
            match w.next().await {
                Ok(t) => {
                    w.done = t.state.is_terminal();
                    Some((Ok(t), w))
                }
                Err(e) => {
                    w.done = true;
                    Some((Err(e), w))
                }
            }
        }))
    }
}

impl Watch {
    async fn next(&mut self) -> Result<Transfer> {
        if std::mem::take(&mut self.pending) {
            self.last_sent = tokio::time::Instant::now();
            return Ok(self.last.clone());
        }
        loop {
            if let Some(u) = &self.user
                && tokio::time::Instant::now() >= self.next_check
            {
                self.iam.stream_allowed(u, &self.tenant_id, crate::domain::access::Right::USERS_VIEW).await?;
                self.next_check = tokio::time::Instant::now() + super::audit::ACCESS_RECHECK;
            }
            let silence = self.last_sent + WATCH_MAX_SILENCE;
            let wake = if self.user.is_some() { silence.min(self.next_check) } else { silence };
            let hub = self.iam.audit.clone();
            tokio::select! {
                _ = self.stop.cancelled() => {
                    return Err(Error::unavailable("the server is shutting down: watch again"));
                }
                changed = hub.changed_after(self.cursor, &self.stop) => {
                    if !changed {
                        continue;
                    }
                    let touched = match hub.touched(self.cursor, &self.scope, "transfer", &self.transfer_id.to_string()) {
                        Some((touched, through)) => {
                            self.cursor = through;
                            touched
                        }
                        // Too far behind the ring to tell: read the job.
                        None => {
                            self.cursor = hub.head();
                            true
                        }
                    };
                    if touched {
                        let t = self.iam.transfer(&self.tenant_id, self.transfer_id).await?;
                        if t.version != self.last.version {
                            self.last = t.clone();
                            self.last_sent = tokio::time::Instant::now();
                            return Ok(t);
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= silence {
                        self.last_sent = tokio::time::Instant::now();
                        return Ok(self.last.clone());
                    }
                }
            }
        }
    }
}
