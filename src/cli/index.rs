//! `bertqa index`: build or extend a BM25 index of documents, or remove files from it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bertqa::index::{AddProgress, Analyzer, Index, IndexSettings};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::collection::printable;
use super::{CliError, CliResult};

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// The index folder (created when missing or empty).
    #[arg(long)]
    index: PathBuf,
    /// Files and folders: .txt, .md, .jsonl ({"id"?, "title"?, "text"} per line) and SQuAD
    /// .json; folders are walked. With --remove: indexed files or folders to drop.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Remove the files at PATHS (or under them) from the index instead of adding them.
    #[arg(long)]
    remove: bool,
    /// How a new index cuts text into terms: `english` (lower-cased, stemmed) or `plain`
    /// (lower-cased; for other languages). An existing index keeps its own.
    #[arg(long, value_enum, default_value_t = AnalyzerArg::English)]
    analyzer: AnalyzerArg,
    /// Print what was done as one JSON object.
    #[arg(long)]
    json: bool,
    /// Log more (-v: debug).
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Values of `--analyzer`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum AnalyzerArg {
    English,
    Plain,
}

pub fn run(args: IndexArgs) -> CliResult {
    super::init_logging(args.verbose, "warn", false);
    if args.remove {
        let mut index = Index::open(&args.index)?;
        let report = index.remove(&args.paths)?;
        let stats = index.stats();
        if args.json {
            let line = serde_json::json!({"removed": report, "index": stats});
            println!("{line}");
        } else {
            println!(
                "removed {} files ({} passages) from {}; it holds {} files, {} documents, {} \
                 passages",
                report.files,
                report.passages,
                printable(&args.index.display().to_string()),
                stats.files,
                stats.documents,
                stats.passages
            );
        }
        return Ok(());
    }
    let settings = IndexSettings {
        analyzer: match args.analyzer {
            AnalyzerArg::English => Analyzer::English,
            AnalyzerArg::Plain => Analyzer::Plain,
        },
    };
    for path in &args.paths {
        if !path.exists() {
            return Err(CliError::usage(format!(
                "{} does not exist; give files or folders to index",
                path.display()
            )));
        }
    }
    let mut index = Index::open_or_create(&args.index, &settings)?;
    let bar = progress_bar();
    let started = Instant::now();
    let report = index.add(&args.paths, |p| show(&bar, p))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    for skipped in &report.skipped {
        eprintln!(
            "warning: skipped {}: {}",
            printable(&skipped.path),
            printable(&skipped.reason)
        );
    }
    for warning in &report.warnings {
        eprintln!(
            "warning: {}: {}",
            printable(&warning.path),
            printable(&warning.reason)
        );
    }
    let stats = index.stats();
    if args.json {
        let line = serde_json::json!({"report": report, "index": stats, "seconds": seconds});
        println!("{line}");
        return Ok(());
    }
    println!(
        "{}: {} files added, {} updated, {} unchanged, {} removed, {} skipped, {} ignored \
         (other extensions)",
        printable(&args.index.display().to_string()),
        report.added,
        report.updated,
        report.unchanged,
        report.removed,
        report.skipped.len(),
        report.ignored
    );
    if report.passages_cut > 0 {
        println!(
            "  {} passages cut to stay within the passage bounds (see the warnings)",
            report.passages_cut
        );
    }
    println!(
        "  {} passages added from {:.1} MB read in {:.1} s ({:.1} MB/s)",
        report.passages,
        report.bytes as f64 / 1e6,
        seconds,
        report.bytes as f64 / 1e6 / seconds.max(1e-9)
    );
    println!(
        "  the index holds {} files, {} documents, {} passages",
        stats.files, stats.documents, stats.passages
    );
    Ok(())
}

/// A bar over the bytes to read (files, passages, MB/s), hidden when stderr is not a terminal.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}  {msg}  [{elapsed}]",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn show(bar: &ProgressBar, p: &AddProgress) {
    bar.set_length(p.bytes_total);
    bar.set_position(p.bytes_done);
    bar.set_message(format!(
        "{}/{} files, {} passages",
        p.files_done, p.files_total, p.passages
    ));
}
