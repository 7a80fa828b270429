//! `crm-iam backup` / `restore`: file-level commands for the embedded SQLite database (they do not
//! talk to the server); the work is in [`crate::store::backup`].

pub use crate::store::backup::{backup, restore, sqlite_path};
