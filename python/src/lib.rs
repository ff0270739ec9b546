//! `bertqa._native`: the Rust half of the `bertqa` Python package.
//!
//! [`pipeline::Pipeline`] wraps [`bertqa::QaPipeline`]: it loads a checkpoint and answers lists
//! of (question, context) pairs with the pipeline's keyword arguments, without the GIL while
//! the model runs. The Python half (`bertqa/__init__.py`) turns the arguments of transformers'
//! `pipeline("question-answering")` into those lists and shapes the answers as transformers
//! does.

mod errors;
mod params;
mod pipeline;

use pyo3::prelude::*;

/// The allocator of the `bertqa` binary: glibc's malloc returns large freed blocks to the OS
/// and re-faulting them costs about a quarter of a forward pass. Only this module's Rust code
/// allocates with it; Python objects keep Python's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Index of mimalloc's `purge_delay` option in the bundled mimalloc v3 (`mi_option_e` in
/// mimalloc.h), as in the binary's main.rs, whose test pins it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped, as the binary does: model passes free and reallocate the same
/// large buffers, and pages returned to the OS must be zeroed again on reuse.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it is not
        // thread-safe. This mimalloc is linked into this module alone (its symbols are not
        // exported), and this runs while the module is first imported, under the GIL, before
        // the module has started any thread or handed out any object, so no other thread can be
        // reading or writing that table.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

/// The native module. Python code imports it through the `bertqa` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    keep_freed_memory();
    m.add_class::<pipeline::Pipeline>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "DEFAULT_MAX_CONTEXT_CHARS",
        bertqa::pipeline::DEFAULT_MAX_CONTEXT_CHARS,
    )?;
    m.add(
        "SUPPORTED_MODEL_TYPES",
        bertqa::models::supported_model_types(),
    )?;
    Ok(())
}
