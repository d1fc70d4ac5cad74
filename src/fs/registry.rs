//! What is being staged (temporary files and directories) and which directories were made for
//! outputs, so that [`discard_staged`] can remove them when the process is interrupted.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Temporary files and directories that exist only until they are published or dropped. Renames
/// that publish happen with this lock held, so [`discard_staged`] sees either the staged paths or
/// the published outputs, never a half-published set.
static STAGED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) fn staged() -> MutexGuard<'static, Vec<PathBuf>> {
    STAGED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn forget(list: &mut Vec<PathBuf>, path: &Path) {
    if let Some(i) = list.iter().position(|p| p == path) {
        list.swap_remove(i);
    }
}

pub(crate) fn remove_path(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => drop(std::fs::remove_dir_all(path)),
        Ok(_) => drop(std::fs::remove_file(path)),
        Err(_) => {}
    }
}

/// Removes every file and directory being staged, waiting for a publish in progress to end, and
/// keeps the record locked: nothing can be published afterwards. For a process about to exit (the
/// `swa` binary calls it on SIGINT and SIGTERM); a library caller that never calls it loses nothing,
/// the record is only a list.
pub fn discard_staged() {
    let list = staged();
    for path in list.iter() {
        remove_path(path);
    }
    // Then the directories made for the outputs, deepest first, those still empty.
    let mut dirs = created();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs.iter() {
        let _ = std::fs::remove_dir(dir);
    }
    std::mem::forget(dirs);
    // And the process groups of the commands still running for the outputs (a metric command):
    // they were started in groups of their own, which a terminal's Ctrl-C does not reach.
    for &group in children().iter() {
        // SAFETY: a plain system call; a group that has gone is an error ignored.
        unsafe { libc::kill(-group, libc::SIGTERM) };
    }
    std::mem::forget(list);
}

/// Process groups of child commands (a metric command and what it starts) that [`discard_staged`]
/// ends.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// The child process groups running.
pub fn children() -> MutexGuard<'static, Vec<i32>> {
    CHILDREN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Directories [`OutputDirs`] created and has not kept yet, in the order they were made (parents
/// first), for [`discard_staged`].
static CREATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) fn created() -> MutexGuard<'static, Vec<PathBuf>> {
    CREATED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
