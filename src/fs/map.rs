//! Input files as bytes: memory-mapped when the process allows it, read into memory otherwise.
//!
//! Mapping is what lets `swa` average 100 GB of checkpoints in a few MiB of memory, but it is
//! `unsafe` in the precise sense: while a file is mapped, a process that truncates it makes the
//! next read of a missing page fault (SIGBUS), and one that rewrites it changes bytes `swa`
//! already checked. No library can prevent either, so the choice is the process's, made once, as
//! ripgrep makes it: [`allow_maps`] is `unsafe` and its caller states why its inputs stay put. The
//! `swa` binary does so in `main` (its inputs must not change during a run: docs/formats.md; it
//! never writes them, and [`super::Stamps`] fails the run, writing nothing, if one changed). A
//! process that never calls it reads every input into memory instead: the same bytes, safely, at
//! the cost of memory.

use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;

use super::open_regular;
use crate::error::{Error, Result};

static MAPS_ALLOWED: AtomicBool = AtomicBool::new(false);

/// Lets this process memory-map the inputs it reads from now on ([`map_input`]).
///
/// # Safety
/// While the process runs, no input file it reads may be truncated or written to, by this
/// process or any other: a truncated map faults (SIGBUS) when the missing pages are read, and a
/// rewritten one changes under reads that assume it does not, both undefined behaviour.
pub unsafe fn allow_maps() {
    MAPS_ALLOWED.store(true, Ordering::Relaxed);
}

/// Whether [`allow_maps`] was called.
pub fn maps_allowed() -> bool {
    MAPS_ALLOWED.load(Ordering::Relaxed)
}

/// The bytes of an input file: mapped read-only, or read into memory.
pub enum Input {
    /// Memory-mapped ([`allow_maps`]).
    Mapped(Mmap),
    /// Read.
    Read(Vec<u8>),
}

impl Deref for Input {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Input::Mapped(m) => m,
            Input::Read(v) => v,
        }
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if matches!(self, Input::Mapped(_)) { "mapped" } else { "read" };
        write!(f, "Input({how}, {} bytes)", self.len())
    }
}

/// The bytes of the regular file `path`: memory-mapped if the process allows it ([`allow_maps`]),
/// else read into memory.
pub fn map_input(path: &Path) -> Result<Input> {
    let file = open_regular(path)?;
    if !maps_allowed() {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(|e| Error::io(path, e))?;
        return Ok(Input::Read(bytes));
    }
    // SAFETY: the map is read-only and private to this process, and the process vouched, in
    // `allow_maps`, that no input it reads is truncated or written while it runs.
    unsafe { Mmap::map(&file) }.map(Input::Mapped).map_err(|e| Error::io(path, e))
}
