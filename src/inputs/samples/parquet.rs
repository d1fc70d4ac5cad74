//! Parquet files with an image column, as Hugging Face `datasets` stores them (a file, a folder
//! of them, or a split's files named by their prefix: `data/train` for
//! `data/train-00000-of-00004.parquet`), and their label column.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::folders::{describe_dir, DirKind};
use super::pipeline::{ImageItems, ImageSource, Row};
use super::{DataOptions, SampleSource, SourceKind};
use crate::error::{Error, Result};
use crate::inputs::images::{self, Image8};
use crate::inputs::parquet::{Cursor, ParquetSet};
use crate::onnx::InputSpec;

/// Parquet files of images.
pub struct Parquet;

impl SourceKind for Parquet {
    fn name(&self) -> &'static str {
        "Parquet"
    }

    /// A `.parquet` file, a folder of Parquet files only, or the prefix of a split's files.
    fn claims(&self, path: &Path) -> bool {
        let lower = path.to_string_lossy().to_lowercase();
        let arrays = lower.ends_with(".npy") || lower.ends_with(".npz");
        if path.is_dir() {
            !arrays && matches!(describe_dir(path), Ok(DirKind::Parquet(_)))
        } else if !path.exists() {
            split_files(path).is_some()
        } else {
            lower.ends_with(".parquet")
        }
    }

    fn may_carry_labels(&self) -> bool {
        true
    }

    fn open(&self, path: &Path, specs: &[InputSpec], data: &DataOptions) -> Result<Box<dyn SampleSource>> {
        let files = if path.is_dir() {
            match describe_dir(path)? {
                DirKind::Parquet(files) => files,
                _ => return Err(Error::format(path, "holds no Parquet files")),
            }
        } else if let Some(files) = (!path.exists()).then(|| split_files(path)).flatten() {
            files
        } else {
            vec![path.to_path_buf()]
        };
        complete_splits(&files)?;
        let set = ParquetSet::open(files, &data.image_column, &data.label_column)?;
        let targets = set.labels.as_ref().map(|l| l.tensor());
        let why = set.no_labels.clone();
        let classes = targets.as_ref().and(set.class_names.clone());
        Ok(Box::new(
            ImageSource::fit(path, ParquetImages(set), specs, data, targets, classes)?.without_targets_because(why),
        ))
    }
}

/// The image column of Parquet files, read in order one record batch at a time.
struct ParquetImages(ParquetSet);

impl ImageItems for ParquetImages {
    type Cursor = Cursor;

    fn len(&self) -> usize {
        self.0.rows
    }

    fn name_of(&self, i: usize) -> String {
        self.0.name_of(i)
    }

    fn describe(&self) -> String {
        format!("Parquet column `{}` (turned by EXIF orientation, as datasets decodes it)", self.0.image_column)
    }

    fn read(&self, from: usize, to: usize, batch: usize, cursor: &mut Option<Cursor>) -> Result<Vec<Option<Row>>> {
        let reader = match cursor.take() {
            Some(r) => r,
            None => self.0.reader(from, batch)?,
        };
        let (rows, reader) = self.0.next_rows(reader, to - from)?;
        *cursor = Some(reader);
        Ok(rows.into_iter().map(Some).collect())
    }

    /// Rows in any order: taken in ascending order through one cursor that reads forward over
    /// short gaps (the rows between are read and dropped, as a reader started at a row drops the
    /// rows of its row group before it) and starts again at the row group of a farther row.
    fn read_at(&self, indices: &[usize]) -> Result<Vec<Option<Row>>> {
        /// Rows read and dropped rather than starting a reader again.
        const READ_THROUGH: usize = 256;
        let mut order: Vec<(usize, usize)> = indices.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        order.sort_unstable();
        let mut rows = vec![None; indices.len()];
        let mut cursor: Option<Cursor> = None;
        for (i, k) in order {
            let c = match cursor.take() {
                Some(c) if c.position() <= i && i - c.position() <= READ_THROUGH => c,
                _ => self.0.reader(i, 64)?,
            };
            let skip = i - c.position();
            let (mut read, c) = self.0.next_rows(c, skip + 1)?;
            rows[k] = read.pop();
            cursor = Some(c);
        }
        Ok(rows)
    }

    fn image(&self, i: usize, read: Option<&Row>, how: &images::Decode) -> Result<Image8> {
        datasets_image(self.name_of(i), read, how)
    }
}

/// The image of a row of a Hugging Face dataset (Parquet, `save_to_disk`), named `name`, decoded
/// as `datasets` decodes an `Image` feature: turned by its EXIF orientation.
pub(super) fn datasets_image(name: String, read: Option<&Row>, how: &images::Decode) -> Result<Image8> {
    match read {
        Some(Ok(bytes)) => images::decode(bytes, &images::Decode { exif: true, ..*how }).map_err(|bad| bad.named(name)),
        Some(Err(why)) => Err(Error::format(name, why.clone())),
        None => Err(Error::format(name, "was not read")),
    }
}

/// The split a Parquet file's name says it holds, in the Hugging Face layout
/// (`train-00000-of-00004.parquet` → `train`).
fn split_of(file: &Path) -> Option<String> {
    // `my-train-00000-of-00002.parquet` is split `my-train`, as the numbering reads it.
    if let Some((split, ..)) = numbered(file) {
        return Some(split);
    }
    let name = file.file_name()?.to_string_lossy().into_owned();
    let (split, rest) = name.split_once('-')?;
    rest.split('-').next().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(|_| split.to_string())
}

/// `files`, unless their names say they hold more than one split (`train-*` and `test-*` side by
/// side, as the Hub stores them): mixing a training and a held-out split is never what is meant.
pub(super) fn one_split(dir: &Path, files: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    let mut splits: Vec<String> = files.iter().filter_map(|f| split_of(f)).collect();
    splits.sort();
    splits.dedup();
    if splits.len() > 1 {
        let paths: Vec<String> = splits.iter().map(|s| dir.join(s).display().to_string()).collect();
        return Err(Error::format(
            dir,
            format!(
                "holds the Parquet files of {} splits ({}): point at one by its prefix, {}",
                splits.len(),
                splits.join(", "),
                paths.join(" or ")
            ),
        ));
    }
    Ok(files)
}

/// `split-NNNNN-of-MMMMM.parquet`: the split, the file's number, how many the split has, and the
/// number of digits they are written with.
fn numbered(file: &Path) -> Option<(String, usize, usize, usize)> {
    let name = file.file_name()?.to_str()?;
    let stem = name.get(..name.len().checked_sub(".parquet".len())?)?;
    if !name[stem.len()..].eq_ignore_ascii_case(".parquet") {
        return None;
    }
    let (head, total) = stem.rsplit_once("-of-")?;
    let (split, index) = head.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(index) && digits(total)).then_some(())?;
    Some((split.to_string(), index.parse().ok()?, total.parse().ok()?, index.len()))
}

/// Numbered files of a split (`train-00000-of-00003.parquet`, …) must all be there: a missing one
/// would leave its rows out of every pass and evaluation without a word. Numbered from 0 (as the
/// Hugging Face Hub numbers them) or, where the highest is the count itself, from 1.
fn complete_splits(files: &[PathBuf]) -> Result<()> {
    // (folder, split) → each file's (number, count, digits).
    type Splits = std::collections::BTreeMap<(PathBuf, String), Vec<(usize, usize, usize)>>;
    let mut splits = Splits::new();
    for f in files {
        if let Some((split, index, total, width)) = numbered(f) {
            let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
            splits.entry((dir, split)).or_default().push((index, total, width));
        }
    }
    for ((dir, split), parts) in splits {
        let (_, total, width) = parts[0];
        if let Some(&(_, other, _)) = parts.iter().find(|p| p.1 != total) {
            return Err(Error::format(
                dir.join(format!("{split}-*.parquet")),
                format!("are numbered as parts of {total} and of {other} files: they are not one split"),
            ));
        }
        let base = usize::from(!parts.iter().any(|p| p.0 == 0) && parts.iter().any(|p| p.0 == total));
        let have: HashSet<usize> = parts.iter().map(|p| p.0).collect();
        if let Some(&(beyond, _, _)) = parts.iter().find(|p| p.0 < base || p.0 >= base + total) {
            return Err(Error::format(
                dir.join(format!("{split}-{beyond:0width$}-of-{total:0width$}.parquet")),
                format!("is numbered beyond the split's {total} files"),
            ));
        }
        let missing: Vec<usize> = (base..base + total).filter(|i| !have.contains(i)).collect();
        if let Some(&first) = missing.first() {
            let name = |i: usize| format!("{split}-{i:0width$}-of-{total:0width$}.parquet");
            let more = match missing.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Err(Error::format(
                dir.join(name(first)),
                format!(
                    "is missing{more}: split `{split}` has {total} files and {} of them are here; a pass over \
                     the others would leave its rows out",
                    have.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The Parquet files of one split named by a path prefix: `data/train` for
/// `data/train-00000-of-00004.parquet`, … (`None` when `path` names no such files).
fn split_files(path: &Path) -> Option<Vec<PathBuf>> {
    let (dir, split) = (path.parent()?, path.file_name()?.to_str()?);
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet") && split_of(p).as_deref() == Some(split))
        .collect();
    files.sort();
    (!files.is_empty()).then_some(files)
}
