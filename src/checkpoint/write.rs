//! Streaming safetensors writer: the header is written first, tensor data is written at known
//! offsets (from any thread), into a staged file that appears under its name only when published.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use safetensors::Dtype;

use crate::checkpoint::dtype;
use crate::error::{Error, Result};
use crate::fs::StagedFile;

/// Name, type and shape of a tensor to write.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Size of its data in bytes.
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * dtype::width(self.dtype)
    }
}

/// A safetensors file being written into a temporary file beside its target.
pub struct SafetensorsWriter {
    file: StagedFile,
    offsets: Vec<u64>,
}

impl SafetensorsWriter {
    /// Writes the header for `tensors` (in this order) and reserves their data.
    pub fn create(target: &Path, tensors: &[TensorSpec], metadata: &BTreeMap<String, String>) -> Result<Self> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("string map"));
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(tensors.len());
        for t in tensors {
            let end = offset + t.nbytes() as u64;
            header.insert(
                t.name.clone(),
                serde_json::json!({"dtype": format!("{:?}", t.dtype), "shape": t.shape, "data_offsets": [offset, end]}),
            );
            offsets.push(offset);
            offset = end;
        }
        let mut json = serde_json::to_vec(&header).expect("header serialises");
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let data_start = 8 + json.len() as u64;
        let file = StagedFile::beside(target)?;
        let io = |e| Error::io(target, e);
        let mut f = file.as_file();
        f.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        file.reserve(data_start + offset)?;
        Ok(SafetensorsWriter { file, offsets: offsets.iter().map(|o| o + data_start).collect() })
    }

    /// Writes `bytes` at byte `at` of tensor number `index`'s data. Safe to call from many threads.
    pub fn write_at(&self, index: usize, at: usize, bytes: &[u8]) -> Result<()> {
        self.file.write_at(bytes, self.offsets[index] + at as u64)
    }

    /// Flushes to disk; the file is complete, ready to publish (alone or with others).
    pub fn finish(self) -> Result<StagedFile> {
        self.file.sync()?;
        Ok(self.file)
    }
}

/// Stages small in-memory tensors as one safetensors file (see [`SafetensorsWriter::finish`]).
pub fn stage_tensors(
    target: &Path,
    tensors: &[(TensorSpec, Vec<u8>)],
    metadata: &BTreeMap<String, String>,
) -> Result<StagedFile> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let writer = SafetensorsWriter::create(target, &specs, metadata)?;
    for (i, (_, bytes)) in tensors.iter().enumerate() {
        writer.write_at(i, 0, bytes)?;
    }
    writer.finish()
}

/// Writes small in-memory tensors as one safetensors file, atomically.
pub fn write_tensors(
    target: &Path,
    tensors: &[(TensorSpec, Vec<u8>)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    crate::fs::check_output(target)?;
    stage_tensors(target, tensors, metadata)?.publish()
}
