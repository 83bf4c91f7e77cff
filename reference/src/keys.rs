//! KV key layout in one place, so the Redis backend, shadow prefixes and
//! cleanup all agree on it. Every key names its child activity: children never
//! share budget, stock or claims.

use crate::{ActId, ChildId};

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
    format!("token:{child_id}:{order_no}")
}

/// A token's crediting status: absent = pending, 2 = processing, 8 = success.
pub fn token_status(child_id: ChildId, order_no: &str) -> String {
    format!("token-status:{child_id}:{order_no}")
}

/// The user's server-side token list (never consumed).
pub fn user_tokens(child_id: ChildId, act_id: ActId) -> String {
    format!("user-tokens:{child_id}:{act_id}")
}

/// Tokens waiting for the credit worker.
pub fn pending(child_id: ChildId) -> String {
    format!("pending:{child_id}")
}

/// Tokens claimed by a worker, scored by claim time (the compensation scan's view).
pub fn inflight(child_id: ChildId) -> String {
    format!("inflight:{child_id}")
}

/// The per-user withdraw lock.
pub fn withdraw_lock(child_id: ChildId, act_id: ActId) -> String {
    format!("lock:withdraw:{child_id}:{act_id}")
}

/// A coupon-pipeline order record (the idempotency record: one per order number).
pub fn order(child_id: ChildId, order_no: &str) -> String {
    format!("order:{child_id}:{order_no}")
}

/// Pipeline orders not yet issued or failed, scored by when they were last
/// (re)queued: the compensation scan's view.
pub fn orders_open(child_id: ChildId) -> String {
    format!("orders-open:{child_id}")
}

/// The durable queue an instance hands its local queues to on graceful shutdown.
pub fn orders_handoff() -> String {
    "orders-handoff".to_owned()
}
