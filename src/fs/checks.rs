//! Checks before anything is written: an output is a regular file (or nothing yet) in a
//! directory, not an input, not named twice; inputs do not change while they are read.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::parent_dir;
use crate::error::{Error, Result};

/// Fails unless `path` can be written as a regular file: it does not exist or is one (never a
/// symbolic link, directory, FIFO or device, which are kept as they are), and its directory exists
/// (commands create it first with [`super::OutputDirs`]).
pub fn check_output(path: &Path) -> Result<()> {
    check_file_name(path)?;
    let dir = parent_dir(path);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "cannot create the output here: not a directory",
                ),
            ))
        }
        Err(e) => {
            return Err(Error::io(dir, std::io::Error::new(e.kind(), format!("cannot create the output here: {e}"))))
        }
    }
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
        Ok(m) => m,
    };
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_symlink() {
        "is a symbolic link"
    } else if kind.is_dir() {
        "is a directory"
    } else {
        "is not a regular file (a FIFO, socket or device)"
    };
    Err(Error::usage(format!("output {} {what}: refusing to replace it", path.display())))
}

/// Fails for `x/`, `x/.`, `..`: spellings of an output that can only name a directory (found out
/// otherwise only when the finished output is renamed, or written beside `x` when sharded).
pub fn check_file_name(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.ends_with(b"/") || bytes.ends_with(b"/.") || bytes == b"." || path.file_name().is_none() {
        return Err(Error::usage(format!("output {} names a directory, not a file", path.display())));
    }
    Ok(())
}

fn canonical_target(path: &Path) -> Option<PathBuf> {
    Some(parent_dir(path).canonicalize().ok()?.join(path.file_name()?))
}

/// Where `path` is or would be: its longest existing ancestor made canonical, with the rest of
/// the path after it (`..` in the rest, which follows no link since nothing there exists yet,
/// drops the name before it); `None` only where nothing resolves (a working directory removed).
pub fn resolved(path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut rest: Vec<Component> = Vec::new();
    let mut at = path;
    loop {
        if let Ok(c) = at.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    Component::Normal(name) => out.push(name),
                    Component::ParentDir => {
                        out.pop();
                    }
                    _ => {}
                }
            }
            return Some(out);
        }
        if at == Path::new(".") {
            return None;
        }
        rest.push(at.components().next_back()?);
        at = match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
}

/// Refuses to write `output` over one of `inputs`, or inside an input that is a directory (a
/// folder of samples: every file in it may be read, and a file written there changes the set).
pub fn refuse_overwrite(output: &Path, inputs: &[&Path]) -> Result<()> {
    let Some(target) = canonical_target(output).or_else(|| resolved(output)) else { return Ok(()) };
    for input in inputs {
        let Ok(canonical) = input.canonicalize() else { continue };
        if canonical == target {
            return Err(Error::usage(format!(
                "output {} is also an input: refusing to overwrite it",
                output.display()
            )));
        }
        if target.starts_with(&canonical) && canonical.is_dir() {
            return Err(inside_input(output, input));
        }
    }
    Ok(())
}

/// The error for an output inside the input folder `input`.
fn inside_input(output: &Path, input: &Path) -> Error {
    Error::usage(format!(
        "output {} is inside the input folder {}, whose files are read as samples: write it outside the folder",
        output.display(),
        input.display()
    ))
}

/// Refuses two outputs that are one file (`-o a --save-weights a`).
pub fn refuse_same_output(outputs: &[&Path]) -> Result<()> {
    let targets: Vec<Option<PathBuf>> = outputs.iter().map(|p| canonical_target(p)).collect();
    for (i, t) in targets.iter().enumerate() {
        if t.is_some() && targets[..i].contains(t) {
            return Err(Error::usage(format!("output {} is named twice", outputs[i].display())));
        }
    }
    Ok(())
}

/// Sizes and modification times of input files, taken before they are read: [`Stamps::check`]
/// fails if any changed (a mapped input rewritten under a run gives wrong results, or a SIGBUS).
#[derive(Debug)]
pub struct Stamps(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Stamps {
    /// The stamps of `files`. A path that names no file is left out: it is not a file but a name
    /// its reader resolves (a Parquet split's prefix, `data/train` for `data/train-*.parquet`).
    pub fn of<P: AsRef<Path>>(files: &[P]) -> Result<Self> {
        let mut stamps = Vec::new();
        for f in files {
            let f = f.as_ref();
            let m = match std::fs::metadata(f) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                m => m.map_err(|e| Error::io(f, e))?,
            };
            stamps.push((f.to_path_buf(), m.len(), m.modified().ok()));
        }
        Ok(Stamps(stamps))
    }

    /// Fails, naming the file, if an input changed since [`Stamps::of`].
    pub fn check(&self) -> Result<()> {
        for (path, len, modified) in &self.0 {
            let changed = match std::fs::metadata(path) {
                Ok(m) => m.len() != *len || m.modified().ok() != *modified,
                Err(_) => true,
            };
            if changed {
                return Err(Error::format(
                    path,
                    "changed while it was being read (inputs must not change during a run): nothing was written",
                ));
            }
        }
        Ok(())
    }
}
