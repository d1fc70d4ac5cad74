//! Samples and labels from `.npy` / `.npz` files, memory-mapped, taken in file order in batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;

use crate::error::{Error, Result};

/// Element types of the arrays read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyType {
    /// `<f4`
    F32,
    /// `<f2`
    F16,
    /// `<f8`
    F64,
    /// `|u1`
    U8,
    /// `<i8`
    I64,
    /// `<i4`
    I32,
    /// `<i2`
    I16,
    /// `<u2`
    U16,
}

impl NpyType {
    fn parse(descr: &str) -> Option<Self> {
        Some(match descr {
            "<f4" => NpyType::F32,
            "<f2" => NpyType::F16,
            "<f8" => NpyType::F64,
            // numpy's bool is one byte of 0 or 1.
            "|u1" | "<u1" | "|b1" => NpyType::U8,
            "<i8" => NpyType::I64,
            "<i4" => NpyType::I32,
            "<i2" => NpyType::I16,
            "<u2" => NpyType::U16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpyType::U8 => 1,
            NpyType::F16 | NpyType::I16 | NpyType::U16 => 2,
            NpyType::F32 | NpyType::I32 => 4,
            NpyType::F64 | NpyType::I64 => 8,
        }
    }
}

/// An array file's bytes: the input file (mapped, or read), or an `.npz` member decompressed.
type Bytes = crate::fs::Input;

/// An array: its bytes (mapped, or decompressed from an npz), type and shape.
#[derive(Clone)]
pub struct Array {
    /// The file it came from.
    pub path: PathBuf,
    /// Its name inside an `.npz` (empty for `.npy`).
    pub name: String,
    /// Element type.
    pub dtype: NpyType,
    /// Shape, samples first.
    pub shape: Vec<usize>,
    bytes: Arc<Bytes>,
    /// Where its data lies in `bytes` (checked to hold the shape when it was read).
    data: std::ops::Range<usize>,
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("path", &self.path)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

impl Array {
    fn data(&self) -> &[u8] {
        &self.bytes[self.data.clone()]
    }

    /// Number of samples (the first dimension).
    pub fn len(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements per sample.
    pub fn sample_numel(&self) -> usize {
        self.shape.get(1..).unwrap_or_default().iter().product()
    }

    /// What error messages call it.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.path.display().to_string()
        } else {
            format!("{} (array `{}`)", self.path.display(), self.name)
        }
    }

    /// Samples `start..end` as f32 (u8 and f16 values are cast, not scaled).
    pub fn f32_rows(&self, start: usize, end: usize) -> Vec<f32> {
        let k = self.sample_numel();
        let s = self.dtype.size();
        let bytes = &self.data()[start * k * s..end * k * s];
        match self.dtype {
            NpyType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            NpyType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            NpyType::F64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            NpyType::U8 => bytes.iter().map(|&b| b as f32).collect(),
            NpyType::I64 => bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            NpyType::I32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            NpyType::I16 => bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(),
            NpyType::U16 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as f32).collect(),
        }
    }

    /// All values as f64 (float arrays; integers are cast).
    pub fn f64_values(&self) -> Vec<f64> {
        match self.dtype {
            NpyType::F64 => self.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            _ => self.f32_rows(0, self.len()).into_iter().map(f64::from).collect(),
        }
    }

    /// Samples `start..end` as i64, for integer arrays (token ids); other types are cast.
    pub fn i64_rows(&self, start: usize, end: usize) -> Vec<i64> {
        let k = self.sample_numel();
        let s = self.dtype.size();
        let bytes = &self.data()[start * k * s..end * k * s];
        match self.dtype {
            NpyType::I64 => bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            NpyType::I32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            NpyType::I16 => bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            NpyType::U16 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            NpyType::U8 => bytes.iter().map(|&b| b as i64).collect(),
            _ => self.f32_rows(start, end).into_iter().map(|v| v as i64).collect(),
        }
    }

    /// Sample `i`'s bytes, for a `uint8` array.
    pub fn u8_row(&self, i: usize) -> &[u8] {
        let k = self.sample_numel();
        &self.data()[i * k..(i + 1) * k]
    }

    /// All values as i64 (for labels).
    pub fn i64_values(&self) -> Result<Vec<i64>> {
        let bytes = self.data();
        Ok(match self.dtype {
            NpyType::I64 => bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            NpyType::I32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            NpyType::I16 => bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            NpyType::U16 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            NpyType::U8 => bytes.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "labels must be integer class indices (int64, int32, int16, uint16 or uint8), found {other:?}"
                    ),
                ))
            }
        })
    }
}

/// Parses an `.npy` header: (type, shape, where the data lies in `bytes`). The shape's size is
/// checked against the bytes there are.
fn parse_header(path: &Path, name: &str, bytes: &[u8]) -> Result<(NpyType, Vec<usize>, std::ops::Range<usize>)> {
    let what = if name.is_empty() { String::new() } else { format!(" (array `{name}`)") };
    let bad = |m: &str| Error::format(path, format!("{m}{what}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy array (bad magic)"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = bytes.get(start..start + len).ok_or_else(|| bad("truncated .npy header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("bad .npy header"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[at..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| bad("no descr"))?;
    let dtype = NpyType::parse(descr).ok_or_else(|| {
        bad(&format!(
            "unsupported dtype {descr} (samples: float32, float16, float64, uint8, int32 or int64; labels: int64, int32, \
             int16, uint16 or uint8)"
        ))
    })?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad("Fortran-ordered arrays are not supported: save with np.ascontiguousarray"));
    }
    let shape_text = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<Vec<_>>>()?;
    let data = start + len;
    // Over the non-zero dimensions, so that no partial product (a sample's size) overflows either.
    shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(&format!("shape {shape:?} is too large: its size in bytes overflows")))?;
    let need = dtype.size() * shape.iter().product::<usize>();
    let have = bytes.len().saturating_sub(data);
    if have < need {
        return Err(bad(&format!("truncated: shape {shape:?} needs {need} bytes of data, the file has {have}")));
    }
    Ok((dtype, shape, data..data + need))
}

/// Opens a `.npy` file.
pub fn open_npy(path: &Path) -> Result<Array> {
    npy_array(path, crate::fs::map_input(path)?)
}

/// Parses `.npy` bytes (read from `path`, which only names it in errors): the same checks as
/// [`open_npy`], without a file.
pub fn parse_npy(path: &Path, bytes: Vec<u8>) -> Result<Array> {
    npy_array(path, Bytes::Read(bytes))
}

fn npy_array(path: &Path, bytes: Bytes) -> Result<Array> {
    let (dtype, shape, data) = parse_header(path, "", &bytes)?;
    Ok(Array { path: path.to_path_buf(), name: String::new(), dtype, shape, bytes: Arc::new(bytes), data })
}

/// Opens every array of an `.npz` file, by name. Stored members are memory-mapped; compressed
/// ones are decompressed into memory.
pub fn open_npz(path: &Path) -> Result<Vec<Array>> {
    npz_arrays(path, Arc::new(crate::fs::map_input(path)?))
}

/// Parses `.npz` bytes (read from `path`, which only names it in errors): the same checks as
/// [`open_npz`], without a file.
pub fn parse_npz(path: &Path, bytes: Vec<u8>) -> Result<Vec<Array>> {
    npz_arrays(path, Arc::new(Bytes::Read(bytes)))
}

fn npz_arrays(path: &Path, file: Arc<Bytes>) -> Result<Vec<Array>> {
    let corrupt = |e: zip::result::ZipError| Error::format(path, format!("corrupt .npz: {e}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&file[..]))
        .map_err(|e| Error::format(path, format!("not a valid .npz (zip) file: {e}")))?;
    let mut arrays = Vec::new();
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(corrupt)?;
        let name = member.name().trim_end_matches(".npy").to_string();
        let what = |m: String| Error::format(path, format!("{m} (array `{name}`)"));
        let (bytes, member_range) = if member.compression() == zip::CompressionMethod::Stored {
            // Bounded by the member's own size: a header claiming more rows than the member holds
            // must not read on into the next member.
            let start = usize::try_from(member.data_start()).ok();
            let size = usize::try_from(member.compressed_size()).ok();
            let range = start.zip(size).and_then(|(s, n)| Some(s..s.checked_add(n)?));
            let range = range
                .filter(|r| r.end <= file.len())
                .ok_or_else(|| what("truncated: the member's data lies beyond the end of the file".into()))?;
            (file.clone(), range)
        } else {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut member, &mut buf)
                .map_err(|e| what(format!("cannot decompress the member: {e}")))?;
            let len = buf.len();
            (Arc::new(Bytes::Read(buf)), 0..len)
        };
        let base = member_range.start;
        let (dtype, shape, data) = parse_header(path, &name, &bytes[member_range])?;
        let data = base + data.start..base + data.end;
        arrays.push(Array { path: path.to_path_buf(), name, dtype, shape, bytes, data });
    }
    Ok(arrays)
}

/// The arrays feeding `input_names`: a `.npy` for a single-input model, or the arrays of a `.npz`
/// named after the inputs.
pub fn open_inputs(path: &Path, input_names: &[String]) -> Result<Vec<Array>> {
    let is_npz = path.extension().is_some_and(|e| e == "npz");
    let arrays = if is_npz {
        let all = open_npz(path)?;
        let mut picked = Vec::new();
        for name in input_names {
            let found = all.iter().find(|a| &a.name == name).or(if input_names.len() == 1 && all.len() == 1 {
                all.first()
            } else {
                None
            });
            let Some(a) = found else {
                let have: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
                return Err(Error::format(
                    path,
                    format!(
                        "has no array named `{name}` for the model input of that name (it has: {})",
                        have.join(", ")
                    ),
                ));
            };
            picked.push(a.clone());
        }
        picked
    } else {
        if input_names.len() != 1 {
            return Err(Error::format(
                path,
                format!(
                    "the model has {} inputs ({}); pass an .npz with one array per input name",
                    input_names.len(),
                    input_names.join(", ")
                ),
            ));
        }
        vec![open_npy(path)?]
    };
    let n = arrays[0].len();
    if let Some(a) = arrays.iter().find(|a| a.len() != n) {
        return Err(Error::format(
            path,
            format!("arrays disagree on the number of samples: {} has {}, {} has {n}", a.name, a.len(), arrays[0].name),
        ));
    }
    Ok(arrays)
}

/// Integer class labels, one per sample.
pub fn open_labels(path: &Path) -> Result<Vec<i64>> {
    let a = open_npy(path)?;
    if a.shape.len() != 1 {
        return Err(Error::format(
            path,
            format!("labels must be a 1-D array of class indices, found shape {:?}", a.shape),
        ));
    }
    let values = a.i64_values()?;
    if values.len() != a.shape[0] {
        return Err(Error::format(
            path,
            format!("shape [{}] promises {} labels, but {} could be read", a.shape[0], a.shape[0], values.len()),
        ));
    }
    Ok(values)
}

/// Values to write as an `.npy` array.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// `<f4`
    F32(&'a [f32]),
    /// `<f8`
    F64(&'a [f64]),
    /// `<i8`
    I64(&'a [i64]),
    /// `|u1`
    U8(&'a [u8]),
    /// `<U{width}`: strings of at most `width` characters, as numpy's fixed-width unicode.
    Str(&'a [String]),
}

/// An `.npy` file (format 1.0, or 2.0 for a long header) of `shape` holding `data`.
pub fn npy_bytes(shape: &[usize], data: Data) -> Vec<u8> {
    let width = match data {
        Data::Str(v) => v.iter().map(|s| s.chars().count()).max().unwrap_or(0).max(1),
        _ => 0,
    };
    let descr = match data {
        Data::F32(_) => "<f4".to_string(),
        Data::F64(_) => "<f8".to_string(),
        Data::I64(_) => "<i8".to_string(),
        Data::U8(_) => "|u1".to_string(),
        Data::Str(_) => format!("<U{width}"),
    };
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let v2 = header.len() + 11 >= 65535;
    let prefix = if v2 { 12 } else { 10 };
    while (prefix + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(prefix + header.len());
    out.extend_from_slice(b"\x93NUMPY");
    if v2 {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    match data {
        Data::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::U8(v) => out.extend_from_slice(v),
        Data::Str(v) => {
            for s in v {
                let mut n = 0;
                for c in s.chars() {
                    out.extend_from_slice(&(c as u32).to_le_bytes());
                    n += 1;
                }
                out.extend(std::iter::repeat_n(0u8, 4 * (width - n)));
            }
        }
    }
    out
}

/// Batches' tensors (targets) concatenated along the batch axis as one `.npy`: int64 where
/// every batch is, float32 otherwise; `None` without any.
pub fn tensors_npy(tensors: &[&crate::batch::Tensor]) -> Option<Vec<u8>> {
    use crate::batch::Values;
    let first = tensors.first()?;
    let rows: usize = tensors.iter().map(|t| t.shape.first().copied().unwrap_or(0)).sum();
    let shape = [&[rows][..], &first.shape[1..]].concat();
    let values: Vec<Values> = tensors.iter().map(|t| t.values.to_owned()).collect();
    Some(if values.iter().all(|v| matches!(v, Values::I64(_))) {
        let v: Vec<i64> =
            values.into_iter().flat_map(|v| if let Values::I64(x) = v { x } else { Vec::new() }).collect();
        npy_bytes(&shape, Data::I64(&v))
    } else {
        let v: Vec<f32> = values
            .into_iter()
            .flat_map(|v| match v {
                Values::I64(x) => x.into_iter().map(|y| y as f32).collect(),
                other => other.into_f32().unwrap_or_default(),
            })
            .collect();
        npy_bytes(&shape, Data::F32(&v))
    })
}

/// Writes an `.npy` file (a plain write: for files swa makes for itself, not the user's outputs).
pub fn write_npy(path: &Path, shape: &[usize], data: Data) -> Result<()> {
    std::fs::write(path, npy_bytes(shape, data)).map_err(|e| Error::io(path, e))
}

/// An `.npz` file (an uncompressed zip of `.npy` members) of `arrays`, each named without `.npy`.
pub fn npz_bytes(arrays: &[(&str, Vec<u8>)]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(arrays.iter().any(|(_, b)| b.len() as u64 >= u32::MAX as u64));
    let fail = |e: String| Error::Usage(format!("could not build the .npz: {e}"));
    for (name, bytes) in arrays {
        w.start_file(format!("{name}.npy"), options).map_err(|e| fail(e.to_string()))?;
        w.write_all(bytes).map_err(|e| fail(e.to_string()))?;
    }
    Ok(w.finish().map_err(|e| fail(e.to_string()))?.into_inner())
}
