//! The report renderings against a synthetic run record (`fixture.rs`): the
//! charts, the HTML and Markdown reports, key figures, comparison and
//! thresholds. One test binary, so the crate links once.

mod charts;
mod compare;
mod documents;
mod fixture;
