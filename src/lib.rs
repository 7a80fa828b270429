//! crm-iam: identity and access for a multi-tenant CRM platform, over gRPC.
//!
//! Layers (dependencies point inward): [`api`] (gRPC edge) → [`service`] (operations, one
//! transaction each) → [`store`] (all SQL) and [`domain`] (types and rules, no I/O). The test
//! `tests/architecture.rs` keeps them so; ARCHITECTURE.md draws the map.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod jobs;
pub mod metrics;
pub mod middleware;
pub mod overload;
pub mod periodic;
pub mod proto;
pub mod scim;
pub mod secrets;
pub mod service;
pub mod sso_http;
pub mod store;
pub mod telemetry;
pub mod well_known;

/// Tunes the global allocator (mimalloc, set by the binaries) for a long-running server: commit
/// arena memory on demand and return freed memory to the OS at once, so that idle RSS stays small
/// (with the `no_thp` build feature, see Cargo.toml). Call first thing in `main`.
pub fn tune_allocator() {
    // Option numbers of `mi_option_e` in mimalloc.h: the same in mimalloc 3.x (which libmimalloc-sys
    // builds by default) and 2.x.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setters of the allocator, called before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}
