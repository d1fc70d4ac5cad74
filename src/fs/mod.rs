//! Files: inputs read (memory-mapped where the process allows it: [`map`]), outputs staged in
//! temporary files (or a directory) beside their targets and published by rename ([`staged`],
//! [`staged_dir`]), the checks that an output is a regular file and not also an input
//! ([`checks`]), the missing directories of outputs ([`dirs`]), and a record of what is being
//! staged so that an interrupted process can remove it ([`registry`]).
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

pub mod checks;
pub mod dirs;
pub mod map;
pub mod registry;
pub mod staged;
pub mod staged_dir;

use std::fs::File;
use std::path::Path;

pub use checks::{check_file_name, check_output, refuse_overwrite, refuse_same_output, resolved, Stamps};
pub use dirs::OutputDirs;
pub use map::{allow_maps, map_input, Input};
pub use registry::discard_staged;
pub use staged::{Outputs, StagedFile};
pub use staged_dir::{DirPublishError, Replace, StagedDir};

use crate::error::{Error, Result};

/// The directory a relative or bare file name lives in (`.` for `out.onnx`).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The prefix of a temporary file beside `target`: `.NAME.`, with NAME cut to 200 bytes so that
/// `.NAME.XXXXXX.partial` stays within the 255-byte limit on a file name.
pub(crate) fn temp_prefix(target: &Path) -> String {
    let mut name = file_name(target);
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    format!(".{name}.")
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
    use super::registry::{created, staged};
    use super::staged::mode;
    use super::*;
    use crate::error::chain;
    use std::path::PathBuf;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_path_not_made_yet_resolves_where_it_would_be() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
        let r = |p: &str| resolved(&t.path().join(p)).unwrap();
        assert_eq!(r("a/new/deeper"), root.join("a/new/deeper"));
        assert_eq!(r("link/new"), root.join("a/new"));
        // `..` after names that do not exist yet drops them (they are no links).
        assert_eq!(r("a/x/../r"), root.join("a/r"));
        assert_eq!(r("a/x/y/../../r/./s"), root.join("a/r/s"));
        assert_eq!(r("link/x/.."), root.join("a"));
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

    /// Two processes publishing the same set of outputs (two runs into one `-o`) must not
    /// interleave their renames: that left an index over shards of two different averages, each
    /// run exiting 0. A set's renames wait for the lock another publisher holds on the directory.
    #[test]
    fn a_set_of_outputs_is_published_while_no_one_else_publishes_into_its_directory() {
        use std::os::fd::AsRawFd;
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("x-1"), tmp.path().join("x.index"));
        // Another publisher, as another process holds it: a lock on another open of the directory.
        let other = File::open(tmp.path()).unwrap();
        // SAFETY: a plain system call on an open descriptor.
        assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX) }, 0);
        let mut outputs = Outputs::default();
        outputs.push(StagedFile::with_bytes(&a, b"shard").unwrap());
        outputs.push(StagedFile::with_bytes(&b, b"index").unwrap());
        let publishing = std::thread::spawn(move || outputs.publish());
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!a.exists() && !b.exists(), "published while another publisher held the directory");
        drop(other);
        publishing.join().unwrap().unwrap();
        assert_eq!(listing(tmp.path()), ["x-1", "x.index"]);
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
