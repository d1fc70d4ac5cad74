//! Images in Parquet files, as Hugging Face `datasets` stores them: an image column of encoded
//! bytes (a struct `{bytes, path}`, or plain binary) and an optional integer label column.
//! Only the row counts and the labels are read up front; the images are read one record batch
//! (about one batch of samples) at a time, in order.

use std::collections::VecDeque;
use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type};
use arrow_array::{Array as _, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::error::{Error, Result};

/// One row's encoded image, or why it has none.
pub type Row = std::result::Result<Vec<u8>, String>;

/// Parquet files read as one sequence of rows, in the order given.
pub struct ParquetSet {
    files: Vec<PathBuf>,
    /// Rows before each file, and the total at the end.
    starts: Vec<usize>,
    /// Total rows.
    pub rows: usize,
    /// The image column's name.
    pub image_column: String,
    /// Its index among each file's top-level columns.
    columns: Vec<usize>,
    /// The label column's values, when every file has it.
    pub labels: Option<Vec<i64>>,
}

fn parquet_error(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot be read as Parquet: {e}"))
}

fn builder(path: &std::path::Path) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    let file = crate::fs::open_regular(path)?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))
}

/// The label values of a column of any integer type.
fn integers(path: &std::path::Path, name: &str, col: &ArrayRef) -> Result<Vec<i64>> {
    if col.null_count() > 0 {
        return Err(Error::format(path, format!("label column `{name}` has missing (null) values")));
    }
    macro_rules! ints {
        ($t:ty) => {
            col.as_primitive::<$t>().values().iter().map(|&v| i64::try_from(v).unwrap_or(i64::MAX)).collect()
        };
    }
    Ok(match col.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        other => {
            return Err(Error::format(path, format!("label column `{name}` holds {other}, not integer class indices")))
        }
    })
}

/// The encoded images of a column: binary, or a struct with a binary `bytes` field (a null
/// `bytes` is an image stored by path only: that row's `Err` says why, and the caller names the
/// row).
fn image_bytes(col: &ArrayRef, first_row: usize, name: &dyn Fn(usize) -> String) -> Result<Vec<Row>> {
    // A null image (the whole struct null) is as missing as a null `bytes`.
    let whole = |k: usize| col.is_valid(k);
    let (values, paths): (&ArrayRef, Option<&ArrayRef>) = match col.as_struct_opt() {
        Some(s) => match s.column_by_name("bytes") {
            Some(b) => (b, s.column_by_name("path")),
            None => return Err(Error::format(name(first_row), "its image struct has no `bytes` field")),
        },
        None => (col, None),
    };
    let missing = |k: usize| {
        let path = paths
            .and_then(|p| p.as_string_opt::<i32>().filter(|p| p.is_valid(k)).map(|p| p.value(k).to_string()))
            .map(|p| format!(" (only its path, {p}: swa reads images embedded in the file)"))
            .unwrap_or_default();
        format!("has no image (null) bytes{path}")
    };
    macro_rules! rows {
        ($a:expr) => {{
            let a = $a;
            Ok((0..a.len())
                .map(|k| if whole(k) && a.is_valid(k) { Ok(a.value(k).to_vec()) } else { Err(missing(k)) })
                .collect())
        }};
    }
    match values.data_type() {
        DataType::Binary => rows!(values.as_binary::<i32>()),
        DataType::LargeBinary => rows!(values.as_binary::<i64>()),
        DataType::BinaryView => rows!(values.as_binary_view()),
        other => {
            Err(Error::format(name(first_row), format!("its image column holds {other}, not encoded image bytes")))
        }
    }
}

/// A position in a [`ParquetSet`]: the file, its reader, and rows read but not yet taken.
pub struct Cursor {
    file: usize,
    reader: Option<ParquetRecordBatchReader>,
    buffered: VecDeque<Row>,
    /// The set's row of the next buffered (or read) row.
    row: usize,
    batch: usize,
}

impl ParquetSet {
    /// Opens `files` (in this order), finds `image_column` in each and reads `label_column`
    /// where every file has it.
    pub fn open(files: Vec<PathBuf>, image_column: &str, label_column: &str) -> Result<Self> {
        let mut starts = vec![0];
        let mut columns = Vec::new();
        let mut labels = Some(Vec::new());
        for path in &files {
            let b = builder(path)?;
            let fields: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
            let Some(col) = fields.iter().position(|f| f == image_column) else {
                return Err(Error::format(
                    path,
                    format!(
                        "has no column `{image_column}` (its columns: {}): name the image column with --image-column",
                        fields.join(", ")
                    ),
                ));
            };
            columns.push(col);
            let rows = usize::try_from(b.metadata().file_metadata().num_rows())
                .map_err(|_| Error::format(path, "has a negative row count"))?;
            starts.push(starts.last().expect("non-empty") + rows);
            let has_labels = fields.iter().any(|f| f == label_column);
            if !has_labels && label_column != "label" {
                return Err(Error::format(
                    path,
                    format!("has no label column `{label_column}` (its columns: {})", fields.join(", ")),
                ));
            }
            if labels.is_some() != has_labels && path != &files[0] {
                return Err(Error::format(
                    path,
                    format!(
                        "{} a label column `{label_column}`, and {} {}: the files of one set must agree",
                        if has_labels { "has" } else { "has no" },
                        files[0].display(),
                        if has_labels { "has none" } else { "has one" }
                    ),
                ));
            }
            if !has_labels {
                labels = None;
            }
            labels = match (labels, fields.iter().position(|f| f == label_column)) {
                (Some(mut all), Some(l)) => {
                    let mask = ProjectionMask::roots(b.parquet_schema(), [l]);
                    for batch in b
                        .with_projection(mask)
                        .with_batch_size(64 * 1024)
                        .build()
                        .map_err(|e| parquet_error(path, e))?
                    {
                        let batch = batch.map_err(|e| parquet_error(path, e))?;
                        all.extend(integers(path, label_column, batch.column(0))?);
                    }
                    Some(all)
                }
                _ => None,
            };
        }
        let rows = *starts.last().expect("non-empty");
        Ok(ParquetSet { files, starts, rows, image_column: image_column.to_string(), columns, labels })
    }

    /// `file row N` for messages about row `i` of the set.
    pub fn name_of(&self, i: usize) -> String {
        let f = self.file_of(i);
        format!("{} (row {})", self.files[f].display(), i - self.starts[f])
    }

    fn file_of(&self, i: usize) -> usize {
        self.starts.partition_point(|&s| s <= i).saturating_sub(1).min(self.files.len().saturating_sub(1))
    }

    /// A cursor at row `row`, reading `batch` rows at a time.
    pub fn reader(&self, row: usize, batch: usize) -> Result<Cursor> {
        Ok(Cursor { file: self.file_of(row), reader: None, buffered: VecDeque::new(), row, batch: batch.max(1) })
    }

    /// The next `n` rows' image bytes from `cursor` (a row without an image is an error of its
    /// own, which `skip_bad_images` may skip).
    pub fn next_rows(&self, mut cursor: Cursor, n: usize) -> Result<(Vec<Row>, Cursor)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if let Some(b) = cursor.buffered.pop_front() {
                out.push(b);
                continue;
            }
            let Some(path) = self.files.get(cursor.file) else {
                return Err(Error::format(&self.files[0], "ended before its row count: a file changed while read"));
            };
            let start = self.starts[cursor.file];
            if cursor.reader.is_none() {
                let b = builder(path)?;
                let mask = ProjectionMask::roots(b.parquet_schema(), [self.columns[cursor.file]]);
                let reader = b
                    .with_projection(mask)
                    .with_batch_size(cursor.batch)
                    .with_offset(cursor.row - start)
                    .build()
                    .map_err(|e| parquet_error(path, e))?;
                cursor.reader = Some(reader);
            }
            match cursor.reader.as_mut().expect("just set").next() {
                Some(batch) => {
                    let batch = batch.map_err(|e| parquet_error(path, e))?;
                    let first = cursor.row;
                    let rows = image_bytes(batch.column(0), first, &|i| self.name_of(i))?;
                    cursor.row += rows.len();
                    cursor.buffered.extend(rows);
                }
                None => {
                    cursor.file += 1;
                    cursor.reader = None;
                    cursor.row = self.starts[cursor.file.min(self.files.len())];
                }
            }
        }
        Ok((out, cursor))
    }

    /// The image bytes of rows `from..to`.
    pub fn read_range(&self, from: usize, to: usize) -> Result<Vec<Row>> {
        Ok(self.next_rows(self.reader(from, to - from)?, to - from)?.0)
    }
}
