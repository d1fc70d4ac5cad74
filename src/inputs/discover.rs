//! Finding checkpoint files: directories expanded into the checkpoints they hold, the epoch or
//! step number in each name, natural order, and the selection of a run of them.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::find_index;
use crate::error::{Error, Result, Setting};

/// A checkpoint file found on the command line or in a directory, with the number in its name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointFile {
    /// Its path.
    pub path: PathBuf,
    /// The epoch / step number in its name (`epoch_015` → 15), if any.
    pub number: Option<u64>,
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

const NAME_SUFFIXES: [&str; 4] = [".safetensors.index.json", ".index.json", ".safetensors", ".onnx"];
const NUMBER_KEYS: [&str; 7] = ["epoch", "step", "ckpt", "checkpoint", "iter", "it", "e"];

/// The epoch or step number in a checkpoint's name: the number after `epoch`, `step`, `ckpt`,
/// `checkpoint` or `iter` if there is one, else the last number in the name.
pub fn name_number(name: &str) -> Option<u64> {
    let stem = NAME_SUFFIXES.iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    let bytes = stem.as_bytes();
    let (mut keyed, mut last) = (None, None);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let Ok(n) = stem[start..i].parse::<u64>() else { continue };
            let word: String = stem[..start]
                .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
                .to_ascii_lowercase();
            if NUMBER_KEYS.contains(&word.as_str()) {
                keyed = Some(n);
            }
            last = Some(n);
        } else {
            i += 1;
        }
    }
    keyed.or(last)
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

/// True for the file names that directory discovery takes as checkpoints.
pub fn is_checkpoint_name(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") || name.ends_with(".onnx")
}

/// Expands directories into the checkpoints they hold and orders everything by the number in
/// each name (natural order, never lexical).
pub fn discover(paths: &[PathBuf]) -> Result<Vec<CheckpointFile>> {
    let mut found = Vec::new();
    for path in paths {
        if !path.is_dir() {
            if !path.exists() {
                return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
            }
            found.push(path.clone());
            continue;
        }
        if let Some(index) = find_index(path)? {
            found.push(index);
            continue;
        }
        let mut inside = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let p = entry.map_err(|e| Error::io(path, e))?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                if let Some(index) = find_index(&p)? {
                    inside.push(index);
                } else if p.join("model.safetensors").is_file() {
                    inside.push(p.join("model.safetensors"));
                }
            } else if is_checkpoint_name(&name) {
                inside.push(p);
            }
        }
        if inside.is_empty() {
            return Err(Error::format(
                path,
                "directory holds no checkpoint (*.safetensors, *.safetensors.index.json, *.onnx)",
            ));
        }
        found.extend(inside);
    }
    let mut files: Vec<CheckpointFile> =
        found.into_iter().map(|path| CheckpointFile { number: number_of(&path), path }).collect();
    let display = |f: &CheckpointFile| f.path.to_string_lossy().into_owned();
    if files.iter().all(|f| f.number.is_some()) {
        files.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| natural_cmp(&display(a), &display(b))));
    } else {
        files.sort_by(|a, b| natural_cmp(&display(a), &display(b)));
    }
    files.dedup_by(|a, b| a.path == b.path);
    Ok(files)
}

/// The number of a checkpoint: from its file name, or for generic names (`model.safetensors`,
/// `model.safetensors.index.json`) inside a run directory (`checkpoint-500/`), from the directory.
fn number_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_string_lossy();
    let generic = name.starts_with("model") || name.contains("pytorch_model");
    name_number(&name)
        .or_else(|| if generic { name_number(&path.parent()?.file_name()?.to_string_lossy()) } else { None })
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
