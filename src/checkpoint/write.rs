//! Writing tensors: what a tensor to write is, and small in-memory sets of tensors written in the
//! format the output's name asks for.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::Dtype;

use crate::checkpoint::dtype;
use crate::error::Result;
use crate::fs::Outputs;

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

/// Stages small in-memory tensors as one checkpoint, in the format its name asks for
/// ([`super::format::for_output`]: safetensors, a `torch.save` file for `.pt` and the other torch
/// names, Keras' `.weights.h5` and a TensorFlow bundle written like `like`), to be published with
/// other outputs.
pub fn stage_tensors(
    target: &Path,
    tensors: &[(TensorSpec, Vec<u8>)],
    metadata: &BTreeMap<String, String>,
    like: Option<&Path>,
) -> Result<Outputs> {
    stage_tensors_as(super::format::for_output(target, like), target, tensors, metadata, like)
}

/// [`stage_tensors`] in `format`, whatever the target's name (files that only swa reads back,
/// such as partial statistics, keep one format).
pub fn stage_tensors_as(
    format: &dyn super::format::Format,
    target: &Path,
    tensors: &[(TensorSpec, Vec<u8>)],
    metadata: &BTreeMap<String, String>,
    like: Option<&Path>,
) -> Result<Outputs> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let writer = format.writer(target, &specs, metadata, like)?;
    for (i, (_, bytes)) in tensors.iter().enumerate() {
        writer.write_at(i, 0, bytes)?;
    }
    writer.finish()
}

/// Writes small in-memory tensors as one safetensors or torch checkpoint (see [`stage_tensors`]),
/// atomically.
pub fn write_tensors(
    target: &Path,
    tensors: &[(TensorSpec, Vec<u8>)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    crate::fs::check_output(target)?;
    stage_tensors(target, tensors, metadata, None)?.publish()
}
