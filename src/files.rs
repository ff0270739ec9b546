//! Temporary files of interrupted runs: what a run writes goes to a temporary named after its
//! process first and is renamed into place; a run killed before the rename leaves the temporary
//! behind, and the next run removes it.

use std::path::Path;

/// Whether process `pid` is alive. Where this cannot be told (no `/proc`), every process counts
/// as alive, so that nothing of a running process is ever removed.
pub fn process_is_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Removes the entries of `dir` (files or folders) whose names start with `prefix` and end in
/// `-{pid}` or are `{prefix}{pid}`, where process `pid` is no longer running; returns how many
/// it removed. Entries of running processes (another run writing now) and names that do not end
/// in a process id are left alone.
pub fn remove_stale_temporaries(dir: &Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_is_running(pid) {
            continue;
        }
        let path = entry.path();
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed the temporary of an interrupted run");
                removed += 1;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale temporary")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_dead_processes_go_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22 on Linux: this process cannot exist.
        let dead = 4_194_999u32;
        let own = std::process::id();
        std::fs::create_dir(dir.path().join(format!(".tmp-final-{dead}"))).unwrap();
        std::fs::write(
            dir.path()
                .join(format!(".tmp-final-{dead}/model.safetensors")),
            b"x",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join(format!(".tmp-checkpoint-12-{dead}"))).unwrap();
        std::fs::write(dir.path().join(format!(".tmp-final-{own}")), b"mine").unwrap();
        std::fs::write(dir.path().join(".tmp-final-notapid"), b"other").unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"kept").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path(), ".tmp-"), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!(".tmp-final-{own}"),
                ".tmp-final-notapid".into(),
                "model.safetensors".into()
            ]
        );
    }
}
