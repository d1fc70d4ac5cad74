//! Files: read-only maps of inputs, outputs staged in temporary files beside their targets and
//! published by rename, and the check that an output is not also an input.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Memory-maps `path` read-only.
pub fn map_file(path: &Path) -> Result<Mmap> {
    let file = open_regular(path)?;
    // SAFETY: the map is read-only and private to this process. Another process truncating or
    // rewriting an input while it is read is undefined behaviour, as for every mmap-based reader
    // (safetensors, numpy's memmap); inputs are never written by swa itself.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The directory a relative or bare file name lives in (`.` for `out.onnx`).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Creates a temporary file in the directory of `target`, so that a rename publishes it atomically.
pub fn temp_beside(target: &Path) -> Result<NamedTempFile> {
    let dir = parent_dir(target);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, std::io::Error::new(e.kind(), format!("cannot create the output here: {e}"))))
}

/// Writes `bytes` into a temporary file beside `path`, flushed, for the caller to rename.
pub fn stage_file(path: &Path, bytes: &[u8]) -> Result<NamedTempFile> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    Ok(tmp)
}

/// Renames a staged file to its target.
pub fn publish(staged: NamedTempFile, path: &Path) -> Result<()> {
    staged.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Writes a small file atomically (temporary file beside it, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    publish(stage_file(path, bytes)?, path)
}

fn canonical_target(path: &Path) -> Option<PathBuf> {
    Some(parent_dir(path).canonicalize().ok()?.join(path.file_name()?))
}

/// Refuses to write `output` over one of `inputs`.
pub fn refuse_overwrite(output: &Path, inputs: &[&Path]) -> Result<()> {
    let Some(target) = canonical_target(output) else { return Ok(()) };
    for input in inputs {
        if input.canonicalize().ok().as_deref() == Some(target.as_path()) {
            return Err(Error::usage(format!(
                "output {} is also an input: refusing to overwrite it",
                output.display()
            )));
        }
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file (following symlinks). Anything else is
/// refused before it is opened: opening a FIFO for reading blocks until a writer comes, and a
/// directory or a device fails later with an unhelpful message (`No such device`).
pub fn open_regular(path: &Path) -> Result<File> {
    let not_regular =
        |kind: std::fs::FileType| Error::format(path, format!("is {}, not a regular file", describe_file_type(kind)));
    let kind = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.file_type();
    if !kind.is_file() {
        return Err(not_regular(kind));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // Replaced between the two looks: check what was actually opened.
    let kind = file.metadata().map_err(|e| Error::io(path, e))?.file_type();
    if !kind.is_file() {
        return Err(not_regular(kind));
    }
    Ok(file)
}

/// Reads a whole regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open_regular(path)?, &mut bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}
