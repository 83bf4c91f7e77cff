//! Degradation switches (seed 000 §4.3 and §5.1.2): one registry of named switches,
//! each with a default and a doc line, flipped at runtime. "On" means the
//! dependency is used; turning a switch off degrades as its doc line says.
//! Only switches whose effect is implemented are registered.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// A named switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Switch {
    /// Token Redis (active degrade): off → token-mode scenes issue through the sync path; users see no token, only a credit.
    TokenKv,
    /// KV idempotency pre-check (active degrade): off → skip the replay lookup before reserving; the ledger's unique order number still decides.
    IdempotencyPrecheck,
    /// Distributed lock Redis (passive degrade): off, or a lock call fails → withdraw proceeds without the per-user lock; the ledger still refuses overdrafts.
    DistributedLock,
    /// Wallet flow list (degradable): off → the wallet view shows balance and income only, no flow.
    FlowList,
    /// Force-credit on withdraw: off → withdraw takes only the credited balance; pending tokens wait for the worker.
    ForceCreditOnWithdraw,
    /// Hot-counter primary KV: off → counter reads come from the backup KV (writes still go to both).
    CounterPrimary,
    /// Ingress rate limits: off → issue requests are not limited per scene.
    IngressRateLimit,
    /// Circuit breakers: off → calls go to the ledger and the KV even after repeated failures.
    CircuitBreaker,
    /// Coupon pipeline: off → pipeline scenes issue through the sync path, one request at a time.
    CouponPipeline,
}

impl Switch {
    /// Every switch, in registry order.
    pub const ALL: [Switch; 9] = [
        Switch::TokenKv,
        Switch::IdempotencyPrecheck,
        Switch::DistributedLock,
        Switch::FlowList,
        Switch::ForceCreditOnWithdraw,
        Switch::CounterPrimary,
        Switch::IngressRateLimit,
        Switch::CircuitBreaker,
        Switch::CouponPipeline,
    ];

    /// The switch's name in configs, CLIs and the admin protocol.
    pub fn name(self) -> &'static str {
        match self {
            Switch::TokenKv => "token_kv",
            Switch::IdempotencyPrecheck => "idempotency_precheck",
            Switch::DistributedLock => "distributed_lock",
            Switch::FlowList => "flow_list",
            Switch::ForceCreditOnWithdraw => "force_credit_on_withdraw",
            Switch::CounterPrimary => "counter_primary",
            Switch::IngressRateLimit => "ingress_rate_limit",
            Switch::CircuitBreaker => "circuit_breaker",
            Switch::CouponPipeline => "coupon_pipeline",
        }
    }

    /// What turning it off does.
    pub fn doc(self) -> &'static str {
        match self {
            Switch::TokenKv => {
                "off: token-mode scenes issue through the sync path (one credit per request)"
            }
            Switch::IdempotencyPrecheck => {
                "off: skip the replay lookup before reserving; the ledger's unique order number decides"
            }
            Switch::DistributedLock => {
                "off (or lock call fails): withdraw without the per-user lock; the ledger still refuses overdrafts"
            }
            Switch::FlowList => "off: the wallet view shows balance and income only",
            Switch::ForceCreditOnWithdraw => {
                "off: withdraw takes only the credited balance; pending tokens wait for the worker"
            }
            Switch::CounterPrimary => {
                "off: hot-counter reads come from the backup KV (writes still go to both)"
            }
            Switch::IngressRateLimit => "off: issue requests are not limited per scene",
            Switch::CircuitBreaker => {
                "off: calls go to the ledger and the KV even after repeated failures"
            }
            Switch::CouponPipeline => {
                "off: pipeline scenes issue through the sync path, one request at a time"
            }
        }
    }

    /// Every switch starts on.
    pub fn default_on(self) -> bool {
        true
    }

    /// The switch with this name.
    pub fn by_name(name: &str) -> Option<Switch> {
        Switch::ALL.into_iter().find(|s| s.name() == name)
    }

    fn index(self) -> usize {
        Switch::ALL
            .iter()
            .position(|s| *s == self)
            .expect("every switch is in ALL")
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The live values.
#[derive(Debug)]
pub struct Switches {
    values: [AtomicBool; Switch::ALL.len()],
    /// Sticky: set the first time a switch goes off, never cleared.
    ever_off: [AtomicBool; Switch::ALL.len()],
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            values: Switch::ALL.map(|s| AtomicBool::new(s.default_on())),
            ever_off: Switch::ALL.map(|_| AtomicBool::new(false)),
        }
    }
}

impl Switches {
    /// Whether `switch` is on.
    pub fn is_on(&self, switch: Switch) -> bool {
        self.values[switch.index()].load(Ordering::SeqCst)
    }

    /// Flip `switch`.
    pub fn set(&self, switch: Switch, on: bool) {
        if !on {
            self.ever_off[switch.index()].store(true, Ordering::SeqCst);
        }
        self.values[switch.index()].store(on, Ordering::SeqCst);
    }

    /// Whether `switch` has been off at any time since this registry was made.
    /// Lets a hot path skip work that only matters after a degradation (e.g. the
    /// token path's ledger lookup, needed only once orders may have been
    /// sync-credited while the token KV was off).
    pub fn has_been_off(&self, switch: Switch) -> bool {
        self.ever_off[switch.index()].load(Ordering::SeqCst)
    }

    /// `(switch, on)` for every switch.
    pub fn snapshot(&self) -> Vec<(Switch, bool)> {
        Switch::ALL
            .into_iter()
            .map(|s| (s, self.is_on(s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_documented_and_flip_at_runtime() {
        let switches = Switches::default();
        for switch in Switch::ALL {
            assert_eq!(Switch::by_name(switch.name()), Some(switch));
            assert!(
                switch.doc().starts_with("off"),
                "{switch}: doc says what off does"
            );
            assert!(switches.is_on(switch));
            assert!(!switches.has_been_off(switch));
            switches.set(switch, false);
            assert!(!switches.is_on(switch));
            switches.set(switch, true);
            assert!(switches.has_been_off(switch), "{switch}: sticky");
            switches.set(switch, false);
        }
        assert_eq!(Switch::by_name("nope"), None);
        assert!(switches.snapshot().iter().all(|(_, on)| !on));
    }
}
