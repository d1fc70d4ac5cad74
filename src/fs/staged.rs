//! Outputs staged in temporary files beside their targets and published by rename, one or a set
//! of them (all or none).

use std::fs::{File, Permissions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tempfile::{NamedTempFile, TempPath};

use super::registry::{forget, staged};
use super::{check_output, parent_dir, temp_prefix};
use crate::error::{Error, Result};

/// Runs `make`, which creates something in `dir`; if `dir` has gone since the outputs were checked
/// (another run that had created it for its own outputs failed and removed it, empty, while this
/// one worked), creates it again and retries once.
pub(crate) fn in_dir<T>(dir: &Path, make: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
    match make() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::symlink_metadata(dir).is_err() => {
            std::fs::create_dir_all(dir)?;
            make()
        }
        other => other,
    }
}

/// A temporary file beside its target, renamed to it by [`StagedFile::publish`] or [`Outputs`];
/// removed if dropped unpublished.
#[derive(Debug)]
pub struct StagedFile {
    temp: Option<NamedTempFile>,
    target: PathBuf,
    /// Bytes written through [`StagedFile::write_at`].
    written: AtomicU64,
}

/// Bytes written through [`StagedFile::write_at`] between two requests to start writing the file's
/// dirty pages to disk.
const WRITEBACK_STEP: u64 = 32 << 20;

/// Asks the kernel to start writing `file`'s dirty pages to disk, without waiting for them: a hint
/// (a failure shows at the `fsync` that follows), so that the disk writes while the rest of the
/// file is computed and [`StagedFile::sync`] waits only for the tail.
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on an open descriptor; offset 0 and length 0 mean the whole file.
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// `mode` before the umask: new files are created with `0o666 & !umask`, as by `open(2)`.
pub(crate) fn mode(mode: u32) -> Permissions {
    std::os::unix::fs::PermissionsExt::from_mode(mode)
}

impl StagedFile {
    /// An empty temporary file in the directory of `target` (so that a rename publishes it
    /// atomically), with the mode `target` has if it is a file, else the umask's default.
    pub fn beside(target: &Path) -> Result<Self> {
        let dir = parent_dir(target);
        let prefix = temp_prefix(target);
        let mut list = staged();
        let temp = in_dir(dir, || {
            tempfile::Builder::new().prefix(&prefix).suffix(".partial").permissions(mode(0o666)).tempfile_in(dir)
        })
        .map_err(|e| Error::io(dir, std::io::Error::new(e.kind(), format!("cannot create the output here: {e}"))))?;
        list.push(temp.path().to_path_buf());
        drop(list);
        let staged = StagedFile { temp: Some(temp), target: target.to_path_buf(), written: AtomicU64::new(0) };
        if let Ok(m) = std::fs::symlink_metadata(target) {
            if m.is_file() {
                staged.as_file().set_permissions(m.permissions()).map_err(|e| Error::io(target, e))?;
            }
        }
        Ok(staged)
    }

    /// A staged file holding `bytes`, flushed to disk.
    pub fn with_bytes(target: &Path, bytes: &[u8]) -> Result<Self> {
        let staged = StagedFile::beside(target)?;
        staged.as_file().write_all(bytes).map_err(|e| Error::io(target, e))?;
        staged.sync()?;
        Ok(staged)
    }

    /// The open temporary file.
    pub fn as_file(&self) -> &File {
        self.temp.as_ref().expect("present until published").as_file()
    }

    /// Where it will be published.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes `bytes` at byte `offset` (safe from many threads). Every `WRITEBACK_STEP` bytes
    /// written this way, starts writing the dirty pages to disk without waiting (on Linux), so that
    /// a large output is mostly on disk when [`StagedFile::sync`] is called.
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> Result<()> {
        let file = self.as_file();
        std::os::unix::fs::FileExt::write_all_at(file, bytes, offset).map_err(|e| Error::io(&self.target, e))?;
        let n = bytes.len() as u64;
        let before = self.written.fetch_add(n, Ordering::Relaxed);
        if before / WRITEBACK_STEP != (before + n) / WRITEBACK_STEP {
            start_writeback(file);
        }
        Ok(())
    }

    /// Makes the file `len` bytes long, with its disk space allocated up front where the file
    /// system can (`fallocate`), so that a full disk fails now rather than after the work.
    /// (fallocate only grows a file and refuses a length of 0, so the length is then set as
    /// `set_len` sets it: any `len` gives a file of exactly `len` bytes.)
    pub fn reserve(&self, len: u64) -> Result<()> {
        let file = self.as_file();
        #[cfg(target_os = "linux")]
        if len > 0 {
            use std::os::fd::AsRawFd;
            // Repeated only on EINTR.
            loop {
                // SAFETY: a plain system call on an open descriptor.
                let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
                if rc == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // fallocate(2) may be interrupted by a signal (tmpfs checks for one as it goes).
                    Some(libc::EINTR) => continue,
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => break,
                    _ => {
                        let gib = len as f64 / f64::from(1u32 << 30);
                        let e =
                            std::io::Error::new(e.kind(), format!("cannot reserve {gib:.2} GiB for the output: {e}"));
                        return Err(Error::io(&self.target, e));
                    }
                }
            }
        }
        // After a fallocate that grew the file to `len`, a no-op.
        file.set_len(len).map_err(|e| Error::io(&self.target, e))
    }

    /// Flushes its data to disk.
    pub fn sync(&self) -> Result<()> {
        self.as_file().sync_all().map_err(|e| Error::io(&self.target, e))
    }

    /// Renames it to its target.
    pub fn publish(self) -> Result<()> {
        Outputs::from(vec![self]).publish()
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let mut list = staged();
            let path = temp.path().to_path_buf();
            drop(temp);
            forget(&mut list, &path);
        }
    }
}

/// Files staged to be published together: all of them, or none.
#[derive(Debug, Default)]
pub struct Outputs {
    files: Vec<StagedFile>,
}

impl From<Vec<StagedFile>> for Outputs {
    fn from(files: Vec<StagedFile>) -> Self {
        Outputs { files }
    }
}

/// A second name for an existing file, so that a publish that fails half-way can put it back.
/// Best effort: where hard links are not allowed, the file cannot be put back.
fn hard_link_beside(target: &Path) -> Option<TempPath> {
    if !std::fs::symlink_metadata(target).is_ok_and(|m| m.is_file()) {
        return None;
    }
    tempfile::Builder::new()
        .prefix(&temp_prefix(target))
        .suffix(".partial")
        .make_in(parent_dir(target), |p| std::fs::hard_link(target, p))
        .ok()
        .map(NamedTempFile::into_temp_path)
}

/// Exclusive advisory locks (`flock`) on the directories of a set of outputs, held while the set is
/// renamed into place, so that another process publishing the same outputs (two runs into one
/// `-o`) renames its whole set before or after this one, never between two of its renames (which
/// left an index over shards of two different averages). Directories are locked in one order, so
/// two publishers cannot wait for each other. Best effort: where a directory cannot be opened or
/// locked (a file system without `flock`), its renames go on unlocked.
fn lock_dirs<'a>(dirs: impl Iterator<Item = &'a Path>) -> Vec<File> {
    let mut dirs: Vec<PathBuf> = dirs.filter_map(|d| d.canonicalize().ok()).collect();
    dirs.sort();
    dirs.dedup();
    dirs.into_iter()
        .filter_map(|dir| {
            use std::os::fd::AsRawFd;
            let f = File::open(&dir).ok()?;
            loop {
                // SAFETY: a plain system call on an open descriptor; the lock goes with it.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    return Some(f);
                }
                if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    return None;
                }
            }
        })
        .collect()
}

impl Outputs {
    /// Adds a staged file; files are published in the order they were added.
    pub fn push(&mut self, file: StagedFile) {
        self.files.push(file);
    }

    /// Adds the files of `other` after these.
    pub fn append(&mut self, mut other: Outputs) {
        self.files.append(&mut other.files);
    }

    /// The targets, in publishing order.
    pub fn targets(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.target.clone()).collect()
    }

    /// Renames every file to its target, in order. Each target is checked first ([`check_output`]);
    /// if a rename still fails, the targets already renamed get their previous file back (or are
    /// removed where there was none), so a failure leaves no new file beside old ones.
    pub fn publish(mut self) -> Result<()> {
        for f in &self.files {
            check_output(&f.target)?;
        }
        // Taken before the record (a signal's clean-up never waits for another process).
        let _publishing = lock_dirs(self.files.iter().map(|f| parent_dir(&f.target)));
        let mut list = staged();
        let mut done: Vec<(PathBuf, Option<TempPath>)> = Vec::new();
        for f in &mut self.files {
            let backup = hard_link_beside(&f.target);
            let temp = f.temp.take().expect("present until published");
            let path = temp.path().to_path_buf();
            match temp.persist(&f.target) {
                Ok(_) => {
                    forget(&mut list, &path);
                    done.push((f.target.clone(), backup));
                }
                Err(e) => {
                    f.temp = Some(e.file);
                    for (target, backup) in done.into_iter().rev() {
                        match backup {
                            Some(b) => drop(b.persist(&target)),
                            None => drop(std::fs::remove_file(&target)),
                        }
                    }
                    let error = Error::io(&f.target, e.error);
                    drop(list);
                    return Err(error);
                }
            }
        }
        Ok(())
    }
}
