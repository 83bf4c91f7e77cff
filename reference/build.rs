//! Says, where `cargo test` shows it (cargo prints a build script's warnings on
//! every build, cached or not), which service URLs are unset, so which tests will
//! skip. No code is generated.

/// The variables `src/testenv.rs` reads, with what needs each.
const SERVICES: [(&str, &str); 4] = [
    ("REDRAIN_REDIS_URL", "Redis"),
    ("REDRAIN_REDIS_CLUSTER_URL", "Redis Cluster"),
    ("REDRAIN_MYSQL_URL", "MariaDB/MySQL"),
    ("REDRAIN_POSTGRES_URL", "PostgreSQL"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=REDRAIN_REQUIRE_SERVICES");
    let mut unset = Vec::new();
    for (var, what) in SERVICES {
        println!("cargo:rerun-if-env-changed={var}");
        if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
            unset.push(format!("{var} ({what})"));
        }
    }
    if !unset.is_empty() {
        println!(
            "cargo:warning=not set: {}; the tests that need them SKIP (each prints a SKIPPED line); \
             `source ci/services.sh` sets them, `REDRAIN_REQUIRE_SERVICES=1` makes a skip fail",
            unset.join(", ")
        );
    }
}
