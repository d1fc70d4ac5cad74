//! Files: read-only maps of inputs, outputs staged in temporary files (or a directory) beside their
//! targets and published by rename, the checks that an output is a regular file and not also an
//! input, and a record of what is being staged so that an interrupted process can remove it.
//!
//! Guarantees the rest of the crate relies on:
//! - A staged file is `.NAME.XXXX.partial` beside its target, created with the umask's mode (a file
//!   that replaces another takes that file's mode). It is removed when dropped unpublished, and by
//!   [`discard_staged`] (what the binary's signal handler calls).
//! - [`Outputs::publish`] renames a set of staged files into place (in order, the last one last):
//!   every target is checked first, and if one rename fails the ones already done are undone, so
//!   the previous files are intact or the new ones are all there.
//! - [`StagedDir::publish`] never deletes a directory it did not create or verify.
//! - [`OutputDirs`] creates the missing parent directories of outputs, one at a time, and removes
//!   the ones it created (deepest first, and only while empty) when the command fails or is
//!   interrupted; another process creating the same directory meanwhile is not an error.

use std::fs::{File, Permissions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use memmap2::Mmap;
use tempfile::{NamedTempFile, TempPath};

use crate::error::{Error, Result};

/// Memory-maps `path` read-only.
pub fn map_file(path: &Path) -> Result<Mmap> {
    let file = open_regular(path)?;
    // SAFETY: the map is read-only and private to this process. Another process truncating or
    // rewriting an input while it is read is undefined behaviour (a SIGBUS at worst), as for every
    // mmap-based reader (safetensors, numpy's memmap); inputs are never written by swa itself
    // (`refuse_overwrite`), and docs/formats.md says inputs must not change during a run.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The directory a relative or bare file name lives in (`.` for `out.onnx`).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The prefix of a temporary file beside `target`: `.NAME.`, with NAME cut to 200 bytes so that
/// `.NAME.XXXXXX.partial` stays within the 255-byte limit on a file name.
fn temp_prefix(target: &Path) -> String {
    let mut name = file_name(target);
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    format!(".{name}.")
}

// -------------------------------------------------------------------------------------------------
// What is being staged
// -------------------------------------------------------------------------------------------------

/// Temporary files and directories that exist only until they are published or dropped. Renames
/// that publish happen with this lock held, so [`discard_staged`] sees either the staged paths or
/// the published outputs, never a half-published set.
static STAGED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn staged() -> MutexGuard<'static, Vec<PathBuf>> {
    STAGED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn forget(list: &mut Vec<PathBuf>, path: &Path) {
    if let Some(i) = list.iter().position(|p| p == path) {
        list.swap_remove(i);
    }
}

fn remove_path(path: &Path) {
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
    std::mem::forget(list);
}

// -------------------------------------------------------------------------------------------------
// Directories made for outputs
// -------------------------------------------------------------------------------------------------

/// Directories [`OutputDirs`] created and has not kept yet, in the order they were made (parents
/// first), for [`discard_staged`].
static CREATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn created() -> MutexGuard<'static, Vec<PathBuf>> {
    CREATED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The missing parent directories of a command's outputs, created before any work (as
/// `save_pretrained` and `mkdir -p` do). Until [`OutputDirs::keep`], dropping it (the command
/// failed) removes the directories it created, deepest first, each only if still empty, and so
/// does [`discard_staged`] (the command was interrupted). A directory another process created
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

// -------------------------------------------------------------------------------------------------
// Checks
// -------------------------------------------------------------------------------------------------

/// Fails unless `path` can be written as a regular file: it does not exist or is one (never a
/// symbolic link, directory, FIFO or device, which are kept as they are), and its directory exists
/// (commands create it first with [`OutputDirs`]).
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
    /// The stamps of `files`.
    pub fn of<P: AsRef<Path>>(files: &[P]) -> Result<Self> {
        let mut stamps = Vec::new();
        for f in files {
            let f = f.as_ref();
            let m = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
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

// -------------------------------------------------------------------------------------------------
// Staged files
// -------------------------------------------------------------------------------------------------

/// Runs `make`, which creates something in `dir`; if `dir` has gone since the outputs were checked
/// (another run that had created it for its own outputs failed and removed it, empty, while this
/// one worked), creates it again and retries once.
fn in_dir<T>(dir: &Path, make: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
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
fn mode(mode: u32) -> Permissions {
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

    /// Writes `bytes` at byte `offset` (safe from many threads). Every [`WRITEBACK_STEP`] bytes
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

// -------------------------------------------------------------------------------------------------
// Staged directories
// -------------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn staged_dir(target: &Path, file: &str) -> StagedDir {
        let d = StagedDir::beside(target, "t").unwrap();
        std::fs::write(d.path().join(file), "new").unwrap();
        d
    }

    #[test]
    fn a_staged_directory_never_replaces_what_it_may_not() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        // Absent, then empty: published.
        staged_dir(&out, "a").publish(&out, Replace::Nothing).unwrap();
        assert_eq!(listing(&out), ["a"]);
        // Not empty and not replaceable: taken, nothing changes, the staged directory goes.
        let e = staged_dir(&out, "b").publish(&out, Replace::Nothing).unwrap_err();
        assert!(matches!(e, DirPublishError::Taken(_)), "{e}");
        assert_eq!(listing(&out), ["a"]);
        // Replaceable by its caller's word, but the check fails on the moved directory: put back.
        let e = staged_dir(&out, "c").publish(&out, Replace::If(&|d| d.join("b").exists())).unwrap_err();
        assert!(matches!(e, DirPublishError::NoLongerReplaceable), "{e}");
        assert_eq!(listing(&out), ["a"]);
        // The check passes: replaced, and the old directory is gone.
        staged_dir(&out, "d").publish(&out, Replace::If(&|d| d.join("a").exists())).unwrap();
        assert_eq!(listing(&out), ["d"]);
        assert_eq!(listing(tmp.path()), ["out"]);
        assert!(!staged().iter().any(|p| p.starts_with(tmp.path())), "still recorded as staged");
    }

    #[test]
    fn a_reserved_output_has_its_length_and_its_disk_space() {
        let tmp = tempfile::tempdir().unwrap();
        let staged = StagedFile::beside(&tmp.path().join("out.safetensors")).unwrap();
        staged.reserve(3 << 20).unwrap();
        let m = staged.as_file().metadata().unwrap();
        assert_eq!(m.len(), 3 << 20);
        // Allocated, not a hole (on file systems that can allocate ahead; others get set_len).
        let allocated = std::os::unix::fs::MetadataExt::blocks(&m) * 512;
        assert!(allocated >= 3 << 20 || allocated == 0, "{allocated} bytes allocated");
        // More than any disk holds fails now, with the size in the message.
        let e = chain(&staged.reserve(1 << 62).unwrap_err());
        assert!(e.contains("cannot reserve") && e.contains("GiB"), "{e}");
    }

    #[test]
    fn reserve_sets_the_length_it_is_given_even_zero_or_shorter() {
        // fallocate refuses a length of 0 (EINVAL) and never shrinks a file; set_len did both.
        let tmp = tempfile::tempdir().unwrap();
        let staged = StagedFile::beside(&tmp.path().join("out.safetensors")).unwrap();
        staged.reserve(0).unwrap();
        assert_eq!(staged.as_file().metadata().unwrap().len(), 0);
        staged.reserve(4096).unwrap();
        staged.reserve(100).unwrap();
        assert_eq!(staged.as_file().metadata().unwrap().len(), 100);
    }

    #[test]
    fn outputs_must_be_regular_files_in_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        check_output(&file).unwrap();
        check_output(&tmp.path().join("new")).unwrap();
        assert!(check_output(tmp.path()).unwrap_err().to_string().contains("is a directory"));
        std::os::unix::fs::symlink(&file, tmp.path().join("l")).unwrap();
        assert!(check_output(&tmp.path().join("l")).unwrap_err().to_string().contains("symbolic link"));
        assert!(chain(&check_output(&file.join("below")).unwrap_err()).contains("cannot create the output here"));
    }

    #[test]
    fn staged_files_are_published_together_and_leave_nothing_when_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&a, "old").unwrap();
        std::fs::set_permissions(&a, mode(0o640)).unwrap();
        let mut outputs = Outputs::default();
        outputs.push(StagedFile::with_bytes(&a, b"new a").unwrap());
        outputs.push(StagedFile::with_bytes(&b, b"new b").unwrap());
        drop(StagedFile::with_bytes(&tmp.path().join("c"), b"dropped").unwrap());
        assert_eq!(listing(tmp.path()).len(), 3, "a and two staged files");
        outputs.publish().unwrap();
        assert_eq!(listing(tmp.path()), ["a", "b"]);
        assert_eq!(std::fs::read(&a).unwrap(), b"new a");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn missing_output_directories_are_created_and_removed_again_unless_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // Kept: every missing level is created, parents first; existing ones are not listed.
        std::fs::create_dir(root.join("a")).unwrap();
        let mut dirs = OutputDirs::default();
        dirs.create_parents(&root.join("a/b/c/out.safetensors")).unwrap();
        dirs.create_parents(&root.join("a/b/c/other.safetensors")).unwrap();
        assert_eq!(dirs.keep(), [root.join("a/b"), root.join("a/b/c")]);
        assert!(root.join("a/b/c").is_dir());
        // Dropped (the command failed): what it made goes, deepest first, unless something is in it.
        let mut dirs = OutputDirs::default();
        dirs.create_parents(&root.join("x/y/z/out")).unwrap();
        dirs.create_parents(&root.join("w/out")).unwrap();
        std::fs::write(root.join("w/someone's"), "x").unwrap();
        drop(dirs);
        assert_eq!(listing(root), ["a", "w"]);
        assert_eq!(listing(&root.join("w")), ["someone's"]);
        assert!(!created().iter().any(|p| p.starts_with(root)), "still recorded");
        // Nothing to create: nothing listed.
        let mut dirs = OutputDirs::default();
        dirs.create_parents(&root.join("a/out")).unwrap();
        dirs.create_parents(Path::new("relative-in-the-working-directory")).unwrap();
        assert!(dirs.keep().is_empty());
    }

    #[test]
    fn output_directories_are_not_made_through_files_or_dangling_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling")).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let mut dirs = OutputDirs::default();
        let e = chain(&dirs.create_parents(&root.join("file/sub/out")).unwrap_err());
        assert!(e.contains("file: cannot create the output here: not a directory"), "{e}");
        let e = chain(&dirs.create_parents(&root.join("dangling/sub/out")).unwrap_err());
        assert!(e.contains("dangling: cannot create the output here: not a directory"), "{e}");
        assert!(!root.join("nowhere").exists(), "created through a dangling link");
        // A link to a directory is that directory.
        dirs.create_parents(&root.join("link/sub/out")).unwrap();
        assert_eq!(dirs.keep(), [root.join("link/sub")]);
        assert!(root.join("real/sub").is_dir());
    }

    #[test]
    fn concurrent_commands_creating_one_directory_both_go_on() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("p/q/r/out");
        let barrier = std::sync::Barrier::new(8);
        let made: Vec<Vec<PathBuf>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut dirs = OutputDirs::default();
                        barrier.wait();
                        dirs.create_parents(&target).unwrap();
                        dirs.keep()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Each level was made by exactly one of them.
        let mut all: Vec<PathBuf> = made.into_iter().flatten().collect();
        all.sort();
        assert_eq!(all, [tmp.path().join("p"), tmp.path().join("p/q"), tmp.path().join("p/q/r")]);
    }

    #[test]
    fn a_staged_file_remakes_a_directory_removed_under_it() {
        // Another run that had created the directory failed and removed it, empty, meanwhile.
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("gone/out");
        StagedFile::with_bytes(&target, b"x").unwrap().publish().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
    }

    #[test]
    fn stamps_see_a_changed_input() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("in");
        std::fs::write(&f, "1234").unwrap();
        let stamps = Stamps::of(&[&f]).unwrap();
        stamps.check().unwrap();
        std::fs::write(&f, "12").unwrap();
        assert!(stamps.check().unwrap_err().to_string().contains("changed while it was being read"));
    }
}
