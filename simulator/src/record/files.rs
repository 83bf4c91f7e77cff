//! Writing a run's report files next to its record: the self-contained HTML
//! report, the Markdown summary and every chart as SVG and PNG. Every file is
//! rendered and written to a temporary file in the target folder first, and
//! only renamed into place once all of them were written, so a failed render
//! or write leaves nothing behind; what would stop a rename (a folder in the
//! way) is refused before anything is written. The renames themselves are
//! one per file, not one for the set: a crash between them can leave a mix.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use reports::RunRecord;

/// The files one report consists of.
#[derive(Debug, Clone, Default)]
pub struct ReportFiles {
    /// The HTML report (charts inline).
    pub html: PathBuf,
    /// The Markdown summary (links the chart files).
    pub markdown: PathBuf,
    /// Every chart, SVG then PNG.
    pub charts: Vec<PathBuf>,
}

impl ReportFiles {
    /// Every path, HTML first.
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.html, &self.markdown].into_iter().chain(&self.charts)
    }
}

/// Read a `RunRecord` JSON file, with an error naming the file and what is wrong.
pub fn read_record(path: &Path) -> anyhow::Result<RunRecord> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    let record: RunRecord = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.inner();
        anyhow::anyhow!(
            "{}:{}:{}: {}: {} (is this a RunRecord written by `redrain run --json`?)",
            path.display(),
            inner.line(),
            inner.column(),
            e.path(),
            inner
        )
    })?;
    anyhow::ensure!(
        record.version <= reports::RUN_RECORD_VERSION,
        "{}: RunRecord version {} is newer than this build reads ({})",
        path.display(),
        record.version,
        reports::RUN_RECORD_VERSION
    );
    if record.version < reports::RUN_RECORD_VERSION {
        eprintln!(
            "note: {} is a version {} RunRecord (this build writes {}): fields added since read as empty, so some charts may be missing",
            path.display(),
            record.version,
            reports::RUN_RECORD_VERSION
        );
    }
    Ok(record)
}

/// Write the record's report into `dir` under `stem` (`<stem>.html`,
/// `<stem>.md`, `<stem>-<chart>.svg|png`).
pub fn write_report(record: &RunRecord, dir: &Path, stem: &str) -> anyhow::Result<ReportFiles> {
    let mut files = Vec::new();
    let charts = reports::charts(record);
    files.push((
        dir.join(format!("{stem}.html")),
        reports::html::render_html(record).into_bytes(),
    ));
    files.push((
        dir.join(format!("{stem}.md")),
        reports::markdown::render_markdown(record, stem).into_bytes(),
    ));
    for chart in &charts {
        files.push((
            dir.join(format!("{stem}-{}.svg", chart.id)),
            chart.svg.clone().into_bytes(),
        ));
        files.push((dir.join(format!("{stem}-{}.png", chart.id)), chart.png()));
    }
    write_all_or_nothing(dir, &files)?;
    let mut paths = files.into_iter().map(|(path, _)| path);
    Ok(ReportFiles {
        html: paths.next().expect("the HTML file is first"),
        markdown: paths.next().expect("the Markdown file is second"),
        charts: paths.collect(),
    })
}

/// The report beside a record file: same folder, the record's file stem.
pub fn write_report_beside(record: &RunRecord, json_path: &Path) -> anyhow::Result<ReportFiles> {
    let (dir, stem) = dir_and_stem(json_path);
    write_report(record, &dir, &stem)
}

/// The folder and file stem of an output path (`.` and `run` when absent).
pub fn dir_and_stem(path: &Path) -> (PathBuf, String) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("run")
        .to_owned();
    (dir, stem)
}

/// Write one file through a temporary beside it, then rename: a crash leaves
/// no half file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (dir, _) = dir_and_stem(path);
    let mut file = output_file_in(&dir)?;
    file.write_all(bytes)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Write every `(path, bytes)` to a temporary file in `dir`, then rename them
/// all into place; on any error nothing is renamed (the temporaries go away).
pub fn write_all_or_nothing(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // What would stop a rename half way, refused before anything is written.
    for (path, _) in files {
        anyhow::ensure!(
            !path.is_dir(),
            "cannot write {}: a folder of that name is in the way",
            path.display()
        );
    }
    let mut written = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let mut file =
            output_file_in(dir).with_context(|| format!("writing {}", path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.flush())
            .with_context(|| format!("writing {}", path.display()))?;
        written.push((file, path));
    }
    for (file, path) in written {
        file.persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A temporary file in `dir` to rename over an output: readable by everyone
/// (`0644`, as a plain create would leave it under the usual umask), not the
/// `0600` a temporary file gets by default.
pub fn output_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir)
}
