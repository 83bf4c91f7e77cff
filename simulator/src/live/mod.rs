//! Live traffic against a server speaking protocol `/v1`: the client, the
//! open-model driver, the load (`redrain load`), conformance (`redrain conform`),
//! the final state read from a target's audit export, and the reference server a
//! scenario serves (`redrain serve`), and conform's nemesis that kills and
//! restarts a target process. Never virtual time.

pub mod client;
pub mod conform;
pub mod driver;
pub mod load;
pub mod nemesis;
pub mod serve;
pub mod state;

/// Run one goose scenario of `transaction` against `host` with `users` users
/// (all started in the first second) for `run_time_s` seconds, quietly and
/// without goose's control ports. Returns goose's (requests, failures).
pub(crate) async fn run_goose(
    transaction: goose::goose::Transaction,
    host: &str,
    users: usize,
    run_time_s: usize,
) -> anyhow::Result<(u64, u64)> {
    use goose::prelude::{GooseAttack, GooseDefault, GooseDefaultType as _};
    let metrics = GooseAttack::initialize_with_config(goose::config::GooseConfiguration::default())
        .map_err(|e| anyhow::anyhow!("starting goose: {e}"))?
        .register_scenario(goose::goose::Scenario::new("redrain").register_transaction(transaction))
        .set_default(GooseDefault::Host, host)
        .and_then(|a| a.set_default(GooseDefault::Users, users))
        .and_then(|a| a.set_default(GooseDefault::IncreaseRate, users.to_string().as_str()))
        .and_then(|a| a.set_default(GooseDefault::RunTime, run_time_s))
        .and_then(|a| a.set_default(GooseDefault::NoPrintMetrics, true))
        .and_then(|a| a.set_default(GooseDefault::NoResetMetrics, true))
        // No telnet control port (5116); goose 0.19 opens no WebSocket one
        // unless asked, and warns when told not to.
        .and_then(|a| a.set_default(GooseDefault::NoTelnet, true))
        .and_then(|a| a.set_default(GooseDefault::Quiet, 1usize))
        .map_err(|e| anyhow::anyhow!("configuring goose: {e}"))?
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("goose failed: {e}"))?;
    Ok(metrics.requests.values().fold((0, 0), |(r, f), m| {
        (
            r + (m.success_count + m.fail_count) as u64,
            f + m.fail_count as u64,
        )
    }))
}
