//! Service URLs for tests that need real servers (`../shared/DESIGN.md`, "Services
//! for tests"): a test asks for `REDRAIN_REDIS_URL`, `REDRAIN_REDIS_CLUSTER_URL`,
//! `REDRAIN_MYSQL_URL` or `REDRAIN_POSTGRES_URL`. Unset, the test prints that it
//! skipped; with `REDRAIN_REQUIRE_SERVICES=1` (as `.ci/run` sets) a skip is a failure.

/// The Redis URL variable.
pub const REDIS: &str = "REDRAIN_REDIS_URL";
/// The Redis Cluster URL variable (`redis+cluster://host:port,host:port,…`).
pub const REDIS_CLUSTER: &str = "REDRAIN_REDIS_CLUSTER_URL";
/// The MariaDB/MySQL URL variable.
pub const MYSQL: &str = "REDRAIN_MYSQL_URL";
/// The PostgreSQL URL variable.
pub const POSTGRES: &str = "REDRAIN_POSTGRES_URL";

/// Whether a missing service fails the test instead of skipping it.
pub fn services_required() -> bool {
    std::env::var("REDRAIN_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The URL in `var`, or `None` after printing that `test` skipped.
///
/// # Panics
/// When the variable is unset and [`services_required`] says a skip is a failure.
pub fn service_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                !services_required(),
                "{test}: {var} is not set and REDRAIN_REQUIRE_SERVICES=1"
            );
            eprintln!("{test}: skipped, {var} is not set");
            None
        }
    }
}

/// A fresh name for one test's own key prefix or database: `redrain_t<pid>_<n>_<tag>`,
/// made of lowercase letters, digits and `_` so it is valid in every backend.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(20)
        .collect();
    format!("redrain_t{}_{nanos:x}_{n}_{tag}", std::process::id())
}
