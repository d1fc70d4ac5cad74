//! A directory staged beside its target (`swa run`'s output) and published by rename, never
//! over a directory it may not replace.

use std::path::{Path, PathBuf};

use super::parent_dir;
use super::registry::{forget, staged};
use super::staged::{in_dir, mode};
use crate::error::{Error, Result};

/// A temporary directory `.PREFIX.XXXX` beside its target, with the umask's mode; removed with what
/// it holds if dropped unpublished.
#[derive(Debug)]
pub struct StagedDir {
    path: Option<PathBuf>,
    prefix: String,
}

/// What [`StagedDir::publish`] may do with a directory already at the target.
pub enum Replace<'a> {
    /// Nothing: publishing fails if the target is there and not empty.
    Nothing,
    /// Replace it if it passes this check (made again on the directory once it is moved aside).
    If(&'a dyn Fn(&Path) -> bool),
}

/// Why a staged directory was not published.
#[derive(Debug)]
pub enum DirPublishError {
    /// The target is there and is not empty (another process made it during the run).
    Taken(std::io::Error),
    /// The directory that was to be replaced no longer passes its check; it is back in place.
    NoLongerReplaceable,
    /// Renaming failed; the message says where the previous directory is if it could not be put back.
    Io(std::io::Error),
}

impl std::fmt::Display for DirPublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirPublishError::Taken(e) => write!(f, "another process created it during the run ({e})"),
            DirPublishError::NoLongerReplaceable => f.write_str("it changed during the run and is left as it was"),
            DirPublishError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn taken(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::DirectoryNotEmpty | K::AlreadyExists | K::NotADirectory | K::IsADirectory)
}

impl StagedDir {
    /// A new directory beside `target`, named `.{prefix}.XXXX` (and `.{prefix}.old.XXXX` for the
    /// directory it replaces, while it does).
    pub fn beside(target: &Path, prefix: &str) -> Result<Self> {
        let dir = parent_dir(target);
        let name = format!(".{prefix}.");
        let mut list = staged();
        let made = in_dir(dir, || tempfile::Builder::new().prefix(&name).permissions(mode(0o777)).tempdir_in(dir))
            .map_err(|e| Error::io(dir, e))?
            .keep();
        list.push(made.clone());
        Ok(StagedDir { path: Some(made), prefix: prefix.to_string() })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("present until published")
    }

    /// Renames the directory to `target`. A target that does not exist or is empty is replaced;
    /// one that holds anything is replaced only as `replace` allows: moved aside to a hidden
    /// sibling, checked again there, and removed once the new directory is in place (put back if
    /// the check fails). Nothing else is ever removed.
    pub fn publish(mut self, target: &Path, replace: Replace) -> std::result::Result<(), DirPublishError> {
        let staged_path = self.path.clone().expect("present until published");
        let mut list = staged();
        let first = std::fs::rename(&staged_path, target);
        let check = match (first, replace) {
            (Ok(()), _) => {
                forget(&mut list, &staged_path);
                self.path = None;
                return Ok(());
            }
            (Err(e), Replace::If(check)) if taken(&e) => check,
            (Err(e), _) if taken(&e) => return Err(DirPublishError::Taken(e)),
            (Err(e), _) => return Err(DirPublishError::Io(e)),
        };
        // Move the old directory aside: onto a fresh empty directory, which a rename may replace.
        let aside = tempfile::Builder::new()
            .prefix(&format!(".{}.old.", self.prefix))
            .tempdir_in(parent_dir(target))
            .map_err(DirPublishError::Io)?
            .keep();
        if let Err(e) = std::fs::rename(target, &aside) {
            let _ = std::fs::remove_dir(&aside);
            return Err(if taken(&e) { DirPublishError::Taken(e) } else { DirPublishError::Io(e) });
        }
        let put_back = |why: DirPublishError| match std::fs::rename(&aside, target) {
            Ok(()) => why,
            Err(e) => DirPublishError::Io(std::io::Error::new(
                e.kind(),
                format!("{why}; the previous directory could not be put back and is at {}: {e}", aside.display()),
            )),
        };
        if !check(&aside) {
            return Err(put_back(DirPublishError::NoLongerReplaceable));
        }
        if let Err(e) = std::fs::rename(&staged_path, target) {
            return Err(put_back(if taken(&e) { DirPublishError::Taken(e) } else { DirPublishError::Io(e) }));
        }
        // The new directory is in place; the old one, checked, goes (also if interrupted now).
        forget(&mut list, &staged_path);
        self.path = None;
        list.push(aside.clone());
        drop(list);
        let _ = std::fs::remove_dir_all(&aside);
        forget(&mut staged(), &aside);
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let mut list = staged();
            let _ = std::fs::remove_dir_all(&path);
            forget(&mut list, &path);
        }
    }
}
