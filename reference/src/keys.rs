//! KV key layout in one place, so the Redis backend, shadow prefixes and
//! cleanup all agree on it. Every key names its child activity: children never
//! share budget, stock or claims.
//!
//! Redis Cluster hash tags: a Lua script may only touch keys of one hash slot, and
//! Redis hashes only the part between the first `{` and the next `}` when a key has
//! one. So every key a multi-key verb takes together carries the child's tag
//! `{c<child_id>}`: `record_token` (token record, user token list, pending queue),
//! `queue_claim` (pending, inflight) and `record_order` (order record, orders-open).
//! Token status keys carry it too, so all of one child's token traffic is on one
//! node. The other keys (budget, stock, per-user counts and groups, locks) stay
//! untagged and spread over the slots. The known limit: one child's whole token and
//! order-queue traffic lands on one slot, so one node; a hot child can only be split
//! by sharding the queues themselves (several pending keys per child).
//! Namespace prefixes (`KvOptions::prefix`) go before the key and may hold no
//! braces, so a key's hash tag stays its own.

use crate::{ActId, ChildId};

/// The hash tag that keeps one child's multi-key verbs in one Redis Cluster slot.
fn child_tag(child_id: ChildId) -> String {
    format!("{{c{child_id}}}")
}

/// Cash consumed from a child's budget, in cents.
pub fn budget(child_id: ChildId) -> String {
    format!("budget:{child_id}")
}

/// Coupons consumed from a template's stock in a child.
pub fn stock(child_id: ChildId, template_id: u64) -> String {
    format!("stock:{child_id}:{template_id}")
}

/// Coupons of a batch one user holds in a child (per-user per-batch limit).
pub fn user_batch(child_id: ChildId, batch: &str, act_id: ActId) -> String {
    format!("user-batch:{child_id}:{batch}:{act_id}")
}

/// The batch a user holds in a batch group (mutual exclusion).
pub fn user_group(child_id: ChildId, group: &str, act_id: ActId) -> String {
    format!("user-group:{child_id}:{group}:{act_id}")
}

/// The token issued for an order in a child (idempotency record of token mode).
pub fn token_record(child_id: ChildId, order_no: &str) -> String {
    format!("token:{}:{order_no}", child_tag(child_id))
}

/// A token's crediting status: absent = pending, 2 = processing, 8 = success.
pub fn token_status(child_id: ChildId, order_no: &str) -> String {
    format!("token-status:{}:{order_no}", child_tag(child_id))
}

/// The user's server-side token list (never consumed).
pub fn user_tokens(child_id: ChildId, act_id: ActId) -> String {
    format!("user-tokens:{}:{act_id}", child_tag(child_id))
}

/// Tokens waiting for the credit worker.
pub fn pending(child_id: ChildId) -> String {
    format!("pending:{}", child_tag(child_id))
}

/// Tokens claimed by a worker, scored by claim time (the compensation scan's view).
pub fn inflight(child_id: ChildId) -> String {
    format!("inflight:{}", child_tag(child_id))
}

/// The per-user withdraw lock.
pub fn withdraw_lock(child_id: ChildId, act_id: ActId) -> String {
    format!("lock:withdraw:{child_id}:{act_id}")
}

/// A coupon-pipeline order record (the idempotency record: one per order number).
pub fn order(child_id: ChildId, order_no: &str) -> String {
    format!("order:{}:{order_no}", child_tag(child_id))
}

/// Pipeline orders not yet issued or failed, scored by when they were last
/// (re)queued: the compensation scan's view.
pub fn orders_open(child_id: ChildId) -> String {
    format!("orders-open:{}", child_tag(child_id))
}

/// The durable queue an instance hands its local queues to on graceful shutdown.
/// One key (single-key verbs only); its fixed tag pins it to one known slot.
pub fn orders_handoff() -> String {
    "orders-handoff:{handoff}".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes: the first non-empty `{…}`, else all.
    fn hashed(key: &str) -> &str {
        key.find('{')
            .and_then(|open| {
                let close = open + 1 + key[open + 1..].find('}')?;
                (close > open + 1).then(|| &key[open + 1..close])
            })
            .unwrap_or(key)
    }

    #[test]
    fn keys_taken_together_share_one_hash_slot() {
        let child = 7;
        let together = [
            vec![
                token_record(child, "1_2_3_1_1"),
                user_tokens(child, 42),
                pending(child),
            ],
            vec![pending(child), inflight(child)],
            vec![order(child, "1_2_3_2_1"), orders_open(child)],
        ];
        for keys in together {
            for key in &keys {
                assert_eq!(hashed(key), "c7", "{keys:?}");
            }
        }
        assert_eq!(hashed(&token_status(child, "x")), "c7");
        assert_ne!(hashed(&pending(8)), hashed(&pending(7)), "children spread");
        assert_eq!(hashed(&budget(child)), budget(child), "untagged");
        assert_eq!(hashed(&stock(child, 701)), stock(child, 701), "untagged");
    }
}
