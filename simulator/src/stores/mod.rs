//! Stores.

pub mod meter;
