//! RunRecord files.

pub mod files;
