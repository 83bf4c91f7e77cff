//! The trace: deterministic from (scenario, seed), shards that partition it
//! exactly, sampling that keeps whole users, rate curves that send what they
//! integrate to, follow-ups in time order, and export/replay that round-trips.

mod common;

use common::load;

use std::collections::BTreeSet;

use simulator::options::{RunOptions, effective_scenario};
use simulator::scenario::Scenario;
use simulator::trace::{Op, Request, Shard, Trace, TraceHasher, TraceHeader, TraceReader, export};

/// `name` at `sample`, its trace capped at `limit` requests.
fn small(name: &str, sample: f64, limit: u64) -> Scenario {
    effective_scenario(
        &load(name),
        &RunOptions {
            sample_rate: Some(sample),
            requests: Some(limit),
            ..RunOptions::default()
        },
    )
}

fn hash(ops: &[Op]) -> String {
    let mut hasher = TraceHasher::default();
    for op in ops {
        hasher.add(op);
    }
    hasher.finish()
}

#[test]
fn same_scenario_and_seed_give_the_same_trace_another_seed_another() {
    let scenario = small("red-packet-rain.toml", 0.0005, 20_000);
    let a: Vec<Op> = Trace::new(&scenario, 1).collect();
    let b: Vec<Op> = Trace::new(&scenario, 1).collect();
    let c: Vec<Op> = Trace::new(&scenario, 2).collect();
    assert_eq!(a.len(), 20_000);
    assert_eq!(hash(&a), hash(&b));
    assert_ne!(hash(&a), hash(&c));
    assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "time order");
}

#[test]
fn shards_partition_the_trace_exactly() {
    let scenario = small("spring-festival-eve.toml", 0.0002, 30_000);
    let full: Vec<Op> = Trace::new(&scenario, 7).collect();
    let n = 4;
    let mut merged = 0;
    let mut users_seen: Vec<BTreeSet<u64>> = Vec::new();
    for index in 0..n {
        let shard = Shard { index, count: n };
        let part: Vec<Op> = Trace::new(&scenario, 7).with_shard(Some(shard)).collect();
        // Exactly the full trace's ops of this shard, in the same order.
        let expected: Vec<&Op> = full.iter().filter(|op| shard.holds(op.act_id)).collect();
        assert_eq!(part.iter().collect::<Vec<_>>(), expected, "shard {shard}");
        merged += part.len();
        users_seen.push(part.iter().map(|op| op.act_id).collect());
    }
    assert_eq!(merged, full.len(), "every op in exactly one shard");
    for i in 0..users_seen.len() {
        for j in i + 1..users_seen.len() {
            assert!(
                users_seen[i].is_disjoint(&users_seen[j]),
                "a user in two shards"
            );
        }
    }
    assert!(
        users_seen.iter().all(|u| !u.is_empty()),
        "every shard gets users"
    );
}

#[test]
fn a_sample_is_a_fixed_share_of_users_spread_over_the_act_ids() {
    use simulator::trace::Sample;
    for (users, rate) in [
        (1000u64, 1.0),
        (1000, 0.1),
        (999_983, 0.003),
        (7, 0.5),
        (300_000_000, 0.0002),
    ] {
        let sample = Sample::new(users, rate, 42);
        let expected = (users as f64 * rate).round() as u64;
        assert!(
            sample.size().abs_diff(expected) <= 1,
            "{users} at {rate}: {}",
            sample.size()
        );
        let mut seen = BTreeSet::new();
        for j in 1..=sample.size().min(20_000) {
            let act_id = sample.act_id(j);
            assert!((1..=users).contains(&act_id));
            assert!(sample.contains(act_id), "{act_id} drawn but not contained");
            assert!(seen.insert(act_id), "{act_id} twice");
        }
        if users <= 1000 {
            let members = (1..=users).filter(|a| sample.contains(*a)).count() as u64;
            assert_eq!(members, sample.size(), "{users} at {rate}");
        }
    }
    // The most active users are not simply act_ids 1, 2, 3.
    let sample = Sample::new(1_000_000, 1.0, 42);
    assert!((1..=3).map(|j| sample.act_id(j)).any(|a| a > 3));
}

#[test]
fn shard_specs_parse_and_bad_ones_are_refused() {
    assert_eq!("2/8".parse::<Shard>(), Ok(Shard { index: 2, count: 8 }));
    for bad in ["8/8", "1", "a/2", "1/0", "-1/2"] {
        let err = bad.parse::<Shard>().expect_err(bad);
        assert!(err.contains("i/N"), "{err}");
    }
}

#[test]
fn sampling_keeps_whole_users_and_scales_the_rate() {
    let full = small("fireworks.toml", 0.001, u64::MAX);
    let tenth = small("fireworks.toml", 0.0001, u64::MAX);
    let a: Vec<Op> = Trace::new(&full, 3).collect();
    let b: Vec<Op> = Trace::new(&tenth, 3).collect();
    let sample = Trace::new(&tenth, 3).sample().clone();
    assert!(
        b.iter().all(|op| sample.contains(op.act_id)),
        "only users of the sample"
    );
    assert!(
        !a.iter().all(|op| sample.contains(op.act_id)),
        "a larger sample has more users"
    );
    // The phase integrates to peak × shape × 60 s × sample.
    let expected = full.phases[0].expected_requests() * 0.001;
    let got = a.len() as f64;
    assert!(
        (got - expected).abs() / expected < 0.02,
        "sent {got}, the curve integrates to {expected:.0}"
    );
    let ratio = b.len() as f64 / a.len() as f64;
    assert!(
        (0.08..0.12).contains(&ratio),
        "a tenth of the sample sends {ratio:.3}"
    );
}

#[test]
fn a_plateau_sends_its_rate_and_a_count_phase_its_count() {
    let smoke = load("smoke.toml");
    let ops: Vec<Op> = Trace::new(&smoke, smoke.seed).collect();
    assert_eq!(
        ops.len() as u64,
        smoke.phases[0].count.expect("smoke is a count phase")
    );
    let first = ops.first().expect("ops").at_ms;
    let last = ops.last().expect("ops").at_ms;
    assert_eq!(first, smoke.start_ms);
    assert!(last < smoke.start_ms + smoke.duration_ms);
}

#[test]
fn wallet_opens_and_withdraws_follow_the_users_awards() {
    let scenario = small("card-collection.toml", 0.0005, 200_000);
    let ops: Vec<Op> = Trace::new(&scenario, 11).collect();
    let mut awarded = BTreeSet::new();
    let mut views = 0;
    let mut withdraws = 0;
    for op in &ops {
        match &op.request {
            Request::Issue(_) => {
                awarded.insert(op.act_id);
            }
            Request::View { act_id } => {
                assert_eq!(*act_id, op.act_id);
                assert!(
                    awarded.contains(act_id),
                    "a view before any award of {act_id}"
                );
                views += 1;
            }
            Request::Withdraw(w) => {
                assert_eq!(w.act_id, op.act_id);
                assert!(awarded.contains(&w.act_id));
                withdraws += 1;
            }
        }
    }
    assert!(
        views > 0 && withdraws > 0,
        "views {views}, withdraws {withdraws}"
    );
}

#[test]
fn export_then_read_gives_the_same_ops_and_hash() {
    let scenario = small("red-packet-rain.toml", 0.0005, 5_000);
    let ops: Vec<Op> = Trace::new(&scenario, 5).collect();
    let header = TraceHeader::of(&scenario, 5, None);
    let mut bytes = Vec::new();
    let (count, exported_hash) = export(&header, ops.iter().cloned(), &mut bytes).expect("export");
    assert_eq!(count, 5_000);
    assert_eq!(exported_hash, hash(&ops));
    // The hash is BLAKE3 of the body after the header line.
    let body_start = bytes.iter().position(|b| *b == b'\n').expect("header line") + 1;
    assert_eq!(
        blake3::hash(&bytes[body_start..]).to_hex().to_string(),
        exported_hash
    );
    let reader = TraceReader::new("mem", std::io::Cursor::new(bytes)).expect("header");
    assert_eq!(reader.header, header);
    let back: Vec<Op> = reader.map(|op| op.expect("op")).collect();
    assert_eq!(back, ops);
}

#[test]
fn a_damaged_trace_file_names_the_line() {
    let scenario = small("smoke.toml", 1.0, 10);
    let ops: Vec<Op> = Trace::new(&scenario, 5).collect();
    let mut bytes = Vec::new();
    export(
        &TraceHeader::of(&scenario, 5, None),
        ops.into_iter(),
        &mut bytes,
    )
    .expect("export");
    let mut text = String::from_utf8(bytes).expect("utf8");
    text.push_str("{\"at_ms\": 1, \"act_id\": 2}\n");
    let reader = TraceReader::new("t.jsonl", std::io::Cursor::new(text)).expect("header");
    let err = reader
        .map(|op| op.map(|_| ()))
        .collect::<Result<Vec<()>, _>>()
        .expect_err("the last line is bad");
    assert!(err.to_string().starts_with("t.jsonl:12:"), "{err}");
    let err = TraceReader::new("h.jsonl", std::io::Cursor::new("{}\n")).expect_err("bad header");
    assert!(err.to_string().contains("h.jsonl:1"), "{err}");
}
