//! The exported trace (JSONL: a header line, then one request per line), its
//! BLAKE3 hash, and the reader that replays it with errors naming file and line.

use std::io::{BufRead, Write};

use reference::Millis;
use serde::{Deserialize, Serialize};

use super::{Op, Shard};
use crate::scenario::Scenario;

/// Name and version in the first line of an exported trace.
pub const TRACE_FORMAT: &str = "redrain-trace";
/// Bumped whenever a field of [`Op`] changes meaning.
pub const TRACE_FORMAT_VERSION: u32 = 1;

/// The first line of an exported trace: what it is and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// Always [`TRACE_FORMAT`].
    pub format: String,
    /// [`TRACE_FORMAT_VERSION`].
    pub version: u32,
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The sample rate.
    pub sample_rate: f64,
    /// `i/N` when this is one shard of the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// `--requests` cap, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_limit: Option<u64>,
}

impl TraceHeader {
    /// The header of `scenario` run with `seed` (and maybe a shard).
    pub fn of(scenario: &Scenario, seed: u64, shard: Option<Shard>) -> Self {
        Self {
            format: TRACE_FORMAT.to_owned(),
            version: TRACE_FORMAT_VERSION,
            scenario: scenario.name.clone(),
            seed,
            sample_rate: scenario.sample_rate,
            shard: shard.map(|s| s.to_string()),
            request_limit: scenario.request_limit,
        }
    }
}

/// The BLAKE3 of a trace: over the JSON line of every op, each ended by `\n`
/// (exactly the body of an exported trace file).
#[derive(Debug, Clone, Default)]
pub struct TraceHasher {
    hasher: blake3::Hasher,
    ops: u64,
}

impl TraceHasher {
    /// Add one op; returns its line (without the newline).
    pub fn add(&mut self, op: &Op) -> Vec<u8> {
        // Plain data structs serialise to JSON without failing.
        let line = serde_json::to_vec(op).expect("ops serialise");
        self.hasher.update(&line);
        self.hasher.update(b"\n");
        self.ops += 1;
        line
    }

    /// Ops hashed.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// The hex digest.
    pub fn finish(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

/// Write `ops` as JSONL after `header`; returns (ops written, trace hash).
pub fn export<W: Write>(
    header: &TraceHeader,
    ops: impl Iterator<Item = Op>,
    mut out: W,
) -> std::io::Result<(u64, String)> {
    serde_json::to_writer(&mut out, header)?;
    out.write_all(b"\n")?;
    let mut hasher = TraceHasher::default();
    for op in ops {
        let line = hasher.add(&op);
        out.write_all(&line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok((hasher.ops(), hasher.finish()))
}

/// Why an exported trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A line is not what the format says.
    #[error("{path}:{line}: {message}")]
    Bad {
        /// The file.
        path: String,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// Reads an exported trace: the header, then ops one by one (lazily), checking
/// that times never go backwards.
#[derive(Debug)]
pub struct TraceReader<R> {
    path: String,
    lines: std::io::Lines<R>,
    line: u64,
    last_ms: Millis,
    /// The header line.
    pub header: TraceHeader,
}

impl<R: BufRead> TraceReader<R> {
    /// Read the header of `input` (named `path` in errors).
    pub fn new(path: &str, input: R) -> Result<Self, TraceError> {
        let mut lines = input.lines();
        let bad = |line, message: String| TraceError::Bad {
            path: path.to_owned(),
            line,
            message,
        };
        let first = match lines.next() {
            None => return Err(bad(1, "empty file: expected a trace header".to_owned())),
            Some(Err(source)) => {
                return Err(TraceError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
            Some(Ok(line)) => line,
        };
        let header: TraceHeader =
            serde_json::from_str(&first).map_err(|e| bad(1, format!("not a trace header: {e}")))?;
        if header.format != TRACE_FORMAT || header.version != TRACE_FORMAT_VERSION {
            return Err(bad(
                1,
                format!(
                    "format {} version {}; this build reads {TRACE_FORMAT} version {TRACE_FORMAT_VERSION}",
                    header.format, header.version
                ),
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            lines,
            line: 1,
            last_ms: 0,
            header,
        })
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Result<Op, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.lines.next()? {
            Ok(line) => line,
            Err(source) => {
                return Some(Err(TraceError::Io {
                    path: self.path.clone(),
                    source,
                }));
            }
        };
        self.line += 1;
        let bad = |message: String| TraceError::Bad {
            path: self.path.clone(),
            line: self.line,
            message,
        };
        let op: Op = match serde_json::from_str(&line) {
            Ok(op) => op,
            Err(e) => return Some(Err(bad(format!("not a trace op: {e}")))),
        };
        if op.at_ms < self.last_ms {
            return Some(Err(bad(format!(
                "at_ms {} is before the previous op's {}",
                op.at_ms, self.last_ms
            ))));
        }
        self.last_ms = op.at_ms;
        Some(Ok(op))
    }
}
