//! Renders the test fixture (and any run records given) to a folder, to look
//! at: `cargo run -p reports --example preview -- OUT_DIR [RECORD.json ...]`.
//! Writes `<stem>-<id>.svg/.png`, `<stem>.html` and `<stem>.md` per record.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[path = "../tests/reports/fixture.rs"]
mod fixture;

fn write(dir: &Path, stem: &str, record: &reports::RunRecord) -> std::io::Result<()> {
    for chart in reports::charts(record) {
        std::fs::write(dir.join(format!("{stem}-{}.svg", chart.id)), &chart.svg)?;
        std::fs::write(dir.join(format!("{stem}-{}.png", chart.id)), chart.png())?;
    }
    std::fs::write(
        dir.join(format!("{stem}.html")),
        reports::render_html(record),
    )?;
    std::fs::write(
        dir.join(format!("{stem}.md")),
        reports::render_markdown(record, stem),
    )?;
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: preview OUT_DIR [RECORD.json ...]");
        return ExitCode::FAILURE;
    };
    let mut records = vec![("fixture".to_owned(), fixture::record())];
    for file in args {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(record) => {
                let stem = Path::new(&file)
                    .file_stem()
                    .map_or("record".into(), |s| s.to_string_lossy().into_owned());
                records.push((stem, record));
            }
            Err(error) => {
                eprintln!("{file}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(error) = std::fs::create_dir_all(&dir) {
        eprintln!("{}: {error}", dir.display());
        return ExitCode::FAILURE;
    }
    for (stem, record) in &records {
        if let Err(error) = write(&dir, stem, record) {
            eprintln!("{}: {error}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    // Compare the first two records; with none given, the fixture against a
    // slower variant of itself.
    let variant = fixture::slower_record();
    let b = records.get(1).map_or(&variant, |(_, record)| record);
    {
        let a = &records[0].1;
        let comparison = reports::compare(a, b);
        print!("{}", reports::render_comparison_text(&comparison));
        let page = reports::render_comparison_html(&comparison);
        if let Err(error) = std::fs::write(dir.join("compare.html"), page) {
            eprintln!("{}: {error}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    println!("wrote {} record(s) to {}", records.len(), dir.display());
    ExitCode::SUCCESS
}
