//! The missing parent directories of outputs: created before any work, removed again when the
//! command fails or is interrupted.

use std::path::{Path, PathBuf};

use super::parent_dir;
use super::registry::{created, forget};
use crate::error::{Error, Result};

/// The missing parent directories of a command's outputs, created before any work (as
/// `save_pretrained` and `mkdir -p` do). Until [`OutputDirs::keep`], dropping it (the command
/// failed) removes the directories it created, deepest first, each only if still empty, and so
/// does [`super::discard_staged`] (the command was interrupted). A directory another process created
/// meanwhile is used, never removed.
#[derive(Debug, Default)]
#[must_use = "dropping it removes the directories it created"]
pub struct OutputDirs {
    created: Vec<PathBuf>,
}

impl OutputDirs {
    /// Creates the missing directories above `path` (an output file, or `swa run`'s directory),
    /// from the top down. Fails, naming it, if a component is not a directory (a file, a
    /// dangling symbolic link: nothing is created through it) or cannot be created.
    pub fn create_parents(&mut self, path: &Path) -> Result<()> {
        let not_here = |at: &Path, kind: std::io::ErrorKind, why: String| {
            Error::io(at, std::io::Error::new(kind, format!("cannot create the output here: {why}")))
        };
        let mut missing = Vec::new();
        for dir in parent_dir(path).ancestors().filter(|d| !d.as_os_str().is_empty()) {
            match std::fs::symlink_metadata(dir) {
                // A symbolic link to a directory is a directory here, as for any path.
                Ok(_) if std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) => break,
                Ok(_) => {
                    return Err(not_here(dir, std::io::ErrorKind::NotADirectory, "not a directory".into()));
                }
                // Below a file, a path is "not a directory": look further up for the file.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                    missing.push(dir.to_path_buf())
                }
                Err(e) => return Err(not_here(dir, e.kind(), e.to_string())),
            }
        }
        for dir in missing.into_iter().rev() {
            let mut list = created();
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    list.push(dir.clone());
                    self.created.push(dir);
                }
                // Another process made it first: theirs, not ours to remove.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(not_here(&dir, e.kind(), e.to_string())),
            }
        }
        Ok(())
    }

    /// The command succeeded: the directories stay. Returns them, parents first.
    pub fn keep(mut self) -> Vec<PathBuf> {
        let mut list = created();
        for dir in &self.created {
            forget(&mut list, dir);
        }
        std::mem::take(&mut self.created)
    }
}

impl Drop for OutputDirs {
    fn drop(&mut self) {
        let mut list = created();
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
            forget(&mut list, dir);
        }
    }
}
