//! JSON result files (predictions, reports) written so that a killed run never leaves one
//! half-written: each goes to a synced temporary beside its path and is renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::ser::{Serialize, Serializer};
use serde_json::Value;

use super::{CliError, CliResult};

/// Fails early (before hours of work) when `path` cannot be created: its folder must exist.
pub(super) fn check_writable(path: &Path) -> CliResult {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(CliError::usage(format!(
            "cannot write {}: folder {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(CliError::usage(format!(
            "cannot write {}: it is a folder; give a file name",
            path.display()
        )));
    }
    Ok(())
}

/// A JSON object whose keys keep the order given (dataset order in prediction files).
pub(super) struct Ordered<'a>(pub(super) Vec<(&'a str, Value)>);

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Prefix of the temporary written beside `path` before it is renamed over it; a killed run
/// leaves `{prefix}{pid}` behind, which the next run removes.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    format!(".{name}.tmp-")
}

pub(super) fn write_error(path: &Path, e: &dyn std::fmt::Display) -> CliError {
    CliError {
        message: format!("cannot write {}: {e}", path.display()),
        code: 1,
    }
}

/// Writes `value` as JSON to a synced temporary file beside `path` and returns the
/// temporary's path; [`commit`] renames it into place.
pub(super) fn write_temporary(path: &Path, value: &impl Serialize) -> CliResult<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let prefix = temp_prefix(path);
    bertqa::files::remove_stale_temporaries(dir.unwrap_or(Path::new(".")), &prefix);
    let tmp = path.with_file_name(format!("{prefix}{}", std::process::id()));
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let file = std::fs::File::create(&tmp)?;
        let mut writer = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut writer, value)?;
        writer.write_all(b"\n")?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    })();
    result.map(|()| tmp.clone()).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_error(path, &e)
    })
}

/// Writes `value` as JSON to a temporary file beside `path`, then renames it over `path`, so
/// that `path` is never left half-written.
pub(super) fn write_json_atomically(path: &Path, value: &impl Serialize) -> CliResult {
    let tmp = write_temporary(path, value)?;
    commit(&tmp, path)
}

/// Renames a temporary of [`write_temporary`] over `path`.
pub(super) fn commit(tmp: &Path, path: &Path) -> CliResult {
    std::fs::rename(tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        write_error(path, &e)
    })
}
