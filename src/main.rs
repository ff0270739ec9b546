//! The `bertqa` command-line tool.

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Index of mimalloc's `purge_delay` option in the bundled mimalloc v3 (`mi_option_e` in
/// mimalloc.h; the crate does not export it as a constant). Pinned by Cargo.lock and checked
/// by the test below.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped instead of returning it to the OS after a second: model passes free
/// and reallocate the same large buffers over and over, and the OS must zero every returned
/// page again on reuse (a quarter of a training step). Peak memory is unchanged; the process
/// just keeps it. `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an integer in mimalloc's option table. Its only caveat
        // is that it is not thread-safe, and this runs first thing in `main`, before any other
        // thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    cli::main()
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_delay_index_names_the_purge_delay_option() {
        // SAFETY: reads mimalloc's option table; no other test touches mimalloc options.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // 1000 ms is purge_delay's default in mimalloc v3 (the neighbouring options default to
        // 1 and 0), unless the environment overrides it.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(default, 1000);
        }
    }
}
