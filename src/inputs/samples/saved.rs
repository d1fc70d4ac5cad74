//! Hugging Face `datasets` saved with `save_to_disk`: a `Dataset` folder (`state.json`,
//! `dataset_info.json` and `data-NNNNN-of-MMMMM.arrow` files), one split of a `DatasetDict`
//! folder (`dataset_dict.json` and a folder per split), or one `.arrow` file of either. The Arrow
//! files are Arrow IPC streams (or files) of record batches; the image column is an `Image`
//! feature (`{bytes, path}`) decoded as `datasets` decodes it (turned by its EXIF orientation), and
//! the label column a `ClassLabel` (class indices; the class names come from `dataset_info.json`).
//!
//! The files are mapped (or read, where the process does not allow maps: `crate::fs::map_input`)
//! and their messages indexed up front; a record batch is decoded without copying, and only the
//! rows asked for are copied out, so any sample costs the same to read, in any order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array as _, ArrayRef, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::reader::FileDecoder;
use arrow_ipc::{Block, MessageHeader, MetadataVersion};
use arrow_schema::SchemaRef;

use super::pipeline::{ImageItems, ImageSource, Row};
use super::{DataOptions, SampleSource, SourceKind};
use crate::error::{Error, Hint, Result};
use crate::inputs::images::{self, Image8};
use crate::inputs::parquet::{image_bytes, TargetColumn};
use crate::onnx::InputSpec;

/// `save_to_disk` folders and Arrow files.
pub struct Saved;

/// What a path of this kind is.
enum Layout {
    /// A `Dataset` folder or one `.arrow` file: its Arrow files, in order.
    Files(Vec<PathBuf>),
    /// A `DatasetDict` folder: its splits.
    Splits(Vec<String>),
}

fn layout(path: &Path) -> Option<Layout> {
    if path.is_file() {
        return path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("arrow"))
            .then(|| Layout::Files(vec![path.into()]));
    }
    if path.join("dataset_dict.json").is_file() {
        // Whatever it holds, the folder is a DatasetDict: a damaged list of splits is said as such.
        let splits = std::fs::read(path.join("dataset_dict.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j.get("splits")?.as_array()?.iter().map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default();
        return Some(Layout::Splits(splits));
    }
    if !path.join("state.json").is_file() {
        return None;
    }
    // The files `state.json` lists, in its order; where it lists none, the folder's `.arrow` files.
    let listed: Option<Vec<PathBuf>> = std::fs::read(path.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|j| {
            let files = j.get("_data_files")?.as_array()?;
            files.iter().map(|f| Some(path.join(f.get("filename")?.as_str()?))).collect()
        });
    let files = listed.filter(|l| !l.is_empty()).unwrap_or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    });
    Some(Layout::Files(files))
}

impl SourceKind for Saved {
    fn name(&self) -> &'static str {
        "datasets save_to_disk"
    }

    fn claims(&self, path: &Path) -> bool {
        layout(path).is_some()
    }

    fn may_carry_labels(&self) -> bool {
        true
    }

    fn open(&self, path: &Path, specs: &[InputSpec], data: &DataOptions) -> Result<Box<dyn SampleSource>> {
        let files =
            match layout(path) {
                Some(Layout::Files(files)) if !files.is_empty() => files,
                Some(Layout::Files(_)) => {
                    return Err(Error::format(path, "is a datasets save_to_disk folder with no .arrow files"))
                }
                Some(Layout::Splits(splits)) if splits.is_empty() => return Err(Error::format(
                    path,
                    "is a DatasetDict saved with save_to_disk whose dataset_dict.json lists no splits (it should be \
                     {\"splits\": [\"train\", ...]}): point at a split's folder",
                )),
                Some(Layout::Splits(splits)) => {
                    let paths: Vec<String> = splits.iter().map(|s| path.join(s).display().to_string()).collect();
                    return Err(Error::format(
                        path,
                        format!(
                            "is a DatasetDict saved with save_to_disk, of {} splits ({}): point at one, {}",
                            splits.len(),
                            splits.join(", "),
                            paths.join(" or ")
                        ),
                    ));
                }
                None => return Err(Error::format(path, "is not a datasets save_to_disk folder or an .arrow file")),
            };
        let set = ArrowSet::open(files, &data.image_column, &data.label_column)?;
        let targets = set.labels.as_ref().map(|l| l.tensor());
        let classes = targets.as_ref().and_then(|_| class_names(path, &data.label_column));
        let why = set.no_labels.clone();
        Ok(Box::new(ImageSource::fit(path, set, specs, data, targets, classes)?.without_targets_because(why)))
    }
}

/// The names of a `ClassLabel` column, from the `dataset_info.json` beside the files.
fn class_names(path: &Path, column: &str) -> Option<Vec<String>> {
    let dir = if path.is_dir() { path } else { path.parent()? };
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("dataset_info.json")).ok()?).ok()?;
    let feature = json.get("features")?.get(column)?;
    (feature.get("_type")?.as_str()? == "ClassLabel").then_some(())?;
    feature.get("names")?.as_array()?.iter().map(|n| n.as_str().map(String::from)).collect()
}

/// One Arrow file: its bytes, schema and record batches.
struct ArrowFile {
    path: PathBuf,
    bytes: Buffer,
    schema: SchemaRef,
    version: MetadataVersion,
    /// Each record batch: where its message lies and its rows.
    batches: Vec<(Block, usize)>,
    /// The rows before each batch, and the file's total at the end.
    starts: Vec<usize>,
}

/// Runs `f`, turning a panic of the Arrow decoder on a malformed file into an error.
fn guarded<T>(path: &Path, f: impl FnOnce() -> std::result::Result<T, arrow_schema::ArrowError>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::format(path, format!("is not a valid Arrow file: {e}"))),
        Err(_) => Err(Error::format(path, "is not a valid Arrow file (its decoder gave up)")),
    }
}

impl ArrowFile {
    /// Maps `path` and indexes its messages: an Arrow IPC stream, or an Arrow IPC file (the same
    /// messages after its `ARROW1` magic).
    fn open(path: &Path) -> Result<Self> {
        let input = Arc::new(crate::fs::map_input(path)?);
        let len = input.len();
        let bytes = match std::ptr::NonNull::new(input.as_ptr() as *mut u8) {
            // SAFETY: the pointer is valid for `len` bytes for as long as `input` lives, which the
            // buffer owns; the bytes are never written.
            Some(ptr) if len > 0 => unsafe { Buffer::from_custom_allocation(ptr, len, input) },
            _ => return Err(Error::format(path, "is empty, not an Arrow file")),
        };
        let bad = |what: String| Error::format(path, format!("is not a valid Arrow file: {what}"));
        let all = bytes.as_slice();
        let mut at = if all.starts_with(b"ARROW1") { 8 } else { 0 };
        let (mut schema, mut batches, mut starts, mut rows) = (None::<SchemaRef>, Vec::new(), Vec::new(), 0usize);
        let mut version = MetadataVersion::V5;
        let word =
            |at: usize| -> Option<u32> { Some(u32::from_le_bytes(all.get(at..at.checked_add(4)?)?.try_into().ok()?)) };
        while let Some(mut meta_len) = word(at) {
            let mut prefix = 4;
            if meta_len == 0xFFFF_FFFF {
                meta_len = word(at + 4).ok_or_else(|| bad(format!("the message at byte {at} is cut short")))?;
                prefix = 8;
            }
            if meta_len == 0 {
                break;
            }
            let meta_start = at + prefix;
            let past = || bad(format!("the message at byte {at} runs past the end"));
            let meta =
                all.get(meta_start..meta_start.checked_add(meta_len as usize).ok_or_else(past)?).ok_or_else(past)?;
            let message = arrow_ipc::root_as_message(meta).map_err(|e| bad(format!("message at byte {at}: {e}")))?;
            let body = usize::try_from(message.bodyLength())
                .map_err(|_| bad(format!("the message at byte {at} has a negative body length")))?;
            let end = (meta_start + meta_len as usize).checked_add(body).filter(|&e| e <= len).ok_or_else(past)?;
            match message.header_type() {
                MessageHeader::Schema => {
                    if schema.is_some() {
                        return Err(bad(format!("a second schema at byte {at} (a stream has one)")));
                    }
                    let fb = message.header_as_schema().ok_or_else(|| bad("an unreadable schema".into()))?;
                    version = message.version();
                    schema = Some(Arc::new(guarded(path, || arrow_ipc::convert::try_fb_to_schema(fb))?));
                }
                MessageHeader::RecordBatch => {
                    let batch = message.header_as_record_batch().ok_or_else(|| bad("an unreadable batch".into()))?;
                    let n = usize::try_from(batch.length()).map_err(|_| bad("a batch of negative length".into()))?;
                    // Every row of an image column holds an offset of at least 4 bytes: a row count
                    // the body cannot hold is a lie (and would be trusted by a sampled pass).
                    if n > body / 4 {
                        return Err(bad(format!("the record batch at byte {at} claims {n} rows in {body} bytes")));
                    }
                    let meta_total = i32::try_from(prefix + meta_len as usize).map_err(|_| past())?;
                    let body = i64::try_from(body).map_err(|_| past())?;
                    starts.push(rows);
                    rows = rows.checked_add(n).ok_or_else(|| bad("too many rows".into()))?;
                    batches.push((Block::new(at as i64, meta_total, body), n));
                }
                MessageHeader::DictionaryBatch => {
                    return Err(Error::format(
                        path,
                        "holds a dictionary-encoded column, which swa does not read: convert it to Parquet \
                         (datasets: `ds.to_parquet(...)`)",
                    ))
                }
                _ => {}
            }
            at = end;
        }
        let schema = schema.ok_or_else(|| bad("it has no schema".into()))?;
        starts.push(rows);
        Ok(ArrowFile { path: path.to_path_buf(), bytes, schema, version, batches, starts })
    }

    fn rows(&self) -> usize {
        *self.starts.last().expect("a total")
    }

    /// Column `column` of record batch `k`.
    fn column(&self, k: usize, column: usize) -> Result<ArrayRef> {
        let (block, n) = self.batches[k];
        let decoder = FileDecoder::new(self.schema.clone(), self.version).with_projection(vec![column]);
        let message = self
            .bytes
            .slice_with_length(block.offset() as usize, block.metaDataLength() as usize + block.bodyLength() as usize);
        let batch: Option<RecordBatch> = guarded(&self.path, || decoder.read_record_batch(&block, &message))?;
        let col = batch.map(|b| b.column(0).clone()).filter(|c| c.len() == n);
        col.ok_or_else(|| {
            Error::format(
                &self.path,
                format!("is not a valid Arrow file: record batch {k} holds other than its {n} rows"),
            )
        })
    }
}

/// The Arrow files of a saved dataset, read as one sequence of rows.
struct ArrowSet {
    files: Vec<ArrowFile>,
    /// Rows before each file, and the total at the end.
    starts: Vec<usize>,
    image_column: String,
    /// The image column's index in each file.
    columns: Vec<usize>,
    labels: Option<TargetColumn>,
    no_labels: Option<String>,
}

impl ArrowSet {
    fn open(paths: Vec<PathBuf>, image_column: &str, label_column: &str) -> Result<Self> {
        let mut files = Vec::new();
        let mut starts = vec![0];
        let mut columns = Vec::new();
        let mut labels = (!label_column.is_empty()).then(TargetColumn::default);
        let mut no_labels =
            label_column.is_empty().then(|| "its labels are turned off (an empty label column name)".to_string());
        for path in &paths {
            let f = ArrowFile::open(path)?;
            let fields: Vec<&str> = f.schema.fields().iter().map(|x| x.name().as_str()).collect();
            let Some(col) = fields.iter().position(|x| *x == image_column) else {
                return Err(Error::format(
                    path,
                    format!("has no column `{image_column}` (its columns: {})", fields.join(", ")),
                )
                .hint(Hint::ImageColumn));
            };
            columns.push(col);
            match (labels.as_mut(), fields.iter().position(|x| *x == label_column)) {
                (Some(all), Some(l)) => {
                    for k in 0..f.batches.len() {
                        match all.add(path, label_column, &f.column(k, l)?) {
                            Ok(()) => {}
                            Err(e) => {
                                no_labels = Some(e.to_string());
                                labels = None;
                                break;
                            }
                        }
                    }
                }
                (Some(_), None) if label_column != "label" => {
                    return Err(Error::format(
                        path,
                        format!("has no label column `{label_column}` (its columns: {})", fields.join(", ")),
                    ))
                }
                (Some(_), None) => {
                    no_labels = Some(format!(
                        "{} has no label column `{label_column}` (its columns: {})",
                        path.display(),
                        fields.join(", ")
                    ));
                    labels = None;
                }
                (None, _) => {}
            }
            starts.push(starts.last().expect("non-empty") + f.rows());
            files.push(f);
        }
        Ok(ArrowSet { files, starts, image_column: image_column.to_string(), columns, labels, no_labels })
    }

    /// The file that holds row `i`.
    fn file_of(&self, i: usize) -> usize {
        self.starts.partition_point(|&s| s <= i).saturating_sub(1).min(self.files.len() - 1)
    }

    /// The file and record batch of row `i`, and its row in the batch.
    fn locate(&self, i: usize) -> (usize, usize, usize) {
        let f = self.file_of(i);
        let r = i - self.starts[f];
        let file = &self.files[f];
        let k = file.starts.partition_point(|&s| s <= r).saturating_sub(1).min(file.batches.len().saturating_sub(1));
        (f, k, r - file.starts[k])
    }
}

impl ImageItems for ArrowSet {
    type Cursor = ();

    fn len(&self) -> usize {
        *self.starts.last().expect("a total")
    }

    fn name_of(&self, i: usize) -> String {
        let f = self.file_of(i);
        format!("{} (row {})", self.files[f].path.display(), i - self.starts[f])
    }

    fn describe(&self) -> String {
        format!("Arrow column `{}` (turned by EXIF orientation, as datasets decodes it)", self.image_column)
    }

    fn read(&self, from: usize, to: usize, _batch: usize, _cursor: &mut Option<()>) -> Result<Vec<Option<Row>>> {
        self.read_at(&(from..to).collect::<Vec<_>>())
    }

    /// Each row is sliced out of its record batch (decoded without copying; the last one kept for
    /// the rows after it) and only its bytes copied.
    fn read_at(&self, indices: &[usize]) -> Result<Vec<Option<Row>>> {
        let mut last: Option<((usize, usize), ArrayRef)> = None;
        let mut rows = Vec::with_capacity(indices.len());
        for &i in indices {
            let (f, k, r) = self.locate(i);
            let col = match &last {
                Some((at, col)) if *at == (f, k) => col.clone(),
                _ => {
                    let col = self.files[f].column(k, self.columns[f])?;
                    last = Some(((f, k), col.clone()));
                    col
                }
            };
            let mut one = image_bytes(&col.slice(r, 1), i, &|i| self.name_of(i))?;
            rows.push(one.pop());
        }
        Ok(rows)
    }

    fn image(&self, i: usize, read: Option<&Row>, how: &images::Decode) -> Result<Image8> {
        super::parquet::datasets_image(self.name_of(i), read, how)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Damaged Arrow files (cut short anywhere, bytes changed) are errors or read, never a panic
    /// or an abort: every row of what opens is read.
    #[test]
    fn damaged_arrow_files_are_errors_not_crashes() {
        let good =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/images/saved/data-00000-of-00001.arrow"))
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.arrow");
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for trial in 0..1500 {
            let mut bytes = good.clone();
            if trial % 3 == 0 {
                bytes.truncate((next() as usize) % good.len());
            } else {
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(set) = ArrowSet::open(vec![path.clone()], "image", "label") {
                let n = set.len();
                let _ = set.read_at(&(0..n).collect::<Vec<_>>());
            }
        }
    }
}
