//! The safetensors format: single files (read by [`Checkpoint::open`], mapped) and a streaming
//! writer: the header is written first, tensor data at known offsets (from any thread), into a
//! staged file that appears under its name only when published.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{Claim, Format, Probe, TensorWriter};
use super::{Checkpoint, TensorSpec};
use crate::error::{Error, Result};
use crate::fs::StagedFile;

/// Single `.safetensors` files.
pub struct Safetensors;

/// The name Hugging Face's `save_pretrained` gives a run directory's model file.
const RUN_DIR_MODEL: &str = "model.safetensors";

impl Format for Safetensors {
    fn name(&self) -> &'static str {
        "safetensors"
    }

    fn suffixes(&self) -> &'static [&'static str] {
        &[".safetensors"]
    }

    /// A file whose first 8 bytes (the header's length) are followed by `{` is safetensors
    /// whatever its name (some tools write safetensors as `.bin`); any other file may be one,
    /// which the reader then checks.
    fn claim(&self, probe: &Probe) -> Option<Claim> {
        if probe.is_dir {
            return None;
        }
        let content = probe.head.get(8) == Some(&b'{');
        Some(match (probe.named(self.suffixes()), content) {
            (true, true) => Claim::Certain,
            (false, true) => Claim::Content,
            (true, false) => Claim::Name,
            (false, false) => Claim::Fallback,
        })
    }

    fn open(&self, path: &Path, _key: Option<&str>) -> Result<Checkpoint> {
        Checkpoint::open(path)
    }

    fn model_in(&self, dir: &Path) -> Result<Option<PathBuf>> {
        Ok(Some(dir.join(RUN_DIR_MODEL)).filter(|p| p.is_file()))
    }

    fn writes(&self, name: &str) -> bool {
        super::format::has_suffix(name, ".safetensors")
    }

    fn writer(
        &self,
        target: &Path,
        tensors: &[TensorSpec],
        metadata: &BTreeMap<String, String>,
        _like: Option<&Path>,
    ) -> Result<Box<dyn TensorWriter>> {
        Ok(Box::new(SafetensorsWriter::create(target, tensors, metadata)?))
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

impl TensorWriter for SafetensorsWriter {
    fn write_at(&self, index: usize, at: usize, bytes: &[u8]) -> Result<()> {
        SafetensorsWriter::write_at(self, index, at, bytes)
    }

    fn finish(self: Box<Self>) -> Result<crate::fs::Outputs> {
        Ok(vec![SafetensorsWriter::finish(*self)?].into())
    }
}
