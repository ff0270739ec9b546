//! JSONL input files (`ask --input`, `ask --index --input`): one JSON object per line, blank
//! lines skipped, every error naming the file and line.

use std::io::BufRead;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::{CliError, CliResult};

/// Opens `path` and yields each non-blank line parsed as `T`, with its 1-based line number. A
/// line that cannot be read or parsed is an error naming `path:line`; callers stop at the first.
pub fn read_lines<T: DeserializeOwned>(
    path: &Path,
) -> CliResult<impl Iterator<Item = CliResult<(usize, T)>> + '_> {
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let lines = std::io::BufReader::new(file).lines().enumerate();
    Ok(lines.filter_map(move |(n, line)| {
        let lineno = n + 1;
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                return Some(Err(CliError::usage(format!(
                    "{}:{lineno}: cannot read line ({e}); is the file UTF-8?",
                    path.display()
                ))))
            }
        };
        if line.trim().is_empty() {
            return None;
        }
        Some(
            serde_json::from_str(&line)
                .map(|parsed| (lineno, parsed))
                .map_err(|e| CliError::usage(format!("{}:{lineno}: {e}", path.display()))),
        )
    }))
}
