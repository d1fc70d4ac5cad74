//! What a checkpoint or model file holds: its tensors, metadata and BatchNorm layers, the number
//! discovery gives it, what its format says about its contents (a `torch.save` file's state
//! dicts), and how a checkpoint binds to a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::format::Contents;
use crate::error::{Error, Result};
use crate::inputs;
use crate::onnx::bind::{BindReport, Binder};
use crate::onnx::bn;

/// One tensor, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    /// Bytes of data.
    pub bytes: usize,
    /// Element type.
    pub dtype: String,
    /// Name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// What a file holds (fields in the order of their JSON keys).
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// BatchNorm layers: of a model, its BatchNormalization nodes; of a checkpoint, its running
    /// means (`*.running_mean`, or what its format's reader marks as one).
    pub batchnorm: Vec<String>,
    /// How the checkpoint `against` binds to the model, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<BindReport>,
    /// The file.
    pub file: PathBuf,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// The epoch/step number discovery gives the file (what a selection by number compares).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// Its tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Where the format holds several dicts of tensors (a `torch.save` file): which, under the
    /// format's key (`torch`).
    #[serde(flatten)]
    pub contents: BTreeMap<String, Contents>,
    /// The format that read the file.
    #[serde(skip)]
    pub format: &'static str,
}

/// Inspects `file` (a checkpoint, read with `key` where its format has several state dicts, or an
/// ONNX model); with `against`, also binds that checkpoint to the model `file` must then be.
pub fn inspect(file: &Path, key: Option<&str>, against: Option<&Path>) -> Result<Inspection> {
    // A run's folder of checkpoints (not one sharded checkpoint): say what it holds and which to
    // inspect, rather than that it lacks a shard index.
    if file.is_dir() && inputs::format_of(file).open(file, key).is_err() {
        let found = inputs::discover(&[file.to_path_buf()])?;
        // A run's folder of one checkpoint (`checkpoint-500/` holding `model.safetensors`) is it.
        if let [one] = &found.files[..] {
            return inspect(&one.path, key, against);
        }
        {
            let (first, last) = (&found.files[0], &found.files[found.files.len() - 1]);
            return Err(Error::usage(format!(
                "{} is a folder of {} checkpoints ({} … {}): inspect one of them, e.g. {}",
                file.display(),
                found.files.len(),
                first.path.display(),
                last.path.display(),
                last.path.display()
            )));
        }
    }
    // An ONNX model lists its initializers as stored (before binding gives shared ones copies).
    let (ck, binder) = if file.extension().is_some_and(|e| e == "onnx") {
        let model = crate::onnx::Model::load(file)?;
        (model.checkpoint()?, Some(Binder::new(model)))
    } else {
        (inputs::open_checkpoint(file, key)?, None)
    };
    let batchnorm = match &binder {
        Some(b) => bn::find(b.model())
            .map(|ls| {
                ls.into_iter().map(|l| format!("{} ({} channels, node {})", l.prefix, l.channels, l.name)).collect()
            })
            .unwrap_or_default(),
        None => ck
            .tensors()
            .iter()
            .filter(|t| t.role == crate::checkpoint::Role::RunningMean)
            .map(|t| format!("{} ({} channels)", t.name.strip_suffix(".running_mean").unwrap_or(&t.name), t.numel()))
            .collect(),
    };
    let binding = match (against, &binder) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::usage("a checkpoint binds to an ONNX model: the file inspected must be .onnx"));
        }
        (Some(against), Some(b)) => Some(b.report(&inputs::open_checkpoint(against, key)?)?),
    };
    let tensors = ck
        .tensors()
        .iter()
        .map(|t| TensorInfo {
            bytes: t.nbytes(),
            dtype: format!("{:?}", t.dtype),
            name: t.name.clone(),
            shape: t.shape.clone(),
        })
        .collect();
    let number = file.file_name().and_then(|n| inputs::name_number(&n.to_string_lossy()));
    let format = inputs::format_of(file);
    let contents = format
        .contents(file)?
        .map(|mut c| {
            // The state dict read is the one asked for, where one was.
            if let Some(k) = key {
                c.chosen = Some(k.to_string());
            }
            (contents_key(format.name()), c)
        })
        .into_iter()
        .collect();
    Ok(Inspection {
        batchnorm,
        binding,
        file: file.to_path_buf(),
        metadata: ck.metadata().clone(),
        number,
        tensors,
        contents,
        format: format.name(),
    })
}

/// The JSON key of a format's contents: its name up to the first dot (`torch.save` → `torch`).
fn contents_key(format: &str) -> String {
    format.split('.').next().unwrap_or(format).to_lowercase()
}
