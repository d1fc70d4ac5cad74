//! `import swa`: swa's library from Python, and its command line as the `swa` entry point of the
//! wheel. The Python package (`python/swa/`) wraps this extension module, `swa._native`.
//!
//! The command line is compiled here from the same sources as the `swa` binary (`src/cli/`), so
//! that a Python call is that command run with the keywords as its flags: one definition of every
//! option and of every rule between options, whichever way swa is called.

#[path = "../../src/cli/mod.rs"]
mod cli;

mod arrays;
mod batches;
mod call;

use pyo3::prelude::*;

/// The `swa` command (the wheel's console entry point): `argv` with the program name first;
/// returns the exit code. Signals end the process as they end the binary.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<std::ffi::OsString>) -> u8 {
    py.detach(|| cli::main(argv))
}

/// Tells ONNX Runtime's search which Python environment swa is installed in (`sys.prefix`):
/// the interpreter's path does not say it.
#[pyfunction]
fn set_environment(prefix: std::path::PathBuf) {
    swa::runtime::locate::set_own_prefix(prefix);
}

/// The CLI's text with keywords for flags (for the tests).
#[pyfunction]
fn pythonize(text: &str) -> String {
    call::pythonize(text)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // SAFETY: as in the binary: swa's inputs must not change while a call runs (docs/formats.md,
    // "Inputs"); swa never writes them, and a call whose inputs' sizes or times changed writes
    // nothing.
    unsafe { swa::fs::allow_maps() };
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(call::call, m)?)?;
    m.add_function(wrap_pyfunction!(call::describe, m)?)?;
    m.add_function(wrap_pyfunction!(arrays::save_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(arrays::reads_in_place, m)?)?;
    m.add_function(wrap_pyfunction!(set_environment, m)?)?;
    m.add_function(wrap_pyfunction!(pythonize, m)?)?;
    m.add("VERSION", swa::VERSION)?;
    Ok(())
}
