//! `crm-iam users import` / `export`: bulk onboarding of a company from CSV, and the reverse. Both
//! talk to a running server over gRPC (`UserAdmin`, `RoleAdmin`), so every row goes through the
//! same validation, seat limit, idempotency and audit trail as any other call.
//!
//! CSV columns (header row required; only `email` is mandatory): `email`, `given_name`,
//! `family_name`, `display_name`, `phone`, `position`, `employee_number`, `department` (a
//! department *name*), `hire_date` (YYYY-MM-DD), `roles` (role *names*, separated by `;`).
//! Export writes the same columns plus `user_id` and `state`, so an export imports again.

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    path::PathBuf,
    sync::Arc,
};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};
use tonic_types::StatusExt;

use super::Bearer;
use crate::{
    domain::validate,
    proto::v1::{self as pb, role_admin_client::RoleAdminClient, user_admin_client::UserAdminClient},
};

type Users = UserAdminClient<InterceptedService<Channel, Bearer>>;
type Roles = RoleAdminClient<InterceptedService<Channel, Bearer>>;

/// Columns of the CSV format, in export order.
pub const COLUMNS: [&str; 12] = crate::domain::user::fields(
    &crate::domain::user::PERSON_FIELDS,
    &["department", "hire_date", "roles", "user_id", "state"],
);

#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct CsvUser {
    pub email: String,
    pub given_name: String,
    pub family_name: String,
    pub display_name: String,
    pub phone: String,
    pub position: String,
    pub employee_number: String,
    pub department: String,
    pub hire_date: String,
    pub roles: String,
    pub user_id: String,
    pub state: String,
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub tenant: String,
    pub file: PathBuf,
    pub dry_run: bool,
    /// Create departments named in the file that do not exist yet.
    pub create_departments: bool,
    /// Rows in flight at once.
    pub concurrency: usize,
    /// Where to write email,user_id,invitation_token of the invited users (mode 0600).
    pub invitations: Option<PathBuf>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// The outcome of an import.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: usize,
    /// Users created (in a dry run: that would be created).
    pub created: usize,
    /// Rows whose email already belongs to a user of the tenant (a re-run creates nothing twice).
    pub existing: usize,
    /// (line number in the file, email, what is wrong).
    pub errors: Vec<(usize, String, String)>,
}

/// Connects with the bearer token.
pub async fn clients(server: &str, token: &str) -> anyhow::Result<(Users, Roles)> {
    let channel = tonic::transport::Endpoint::from_shared(server.to_owned())?.connect().await?;
    let bearer = Bearer::new(token)?;
    Ok((
        UserAdminClient::with_interceptor(channel.clone(), bearer.clone()),
        RoleAdminClient::with_interceptor(channel, bearer),
    ))
}

async fn departments(users: &mut Users, tenant: &str) -> anyhow::Result<Vec<pb::Department>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = users
            .list_departments(pb::ListDepartmentsRequest {
                tenant_id: tenant.into(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.departments);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

async fn roles(roles: &mut Roles, tenant: &str) -> anyhow::Result<Vec<pb::Role>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = roles
            .list_roles(pb::ListRolesRequest {
                tenant_id: tenant.into(),
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        out.extend(page.roles);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every user of the tenant in any state.
async fn all_users(users: &mut Users, tenant: &str) -> anyhow::Result<Vec<pb::User>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    let states = [
        pb::UserState::Invited,
        pb::UserState::Active,
        pb::UserState::Deactivated,
        pb::UserState::Deleted,
        pb::UserState::Purged,
    ];
    loop {
        let page = users
            .list_users(pb::ListUsersRequest {
                tenant_id: tenant.into(),
                page_size: 1000,
                page_token: page_token.clone(),
                states: states.iter().map(|s| *s as i32).collect(),
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.users);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Checks a row locally (the same rules the server applies) and resolves names to ids.
fn check_row(
    row: &CsvUser,
    departments: &HashMap<String, String>,
    roles: &HashMap<String, String>,
    create_departments: bool,
) -> Result<(pb::User, Vec<String>), String> {
    let mut problems = Vec::new();
    let mut check = |field: &str, r: Result<(), String>| {
        if let Err(e) = r {
            problems.push(format!("{field}: {e}"));
        }
    };
    check("email", validate::email(&row.email).map(drop));
    check("given_name", validate::text(&row.given_name, 100).map(drop));
    check("family_name", validate::text(&row.family_name, 100).map(drop));
    check("display_name", validate::text(&row.display_name, 200).map(drop));
    check("phone", validate::phone(&row.phone).map(drop));
    check("position", validate::text(&row.position, 100).map(drop));
    check("employee_number", validate::employee_number(&row.employee_number).map(drop));
    check("hire_date", validate::date(&row.hire_date).map(drop));
    let department_id = match row.department.trim() {
        "" => String::new(),
        name => match departments.get(&name.to_lowercase()) {
            Some(id) => id.clone(),
            None if create_departments => String::new(),
            None => {
                problems.push(format!("department: no department named {name:?} (use --create-departments)"));
                String::new()
            }
        },
    };
    let mut role_ids = Vec::new();
    for name in row.roles.split(';').map(str::trim).filter(|n| !n.is_empty()) {
        match roles.get(&name.to_lowercase()) {
            Some(id) => role_ids.push(id.clone()),
            None => problems.push(format!("roles: no role named {name:?}")),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok((
        pb::User {
            email: row.email.trim().into(),
            given_name: row.given_name.trim().into(),
            family_name: row.family_name.trim().into(),
            display_name: row.display_name.trim().into(),
            phone: row.phone.trim().into(),
            position: row.position.trim().into(),
            employee_number: row.employee_number.trim().into(),
            department_id,
            hire_date: row.hire_date.trim().into(),
            ..Default::default()
        },
        role_ids,
    ))
}

/// What the server said about a refused row: the message and each bad field.
fn describe(s: &tonic::Status) -> String {
    let mut out = s.message().to_owned();
    if let Some(b) = s.get_error_details().bad_request() {
        for v in &b.field_violations {
            out.push_str(&format!("; {}: {}", v.field, v.description));
        }
    }
    out
}

/// Imports the CSV file: every row becomes an INVITED user (or is reported), idempotently.
pub async fn import(mut users: Users, mut role_client: Roles, opts: ImportOptions) -> anyhow::Result<ImportReport> {
    let mut text = String::new();
    std::fs::File::open(&opts.file)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", opts.file.display()))?;
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = reader.headers()?.clone();
    anyhow::ensure!(headers.iter().any(|h| h == "email"), "the CSV needs a header row with an `email` column");
    for h in headers.iter() {
        anyhow::ensure!(COLUMNS.contains(&h), "unknown column {h:?}; known columns: {}", COLUMNS.join(", "));
    }
    let mut rows = Vec::new();
    let mut report = ImportReport::default();
    for (i, record) in reader.deserialize::<CsvUser>().enumerate() {
        let line = i + 2;
        match record {
            Ok(r) => rows.push((line, r)),
            Err(e) => report.errors.push((line, String::new(), format!("unreadable row: {e}"))),
        }
    }
    report.rows = rows.len() + report.errors.len();

    let mut department_ids: HashMap<String, String> = departments(&mut users, &opts.tenant)
        .await?
        .into_iter()
        .map(|d| (d.name.to_lowercase(), d.department_id))
        .collect();
    let role_ids: HashMap<String, String> =
        roles(&mut role_client, &opts.tenant).await?.into_iter().map(|r| (r.name.to_lowercase(), r.role_id)).collect();
    let existing: HashSet<String> =
        all_users(&mut users, &opts.tenant).await?.into_iter().map(|u| u.email.to_lowercase()).collect();

    // Check every row first; duplicates within the file are errors too.
    let mut seen = HashSet::new();
    let mut todo = Vec::new();
    for (line, row) in rows {
        let key = row.email.trim().to_lowercase();
        if !seen.insert(key.clone()) {
            report.errors.push((line, row.email.clone(), "email: appears more than once in the file".into()));
            continue;
        }
        match check_row(&row, &department_ids, &role_ids, opts.create_departments) {
            Err(e) => report.errors.push((line, row.email.clone(), e)),
            Ok(_) if existing.contains(&key) => report.existing += 1,
            Ok(checked) => todo.push((line, row, checked)),
        }
    }
    if opts.dry_run {
        // What a real run would create.
        report.created = todo.len();
        report.errors.sort();
        return Ok(report);
    }

    if opts.create_departments {
        let mut missing: Vec<String> = todo
            .iter()
            .map(|(_, r, _)| r.department.trim().to_owned())
            .filter(|d| !d.is_empty() && !department_ids.contains_key(&d.to_lowercase()))
            .collect();
        missing.sort_by_key(|d| d.to_lowercase());
        missing.dedup_by_key(|d| d.to_lowercase());
        for name in missing {
            let request_id = format!(
                "import-dept-{}",
                &hex::encode(Sha256::digest(format!("{}|{}", opts.tenant, name.to_lowercase())))[..32]
            );
            let d = users
                .create_department(pb::CreateDepartmentRequest {
                    tenant_id: opts.tenant.clone(),
                    department: Some(pb::Department { name: name.clone(), ..Default::default() }),
                    request_id,
                })
                .await?
                .into_inner()
                .department
                .unwrap_or_default();
            department_ids.insert(name.to_lowercase(), d.department_id);
        }
    }

    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(todo.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} users  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let departments = Arc::new(department_ids);
    let tenant = opts.tenant.clone();
    let results: Vec<(usize, String, Result<pb::CreateUserResponse, tonic::Status>)> =
        futures::stream::iter(todo.into_iter().map(|(line, row, (mut user, role_ids))| {
            let mut users = users.clone();
            let departments = departments.clone();
            let tenant = tenant.clone();
            let bar = bar.clone();
            async move {
                if user.department_id.is_empty() && !row.department.trim().is_empty() {
                    user.department_id =
                        departments.get(&row.department.trim().to_lowercase()).cloned().unwrap_or_default();
                }
                // The same row always carries the same key: a retried or re-run row is created once.
                let request_id = format!(
                    "import-{}",
                    &hex::encode(Sha256::digest(format!("{tenant}|{}", row.email.trim().to_lowercase())))[..32]
                );
                let email = row.email.clone();
                let result = users
                    .create_user(pb::CreateUserRequest {
                        tenant_id: tenant,
                        user: Some(user),
                        send_invitation: true,
                        role_ids,
                        request_id,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner());
                bar.inc(1);
                (line, email, result)
            }
        }))
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();

    let mut invitations = Vec::new();
    for (line, email, result) in results {
        match result {
            Ok(created) => {
                report.created += 1;
                if !created.invitation_token.is_empty() {
                    let id = created.user.map(|u| u.user_id).unwrap_or_default();
                    invitations.push((email, id, created.invitation_token));
                }
            }
            Err(s) if s.code() == Code::AlreadyExists && s.message().contains("email") => report.existing += 1,
            Err(s) => report.errors.push((line, email, describe(&s))),
        }
    }
    report.errors.sort();
    if let Some(path) = &opts.invitations {
        write_private(path, &invitations)?;
    }
    Ok(report)
}

fn write_private(path: &std::path::Path, rows: &[(String, String, String)]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let mut w = csv::Writer::from_writer(file);
    w.write_record(["email", "user_id", "invitation_token"])?;
    for (email, id, token) in rows {
        w.write_record([email, id, token])?;
    }
    w.flush()?;
    Ok(())
}

/// Writes every user of the tenant (all states but PURGED) as CSV.
pub async fn export(
    mut users: Users,
    mut role_client: Roles,
    tenant: &str,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let department_names: HashMap<String, String> =
        departments(&mut users, tenant).await?.into_iter().map(|d| (d.department_id, d.name)).collect();
    let role_names: HashMap<String, String> =
        roles(&mut role_client, tenant).await?.into_iter().map(|r| (r.role_id, r.name)).collect();
    // The header is written here (also for a tenant without users), not derived by serialize.
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(out);
    w.write_record(COLUMNS)?;
    let mut n = 0;
    for u in all_users(&mut users, tenant).await? {
        if u.state == pb::UserState::Purged as i32 {
            continue;
        }
        let state =
            pb::UserState::try_from(u.state).map(|s| s.as_str_name().trim_start_matches("USER_STATE_").to_owned());
        let mut roles: Vec<&str> = u.role_ids.iter().filter_map(|id| role_names.get(id).map(String::as_str)).collect();
        roles.sort();
        w.serialize(CsvUser {
            department: department_names.get(&u.department_id).cloned().unwrap_or_default(),
            roles: roles.join(";"),
            user_id: u.user_id,
            state: state.unwrap_or_default(),
            email: u.email,
            given_name: u.given_name,
            family_name: u.family_name,
            display_name: u.display_name,
            phone: u.phone,
            position: u.position,
            employee_number: u.employee_number,
            hire_date: u.hire_date,
        })?;
        n += 1;
    }
    w.flush()?;
    Ok(n)
}
