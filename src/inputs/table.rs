//! Targets in a table that names the images: a CSV or Parquet file with a column of file names and
//! one or more numeric columns (`file,age` or `image,x,y`), mapped onto an image folder's files by
//! their path below the folder, their file name, or their stem.

use std::collections::HashMap;
use std::path::Path;

use crate::batch::Tensor;
use crate::error::{Error, Result};

/// Names of the column of file names, in the order they are looked for (else the first column).
const NAME_COLUMNS: [&str; 7] = ["file", "filename", "file_name", "image", "path", "name", "id"];

/// Whether `path` is a table of targets by file name (`.csv`, `.parquet`).
pub fn is_table(path: &Path) -> bool {
    let lower = path.to_string_lossy().to_lowercase();
    lower.ends_with(".csv") || lower.ends_with(".parquet")
}

/// A table: each row's file name and its values.
struct Table {
    names: Vec<String>,
    columns: Vec<String>,
    values: Vec<f32>,
}

fn read_csv(path: &Path) -> Result<Table> {
    let bytes = crate::fs::read_regular(path)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::format(path, "is not UTF-8 text"))?;
    let cell = |s: &str| s.trim().trim_matches('"').to_string();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> =
        lines.next().ok_or_else(|| Error::format(path, "is empty"))?.split(',').map(cell).collect();
    let name_col = NAME_COLUMNS.iter().find_map(|n| header.iter().position(|h| h.eq_ignore_ascii_case(n))).unwrap_or(0);
    let columns: Vec<String> =
        header.iter().enumerate().filter(|(i, _)| *i != name_col).map(|(_, h)| h.clone()).collect();
    if columns.is_empty() {
        return Err(Error::format(path, "has no column of values beside the file names"));
    }
    let (mut names, mut values) = (Vec::new(), Vec::new());
    for (k, line) in lines.enumerate() {
        let cells: Vec<String> = line.split(',').map(cell).collect();
        if cells.len() != header.len() {
            return Err(Error::format(
                path,
                format!(
                    "row {} has {} cells for {} columns (file names with commas are not read)",
                    k + 2,
                    cells.len(),
                    header.len()
                ),
            ));
        }
        for (i, c) in cells.iter().enumerate() {
            if i == name_col {
                names.push(c.clone());
            } else {
                let v: f32 = c.parse().map_err(|_| {
                    Error::format(path, format!("row {}: `{c}` in column `{}` is not a number", k + 2, header[i]))
                })?;
                values.push(v);
            }
        }
    }
    Ok(Table { names, columns, values })
}

fn read_parquet(path: &Path) -> Result<Table> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array as _;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = crate::fs::open_regular(path)?;
    let bad = |e: String| Error::format(path, format!("could not be read as Parquet: {e}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(e.to_string()))?
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let (mut names, mut values, mut columns) = (Vec::new(), Vec::new(), Vec::new());
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let schema = batch.schema();
        let fields: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let name_col =
            NAME_COLUMNS.iter().find_map(|n| fields.iter().position(|h| h.eq_ignore_ascii_case(n))).unwrap_or(0);
        let names_array =
            arrow_cast::cast(batch.column(name_col), &arrow_schema::DataType::Utf8).map_err(|e| bad(e.to_string()))?;
        let strings = names_array.as_string::<i32>();
        let value_cols: Vec<usize> = (0..fields.len()).filter(|&i| i != name_col).collect();
        columns = value_cols.iter().map(|&i| fields[i].to_string()).collect();
        let cast: Vec<_> = value_cols
            .iter()
            .map(|&i| {
                arrow_cast::cast(batch.column(i), &arrow_schema::DataType::Float32)
                    .map_err(|_| Error::format(path, format!("column `{}` is not numeric", fields[i])))
            })
            .collect::<Result<_>>()?;
        for r in 0..batch.num_rows() {
            if strings.is_null(r) || cast.iter().any(|c| c.is_null(r)) {
                return Err(Error::format(path, format!("row {r} has a missing (null) cell")));
            }
            names.push(strings.value(r).to_string());
            for c in &cast {
                values.push(c.as_primitive::<arrow_array::types::Float32Type>().value(r));
            }
        }
    }
    if columns.is_empty() {
        return Err(Error::format(path, "has no column of values beside the file names"));
    }
    Ok(Table { names, columns, values })
}

/// The targets of `files` (the images of the folder `inputs`) from the table at `path`: `[N]` for
/// one column of values, `[N, D]` for D; every image must have its row, found by its path below
/// `inputs`, its file name or its stem.
pub fn targets_for(path: &Path, inputs: &Path, files: &[std::path::PathBuf]) -> Result<Tensor> {
    let lower = path.to_string_lossy().to_lowercase();
    let table = if lower.ends_with(".parquet") { read_parquet(path)? } else { read_csv(path)? };
    let d = table.columns.len();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (row, name) in table.names.iter().enumerate() {
        let key = name.trim_start_matches("./");
        if by_name.insert(key, row).is_some() {
            return Err(Error::format(path, format!("names `{name}` twice")));
        }
    }
    let mut values = Vec::with_capacity(files.len() * d);
    let mut missing = Vec::new();
    for file in files {
        let rel = file.strip_prefix(inputs).unwrap_or(file).to_string_lossy().replace('\\', "/");
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = file.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match [rel.as_str(), &name, &stem].iter().find_map(|k| by_name.get(k)) {
            Some(&row) => values.extend_from_slice(&table.values[row * d..(row + 1) * d]),
            None => missing.push(rel),
        }
    }
    if let Some(first) = missing.first() {
        return Err(Error::format(
            path,
            format!(
                "has no row for {} of the {} images in {} (the first: {first}): name each image by its path below the \
                 folder, its file name or its stem",
                missing.len(),
                files.len(),
                inputs.display()
            ),
        ));
    }
    let shape = if d == 1 { vec![files.len()] } else { vec![files.len(), d] };
    Ok(Tensor::f32(shape, values))
}
