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

/// A database of its own on the MariaDB/MySQL or PostgreSQL server `server_url`
/// names (any database on it): created empty, dropped by [`ScratchDatabase::drop_now`].
#[derive(Debug)]
pub struct ScratchDatabase {
    server_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("", base));
    let host = rest.split_once('/').map_or(rest, |(host, _)| host);
    let mut out = format!("{scheme}://{host}/{name}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

async fn admin_execute(server_url: &str, statement: String) -> Result<(), String> {
    use sqlx::Connection as _;
    let fail = |e: sqlx::Error| format!("{}: {e}", crate::redact_url(server_url));
    if server_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(server_url)
            .await
            .map_err(fail)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .map_err(fail)?;
        conn.close().await.map_err(fail)?;
    } else {
        let mut conn = sqlx::MySqlConnection::connect(server_url)
            .await
            .map_err(fail)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .map_err(fail)?;
        conn.close().await.map_err(fail)?;
    }
    Ok(())
}

impl ScratchDatabase {
    /// Create a fresh, empty database named after `tag` on the server.
    pub async fn create(server_url: &str, tag: &str) -> Result<Self, String> {
        let name = unique_name(tag);
        admin_execute(server_url, format!("CREATE DATABASE {name}")).await?;
        Ok(Self {
            server_url: server_url.to_owned(),
            url: with_database(server_url, &name),
            name,
        })
    }

    /// Drop the database (connections to it must be closed first on PostgreSQL).
    pub async fn drop_now(self) -> Result<(), String> {
        let statement = if self.server_url.starts_with("postgres") {
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
        } else {
            format!("DROP DATABASE IF EXISTS {}", self.name)
        };
        admin_execute(&self.server_url, statement).await
    }
}
