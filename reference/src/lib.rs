//! The redrain reference wallet: the design of the Spring-Festival case studies
//! (activity tree, order-number idempotency, coupon stock control, budgets and caps)
//! over small storage traits with embedded backends.
//!
//! This crate must never read the wall clock (outside [`testenv`], which names
//! test databases, and [`http::clock`], the server's shell around [`clock::Clock`]) or an OS random source, and never
//! know about the simulator: time comes from an injected [`clock::Clock`], and
//! everything random is decided by the caller.

pub mod clock;
pub mod config;
pub mod counter;
pub mod http;
pub mod keys;
pub mod kv;
pub mod ledger;
pub mod order_no;
pub mod pipeline;
pub mod stability;
pub mod switches;
pub mod testenv;
pub mod token;
pub mod wallet;
pub mod worker;

pub use clock::{Clock, ManualClock, Millis};
pub use config::{ActivityTree, ConfigError};
pub use order_no::{AwardType, OrderNo, OrderNoError};
pub use wallet::Wallet;

/// A user's account id, shared by the eight apps (the seed's `actID`).
pub type ActId = u64;
/// A child activity (internal test, gray release, formal); accounts, budgets and
/// stock are kept per child.
pub type ChildId = u64;
/// A parent activity: what upstream names in every request.
pub type ActivityId = u64;

/// `url` with any password replaced by `***`, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("mysql://root:s3cret@db:3306/test"),
            "mysql://root:***@db:3306/test"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(redact_url("memory"), "memory");
    }
}
