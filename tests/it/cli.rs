//! The operations CLI, run as the real `crm-iam` binary against a real server: CSV import and
//! export of users (10,000 rows), the per-row error report, and SQLite backup and restore.

use std::{path::Path, process::Output};

use crate::common::{ADMIN_TOKEN, Backend, TestDb, TestServer, count, test_config};

fn crm_iam(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_crm-iam"))
        .args(args)
        .env("CRM_IAM_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run crm-iam")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn import(server: &TestServer, file: &Path, extra: &[&str]) -> Output {
    let url = format!("http://{}", server.addr);
    let mut args = vec!["users", "import", "--server", &url, "--tenant", "acme", "--quiet"];
    args.extend_from_slice(extra);
    args.push(file.to_str().unwrap());
    crm_iam(&args)
}

async fn import_export_round_trip(backend: Backend, rows: usize) {
    let server = TestServer::start(backend).await;
    server.tenant("acme", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("people.csv");
    let mut csv = String::from("email,given_name,family_name,department,roles,hire_date,phone\n");
    for i in 0..rows {
        let (dept, roles) = if i % 2 == 0 { ("Sales", "operator") } else { ("Support", "guest;operator") };
        csv.push_str(&format!("user{i}@acme.example,Given{i},Family{i},{dept},{roles},2024-03-01,\n"));
    }
    std::fs::write(&file, csv).unwrap();
    let invitations = dir.path().join("invitations.csv");

    // A dry run checks and creates nothing.
    let out = import(&server, &file, &["--dry-run", "--create-departments"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("{rows} rows: {rows} would be created")), "{}", text(&out.stdout));
    let db = server.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users").await, 0);

    let out = import(&server, &file, &["--create-departments", "--invitations", invitations.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("{rows} rows: {rows} created, 0 already present, 0 with errors")),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users WHERE state = 'INVITED'").await, rows as i64);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM departments").await, 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM user_roles").await, (rows + rows / 2) as i64);
    let tokens = std::fs::read_to_string(&invitations).unwrap();
    assert_eq!(tokens.lines().count(), rows + 1, "one invitation per user");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&invitations).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // A re-run creates nothing twice.
    let out = import(&server, &file, &["--create-departments"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("0 created, {rows} already present")), "{}", text(&out.stdout));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users").await, rows as i64);

    // Export: the same people, with department and role names.
    let url = format!("http://{}", server.addr);
    let exported = dir.path().join("export.csv");
    let out = crm_iam(&["users", "export", "--server", &url, "--tenant", "acme", "--out", exported.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut reader = csv::Reader::from_path(&exported).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), rows);
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let one = records.iter().find(|r| &r[col("email")] == "user1@acme.example").unwrap();
    assert_eq!(
        (&one[col("department")], &one[col("roles")], &one[col("state")]),
        ("Support", "guest;operator", "INVITED")
    );
    assert_eq!(&one[col("hire_date")], "2024-03-01");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_10000_users_and_export_sqlite() {
    import_export_round_trip(Backend::Sqlite, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_export_postgres() {
    import_export_round_trip(Backend::Postgres, 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reports_bad_rows_and_creates_only_good_ones() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.tenant("acme", 0).await;
    server.department("acme", "Sales", "").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("people.csv");
    std::fs::write(
        &file,
        "email,given_name,department,roles,hire_date\n\
         good@acme.example,Good,Sales,operator,\n\
         not-an-email,Bad,Sales,,\n\
         role@acme.example,Role,Sales,wizard,\n\
         good@acme.example,Twice,Sales,,\n\
         date@acme.example,Date,Sales,,2024-13-45\n\
         dept@acme.example,Dept,Nowhere,,\n",
    )
    .unwrap();
    let out = import(&server, &file, &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    for needle in [
        "line 3 (not-an-email): email",
        "line 4 (role@acme.example): roles",
        "line 5 (good@acme.example): email: appears more than once",
        "line 6 (date@acme.example): hire_date",
        "line 7 (dept@acme.example): department",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(text(&out.stdout).contains("6 rows: 1 created, 0 already present, 5 with errors"), "{}", text(&out.stdout));
    let db = server.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users").await, 1);
    // Unknown columns are refused before anything happens.
    std::fs::write(&file, "email,salary\nx@acme.example,1\n").unwrap();
    let out = import(&server, &file, &[]);
    assert!(!out.status.success() && text(&out.stderr).contains("unknown column"), "{}", text(&out.stderr));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_and_restore() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.tenant("acme", 0).await;
    server.users().await.create_user(crate::common::invite("acme", "before@acme.example")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    let url = server.db.url.clone();
    let out = crm_iam(&["backup", "--database-url", &url, "--to", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("integrity checked"));
    // Written after the backup: not in it.
    server.users().await.create_user(crate::common::invite("acme", "after@acme.example")).await.unwrap();
    let out = crm_iam(&["backup", "--database-url", &url, "--to", backup.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("never overwrites"), "{}", text(&out.stderr));
    server.stop().await;

    // Restore into a new database file and serve it.
    let restored_db = TestDb::new(Backend::Sqlite).await;
    let out = crm_iam(&["restore", "--database-url", &restored_db.url, "--from", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = crm_iam(&["restore", "--database-url", &restored_db.url, "--from", backup.to_str().unwrap()]);
    assert!(!again.status.success() && text(&again.stderr).contains("--force"), "{}", text(&again.stderr));
    let config = test_config(&restored_db);
    let restored = TestServer::start_on(restored_db, config).await;
    let db = restored.db.connect().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users WHERE email = 'before@acme.example'").await, 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users WHERE email = 'after@acme.example'").await, 0);
    restored.stop().await;

    // PostgreSQL is backed up with its own tools.
    let out = crm_iam(&["backup", "--database-url", "postgres://x@localhost/y", "--to", "/tmp/never.db"]);
    assert!(!out.status.success() && text(&out.stderr).contains("pg_dump"), "{}", text(&out.stderr));
}
