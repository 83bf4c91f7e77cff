//! Service URLs for tests that need real servers (`../shared/DESIGN.md`, "Services
//! for tests"): a test asks for `REDRAIN_REDIS_URL`, `REDRAIN_REDIS_CLUSTER_URL`,
//! `REDRAIN_MYSQL_URL` or `REDRAIN_POSTGRES_URL`. Unset, the test prints a
//! `SKIPPED` line past the harness's output capture (and the build script warns of
//! every unset variable at the top of `cargo test`); with
//! `REDRAIN_REQUIRE_SERVICES=1` (as `.ci/run` sets) a skip is a failure.

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
            // Straight to the process's stderr, past the test harness's capture,
            // so a skip shows in `cargo test`'s output and not only in a failure's.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test}: {var} is not set (REDRAIN_REQUIRE_SERVICES=1 makes this a failure)"
            );
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

/// `url` with its database replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> String {
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

/// A TCP proxy on loopback in front of a service, for fault tests: [`TcpProxy::cut`]
/// drops every open connection and turns new ones away (the server "went down"
/// or restarted mid-call); [`TcpProxy::restore`] lets connections through again.
/// The shared servers stay up for everyone else.
#[derive(Debug)]
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    state: Arc<ProxyState>,
    accept: tokio::task::AbortHandle,
}

#[derive(Debug, Default)]
struct ProxyState {
    up: std::sync::atomic::AtomicBool,
    links: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

use std::sync::Arc;

impl TcpProxy {
    /// Listen on an ephemeral loopback port and forward to `target` (`host:port`).
    /// Must be called inside a tokio runtime, which runs the proxy's tasks.
    pub async fn start(target: &str) -> std::io::Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ProxyState::default());
        state.up.store(true, Ordering::SeqCst);
        let target = target.to_owned();
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !shared.up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut links) = shared.links.lock() {
                    links.retain(|l| !l.is_finished());
                    links.push(link.abort_handle());
                }
            }
        })
        .abort_handle();
        Ok(Self {
            addr,
            state,
            accept,
        })
    }

    /// `url` with its `host:port` replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        let (userinfo, hostpart) = match rest.rsplit_once('@') {
            Some((userinfo, hostpart)) => (Some(userinfo), hostpart),
            None => (None, rest),
        };
        let tail_at = hostpart.find(['/', '?']).unwrap_or(hostpart.len());
        let tail = &hostpart[tail_at..];
        match userinfo {
            Some(userinfo) => format!("{scheme}://{userinfo}@{}{tail}", self.addr),
            None => format!("{scheme}://{}{tail}", self.addr),
        }
    }

    /// The service's `host:port` in `url`.
    pub fn target_of(url: &str) -> Option<String> {
        let rest = url.split_once("://")?.1;
        let hostpart = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let end = hostpart.find(['/', '?']).unwrap_or(hostpart.len());
        Some(hostpart[..end].to_owned())
    }

    /// Drop every open connection and turn new ones away.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.state.up.store(false, Ordering::SeqCst);
        if let Ok(mut links) = self.state.links.lock() {
            for link in links.drain(..) {
                link.abort();
            }
        }
    }

    /// Let connections through again.
    pub fn restore(&self) {
        self.state
            .up
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
