//! Finding checkpoint files: directories expanded into the checkpoints they hold, the epoch or
//! step number in each name, natural order, and the selection of a run of them.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::format::{has_suffix, strip_suffix};
use crate::error::{Error, Result, Setting};

/// A checkpoint file found on the command line or in a directory, with the number in its name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointFile {
    /// Its path.
    pub path: PathBuf,
    /// The epoch / step number in its name (`epoch_015` → 15), if any.
    pub number: Option<u64>,
}

/// A path that names a file already found under another spelling (`dir` and `./dir`, a symlink,
/// a hard link): it is used once, as `same_as`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Duplicate {
    /// The spelling left out.
    pub path: PathBuf,
    /// The spelling kept.
    pub same_as: PathBuf,
}

/// A file of a directory that is not one of its checkpoints: a copy without a number beside
/// numbered ones (timm's `last.pth.tar` and `model_best.pth.tar`, the torchvision references'
/// `checkpoint.pth`, the Hugging Face Trainer's `model.safetensors` beside `checkpoint-N/`,
/// Lightning's `last.ckpt`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeftOut {
    /// The file.
    pub path: PathBuf,
}

/// What [`discover`] found: each checkpoint file once, in order, and the spellings left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Discovery {
    /// The checkpoints, ordered by the number in their names (natural order when some have none).
    pub files: Vec<CheckpointFile>,
    /// Paths that named a file already in `files`.
    pub duplicates: Vec<Duplicate>,
    /// Files of the directories given that are not among their checkpoints (said in a warning).
    pub left_out: Vec<LeftOut>,
}

/// Which of the found checkpoints to use; applied in this order: `from`/`to`, `every`, `last`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Smallest number kept (inclusive).
    pub from: Option<u64>,
    /// Largest number kept (inclusive).
    pub to: Option<u64>,
    /// Keep every k-th, starting with the first.
    pub every: Option<NonZeroUsize>,
    /// Keep only the last N.
    pub last: Option<NonZeroUsize>,
}

/// Every format's file-name endings, longest first (the one a name ends with is not part of the
/// name's number).
fn suffixes() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = super::formats().flat_map(|f| f.suffixes().iter().copied()).collect();
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    all
}

/// Files that training loops save beside their checkpoints and that hold no model: never taken
/// from a directory (naming one explicitly still opens it).
const NOT_MODELS: [&str; 5] = ["optimizer", "scheduler", "rng_state", "training_args", "scaler"];
/// Words whose number is the checkpoint's number, wherever they stand (`epoch_7`, `epoch=7`,
/// `resnet-epoch7`).
const NUMBER_KEYS: [&str; 5] = ["epoch", "step", "ckpt", "checkpoint", "iter"];
/// Short words that are keys only as a whole word directly followed by the number (`e10`,
/// `run_it500`), never inside a number (`1e-4`) or a longer word.
const SHORT_KEYS: [&str; 2] = ["it", "e"];

/// The epoch or step number in a checkpoint's name: the number after `epoch` if there is one,
/// else after `step`, `ckpt`, `checkpoint` or `iter` (or a whole-word `e` / `it` directly before
/// it: `e10`, `it500`; the last such), else the last number in the name. `epoch_1_lr1e-4` is 1: the
/// `e` of `1e-4` follows a digit, so it is not a key; Lightning's `epoch=14-step=330.ckpt` is 14.
pub fn name_number(name: &str) -> Option<u64> {
    let stem = suffixes().iter().find_map(|s| strip_suffix(name, s)).unwrap_or(name);
    let bytes = stem.as_bytes();
    let (mut epoch, mut keyed, mut last) = (None, None, None);
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        // A decimal (`weights.02-0.61`: Keras' `{val_loss:.2f}`) is a metric, not a number.
        let decimal = (start >= 2 && bytes[start - 1] == b'.' && bytes[start - 2].is_ascii_digit())
            || (i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit());
        if decimal {
            continue;
        }
        let Ok(n) = stem[start..i].parse::<u64>() else { continue };
        // The separators before the number, then the word before them.
        let word_end = bytes[..start].iter().rposition(u8::is_ascii_alphanumeric).map_or(0, |p| p + 1);
        let word_start = bytes[..word_end].iter().rposition(|b| !b.is_ascii_alphabetic()).map_or(0, |p| p + 1);
        let word = stem[word_start..word_end].to_ascii_lowercase();
        let whole_word = word_start == 0 || !bytes[word_start - 1].is_ascii_alphanumeric();
        let short_key = SHORT_KEYS.contains(&word.as_str()) && whole_word && word_end == start;
        if word == "epoch" {
            epoch = Some(n);
        } else if NUMBER_KEYS.contains(&word.as_str()) || short_key {
            keyed = Some(n);
        }
        last = Some(n);
    }
    epoch.or(keyed).or(last)
}

/// Compares names so that digit runs compare by value (`epoch_2` before `epoch_10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let ord = na.len().cmp(&nb.len()).then(na.cmp(nb));
                if ord.is_ne() {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z.min(d.len().saturating_sub(1))..]
}

/// True for the file names that directory discovery takes as checkpoints: those of every format
/// ([`super::formats`]), except the optimizer, scheduler and other state that training loops save
/// beside them.
pub fn is_checkpoint_name(name: &str) -> bool {
    let model = super::formats().any(|f| f.suffixes().iter().any(|s| has_suffix(name, s)));
    model && !NOT_MODELS.iter().any(|n| name.starts_with(n))
}

/// PyTorch Lightning's `last.ckpt` (`last-v1.ckpt`…): `ModelCheckpoint(save_last=True)` saves the
/// newest checkpoint again under this name, beside the numbered ones.
fn is_lightning_last(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let version = name.strip_prefix("last-v").and_then(|r| r.strip_suffix(".ckpt"));
    name == "last.ckpt" || version.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// timm's mid-epoch `recovery-E-B.pth.tar`.
fn is_recovery(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("recovery-"))
}

/// The Lightning run a folder means: itself (`version_0/`, holding `checkpoints/`), or the one
/// `version_N/` of the `lightning_logs/` it is or holds (`default_root_dir`). Several runs are an
/// error that names each.
fn lightning_run(path: &Path) -> Result<Option<PathBuf>> {
    if path.join("checkpoints").is_dir() {
        return Ok(Some(path.to_path_buf()));
    }
    let logs = if path.join("lightning_logs").is_dir() { path.join("lightning_logs") } else { path.to_path_buf() };
    let mut runs: Vec<PathBuf> = match std::fs::read_dir(&logs) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                name.strip_prefix("version_").is_some_and(|v| v.parse::<u64>().is_ok())
                    && p.join("checkpoints").is_dir()
            })
            .collect(),
        Err(_) => return Ok(None),
    };
    runs.sort_by_key(|p| number_of(p));
    match runs.len() {
        0 => Ok(None),
        1 => Ok(runs.pop()),
        n => Err(Error::format(
            path,
            format!(
                "holds {n} Lightning runs ({}): point at one, e.g. {}",
                runs.iter().map(|r| r.file_name().unwrap_or_default().to_string_lossy()).collect::<Vec<_>>().join(", "),
                runs[n - 1].display()
            ),
        )),
    }
}

/// The model file of a run's checkpoint directory (`checkpoint-500/`), in the first format that
/// finds one (a sharded index, `model.safetensors`, `pytorch_model.bin`).
fn model_in(dir: &Path) -> Result<Option<PathBuf>> {
    for f in super::formats() {
        if let Some(p) = f.model_in(dir)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The checkpoint a directory named as one is (a sharded checkpoint's directory), if it is one.
fn checkpoint_dir(dir: &Path) -> Result<Option<PathBuf>> {
    for f in super::formats() {
        if let Some(p) = f.checkpoint_dir(dir)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Expands directories into the checkpoints they hold, keeps each file once whatever its spelling
/// (reporting the others as [`Duplicate`]s), and orders everything by the number in each name
/// (natural order, never lexical). Two files with the same number are an error: their order, and
/// any selection by number, would be a guess.
pub fn discover(paths: &[PathBuf]) -> Result<Discovery> {
    let mut found = Vec::new();
    let mut left_out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            // A TensorFlow bundle named by its prefix (`ckpt/ckpt-3`) is its `.index`.
            let bundle = crate::checkpoint::tf_bundle::index_of(path);
            if !path.exists() && bundle.is_file() {
                found.push(bundle);
                continue;
            }
            if !path.exists() {
                return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
            }
            found.push(path.clone());
            continue;
        }
        if let Some(checkpoint) = checkpoint_dir(path)? {
            found.push(checkpoint);
            continue;
        }
        let mut inside = checkpoints_in(path)?;
        // A Lightning run folder (`lightning_logs/version_0`: hparams.yaml, event files and
        // `checkpoints/`) means the checkpoints it keeps; Lightning's root folder or its
        // `lightning_logs/`, the one run there.
        if inside.is_empty() {
            if let Some(run) = lightning_run(path)? {
                inside = checkpoints_in(&run.join("checkpoints"))?;
            }
        }
        // timm's `recovery-E-B.pth.tar` are mid-epoch copies numbered by their batch: beside the
        // epoch checkpoints they would sort as the newest.
        if inside.iter().any(|p| !is_recovery(p)) {
            let (recovery, others): (Vec<PathBuf>, Vec<PathBuf>) = inside.into_iter().partition(|p| is_recovery(p));
            inside = others;
            left_out.extend(recovery.into_iter().map(|path| LeftOut { path }));
        }
        // Beside numbered checkpoints, a file without a number is a copy (Lightning's last.ckpt,
        // timm's last.pth.tar and model_best.pth.tar, torchvision's checkpoint.pth, the Trainer's
        // model.safetensors): taking it would count a model twice, sorted newest. Named
        // explicitly, or in a directory of numberless files only, it is read.
        if inside.iter().any(|p| number_of(p).is_some()) {
            let (numbered, copies): (Vec<PathBuf>, Vec<PathBuf>) =
                inside.into_iter().partition(|p| number_of(p).is_some());
            inside = numbered;
            left_out.extend(copies.into_iter().map(|path| LeftOut { path }));
        } else if inside.iter().any(|p| !is_lightning_last(p)) {
            let (last, others): (Vec<PathBuf>, Vec<PathBuf>) = inside.into_iter().partition(|p| is_lightning_last(p));
            inside = others;
            left_out.extend(last.into_iter().map(|path| LeftOut { path }));
        }
        if inside.is_empty() {
            let kinds: Vec<String> = super::formats()
                .map(|f| {
                    let names: Vec<String> = f.suffixes().iter().map(|s| format!("*{s}")).collect();
                    format!("{}: {}", f.name(), names.join(", "))
                })
                .collect();
            return Err(Error::format(path, format!("directory holds no checkpoint ({})", kinds.join("; "))));
        }
        found.extend(inside);
    }
    let (found, duplicates) = once_each(found)?;
    let mut files: Vec<CheckpointFile> =
        found.into_iter().map(|path| CheckpointFile { number: number_of(&path), path }).collect();
    let display = |f: &CheckpointFile| f.path.to_string_lossy().into_owned();
    if files.iter().all(|f| f.number.is_some()) {
        files.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| natural_cmp(&display(a), &display(b))));
        refuse_equal_numbers(&files)?;
    } else if let (Some(numberless), Some(numbered)) =
        (files.iter().find(|f| f.number.is_none()), files.iter().find(|f| f.number.is_some()))
    {
        // Named among numbered checkpoints (`previous_ema.safetensors ckpt/epoch_006…`), a file
        // without a number has no place in their order: put last, it took the newest weight.
        return Err(Error::setting(
            Setting::Resume,
            format!(
                "continues an earlier average: {} has no number in its name, unlike {} and the others, so its \
                 place among them would be a guess (it would be averaged as the newest)",
                numberless.path.display(),
                numbered.path.display()
            ),
        ));
    } else {
        files.sort_by(|a, b| natural_cmp(&display(a), &display(b)));
    }
    for l in &left_out {
        crate::error::warn(format!(
            "left out {}: it has no number in its name, beside numbered checkpoints (a copy such as last.ckpt, \
             last.pth.tar, model_best or the final model.safetensors); name it to read it",
            l.path.display()
        ));
    }
    Ok(Discovery { files, duplicates, left_out })
}

/// The checkpoints directly in `dir` (hidden entries aside), and the model files of its run
/// subdirectories (`checkpoint-500/`).
fn checkpoints_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut inside = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            inside.extend(model_in(&p)?);
        } else if is_checkpoint_name(&name) {
            inside.push(p);
        }
    }
    Ok(inside)
}

/// What identifies a file whatever path names it: device and inode where there are such, else
/// the canonical path.
fn file_identity(path: &Path) -> Result<(u64, u64, PathBuf)> {
    let canonical = path.canonicalize().map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&canonical).map_err(|e| Error::io(path, e))?;
        Ok((m.dev(), m.ino(), PathBuf::new()))
    }
    #[cfg(not(unix))]
    Ok((0, 0, canonical))
}

/// True when `a` and `b` name the same file (false when either cannot be read).
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((file_identity(a), file_identity(b)), (Ok(x), Ok(y)) if x == y)
}

/// `paths` with each file once: of the spellings of one file, the one whose file name is the
/// file's own (not a symlink's) is kept, else the first; the others are returned as duplicates.
fn once_each(paths: Vec<PathBuf>) -> Result<(Vec<PathBuf>, Vec<Duplicate>)> {
    let mut kept: Vec<PathBuf> = Vec::new();
    let mut seen: std::collections::HashMap<(u64, u64, PathBuf), usize> = std::collections::HashMap::new();
    let mut duplicates = Vec::new();
    let own_name = |p: &Path| p.canonicalize().is_ok_and(|c| c.file_name() == p.file_name());
    for path in paths {
        match seen.entry(file_identity(&path)?) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(kept.len());
                kept.push(path);
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                let first = &mut kept[*o.get()];
                // The numbered spelling of a hard-linked copy (`last.pth.tar`, `checkpoint-9.pth.tar`)
                // is kept; else the file's own name over a symlink's.
                let better = match (number_of(&path).is_some(), number_of(first).is_some()) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => own_name(&path) && !own_name(first),
                };
                let (path, same_as) =
                    if better { (std::mem::replace(first, path), first.clone()) } else { (path, first.clone()) };
                duplicates.push(Duplicate { path, same_as });
            }
        }
    }
    Ok((kept, duplicates))
}

/// Fails when two checkpoints numbered in one directory (`ck/epoch_2`, `ck/epoch-2`; or
/// `run/checkpoint-2/`, `run/ckpt_2/`) have the same number: one run's numbering does not say
/// which comes first. Equal numbers from different directories (two runs) keep their order by
/// path. `files` are sorted by number.
fn refuse_equal_numbers(files: &[CheckpointFile]) -> Result<()> {
    let numbering_dir = |f: &CheckpointFile| -> Option<PathBuf> {
        let named = if number_from_name(&f.path).is_some() { f.path.as_path() } else { f.path.parent()? };
        let dir = named.parent()?;
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        Some(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()))
    };
    for (i, a) in files.iter().enumerate() {
        for b in files[i + 1..].iter().take_while(|b| b.number == a.number) {
            if numbering_dir(a) == numbering_dir(b) {
                return Err(Error::usage(format!(
                    "{} and {} have the same number ({}) in their names: checkpoints are ordered and selected \
                     by that number, so their order would be a guess; rename or leave out one of them",
                    a.path.display(),
                    b.path.display(),
                    a.number.unwrap_or_default()
                )));
            }
        }
    }
    Ok(())
}

fn number_from_name(path: &Path) -> Option<u64> {
    name_number(&path.file_name()?.to_string_lossy())
}

/// The number of a checkpoint: from its file name, or for generic names (`model.safetensors`,
/// `model.safetensors.index.json`) inside a run directory (`checkpoint-500/`), from the directory.
fn number_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_string_lossy();
    let generic = name.starts_with("model") || name.contains("pytorch_model");
    number_from_name(path).or_else(|| {
        if generic {
            name_number(&path.parent()?.file_name()?.to_string_lossy())
        } else {
            None
        }
    })
}

/// The last `k` components of `path`.
fn last_components(path: &Path, k: usize) -> String {
    let parts: Vec<_> = path.components().collect();
    parts[parts.len().saturating_sub(k)..].iter().collect::<PathBuf>().to_string_lossy().into_owned()
}

/// What the report calls each checkpoint: its file name, or, where two share one (the Hugging Face
/// layout `checkpoint-N/model.safetensors`), as many trailing components of every path as tell
/// them all apart. The report marks the averaged checkpoints by these names, so they must differ.
pub fn labels(found: &[CheckpointFile]) -> Vec<String> {
    let depth = found.iter().map(|f| f.path.components().count()).max().unwrap_or(1);
    for k in 1..=depth {
        let labels: Vec<String> = found.iter().map(|f| last_components(&f.path, k)).collect();
        let distinct: std::collections::HashSet<&String> = labels.iter().collect();
        if distinct.len() == labels.len() {
            return labels;
        }
    }
    found.iter().map(|f| f.path.to_string_lossy().into_owned()).collect()
}

/// Applies a selection; the result is never empty.
pub fn select(files: &[CheckpointFile], sel: &Selection) -> Result<Vec<CheckpointFile>> {
    let mut out: Vec<CheckpointFile> = Vec::new();
    for f in files {
        if sel.from.is_some() || sel.to.is_some() {
            let Some(n) = f.number else {
                return Err(Error::setting(
                    Setting::Range,
                    format!("selects by the number in the file name, and {} has none", f.path.display()),
                ));
            };
            if sel.from.is_some_and(|from| n < from) || sel.to.is_some_and(|to| n > to) {
                continue;
            }
        }
        out.push(f.clone());
    }
    if let Some(k) = sel.every {
        out = out.into_iter().step_by(k.get()).collect();
    }
    if let Some(n) = sel.last {
        out = out.split_off(out.len().saturating_sub(n.get()));
    }
    if out.is_empty() {
        let range = match (sel.from, sel.to) {
            (None, None) => String::new(),
            (f, t) => {
                format!(" in {}..={}", f.map_or("".into(), |v| v.to_string()), t.map_or("".into(), |v| v.to_string()))
            }
        };
        let numbers: Vec<String> = files.iter().filter_map(|f| f.number.map(|n| n.to_string())).collect();
        return Err(Error::usage(format!(
            "no checkpoint selected{range}: {} found{}",
            files.len(),
            if numbers.is_empty() { String::new() } else { format!(" (numbers {})", numbers.join(", ")) }
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_names() {
        assert_eq!(name_number("epoch_015.safetensors"), Some(15));
        assert_eq!(name_number("epoch=15.safetensors"), Some(15));
        assert_eq!(name_number("ckpt-15.safetensors"), Some(15));
        assert_eq!(name_number("step_1500.safetensors"), Some(1500));
        assert_eq!(name_number("resnet50-epoch7-v2.safetensors"), Some(7));
        assert_eq!(name_number("model.safetensors"), None);
        assert_eq!(name_number("checkpoint-500"), Some(500));
        // Keras' ModelCheckpoint and TensorFlow's names.
        assert_eq!(name_number("weights.02-0.61.weights.h5"), Some(2));
        assert_eq!(name_number("weights.12-1.05.keras"), Some(12));
        assert_eq!(name_number("model.ckpt-1000.index"), Some(1000));
        assert_eq!(name_number("ckpt-3.index"), Some(3));
    }

    #[test]
    fn torch_names_are_numbered_by_their_epoch() {
        assert_eq!(name_number("epoch=14-step=330.ckpt"), Some(14));
        assert_eq!(name_number("step=330-epoch=14.ckpt"), Some(14));
        assert_eq!(name_number("checkpoint-12.pth.tar"), Some(12));
        assert_eq!(name_number("epoch_3.pth"), Some(3));
        assert_eq!(name_number("model_epoch_7.pt"), Some(7));
        assert_eq!(name_number("last.ckpt"), None);
        assert!(is_checkpoint_name("epoch=1-step=2.ckpt") && is_checkpoint_name("pytorch_model.bin"));
        assert!(!is_checkpoint_name("optimizer.pt") && !is_checkpoint_name("rng_state.pth"));
        assert!(!is_checkpoint_name("training_args.bin") && !is_checkpoint_name("notes.txt"));
        // Suffixes in any case.
        assert!(is_checkpoint_name("EPOCH_3.PT") && is_checkpoint_name("w.SafeTensors"));
        assert_eq!(name_number("epoch_3.PTH.TAR"), Some(3));
    }

    #[test]
    fn the_key_wins_over_numbers_that_are_not_keys() {
        assert_eq!(name_number("epoch_1_lr1e-4.safetensors"), Some(1));
        assert_eq!(name_number("epoch_3_lr1e-3.safetensors"), Some(3));
        assert_eq!(name_number("lr1e-4_epoch_12.safetensors"), Some(12));
        assert_eq!(name_number("EPOCH7.safetensors"), Some(7));
        // Whole-word `e` and `it`, directly before the number.
        assert_eq!(name_number("run3_e10.safetensors"), Some(10));
        assert_eq!(name_number("e10.safetensors"), Some(10));
        assert_eq!(name_number("model-it500-v2.safetensors"), Some(500));
        // Not keys: inside a number, inside a word, or apart from the number.
        assert_eq!(name_number("lr1e-4_v2.safetensors"), Some(2));
        assert_eq!(name_number("size3e5_v2.safetensors"), Some(2));
        assert_eq!(name_number("unit5_v2.safetensors"), Some(2));
        assert_eq!(name_number("e-5_v2.safetensors"), Some(2));
        assert_eq!(name_number("lr_1e-4.safetensors"), Some(4));
    }

    #[test]
    fn equal_numbers_are_refused_within_one_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |rel: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, rel).unwrap();
            p
        };
        let runs = [touch("run1/epoch_1.safetensors"), touch("run2/epoch_1.safetensors")];
        assert_eq!(discover(&[dir.path().join("run2"), dir.path().join("run1")]).unwrap().files.len(), 2);
        assert_eq!(discover(&runs).unwrap().files[0].path, runs[0]);
        touch("run1/epoch-1.safetensors");
        let err = discover(&[dir.path().join("run1")]).unwrap_err().to_string();
        assert!(
            err.contains("epoch-1.safetensors and ") && err.contains("epoch_1.safetensors have the same number (1)")
        );
        touch("hf/checkpoint-2/model.safetensors");
        touch("hf/ckpt_2/model.safetensors");
        let err = discover(&[dir.path().join("hf")]).unwrap_err().to_string();
        assert!(err.contains("have the same number (2)"), "{err}");
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["e10", "e2", "e1", "e02b"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["e1", "e2", "e02b", "e10"]);
    }

    #[test]
    fn selection_applies_range_every_last() {
        let files: Vec<CheckpointFile> =
            (1..=10).map(|n| CheckpointFile { path: format!("e{n}").into(), number: Some(n) }).collect();
        let pick = |sel: Selection| select(&files, &sel).unwrap().iter().map(|f| f.number.unwrap()).collect::<Vec<_>>();
        assert_eq!(pick(Selection { from: Some(4), to: Some(6), ..Default::default() }), [4, 5, 6]);
        assert_eq!(pick(Selection { from: Some(2), every: NonZeroUsize::new(3), ..Default::default() }), [2, 5, 8]);
        assert_eq!(pick(Selection { last: NonZeroUsize::new(2), ..Default::default() }), [9, 10]);
        let err = select(&files, &Selection { from: Some(20), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("no checkpoint selected in 20..="), "{err}");
    }
}
