//! Images in Parquet files, as Hugging Face `datasets` stores them: an image column of encoded
//! bytes (a struct `{bytes, path}`, or plain binary) and an optional integer label column.
//! Only the row counts and the labels are read up front; the images are read one record batch
//! (about one batch of samples) at a time, in order.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type};
use arrow_array::{Array as _, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowGroups};
use parquet::arrow::{parquet_to_arrow_field_levels, ProjectionMask};
use parquet::basic::Encoding;
use parquet::column::page::{Page, PageIterator, PageMetadata, PageReader};
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::serialized_reader::SerializedPageReader;

use crate::error::{Error, Hint, Result};

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
    pub labels: Option<TargetColumn>,
    /// The names of the label column's classes, where `datasets` wrote them (a `ClassLabel` in the
    /// first file's `huggingface` metadata).
    pub class_names: Option<Vec<String>>,
    /// Why there are no labels (for an evaluation, which needs them): no such column (with the
    /// columns there are), labels turned off, or a column that is not class indices.
    pub no_labels: Option<String>,
}

fn parquet_error(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot be read as Parquet: {e}"))
}

/// The file's footer, checked where the parquet crate trusts it: it asserts (panics) on a column
/// chunk at a negative offset or of a negative size, allocates a chunk's size before reading it,
/// and plans reads by the row groups' row counts.
fn builder(path: &std::path::Path) -> Result<(ParquetRecordBatchReaderBuilder<std::fs::File>, Arc<std::fs::File>)> {
    let file = crate::fs::open_regular(path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let shared = Arc::new(file.try_clone().map_err(|e| Error::io(path, e))?);
    let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
    check_footer(b.metadata(), len).map_err(|e| parquet_error(path, e))?;
    Ok((b, shared))
}

fn check_footer(meta: &ParquetMetaData, file_len: u64) -> std::result::Result<(), String> {
    let mut rows: i64 = 0;
    for (g, group) in meta.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Err(format!("row group {g} has a negative row count"));
        }
        rows = rows.saturating_add(group.num_rows());
        for (c, col) in group.columns().iter().enumerate() {
            let start = col.dictionary_page_offset().unwrap_or(col.data_page_offset());
            let end =
                u64::try_from(start).ok().zip(u64::try_from(col.compressed_size()).ok()).map(|(s, l)| s.checked_add(l));
            if col.data_page_offset() < 0 || !matches!(end, Some(Some(end)) if end <= file_len) {
                return Err(format!(
                    "column {c} of row group {g} lies outside the file (offset {start}, {} bytes, in a file of {file_len})",
                    col.compressed_size()
                ));
            }
        }
    }
    if rows != meta.file_metadata().num_rows() {
        return Err(format!(
            "its row groups hold {rows} rows, but its footer counts {}",
            meta.file_metadata().num_rows()
        ));
    }
    Ok(())
}

/// A reader of column `column` of `path`, `batch` rows at a time, whose pages go through
/// [`CheckedPages`], for rows from `offset`: it starts at the row group that holds `offset`, and
/// the number returned is the rows before `offset` in it, which the caller reads and drops.
fn column_reader(
    path: &std::path::Path,
    column: usize,
    batch: usize,
    offset: usize,
) -> Result<(ParquetRecordBatchReader, usize)> {
    let (b, file) = builder(path)?;
    let mask = ProjectionMask::roots(b.parquet_schema(), [column]);
    let levels = parquet_to_arrow_field_levels(b.parquet_schema(), mask, Some(b.schema().fields()))
        .map_err(|e| parquet_error(path, e))?;
    // Whole row groups before `offset` are left out: their pages are never read (a part of a
    // sharded pass starts far into the file). The rows before `offset` in its own row group are
    // read and dropped, not skipped with a row selection: the parquet crate's skip over a corrupt
    // page moves past its end, and the read after it asks for 2^63 bytes (an abort, found by
    // fuzzing).
    let (mut first, mut before) = (0, 0);
    for g in b.metadata().row_groups() {
        let rows = usize::try_from(g.num_rows()).unwrap_or(0);
        if before + rows > offset {
            break;
        }
        first += 1;
        before += rows;
    }
    let groups = CheckedRowGroups { file, metadata: b.metadata().clone(), first };
    let skip = offset - before.min(offset);
    let reader = ParquetRecordBatchReader::try_new_with_row_groups(&levels, &groups, batch, None)
        .map_err(|e| parquet_error(path, e))?;
    Ok((reader, skip))
}

/// A file's row groups, read as the parquet crate's own reader would, but with each column
/// chunk's pages checked by [`CheckedPages`].
struct CheckedRowGroups {
    file: Arc<std::fs::File>,
    metadata: Arc<ParquetMetaData>,
    /// The first row group read (those before it are left out).
    first: usize,
}

impl CheckedRowGroups {
    fn groups(&self) -> &[RowGroupMetaData] {
        self.metadata.row_groups().get(self.first..).unwrap_or(&[])
    }
}

impl RowGroups for CheckedRowGroups {
    fn num_rows(&self) -> usize {
        self.groups().iter().map(|g| usize::try_from(g.num_rows()).unwrap_or(0)).sum()
    }

    fn column_chunks(&self, i: usize) -> parquet::errors::Result<Box<dyn PageIterator>> {
        let mut chunks = Vec::new();
        for group in self.groups() {
            let rows = usize::try_from(group.num_rows()).unwrap_or(0);
            let column = group.column(i);
            let pages = SerializedPageReader::new(self.file.clone(), column, rows, None)?;
            let descr = column.column_descr();
            chunks.push(Ok(Box::new(CheckedPages {
                inner: Box::new(pages),
                next: None,
                dictionary: false,
                levels: (descr.max_rep_level(), descr.max_def_level()),
            }) as Box<dyn PageReader>));
        }
        Ok(Box::new(Chunks(chunks.into_iter())))
    }

    fn row_groups(&self) -> Box<dyn Iterator<Item = &RowGroupMetaData> + '_> {
        Box::new(self.groups().iter())
    }

    fn metadata(&self) -> &ParquetMetaData {
        &self.metadata
    }
}

struct Chunks(std::vec::IntoIter<parquet::errors::Result<Box<dyn PageReader>>>);

impl Iterator for Chunks {
    type Item = parquet::errors::Result<Box<dyn PageReader>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

impl PageIterator for Chunks {}

/// A column chunk's pages, as the parquet crate decodes them, without the paths where it panics
/// on malformed pages: it peeks at (and skips) a page by decoding its header with `unwrap()`s on
/// the parts a data page must have, expects a dictionary page before dictionary-encoded data, and
/// slices and decodes the repetition and definition levels by the lengths the page declares.
/// Here a peek reads the whole page (which then waits for the next read), so its header goes
/// through the checked decoding; dictionary-encoded data without a dictionary, and levels that
/// do not fit in their page, are errors.
struct CheckedPages {
    inner: Box<dyn PageReader>,
    /// A page read by a peek.
    next: Option<Page>,
    /// Whether a dictionary page was read.
    dictionary: bool,
    /// The column's highest repetition and definition levels.
    levels: (i16, i16),
}

/// Checks that a data page's levels lie within it, as the parquet crate slices them: a version 1
/// page holds each kind of level behind its byte length (RLE) or as `num_values` packed values
/// (BIT_PACKED); a version 2 page gives both lengths in its header.
fn check_levels(page: &Page, (max_rep, max_def): (i16, i16)) -> std::result::Result<(), String> {
    let bits = |max: i16| (16 - max.leading_zeros()) as usize;
    match page {
        Page::DataPage { buf, num_values, def_level_encoding, rep_level_encoding, .. } => {
            let mut rest: &[u8] = buf;
            for (max, encoding) in [(max_rep, *rep_level_encoding), (max_def, *def_level_encoding)] {
                if max <= 0 {
                    continue;
                }
                let len = match encoding {
                    Encoding::RLE => {
                        let Some(prefix) = rest.get(..4) else { return Err("its levels are cut short".into()) };
                        let len = i32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
                        let Some(levels) = len.checked_add(4).and_then(|end| rest.get(4..end)) else {
                            return Err(format!("its levels ({len} bytes) do not fit in the page"));
                        };
                        check_rle_levels(levels, bits(max), *num_values as usize)?;
                        len + 4
                    }
                    #[allow(deprecated)]
                    Encoding::BIT_PACKED => (*num_values as usize * bits(max)).div_ceil(8),
                    other => return Err(format!("its levels have encoding {other}")),
                };
                rest = rest.get(len..).ok_or("its levels do not fit in the page")?;
            }
            Ok(())
        }
        Page::DataPageV2 { buf, num_values, def_levels_byte_len, rep_levels_byte_len, .. } => {
            let (rep, def) = (*rep_levels_byte_len as usize, *def_levels_byte_len as usize);
            if rep + def > buf.len() {
                return Err(format!("its levels ({rep} + {def} bytes) do not fit in its {} bytes", buf.len()));
            }
            if max_rep > 0 {
                check_rle_levels(&buf[..rep], bits(max_rep), *num_values as usize)?;
            }
            if max_def > 0 {
                check_rle_levels(&buf[rep..rep + def], bits(max_def), *num_values as usize)?;
            }
            Ok(())
        }
        Page::DictionaryPage { .. } => Ok(()),
    }
}

/// Checks that the bit-packed runs of `levels` levels of `bits` bits, RLE / bit-packed hybrid
/// encoded in `data`, lie within it (the parquet crate's decoder of nullable flat columns reads
/// them without a bound check). A run cut short by the end of the data is the decoders' to report.
fn check_rle_levels(data: &[u8], bits: usize, levels: usize) -> std::result::Result<(), String> {
    let (mut at, mut left) = (0usize, levels);
    while left > 0 && at < data.len() {
        let (mut header, mut shift) = (0u64, 0);
        loop {
            let Some(&b) = data.get(at) else { return Ok(()) };
            at += 1;
            if shift < 64 {
                header |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let count = usize::try_from(header >> 1).unwrap_or(usize::MAX);
        if header & 1 == 1 {
            let read = count.saturating_mul(8).min(left);
            if (read * bits).div_ceil(8) > data.len() - at {
                return Err(format!("a bit-packed run of {read} levels ends past their {} bytes", data.len()));
            }
            at = at.saturating_add(count.saturating_mul(bits));
            left -= read;
        } else {
            at = at.saturating_add(bits.div_ceil(8));
            left -= count.min(left);
        }
    }
    Ok(())
}

impl CheckedPages {
    fn read(&mut self) -> parquet::errors::Result<Option<Page>> {
        if let Some(page) = self.next.take() {
            return Ok(Some(page));
        }
        let page = self.inner.get_next_page()?;
        match &page {
            Some(Page::DictionaryPage { .. }) => self.dictionary = true,
            Some(p)
                if matches!(p.encoding(), Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY)
                    && !self.dictionary =>
            {
                return Err(parquet::errors::ParquetError::General(
                    "a dictionary-encoded data page has no dictionary page before it".into(),
                ));
            }
            Some(p) => check_levels(p, self.levels).map_err(parquet::errors::ParquetError::General)?,
            None => {}
        }
        Ok(page)
    }
}

impl Iterator for CheckedPages {
    type Item = parquet::errors::Result<Page>;
    fn next(&mut self) -> Option<Self::Item> {
        self.read().transpose()
    }
}

impl PageReader for CheckedPages {
    fn get_next_page(&mut self) -> parquet::errors::Result<Option<Page>> {
        self.read()
    }

    fn peek_next_page(&mut self) -> parquet::errors::Result<Option<PageMetadata>> {
        if self.next.is_none() {
            self.next = self.read()?;
        }
        Ok(self.next.as_ref().map(|page| match page {
            Page::DataPage { num_values, .. } => {
                PageMetadata { num_rows: None, num_levels: Some(*num_values as usize), is_dict: false }
            }
            Page::DataPageV2 { num_values, num_rows, .. } => PageMetadata {
                num_rows: Some(*num_rows as usize),
                num_levels: Some(*num_values as usize),
                is_dict: false,
            },
            Page::DictionaryPage { .. } => PageMetadata { num_rows: None, num_levels: None, is_dict: true },
        }))
    }

    fn skip_next_page(&mut self) -> parquet::errors::Result<()> {
        self.read().map(|_| ())
    }
}

/// The names of `column`'s classes in a `datasets` Parquet file's `huggingface` metadata
/// (`{"info": {"features": {column: {"_type": "ClassLabel", "names": [...]}}}}`).
fn hub_class_names(kv: Option<&Vec<parquet::file::metadata::KeyValue>>, column: &str) -> Option<Vec<String>> {
    let text = kv?.iter().find(|k| k.key == "huggingface")?.value.as_deref()?;
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let feature = json.get("info")?.get("features")?.get(column)?;
    (feature.get("_type")?.as_str()? == "ClassLabel").then_some(())?;
    feature.get("names")?.as_array()?.iter().map(|n| n.as_str().map(String::from)).collect()
}

/// A target column's values, batch after batch: integers (class indices) or floats, one per row
/// (class indices, regression values) or a list of one length per row (multi-hot labels, a row of
/// regression values) — typed by the task that reads them.
#[derive(Debug, Clone, Default)]
pub struct TargetColumn {
    ints: Vec<i64>,
    floats: Vec<f32>,
    /// Values per row, for a list column.
    per_row: Option<usize>,
    rows: usize,
}

impl TargetColumn {
    /// Rows read.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row was read.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The values as a tensor: `[N]`, or `[N, K]` for a list column.
    pub fn tensor(&self) -> crate::batch::Tensor {
        let shape = match self.per_row {
            Some(k) => vec![self.rows, k],
            None => vec![self.rows],
        };
        if self.floats.is_empty() {
            crate::batch::Tensor::i64(shape, self.ints.clone())
        } else {
            crate::batch::Tensor::f32(shape, self.floats.clone())
        }
    }

    /// Adds a batch of column `name`: integers, floats or booleans, or lists of them of one length
    /// (nulls, and a column mixing these kinds, are errors).
    pub fn add(&mut self, path: &std::path::Path, name: &str, col: &ArrayRef) -> Result<()> {
        if col.null_count() > 0 {
            return Err(Error::format(path, format!("label column `{name}` has missing (null) values")));
        }
        let (values, per_row) = match col.data_type() {
            DataType::List(_) => {
                let l = col.as_list::<i32>();
                (
                    l.values().clone(),
                    list_length(path, name, l.value_offsets().windows(2).map(|w| (w[1] - w[0]) as usize))?,
                )
            }
            DataType::LargeList(_) => {
                let l = col.as_list::<i64>();
                (
                    l.values().clone(),
                    list_length(path, name, l.value_offsets().windows(2).map(|w| (w[1] - w[0]) as usize))?,
                )
            }
            DataType::FixedSizeList(_, n) => {
                let l = col.as_fixed_size_list();
                let n = (*n).max(0) as usize;
                (l.values().slice(l.offset() * n, l.len() * n), Some(n).filter(|_| !l.is_empty()))
            }
            _ => (col.clone(), None),
        };
        let rows = col.len();
        if let Some(k) = per_row {
            if self.per_row.is_some_and(|have| have != k) || (self.per_row.is_none() && self.rows > 0) {
                return Err(Error::format(
                    path,
                    format!("label column `{name}` holds lists of {k} values after other rows"),
                ));
            }
            self.per_row = Some(k);
        } else if self.per_row.is_some()
            && rows > 0
            && !matches!(col.data_type(), DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..))
        {
            return Err(Error::format(path, format!("label column `{name}` mixes lists and single values")));
        }
        if values.null_count() > 0 {
            return Err(Error::format(path, format!("label column `{name}` has missing (null) values in its lists")));
        }
        match values.data_type() {
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                if !self.ints.is_empty() {
                    return Err(Error::format(path, format!("label column `{name}` holds floats after integers")));
                }
                let cast = arrow_cast_f32(&values);
                self.floats.extend(cast);
            }
            DataType::Boolean => {
                let b = values.as_boolean();
                let v: Vec<i64> = (0..b.len()).map(|i| b.value(i) as i64).collect();
                self.push_ints(path, name, v)?;
            }
            _ => {
                let v = integers(path, name, &values)?;
                self.push_ints(path, name, v)?;
            }
        }
        self.rows += rows;
        Ok(())
    }

    fn push_ints(&mut self, path: &std::path::Path, name: &str, v: Vec<i64>) -> Result<()> {
        if !self.floats.is_empty() {
            return Err(Error::format(path, format!("label column `{name}` holds integers after floats")));
        }
        self.ints.extend(v);
        Ok(())
    }
}

/// The one length of a list column's lists.
fn list_length(path: &std::path::Path, name: &str, mut lengths: impl Iterator<Item = usize>) -> Result<Option<usize>> {
    let Some(first) = lengths.next() else { return Ok(None) };
    match lengths.find(|&k| k != first) {
        Some(other) => Err(Error::format(
            path,
            format!("label column `{name}` holds lists of {first} and of {other} values: every row needs as many"),
        )),
        None => Ok(Some(first)),
    }
}

/// Float values as f32.
fn arrow_cast_f32(values: &ArrayRef) -> Vec<f32> {
    use arrow_array::types::{Float16Type, Float32Type, Float64Type};
    match values.data_type() {
        DataType::Float16 => values.as_primitive::<Float16Type>().values().iter().map(|v| v.to_f32()).collect(),
        DataType::Float32 => values.as_primitive::<Float32Type>().values().to_vec(),
        _ => values.as_primitive::<Float64Type>().values().iter().map(|&v| v as f32).collect(),
    }
}

/// The integer class indices of label column `name` (nulls and non-integers are errors).
pub(crate) fn integers(path: &std::path::Path, name: &str, col: &ArrayRef) -> Result<Vec<i64>> {
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
pub(crate) fn image_bytes(col: &ArrayRef, first_row: usize, name: &dyn Fn(usize) -> String) -> Result<Vec<Row>> {
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
            .filter(|p| !p.is_empty())
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
    /// Rows the reader gives before the cursor's row, to drop.
    drop: usize,
    buffered: VecDeque<Row>,
    /// The set's row of the next buffered (or read) row.
    row: usize,
    batch: usize,
}

impl Cursor {
    /// The set's row the cursor gives next.
    pub fn position(&self) -> usize {
        self.row - self.buffered.len()
    }
}

impl ParquetSet {
    /// Opens `files` (in this order), finds `image_column` in each and reads `label_column`
    /// where every file has it.
    pub fn open(files: Vec<PathBuf>, image_column: &str, label_column: &str) -> Result<Self> {
        let mut starts = vec![0];
        let mut columns = Vec::new();
        // An empty label column name turns labels off.
        let mut labels = (!label_column.is_empty()).then(TargetColumn::default);
        let mut no_labels =
            label_column.is_empty().then(|| "its labels are turned off (an empty label column name)".to_string());
        // A label column that is not class indices: no labels, whatever the other files hold.
        let mut unusable = false;
        let mut class_names = None;
        for path in &files {
            let (b, _) = builder(path)?;
            if path == &files[0] {
                class_names = hub_class_names(b.metadata().file_metadata().key_value_metadata(), label_column);
            }
            let fields: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
            let Some(col) = fields.iter().position(|f| f == image_column) else {
                return Err(Error::format(
                    path,
                    format!("has no column `{image_column}` (its columns: {})", fields.join(", ")),
                )
                .hint(Hint::ImageColumn));
            };
            columns.push(col);
            let rows = usize::try_from(b.metadata().file_metadata().num_rows())
                .map_err(|_| Error::format(path, "has a negative row count"))?;
            starts.push(starts.last().expect("non-empty") + rows);
            let has_labels = fields.iter().any(|f| f == label_column);
            if !has_labels && label_column != "label" && !label_column.is_empty() {
                return Err(Error::format(
                    path,
                    format!("has no label column `{label_column}` (its columns: {})", fields.join(", ")),
                ));
            }
            if !has_labels && no_labels.is_none() {
                no_labels = Some(format!(
                    "{} has no label column `{label_column}` (its columns: {})",
                    path.display(),
                    fields.join(", ")
                ));
            }
            if labels.is_some() != has_labels && path != &files[0] && !label_column.is_empty() && !unusable {
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
                    let before = all.len();
                    for batch in column_reader(path, l, 64 * 1024, 0)?.0 {
                        let batch = batch.map_err(|e| parquet_error(path, e))?;
                        // A column that is not class indices is no labels: an error only where
                        // labels are needed (a recalibration does not read them).
                        match all.add(path, label_column, batch.column(0)) {
                            Ok(()) => {}
                            Err(e) => {
                                no_labels = Some(e.to_string());
                                unusable = true;
                                break;
                            }
                        }
                    }
                    if unusable {
                        labels = None;
                        continue;
                    }
                    if all.len() - before != rows {
                        return Err(parquet_error(
                            path,
                            format!("its label column holds {} values for {rows} rows", all.len() - before),
                        ));
                    }
                    Some(all)
                }
                _ => None,
            };
        }
        let rows = *starts.last().expect("non-empty");
        Ok(ParquetSet {
            files,
            starts,
            rows,
            image_column: image_column.to_string(),
            columns,
            labels,
            no_labels,
            class_names,
        })
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
        Ok(Cursor {
            file: self.file_of(row),
            reader: None,
            drop: 0,
            buffered: VecDeque::new(),
            row,
            batch: batch.max(1),
        })
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
                return Err(Error::format(
                    &self.files[0],
                    "ended before the row count its footer gives: it is damaged, or it changed while read",
                ));
            };
            let start = self.starts[cursor.file];
            if cursor.reader.is_none() {
                let (reader, drop) = column_reader(path, self.columns[cursor.file], cursor.batch, cursor.row - start)?;
                (cursor.reader, cursor.drop) = (Some(reader), drop);
            }
            match cursor.reader.as_mut().expect("just set").next() {
                Some(batch) => {
                    let batch = batch.map_err(|e| parquet_error(path, e))?;
                    let column = batch.column(0);
                    let dropped = cursor.drop.min(column.len());
                    cursor.drop -= dropped;
                    let column = column.slice(dropped, column.len() - dropped);
                    let first = cursor.row;
                    let rows = image_bytes(&column, first, &|i| self.name_of(i))?;
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
}
