//! The report commands end to end through the `redrain` binary: `run --json`
//! writes the report beside the record, `report` rebuilds it, `compare` shows
//! deltas and fails on thresholds, bad input exits 2 and writes nothing; and
//! the HTML report is rendered in headless Chromium and looked at (a page
//! with charts is not blank, its charts are all drawn).

mod common;

use common::{redrain, scenarios_dir};

use std::path::{Path, PathBuf};
use std::process::Command;

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Run smoke with `requests` requests and seed `seed`, record at `json`.
fn run_smoke(json: &Path, requests: &str, seed: &str, extra: &[&str]) -> (i32, String, String) {
    let smoke = scenarios_dir().join("smoke.toml");
    let mut args = vec![
        "run",
        path(&smoke),
        "--requests",
        requests,
        "--seed",
        seed,
        "--json",
        path(json),
    ];
    args.extend_from_slice(extra);
    redrain(&args)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn run_writes_the_report_beside_the_record_and_report_rebuilds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("smoke.json");
    let (code, stdout, stderr) = run_smoke(&json, "3000", "7", &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("report: "), "{stdout}");
    let record: reports::RunRecord =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("record")).expect("json");
    let charts = reports::chart_index(&record);
    assert!(
        charts.len() >= 5,
        "smoke has data for most charts: {charts:?}"
    );
    let names = files_in(dir.path());
    for (id, _) in &charts {
        for ext in ["svg", "png"] {
            let name = format!("smoke-{id}.{ext}");
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }
    assert!(names.contains(&"smoke.html".to_owned()), "{names:?}");
    assert!(names.contains(&"smoke.md".to_owned()), "{names:?}");
    assert_eq!(
        names.len(),
        3 + 2 * charts.len(),
        "record, html, md and two files per chart, no temporaries left: {names:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for name in ["smoke.json", "smoke.html", "smoke-throughput.png"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .expect("written")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644, "{name} is readable by everyone");
        }
    }
    let html = std::fs::read_to_string(dir.path().join("smoke.html")).expect("html");
    assert_eq!(
        html.matches("<svg").count(),
        charts.len(),
        "every chart inline"
    );
    for (_, title) in &charts {
        assert!(html.contains(title.as_str()), "{title} in the HTML");
    }
    let markdown = std::fs::read_to_string(dir.path().join("smoke.md")).expect("md");
    assert!(markdown.contains("smoke-throughput.svg"), "{markdown}");

    // `report` rebuilds the same files from the record alone.
    let out = dir.path().join("again");
    let (code, stdout, stderr) = redrain(&["report", path(&json), "--out", path(&out)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.join("smoke.html")).expect("rebuilt html"),
        html,
        "the report is a pure function of the record"
    );

    // Bad input: exit 2, a clear error, nothing written.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"version\": 3, \"scenario\": 5}").expect("write");
    let out = dir.path().join("never");
    let (code, _, stderr) = redrain(&["report", path(&broken), "--out", path(&out)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("broken.json:1:") && stderr.contains("scenario"),
        "names the file, line and field: {stderr}"
    );
    assert!(!out.exists(), "nothing written for bad input");
    let (code, _, stderr) = redrain(&["report", path(&dir.path().join("absent.json"))]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("absent.json"), "{stderr}");
}

#[test]
fn compare_shows_deltas_and_thresholds_fail_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    assert_eq!(run_smoke(&a, "2000", "1", &["--no-report"]).0, 0);
    assert_eq!(run_smoke(&b, "4000", "1", &["--no-report"]).0, 0);
    assert_eq!(files_in(dir.path()), ["a.json", "b.json"], "--no-report");
    let html = dir.path().join("cmp.html");
    let (code, stdout, stderr) = redrain(&[
        "compare",
        path(&a),
        path(&b),
        "--html",
        path(&html),
        "--fail-if",
        "delta.requests < 0",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("requests"), "{stdout}");
    assert!(
        stdout.contains("2000") && stdout.contains("4000"),
        "{stdout}"
    );
    let page = std::fs::read_to_string(&html).expect("comparison html");
    assert!(page.matches("<svg").count() >= 3, "overlay charts");

    // Twice the requests: the threshold on the delta fires, exit 1.
    let (code, stdout, _) = redrain(&[
        "compare",
        path(&a),
        path(&b),
        "--fail-if",
        "delta_pct.requests > 50",
    ]);
    assert_eq!(code, 1, "{stdout}");
    // A typo in a threshold is bad input, before any work.
    let (code, _, stderr) = redrain(&[
        "compare",
        path(&a),
        path(&b),
        "--fail-if",
        "credit_dleay_ms_p99 > 5",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("credit_dleay_ms_p99"), "{stderr}");

    // A run's own thresholds: 2000 smoke requests credit with a p99 of ~100 ms.
    let c = dir.path().join("c.json");
    let (code, stdout, _) = run_smoke(
        &c,
        "2000",
        "1",
        &["--no-report", "--fail-if", "credit_delay_ms_p99 > 20"],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("reproduce with"), "{stdout}");
    assert!(
        stdout.contains("--fail-if \"credit_delay_ms_p99 > 20\"   # redrain"),
        "the reproduce command carries the threshold that failed: {stdout}"
    );

    // The record's folder is made before the run (nothing lost at its end).
    let nested = dir.path().join("new/deeper/d.json");
    assert_eq!(run_smoke(&nested, "500", "1", &["--no-report"]).0, 0);
    assert!(nested.exists());
    // A folder in the way of a report file: refused before anything is written.
    let e = dir.path().join("e.json");
    std::fs::create_dir_all(dir.path().join("e-throughput.png")).expect("mkdir");
    let (code, stdout, stderr) = run_smoke(&e, "500", "1", &[]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("a folder of that name is in the way"),
        "{stderr}"
    );
    assert!(
        stdout.contains("I1 idempotency"),
        "the summary shows anyway: {stdout}"
    );
    assert!(
        !dir.path().join("e.html").exists(),
        "no report half written"
    );
    let (code, stdout, _) = run_smoke(
        &c,
        "2000",
        "1",
        &["--no-report", "--fail-if", "credit_delay_ms_p99 > 86400000"],
    );
    assert_eq!(code, 0, "{stdout}");
}

/// Chromium from Debian (`/usr/bin/chromium`) or `REDRAIN_CHROMIUM`.
fn chromium() -> Option<PathBuf> {
    std::env::var_os("REDRAIN_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")))
        .filter(|p| p.exists())
}

/// Share of pixels that are not (near) white, in rows `rows`.
fn inked_share(png: &[u8], rows: std::ops::Range<u32>) -> f64 {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buffer = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buffer).expect("a frame");
    let channels = info.color_type.samples();
    let (width, height) = (info.width, info.height);
    let mut inked = 0u64;
    let mut total = 0u64;
    for y in rows.start.min(height)..rows.end.min(height) {
        for x in 0..width {
            let at = ((y * width + x) as usize) * channels;
            let pixel = &buffer[at..at + 3];
            total += 1;
            if pixel.iter().any(|&c| c < 235) {
                inked += 1;
            }
        }
    }
    inked as f64 / total.max(1) as f64
}

#[test]
fn the_html_report_renders_in_headless_chromium_with_its_charts() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("REDRAIN_REQUIRE_SERVICES").is_none(),
            "REDRAIN_REQUIRE_SERVICES is set but Chromium is not installed (apt-get install chromium)"
        );
        eprintln!("SKIPPED: no Chromium (/usr/bin/chromium or REDRAIN_CHROMIUM)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("smoke.json");
    assert_eq!(run_smoke(&json, "3000", "7", &[]).0, 0);
    let shot = dir.path().join("shot.png");
    let profile = dir.path().join("chromium-profile");
    let output = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1200,3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!(
            "file://{}",
            dir.path().join("smoke.html").display()
        ))
        .output()
        .expect("start chromium");
    assert!(
        shot.exists(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot");
    // The top (verdicts, header) has text; the chart area is drawn, not blank.
    let top = inked_share(&png, 0..400);
    let charts = inked_share(&png, 400..3000);
    assert!(top > 0.01, "the header and verdicts show ({top:.4} inked)");
    assert!(charts > 0.03, "the charts are drawn ({charts:.4} inked)");
    if let Some(keep) = std::env::var_os("REDRAIN_SCREENSHOT_OUT") {
        std::fs::copy(&shot, keep).expect("keep the screenshot");
    }
}
