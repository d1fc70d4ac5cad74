//! The pass: the statistics graph run over training samples, each layer's batch statistics
//! accumulated, whole or one part of the batches.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Instant;

use super::stats::{accumulator, Accumulator, StatsMode, Sufficient, Variance};
use crate::checkpoint::dtype;
use crate::error::{Error, Hint, Result, Setting};
use crate::inputs::{DataOptions, Samples, Sampling};
use crate::onnx::bind::Bound;
use crate::onnx::bn::{self, BnLayer};
use crate::part::Part;
use crate::progress;
use crate::runtime::{self, Engine};

/// How the pass over the data runs.
#[derive(Debug, Clone)]
pub struct PassOptions {
    /// Training samples: an `.npy` / `.npz`, an image folder, Parquet (see [`Samples::open`]).
    pub inputs: PathBuf,
    /// How they are read and preprocessed.
    pub data: DataOptions,
    /// Samples per batch.
    pub batch_size: NonZeroUsize,
    /// Use this many samples, drawn at random where the source knows its length (its first ones
    /// where it does not).
    pub max_samples: Option<usize>,
    /// The seed of the draw of `max_samples` and of the shuffled order.
    pub seed: u64,
    /// Read the batches in shuffled order (as a training loader does): `torch` statistics, the
    /// mean over batches, depend on which samples share a batch.
    pub shuffle: bool,
    /// Statistics mode.
    pub stats: StatsMode,
    /// Where and how to run.
    pub engine: Engine,
    /// Hide progress.
    pub quiet: bool,
}

impl PassOptions {
    /// A pass over `inputs` in batches of 64 with precise statistics on the CPU.
    pub fn new(inputs: impl Into<PathBuf>) -> Self {
        PassOptions {
            inputs: inputs.into(),
            data: DataOptions::default(),
            batch_size: NonZeroUsize::new(64).expect("non-zero"),
            max_samples: None,
            seed: 0,
            shuffle: false,
            stats: StatsMode::Precise,
            engine: Engine::default(),
            quiet: false,
        }
    }
}

/// A model with weights bound and its BatchNorm layers found, ready to recalibrate.
#[derive(Debug)]
pub struct Prepared {
    /// The model, the checkpoint whose names saved weights use, and how it bound.
    pub bound: Bound,
    /// The BatchNorm layers.
    pub layers: Vec<BnLayer>,
}

impl Prepared {
    /// Finds the BatchNorm layers of a bound model; a model without any is an error.
    pub fn new(bound: Bound) -> Result<Self> {
        let layers = bn::find(&bound.model)?;
        Ok(Prepared { bound, layers })
    }
}

/// Result of a pass: per layer (mean, unbiased variance), and counts.
#[derive(Debug, Clone)]
pub struct PassResult {
    /// Per layer: running mean and unbiased running variance.
    pub stats: Vec<(Vec<f64>, Vec<f64>)>,
    /// Samples seen.
    pub samples: usize,
    /// Batches run.
    pub batches: usize,
    /// Seconds spent in the pass (after the session was created).
    pub seconds: f64,
    /// Seconds until the first batch's statistics were in: ONNX Runtime's and cuDNN's set-up on
    /// the first run, plus the batch itself.
    pub first_batch_seconds: f64,
    /// Images skipped because they could not be decoded, each with why.
    pub skipped: Vec<String>,
    /// How images were read and preprocessed (`None` for float arrays).
    pub preprocessing: Option<String>,
    /// How the samples were drawn and ordered, where not all of them in order.
    pub sampling: Option<Sampling>,
    /// The largest batch, where the source made its batches itself (a Python loader's): the
    /// batch size of the pass, whatever the options said.
    pub own_batch_size: Option<usize>,
}

/// Fails on the first float weight of the bound model that holds NaN or Inf, naming it as the
/// checkpoint does (and its file), or as the model does for its own weights: such a weight makes
/// every activation after it non-finite, which the pass would otherwise blame on the first
/// BatchNorm layer downstream. The running statistics are skipped: the pass replaces them.
pub fn check_weights_finite(prepared: &Prepared) -> Result<()> {
    let model = &prepared.bound.model;
    let stats: std::collections::HashSet<&str> =
        prepared.layers.iter().flat_map(|l| [l.mean.as_str(), l.var.as_str()]).collect();
    let to_ck = prepared.bound.binding.as_ref().map(|b| b.checkpoint_names()).unwrap_or_default();
    for t in &model.graph().initializer {
        let Some(dt) = crate::onnx::dtype_of(t.data_type()).filter(|&d| dtype::is_float(d)) else { continue };
        if stats.contains(t.name()) {
            continue;
        }
        let at = match &t.raw_data {
            Some(raw) => dtype::first_nonfinite(dt, raw),
            None => dtype::first_nonfinite(dt, &crate::onnx::tensor_data(t)?.2),
        };
        let Some(at) = at else { continue };
        let message = format!(
            "holds a non-finite value (NaN or Inf) at element {at}; BatchNorm statistics cannot be computed with it"
        );
        let ck = &prepared.bound.checkpoint;
        return Err(match to_ck.get(t.name()) {
            Some(name) => Error::tensor(ck.file_of_name(name).unwrap_or(ck.path()), *name, message),
            None => Error::tensor(&model.path, t.name(), message),
        });
    }
    Ok(())
}

/// What a pass, or a part of one, accumulated.
#[derive(Debug, Clone)]
pub struct Accumulated {
    /// Per layer.
    pub layers: Vec<Sufficient>,
    /// Samples seen by this part.
    pub samples: usize,
    /// Batches run by this part.
    pub batches: usize,
    /// Samples of the whole pass (every part).
    pub total_samples: usize,
    /// Seconds spent in the pass (after the session was created).
    pub seconds: f64,
    /// Seconds until the first batch's statistics were in.
    pub first_batch_seconds: f64,
    /// Images skipped because they could not be decoded, each with why.
    pub skipped: Vec<String>,
    /// How images were read and preprocessed (`None` for float arrays).
    pub preprocessing: Option<String>,
    /// How the samples were drawn and ordered, where not all of them in order.
    pub sampling: Option<Sampling>,
    /// The largest batch, where the source made its batches itself.
    pub own_batch_size: Option<usize>,
}

impl Accumulated {
    /// The running statistics, the variance as `variance` says.
    pub fn finish(&self, variance: Variance) -> PassResult {
        PassResult {
            stats: self.layers.iter().map(|l| l.finish_as(variance)).collect(),
            samples: self.samples - self.skipped.len().min(self.samples),
            batches: self.batches,
            seconds: self.seconds,
            first_batch_seconds: self.first_batch_seconds,
            skipped: self.skipped.clone(),
            preprocessing: self.preprocessing.clone(),
            sampling: self.sampling,
            own_batch_size: self.own_batch_size,
        }
    }
}

/// Runs the statistics graph of `prepared` over the samples and aggregates the statistics.
pub fn compute(prepared: &Prepared, opts: &PassOptions) -> Result<PassResult> {
    Ok(accumulate(prepared, opts, Part::WHOLE)?.finish(Variance::of(&prepared.bound.checkpoint)))
}

/// Runs the statistics graph over `part` of the pass's batches (contiguous, whole batches: see
/// [`Part::range`]) and returns the layers' accumulated statistics; with [`Part::WHOLE`], the
/// whole pass. A part that gets no batch is an error.
pub fn accumulate(prepared: &Prepared, opts: &PassOptions, part: Part) -> Result<Accumulated> {
    let batch_size = opts.batch_size.get();
    if opts.stats == StatsMode::Torch && Variance::of(&prepared.bound.checkpoint) == Variance::Biased {
        return Err(Error::setting(
            Setting::Stats,
            "torch (update_bn's mean of unbiased batch variances) is PyTorch's: TensorFlow and Keras keep the \
             biased variance, which precise statistics give (the default)",
        ));
    }
    if batch_size == 1 && opts.stats == StatsMode::Torch {
        return Err(Error::setting(
            Setting::BatchSize,
            "of 1 with torch statistics: the unbiased batch variance of one sample is undefined (update_bn fails \
             the same way); use a larger batch or precise statistics",
        ));
    }
    let model = &prepared.bound.model;
    let specs = crate::onnx::input_specs(model)?;
    let data = Samples::open(&opts.inputs, &specs, &opts.data)?;
    // A subset drawn at random and a shuffled order, the same in every part of a split pass.
    let sampling = match data.len() {
        Some(n) => {
            if let Some(m) = opts.max_samples.filter(|&m| m > n) {
                crate::error::warn(format!(
                    "{}: max_samples {m} is more than its {n} samples: all of them are used",
                    opts.inputs.display()
                ));
            }
            Sampling::new(n, opts.max_samples, opts.seed, opts.shuffle)
        }
        None if opts.shuffle => {
            return Err(Error::setting(
                Setting::Shuffle,
                "needs samples of a known number (files): these are read once, in their own order",
            ))
        }
        None => None,
    };
    let data = match sampling {
        Some(s) => data.sampled(s)?,
        None => data,
    };
    // The samples of the pass where the source knows its length (a source that does not runs
    // until it ends, or until `max_samples`).
    let known = data.len().map(|n| opts.max_samples.map_or(n, |m| m.min(n)));
    let too_few = |samples: usize| {
        Error::format(&opts.inputs, format!("has {samples} samples, fewer than one batch of {batch_size}"))
            .hint(Hint::SmallerBatch { capped: opts.max_samples.is_some() })
    };
    // A source that makes its own batches (a Python loader's) is taken as it batches.
    let own = data.own_batches();
    if let Some(samples) = known.filter(|&n| n < batch_size && !own) {
        return Err(too_few(samples));
    }
    if !own {
        runtime::check_batch(&specs, batch_size, known, false)?;
    }
    let range = crate::part::pass_range(known, batch_size, part, Setting::Shard)?;
    let (first, end) = (range.samples.start, range.samples.end.min(opts.max_samples.unwrap_or(usize::MAX)));
    check_weights_finite(prepared)?;
    let (stats_model, layout) = bn::stats_model(model, &prepared.layers, opts.engine.reduction())?;
    let streams = runtime::concurrent_runs(&opts.engine, range.batches.len())?;
    let mut sessions = runtime::sessions_for(&stats_model, &opts.engine, false, streams)?;
    let started = Instant::now();
    let mut accs: Vec<Box<dyn Accumulator>> =
        prepared.layers.iter().map(|l| accumulator(opts.stats, l.channels)).collect();
    let bar = progress::samples_bar(known.map(|_| (end - first) as u64), "recalibrating", opts.quiet);
    // Batches are numbered in messages as in the whole pass.
    let mut batches = range.batches.start;
    let mut seen = 0;
    let reads = data.batches(first..end, batch_size)?;
    let mut largest = 0;
    let ran = runtime::run_batches(&mut sessions, &specs, reads, &[&layout.output], &bar, |batch, out| {
        seen += batch.indices.len();
        largest = largest.max(batch.indices.len());
        let all = &out[0].data;
        let need = layout.offsets.last().zip(prepared.layers.last()).map_or(0, |(&at, l)| at + 2 * l.channels + 1);
        if all.len() < need {
            return Err(Error::Runtime(format!(
                "the statistics output holds {} values where the BatchNorm layers' channels need {need}",
                all.len()
            )));
        }
        for (k, (&at, l)) in layout.offsets.iter().zip(&prepared.layers).enumerate() {
            let c = l.channels;
            let (mean, var, count) = (&all[at..at + c], &all[at + c..at + 2 * c], all[at + 2 * c] as f64);
            if mean.iter().chain(var).any(|v| !v.is_finite()) {
                // Finite means and an infinite variance: the activations are finite but so large
                // (about 1e19 or more) that their variance exceeds float32's range.
                let overflow = mean.iter().all(|v| v.is_finite()) && !var.iter().any(|v| v.is_nan());
                let what = if overflow {
                    "its input's batch variance exceeds float32's range (activations of about 1e19 or more)"
                } else {
                    "its input holds NaN or Inf"
                };
                return Err(Error::node(
                    &l.name,
                    "BatchNormalization",
                    format!("{what} in batch {} (the first layer where it appears)", batches + 1),
                ));
            }
            if opts.stats == StatsMode::Torch && count < 2.0 {
                return Err(Error::node(
                    &l.name,
                    "BatchNormalization",
                    format!(
                        "batch {} has {count} value per channel: the unbiased variance is undefined with torch statistics",
                        batches + 1
                    ),
                )
                .hint(Hint::BatchOfOne { samples: known, own_batches: own }));
            }
            accs[k].add(count, mean, var);
        }
        batches += 1;
        Ok(())
    })?;
    bar.finish_and_clear();
    if known.is_none() && ran.samples < batch_size && !own {
        return Err(too_few(ran.samples));
    }
    if seen == 0 || (opts.stats == StatsMode::Torch && seen < 2) {
        let skipped = data.skipped().len();
        return Err(Error::format(
            &opts.inputs,
            match skipped {
                0 => format!("holds {seen} sample(s): there are no statistics to compute"),
                _ => format!(
                    "left {seen} samples to run after skipping {skipped} images that could not be decoded: there are \
                     no statistics to compute"
                ),
            },
        ));
    }
    Ok(Accumulated {
        layers: accs.iter().map(|a| a.sufficient()).collect(),
        // The range covered, skipped images included: what a part stands for when parts merge.
        samples: ran.samples,
        batches: ran.batches,
        total_samples: known.unwrap_or(ran.samples),
        seconds: started.elapsed().as_secs_f64(),
        first_batch_seconds: ran.first_batch.as_secs_f64(),
        skipped: data.skipped(),
        preprocessing: data.preprocessing(),
        sampling,
        own_batch_size: own.then_some(largest),
    })
}
