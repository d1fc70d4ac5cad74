//! The output's tensors: their names (a wrapper prefix stripped), dtypes, and whether each is
//! averaged or copied (buffers: BatchNorm statistics and integers); and its metadata.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::inputs::Inputs;
use super::weights::weighting_name;
use super::{AverageOptions, StripPrefix};
use crate::checkpoint::{dtype, Checkpoint, Dtype, TensorSpec};
use crate::error::Result;
use crate::inputs;

/// What happens to BatchNorm running statistics and integer tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferPolicy {
    /// Copy them from the newest selected checkpoint (what `AveragedModel` does).
    #[default]
    Newest,
    /// Average the floating-point ones too (integers are still copied from the newest).
    Average,
}

/// True for tensors that are not weights by PyTorch's names: BatchNorm running statistics,
/// counters and integer tensors (see [`crate::checkpoint::Role::of`]; readers of other formats mark
/// their buffers themselves, and the average follows each tensor's role).
pub fn is_buffer(name: &str, dtype: Dtype) -> bool {
    crate::checkpoint::Role::of(name, dtype).is_buffer()
}

/// What happened to the buffers.
#[derive(Debug, Clone, Serialize)]
pub struct BufferSummary {
    /// The policy.
    pub policy: BufferPolicy,
    /// How many were copied from `copied_from`.
    pub copied: usize,
    /// How many floating-point buffers were averaged.
    pub averaged: usize,
    /// The checkpoint they were copied from.
    pub copied_from: PathBuf,
    /// FP8 tensors (counted in `copied`), by name: copied, not averaged, whatever their names,
    /// because their scales are separate tensors (see [`dtype::is_fp8`]).
    pub copied_fp8: Vec<String>,
}

/// What happens to one output tensor.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Average,
    Copy,
}

/// The output tensors (in the newest checkpoint's order) and what happens to each.
pub(super) struct TensorPlan {
    pub(super) specs: Vec<TensorSpec>,
    /// Each output tensor's name in the inputs (the output's may have a prefix stripped).
    pub(super) sources: Vec<String>,
    pub(super) stripped: Option<String>,
    pub(super) kinds: Vec<Kind>,
    pub(super) buffers: BufferSummary,
}

/// The prefix to strip from `newest`'s names, as `strip` says.
fn prefix_to_strip(newest: &Checkpoint, strip: Option<&StripPrefix>) -> Option<String> {
    match strip? {
        StripPrefix::Wrapper => {
            inputs::common_wrapper_prefix(newest.tensors().iter().map(|t| t.name.as_str())).map(str::to_string)
        }
        StripPrefix::Given(p) => Some(p.clone()),
    }
}

pub(super) fn plan_tensors(newest: &Checkpoint, opts: &AverageOptions) -> Result<TensorPlan> {
    let stripped = prefix_to_strip(newest, opts.strip_prefix.as_ref());
    let mut plan = TensorPlan {
        specs: Vec::new(),
        sources: Vec::new(),
        stripped,
        kinds: Vec::new(),
        buffers: BufferSummary {
            policy: opts.buffers,
            copied: 0,
            averaged: 0,
            copied_from: newest.path().to_path_buf(),
            copied_fp8: Vec::new(),
        },
    };
    for t in newest.tensors() {
        // AveragedModel's counter is no weight of the bare model the stripped names are for.
        if plan.stripped.is_some() && t.name == inputs::AVERAGED_MODEL_COUNTER {
            continue;
        }
        let float = dtype::is_float(t.dtype);
        let kind = if !t.role.is_buffer() {
            Kind::Average
        } else if float && opts.buffers == BufferPolicy::Average {
            plan.buffers.averaged += 1;
            Kind::Average
        } else {
            plan.buffers.copied += 1;
            if dtype::is_fp8(t.dtype) {
                plan.buffers.copied_fp8.push(t.name.clone());
            }
            Kind::Copy
        };
        let out_dtype = if float { opts.dtype.unwrap_or(t.dtype) } else { t.dtype };
        let name = match &plan.stripped {
            Some(prefix) => inputs::strip_prefix(&t.name, prefix, newest.path())?.to_string(),
            None => t.name.clone(),
        };
        plan.specs.push(TensorSpec { name, dtype: out_dtype, shape: t.shape.clone() });
        plan.sources.push(t.name.clone());
        plan.kinds.push(kind);
    }
    Ok(plan)
}

/// The `__metadata__` of the output: `n_models` (what `resume` continues), sources, weights.
pub(super) fn metadata(opts: &AverageOptions, inputs: &Inputs) -> BTreeMap<String, String> {
    let newest = inputs.newest().path().display();
    let buffers = match opts.buffers {
        BufferPolicy::Newest => format!("copied from {newest}"),
        BufferPolicy::Average => format!("float buffers averaged, integers copied from {newest}"),
    };
    BTreeMap::from([
        // safetensors' convention: `tf` for TensorFlow's variables (Keras layouts, biased variances).
        ("format".to_string(), if inputs.newest().is_tensorflow() { "tf" } else { "pt" }.to_string()),
        ("n_models".to_string(), inputs.n_models.to_string()),
        ("sources".to_string(), serde_json::to_string(&inputs.sources).expect("strings")),
        ("weighting".to_string(), weighting_name(&inputs.weighting)),
        ("weights".to_string(), serde_json::to_string(&inputs.weights).expect("floats")),
        ("buffers".to_string(), buffers),
        ("swa_version".to_string(), crate::VERSION.to_string()),
    ])
}
