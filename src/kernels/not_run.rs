//! Tests of kernels that need instructions this CPU may lack say so on the test output, rather
//! than passing in silence: the test harness captures `eprintln!`, not writes to the stderr
//! handle, so the line shows in every `cargo test` run.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Mutex;

/// Reports, once per process, that `what` (a kernel variant, or the whole test) of `test` did
/// not run on this CPU because it lacks `lacking`.
pub(crate) fn not_run(test: &str, what: &str, lacking: &str) {
    static SAID: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let line = format!("note: {test}: {what} not run: this CPU lacks {lacking}");
    let mut said = SAID.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if said.get_or_insert_with(HashSet::new).insert(line.clone()) {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}
