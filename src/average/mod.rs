//! Stochastic Weight Averaging, offline: choose checkpoints, weight them, and stream their average
//! into a new safetensors file.
//!
//! Inputs are memory-mapped and the output is written chunk by chunk at known offsets, so memory
//! is bounded by threads × [`CHUNK`] whatever the model size or the number of checkpoints. Every
//! element is accumulated in f64 in checkpoint order and divided once by the sum of the weights
//! ([`KernelWeights`]), so the output is byte-identical whatever the thread count, and a uniform
//! average of 16-bit checkpoints is their exact mean rounded to nearest, ties to even.

mod inputs;
mod kernel;
mod parts;
mod plan;
mod weights;

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

pub use inputs::check_compatible;
pub use kernel::CHUNK;
pub use plan::{is_buffer, BufferPolicy, BufferSummary};
pub use weights::{normalise, relative_weights, KernelWeights, Weighting};

use crate::checkpoint::format::{self, Format, TensorWriter};
use crate::checkpoint::safetensors::Safetensors;
use crate::checkpoint::sharded::{self, OutputPlan};
use crate::checkpoint::Dtype;
use crate::error::{Error, Result, Setting};
use crate::fs::{check_output, refuse_overwrite, OutputDirs, Outputs, Stamps};
use crate::inputs::{Duplicate, Selection};
use crate::part::Part;
use crate::progress;
use inputs::Inputs;
use kernel::{chunks, Kernel, Scratch};
use parts::{others_are_this_average, own_shards, shards_written};
use plan::{metadata, plan_tensors, Kind, TensorPlan};
use weights::weighting_name;

/// Everything `swa average` needs.
#[derive(Debug, Clone, Default)]
pub struct AverageOptions {
    /// Checkpoint files and directories.
    pub checkpoints: Vec<PathBuf>,
    /// Which ones to use.
    pub selection: Selection,
    /// How to weight them.
    pub weighting: Weighting,
    /// An earlier average to continue.
    pub resume: Option<PathBuf>,
    /// Output dtype of the floating-point tensors (default: each input's own).
    pub dtype: Option<Dtype>,
    /// What to do with buffers.
    pub buffers: BufferPolicy,
    /// Proceed when an input holds NaN or Inf.
    pub allow_nonfinite: bool,
    /// Output: a `.safetensors` file, or a `*.index.json` for a sharded output.
    pub output: PathBuf,
    /// Shard the output into files of at most this many bytes.
    pub shard_size: Option<NonZeroU64>,
    /// The state dict to read in `torch.save` files (see [`crate::checkpoint::torch::open`]).
    pub key: Option<String>,
    /// Remove a prefix from every tensor name of the output.
    pub strip_prefix: Option<StripPrefix>,
    /// Hide the progress bar.
    pub quiet: bool,
    /// Write only this part of a sharded output's shards (shard `s` goes to part `s mod N`); the
    /// part that finds every shard written when it finishes writes the index.
    pub part: Option<Part>,
    /// Write nothing but the index of a sharded output whose parts are written, after checking
    /// every shard's tensors and metadata.
    pub merge_parts: bool,
}

/// A prefix to remove from the output's tensor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripPrefix {
    /// The wrapper prefix (`module.`, `_orig_mod.`, `model.`) that every tensor name starts with,
    /// if they share one; nothing otherwise.
    Wrapper,
    /// This prefix, which every tensor name must start with.
    Given(String),
}

/// One input of the average and its weight.
#[derive(Debug, Clone, Serialize)]
pub struct SelectedInput {
    /// The file.
    pub path: PathBuf,
    /// The number in its name.
    pub number: Option<u64>,
    /// Its normalised weight in the output.
    pub weight: f64,
}

/// What `swa average` did.
#[derive(Debug, Clone, Serialize)]
pub struct AverageSummary {
    /// The files written (one, or the shards and the index).
    pub outputs: Vec<PathBuf>,
    /// The missing directories created for them, parents first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub created_dirs: Vec<PathBuf>,
    /// The inputs and their weights, the resumed average first.
    pub inputs: Vec<SelectedInput>,
    /// Paths given that named an input already found under another spelling: averaged once.
    pub duplicates: Vec<Duplicate>,
    /// Files of the directories given that are not among their checkpoints (numberless copies).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<crate::inputs::LeftOut>,
    /// The prefix removed from every tensor name, if one was.
    pub stripped_prefix: Option<String>,
    /// Models in the average, counting those of a resumed average.
    pub n_models: u64,
    /// `uniform`, `explicit` or `ema(DECAY)`.
    pub weighting: String,
    /// Tensors written.
    pub tensors: usize,
    /// Tensors averaged.
    pub averaged: usize,
    /// Buffers (BatchNorm statistics, integers) and what was done with them.
    pub buffers: BufferSummary,
    /// Bytes read from the inputs.
    pub bytes_read: u64,
    /// Bytes of tensor data written.
    pub bytes_written: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Averages checkpoints as `opts` says and writes the result atomically.
pub fn average(opts: &AverageOptions) -> Result<AverageSummary> {
    let started = Instant::now();
    crate::fs::check_file_name(&opts.output)?;
    let inputs = Inputs::open(opts)?;
    let plan = plan_tensors(inputs.newest(), opts)?;
    let OutputPlan { shards, index } = sharded::plan(&opts.output, &plan.specs, opts.shard_size.map(NonZeroU64::get));
    let like = Some(inputs.newest().path());
    let output_format = format::for_output(&opts.output, like);
    if opts.dtype.is_some() && output_format.name() != Safetensors.name() && output_format.name() != "torch.save" {
        return Err(Error::setting(
            Setting::Dtype,
            format!(
                "does not apply to a {} output, which keeps the types of the checkpoint it is written like: \
                 write .safetensors",
                output_format.name()
            ),
        ));
    }
    if output_format.name() != Safetensors.name() {
        let one_file = format!("a {} output is one file", output_format.name());
        if index.is_some() {
            return Err(Error::setting(Setting::ShardSize, format!("applies to safetensors outputs: {one_file}")));
        }
        if opts.part.is_some() || opts.merge_parts {
            return Err(Error::setting(Setting::Part, format!("splits a sharded safetensors output: {one_file}")));
        }
    }
    if opts.merge_parts && index.is_none() {
        return Err(Error::usage(
            "the parts of an average merge into a sharded output's index: name the output \
             NAME.safetensors.index.json or give a shard size, as the parts did",
        ));
    }
    let own = own_shards(&shards, index.is_some(), opts.part)?;
    let input_files: Vec<&Path> = inputs.checkpoints.iter().flat_map(|c| c.files()).collect();
    let mut dirs = OutputDirs::default();
    let written: Vec<PathBuf> = shards
        .iter()
        .flat_map(|s| format::for_output(&s.path, like).output_files(&s.path))
        .chain(index.clone())
        .collect();
    for path in &written {
        dirs.create_parents(path)?;
        check_output(path)?;
        refuse_overwrite(path, &input_files)?;
    }
    let stamps = Stamps::of(&input_files)?;
    let metadata = metadata(opts, &inputs);
    let mut staged = Outputs::default();
    let (mut bytes_read, mut bytes_written) = (0, 0);
    if opts.merge_parts {
        let missing = shards_written(&shards, &metadata)?;
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::Mismatch(format!(
                "the parts are incomplete: {} of {} shards are not written: {}",
                missing.len(),
                shards.len(),
                names.join(", ")
            )));
        }
    } else {
        if let (Some(_), Some(index)) = (opts.part, &index) {
            others_are_this_average(&shards, &own, index, &metadata)?;
        }
        let writers: Vec<Option<Box<dyn TensorWriter>>> = shards
            .iter()
            .zip(&own)
            .map(|(s, &mine)| {
                mine.then(|| format::for_output(&s.path, like).writer(&s.path, &s.specs, &metadata, like)).transpose()
            })
            .collect::<Result<_>>()?;
        let entries = inputs
            .checkpoints
            .iter()
            .map(|c| plan.sources.iter().map(|name| c.get(name).expect("checked compatible")).collect())
            .collect();
        let bar = progress::bytes_bar(0, "averaging", opts.quiet);
        let kernel = Kernel {
            inputs: &inputs,
            entries,
            plan: &plan,
            writers: &writers,
            output: &opts.output,
            allow_nonfinite: opts.allow_nonfinite,
            bar: &bar,
        };
        let mut tensor = 0;
        for (s, &mine) in shards.iter().zip(&own) {
            for spec in &s.specs {
                if mine {
                    bytes_read += kernel.bytes_read(tensor);
                    bytes_written += spec.nbytes() as u64;
                }
                tensor += 1;
            }
        }
        bar.set_length(bytes_read);
        chunks(&shards, &own).par_iter().try_for_each_init(Scratch::default, |s, item| kernel.run(item, s))?;
        bar.finish_and_clear();
        // Every shard and the index are staged before any is published (the index last), and only
        // if no input changed meanwhile.
        for w in writers.into_iter().flatten() {
            staged.append(w.finish()?);
        }
    }
    if opts.part.is_none() {
        if let Some(index) = &index {
            staged.push(sharded::stage_index(index, &shards, &metadata)?);
        }
    }
    stamps.check()?;
    if let (Some(_), Some(index), false) = (opts.part, &index, opts.merge_parts) {
        others_are_this_average(&shards, &own, index, &metadata)?;
    }
    let mut outputs = staged.targets();
    staged.publish()?;
    // The part that finds every other part's shards written writes the index (two parts finishing
    // together may both write it: the same bytes, renamed into place).
    if let (Some(_), Some(index)) = (opts.part, &index) {
        if shards_written(&shards, &metadata)?.is_empty() {
            sharded::stage_index(index, &shards, &metadata)?.publish()?;
            outputs.push(index.clone());
        }
    }
    let weighting = weighting_name(&inputs.weighting);
    let created_dirs = dirs.keep();
    let TensorPlan { specs, kinds, buffers, stripped, .. } = plan;
    let Inputs { files, weights, n_models, duplicates, left_out, .. } = inputs;
    Ok(AverageSummary {
        outputs,
        created_dirs,
        inputs: files
            .into_iter()
            .zip(weights)
            .map(|(f, weight)| SelectedInput { path: f.path, number: f.number, weight })
            .collect(),
        duplicates,
        left_out,
        stripped_prefix: stripped,
        n_models,
        weighting,
        tensors: specs.len(),
        averaged: kinds.iter().filter(|&&k| k == Kind::Average).count(),
        buffers,
        bytes_read,
        bytes_written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::inputs::resumed_models;
    use super::*;

    #[test]
    fn ema_weights_follow_the_recurrence() {
        let w = relative_weights(3, &Weighting::Ema(0.5)).unwrap();
        assert_eq!(w, [0.25, 0.25, 0.5]);
        assert!(relative_weights(2, &Weighting::Explicit(vec![0.0, 0.0])).is_err());
        assert!(relative_weights(3, &Weighting::Explicit(vec![1.0, 2.0])).is_err());
    }

    #[test]
    fn huge_and_tiny_weights_normalise_without_overflow() {
        assert_eq!(normalise(&[1e308, 1e308]), [0.5, 0.5]);
        assert_eq!(normalise(&[f64::MAX, f64::MAX, f64::MAX, f64::MAX]), [0.25; 4]);
        assert_eq!(normalise(&[5e-324, 5e-324]), [0.5, 0.5]);
        assert_eq!(normalise(&[1.0, 0.0, 3.0]), [0.25, 0.0, 0.75]);
        assert_eq!(normalise(&[u64::MAX as f64, 1.0])[1], 1.0 / u64::MAX as f64);
    }

    #[test]
    fn kernel_weights_are_the_relative_ones_times_a_power_of_two() {
        let k = KernelWeights::of(&[1.0; 3]);
        assert_eq!((k.scaled, k.divisor), (vec![0.25; 3], 0.75));
        // A resumed average of 5 models and two new ones: 5, 1, 1 over 8.
        let k = KernelWeights::of(&[5.0, 1.0, 1.0]);
        assert_eq!((k.scaled, k.divisor), (vec![0.625, 0.125, 0.125], 0.875));
        // Every weight times the same power of two: the same mantissa, the exponents equally apart.
        let parts = |x: f64| (x.to_bits() & 0x000f_ffff_ffff_ffff, (x.to_bits() >> 52) as i64);
        for w in [vec![f64::MAX; 4], vec![1e300, 1e-3, 3.0], vec![0.2, 0.3, 0.5], vec![2.5, 0.0, 1e-3]] {
            let k = KernelWeights::of(&w);
            let shift = parts(w[0]).1 - parts(k.scaled[0]).1;
            for (a, b) in w.iter().zip(&k.scaled).filter(|(a, _)| **a > 0.0) {
                assert_eq!(parts(*a), (parts(*b).0, parts(*b).1 + shift), "{w:?}: {:?}", k.scaled);
            }
            assert!(k.divisor > 0.5 && k.divisor <= 1.0, "{w:?}: {}", k.divisor);
        }
        let k = KernelWeights::of(&[5e-324, 5e-324]);
        assert_eq!((k.scaled, k.divisor), (vec![0.5; 2], 1.0));
    }

    #[test]
    fn n_models_of_a_resumed_average_must_be_a_positive_whole_number() {
        let p = Path::new("prior.safetensors");
        assert_eq!(resumed_models(p, Some("7")).unwrap(), 7);
        assert!(resumed_models(p, None).unwrap_err().to_string().contains("has no `n_models`"));
        for bad in ["-3", "0", "1.5", "many", "18446744073709551616"] {
            let err = resumed_models(p, Some(bad)).unwrap_err().to_string();
            assert!(err.contains("invalid `n_models`") && err.contains(bad), "{bad}: {err}");
        }
    }
}
