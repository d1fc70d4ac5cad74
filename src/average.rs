//! Stochastic Weight Averaging, offline: choose checkpoints, weight them, and stream their average
//! into a new safetensors file.
//!
//! Inputs are memory-mapped and the output is written chunk by chunk at known offsets, so memory
//! is bounded by threads × [`CHUNK`] whatever the model size or the number of checkpoints. Every
//! element is accumulated in f64 in checkpoint order and divided once by the sum of the weights
//! ([`KernelWeights`]), so the output is byte-identical whatever the thread count, and a uniform
//! average of 16-bit checkpoints is their exact mean rounded to nearest, ties to even.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::checkpoint::format::{self, Format, TensorWriter};
use crate::checkpoint::safetensors::Safetensors;
use crate::checkpoint::sharded::{self, OutputPlan, Shard};
use crate::checkpoint::{dtype, Checkpoint, Dtype, TensorEntry, TensorSpec};
use crate::error::{Error, Hint, Result, Setting};
use crate::fs::{check_output, refuse_overwrite, OutputDirs, Outputs, Stamps};
use crate::inputs::{self, CheckpointFile, Duplicate, Selection};
use crate::part::Part;
use crate::progress;

/// Elements per work item: 32 Ki elements keep the f64 accumulator (256 KiB) in L2.
pub const CHUNK: usize = 32 * 1024;

/// Elements of a chunk averaged at a time: their f64 sums (8 KiB) stay in L1 while every input is
/// added to them and while they are encoded.
const BLOCK: usize = 1024;

/// How the selected checkpoints are weighted.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Weighting {
    /// Equal weights (SWA).
    #[default]
    Uniform,
    /// Given weights, one per selected checkpoint, normalised to sum to one.
    Explicit(Vec<f64>),
    /// Exponential moving average over the checkpoints in order with this decay: the newest weighs most.
    Ema(f64),
}

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

/// True for tensors that are not weights: BatchNorm running statistics and integer tensors.
pub fn is_buffer(name: &str, dtype: Dtype) -> bool {
    !dtype::is_float(dtype)
        || name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

/// Relative weights for `count` checkpoints in order (not normalised: the average divides by their sum).
pub fn relative_weights(count: usize, weighting: &Weighting) -> Result<Vec<f64>> {
    match weighting {
        Weighting::Uniform => Ok(vec![1.0; count]),
        Weighting::Explicit(w) => {
            if w.len() != count {
                return Err(Error::setting(
                    Setting::Weights,
                    format!("has {} values for {count} selected checkpoints", w.len()),
                ));
            }
            if let Some(bad) = w.iter().find(|v| !v.is_finite() || **v < 0.0) {
                return Err(Error::setting(Setting::Weights, format!("must be finite and non-negative, got {bad}")));
            }
            if w.iter().sum::<f64>() <= 0.0 {
                return Err(Error::setting(Setting::Weights, "sum to zero"));
            }
            Ok(w.clone())
        }
        Weighting::Ema(decay) => {
            if !(*decay > 0.0 && *decay < 1.0) {
                return Err(Error::setting(Setting::Ema, format!("decay must be in (0, 1), got {decay}")));
            }
            // θ ← d·θ + (1−d)·θ_new, starting from the oldest.
            Ok((0..count)
                .map(|i| {
                    if i == 0 {
                        decay.powi(count as i32 - 1)
                    } else {
                        (1.0 - decay) * decay.powi((count - 1 - i) as i32)
                    }
                })
                .collect())
        }
    }
}

/// Relative weights (finite, non-negative, not all zero) scaled to sum to one. They are divided by
/// the largest first, so weights near `f64::MAX` do not sum to infinity (which would make every
/// weight zero) and tiny ones do not lose precision.
pub fn normalise(relative: &[f64]) -> Vec<f64> {
    let max = relative.iter().copied().fold(0.0, f64::max);
    let scaled: Vec<f64> = relative.iter().map(|w| w / max).collect();
    let total: f64 = scaled.iter().sum();
    scaled.iter().map(|w| w / total).collect()
}

/// The weights the averaging kernel multiplies the inputs by, and what it divides their sum by.
///
/// They are the relative weights scaled by a power of two (exact, unlike dividing by their sum),
/// so that they sum to at most one: no partial sum of weighted inputs exceeds the largest input.
/// The output is `Σ scaled[i]·x[i] / divisor`, each input added in f64 in checkpoint order and
/// divided once. With equal weights, and with whole-number weights (a resumed average's `n, 1, 1…`,
/// `--weights 1,2,1`), every product and partial sum is exact in f64 while `Σ w·|x|` of an element
/// stays below 2^53 units in the last place of its finest input (always, for up to 8192 f16
/// inputs); the quotient, rounded once to the output dtype, is then the exact weighted mean rounded
/// to nearest, ties to even (docs/formats.md says when that holds, and what holds otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelWeights {
    /// One per input, in order: the relative weight times a power of two.
    pub scaled: Vec<f64>,
    /// Their sum (at most one).
    pub divisor: f64,
}

impl KernelWeights {
    /// Scales relative weights (finite, non-negative, not all zero).
    pub fn of(relative: &[f64]) -> Self {
        let max = relative.iter().copied().fold(0.0, f64::max);
        // Divide by the power of two at or below the largest weight (the smallest positive f64 when
        // that is subnormal)…
        let exponent = f64::from_bits(max.to_bits() & 0x7ff0_0000_0000_0000);
        let first = if exponent > 0.0 { exponent } else { f64::from_bits(1) };
        let once: Vec<f64> = relative.iter().map(|w| w / first).collect();
        // … then by the power of two at or above their sum (at least one now, at most 2n).
        let total: f64 = once.iter().sum();
        let second = f64::from_bits((total.to_bits() + 0x000f_ffff_ffff_ffff) & 0x7ff0_0000_0000_0000);
        let scaled: Vec<f64> = once.iter().map(|w| w / second).collect();
        KernelWeights { divisor: scaled.iter().sum(), scaled }
    }
}

/// The `n_models` of a resumed average's metadata: a whole number of at least 1.
fn resumed_models(prior: &Path, value: Option<&str>) -> Result<u64> {
    let Some(value) = value else {
        return Err(Error::format(prior, "has no `n_models` in its metadata: was it written by `swa average`?"));
    };
    value.trim().parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
        Error::format(prior, format!("has an invalid `n_models` in its metadata: {value:?} is not a whole number ≥ 1"))
    })
}

/// Lists the differences between two checkpoints' tensor names, shapes and dtypes (float dtypes
/// may differ when `any_float` is set).
fn differences(a: &Checkpoint, b: &Checkpoint, any_float: bool) -> Vec<String> {
    let (an, bn) = (a.path().display(), b.path().display());
    let mut diffs = Vec::new();
    for t in a.tensors() {
        match b.get(&t.name) {
            None => diffs.push(format!("`{}` is in {an} but not in {bn}", t.name)),
            Some(u) if u.shape != t.shape => {
                diffs.push(format!("`{}` has shape {:?} in {an} but {:?} in {bn}", t.name, t.shape, u.shape))
            }
            Some(u) if u.dtype != t.dtype && !(any_float && dtype::is_float(u.dtype) && dtype::is_float(t.dtype)) => {
                diffs.push(format!("`{}` is {:?} in {an} but {:?} in {bn}", t.name, t.dtype, u.dtype))
            }
            _ => {}
        }
    }
    for t in b.tensors() {
        if a.get(&t.name).is_none() {
            diffs.push(format!("`{}` is in {bn} but not in {an}", t.name));
        }
    }
    diffs
}

/// Fails unless every checkpoint has the same tensors (names, shapes, dtypes) as the last.
/// A resumed average (`resumed`: the first checkpoint) may hold its floats in another dtype.
pub fn check_compatible(checkpoints: &[&Checkpoint], resumed: bool) -> Result<()> {
    let mut all = Vec::new();
    let (last, others) = checkpoints.split_last().expect("at least one checkpoint");
    for (i, other) in others.iter().enumerate() {
        all.extend(differences(other, last, resumed && i == 0));
    }
    if all.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = all.iter().take(5).map(|d| format!("  {d}")).collect();
    let more = if all.len() > 5 { format!("\n  … and {} more", all.len() - 5) } else { String::new() };
    Err(Error::Mismatch(format!("checkpoints disagree ({} differences):\n{}{more}", all.len(), shown.join("\n"))))
}

/// The checkpoints of an average, opened, in order (a resumed average first), with their
/// normalised weights.
struct Inputs {
    checkpoints: Vec<Checkpoint>,
    files: Vec<CheckpointFile>,
    weights: Vec<f64>,
    kernel: KernelWeights,
    n_models: u64,
    sources: Vec<String>,
    duplicates: Vec<Duplicate>,
}

impl Inputs {
    /// Finds, selects, weights and opens the inputs, and checks that they agree.
    fn open(opts: &AverageOptions) -> Result<Self> {
        let found = inputs::discover(&opts.checkpoints)?;
        let selected = inputs::select(&found.files, &opts.selection)?;
        let mut rel = relative_weights(selected.len(), &opts.weighting)?;
        let mut inputs = Inputs {
            checkpoints: Vec::new(),
            files: Vec::new(),
            weights: Vec::new(),
            kernel: KernelWeights { scaled: Vec::new(), divisor: 1.0 },
            n_models: 0,
            sources: Vec::new(),
            duplicates: found.duplicates,
        };
        if let Some(prior) = &opts.resume {
            if opts.weighting != Weighting::Uniform {
                return Err(Error::setting(
                    Setting::Resume,
                    "continues a uniform average; it cannot be combined with explicit or EMA weights",
                ));
            }
            if let Some(f) = selected.iter().find(|f| inputs::discover::same_file(&f.path, prior)) {
                return Err(Error::setting(
                    Setting::Resume,
                    format!(
                        "{} is also one of the checkpoints ({}): its models would count twice",
                        prior.display(),
                        f.path.display()
                    ),
                ));
            }
            let ck = inputs::open_checkpoint(prior, None)?;
            let n = resumed_models(prior, ck.metadata().get("n_models").map(String::as_str))?;
            if let Some(s) = ck.metadata().get("sources").and_then(|s| serde_json::from_str::<Vec<String>>(s).ok()) {
                inputs.sources.extend(s);
            }
            rel.insert(0, n as f64);
            inputs.n_models = n;
            inputs.files.push(CheckpointFile { path: prior.clone(), number: None });
            inputs.checkpoints.push(ck);
        }
        inputs.n_models =
            u64::try_from(selected.len()).ok().and_then(|k| inputs.n_models.checked_add(k)).ok_or_else(|| {
                let prior = opts.resume.as_deref().unwrap_or(Path::new(""));
                Error::format(
                    prior,
                    format!("`n_models` {} plus {} new checkpoints overflows", inputs.n_models, selected.len()),
                )
            })?;
        for f in selected {
            inputs.checkpoints.push(inputs::open_checkpoint(&f.path, opts.key.as_deref())?);
            inputs.sources.push(f.path.to_string_lossy().into_owned());
            inputs.files.push(f);
        }
        let refs: Vec<&Checkpoint> = inputs.checkpoints.iter().collect();
        check_compatible(&refs, opts.resume.is_some())?;
        inputs.weights = normalise(&rel);
        inputs.kernel = KernelWeights::of(&rel);
        Ok(inputs)
    }

    /// The newest checkpoint: its tensor order, dtypes and buffers are the output's.
    fn newest(&self) -> &Checkpoint {
        self.checkpoints.last().expect("at least one checkpoint")
    }
}

/// What happens to one output tensor.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Average,
    Copy,
}

/// The output tensors (in the newest checkpoint's order) and what happens to each.
struct TensorPlan {
    specs: Vec<TensorSpec>,
    /// Each output tensor's name in the inputs (the output's may have a prefix stripped).
    sources: Vec<String>,
    stripped: Option<String>,
    kinds: Vec<Kind>,
    buffers: BufferSummary,
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

fn plan_tensors(newest: &Checkpoint, opts: &AverageOptions) -> Result<TensorPlan> {
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
        let float = dtype::is_float(t.dtype);
        let kind = if !is_buffer(&t.name, t.dtype) {
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

fn weighting_name(weighting: &Weighting) -> String {
    match weighting {
        Weighting::Uniform => "uniform".to_string(),
        Weighting::Explicit(_) => "explicit".to_string(),
        Weighting::Ema(d) => format!("ema({d})"),
    }
}

/// The `__metadata__` of the output: `n_models` (what `resume` continues), sources, weights.
fn metadata(opts: &AverageOptions, inputs: &Inputs) -> BTreeMap<String, String> {
    let newest = inputs.newest().path().display();
    let buffers = match opts.buffers {
        BufferPolicy::Newest => format!("copied from {newest}"),
        BufferPolicy::Average => format!("float buffers averaged, integers copied from {newest}"),
    };
    BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("n_models".to_string(), inputs.n_models.to_string()),
        ("sources".to_string(), serde_json::to_string(&inputs.sources).expect("strings")),
        ("weighting".to_string(), weighting_name(&opts.weighting)),
        ("weights".to_string(), serde_json::to_string(&inputs.weights).expect("floats")),
        ("buffers".to_string(), buffers),
        ("swa_version".to_string(), crate::VERSION.to_string()),
    ])
}

/// One chunk of one output tensor: [`CHUNK`] elements at most.
struct Item {
    shard: usize,
    slot: usize,
    tensor: usize,
    start: usize,
    len: usize,
}

/// Splits every tensor of the shards `own` says are this process's into chunks (an empty tensor is
/// one empty chunk).
fn chunks(shards: &[Shard], own: &[bool]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut tensor = 0;
    for (shard, s) in shards.iter().enumerate() {
        if !own[shard] {
            tensor += s.specs.len();
            continue;
        }
        for (slot, spec) in s.specs.iter().enumerate() {
            let numel: usize = spec.shape.iter().product();
            let mut start = 0;
            while start < numel || (numel == 0 && start == 0) {
                let len = CHUNK.min(numel - start);
                items.push(Item { shard, slot, tensor, start, len });
                start += len.max(1);
            }
            tensor += 1;
        }
    }
    items
}

/// Computes output chunks from the inputs and writes them.
struct Kernel<'a> {
    inputs: &'a Inputs,
    /// Per checkpoint, its entry for each output tensor, in output order.
    entries: Vec<Vec<&'a TensorEntry>>,
    plan: &'a TensorPlan,
    /// Per output shard, its writer when this process writes it.
    writers: &'a [Option<Box<dyn TensorWriter>>],
    /// The output the user named (for errors about output values).
    output: &'a Path,
    allow_nonfinite: bool,
    bar: &'a indicatif::ProgressBar,
}

/// Per-thread buffers of the kernel.
#[derive(Default)]
struct Scratch {
    wide: Vec<f64>,
    out: Vec<u8>,
}

impl Kernel<'_> {
    /// Bytes the inputs give for output tensor `i`.
    fn bytes_read(&self, i: usize) -> u64 {
        match self.plan.kinds[i] {
            Kind::Average => self.entries.iter().map(|e| e[i].nbytes() as u64).sum(),
            Kind::Copy => self.entries.last().expect("inputs")[i].nbytes() as u64,
        }
    }

    /// The bytes of `item` in checkpoint `c`'s tensor.
    fn slice(&self, c: usize, item: &Item) -> (&TensorEntry, &[u8]) {
        let e = self.entries[c][item.tensor];
        let size = dtype::width(e.dtype);
        (e, &self.inputs.checkpoints[c].bytes(e)[item.start * size..(item.start + item.len) * size])
    }

    fn nonfinite(&self, c: usize, e: &TensorEntry, at: usize) -> Error {
        let ck = &self.inputs.checkpoints[c];
        Error::tensor(ck.file_of(e), &e.name, format!("holds a non-finite value (NaN or Inf) at element {at}"))
            .hint(Hint::AllowNonfinite)
    }

    /// Fails when the encoded chunk `s.out` holds a value that was finite before encoding: a
    /// value beyond the output dtype's range (above 65504 in f16) that became Inf. `value` gives
    /// the value before encoding. With `allow_nonfinite`, Inf is written.
    fn check_encoded(&self, item: &Item, spec: &TensorSpec, out: &[u8], value: impl Fn(usize) -> f64) -> Result<()> {
        if self.allow_nonfinite || spec.dtype == Dtype::F64 {
            return Ok(());
        }
        let Some(at) = dtype::first_nonfinite(spec.dtype, out) else { return Ok(()) };
        Err(Error::tensor(
            self.output,
            &spec.name,
            format!(
                "element {} is {} in the output, beyond the range of {} (it would be written as Inf)",
                item.start + at,
                value(at),
                dtype::name(spec.dtype)
            ),
        )
        .hint(Hint::AllowNonfinite))
    }

    /// The weighted mean of `item` over the inputs, encoded in the output dtype into `s.out`: the
    /// sum of each input times its [`KernelWeights::scaled`] weight, accumulated in f64 in checkpoint
    /// order, divided once by the weights' sum, and rounded once to the output dtype.
    fn average(&self, item: &Item, spec: &TensorSpec, s: &mut Scratch) -> Result<()> {
        s.wide.resize(item.len, 0.0);
        let inputs: Vec<(&TensorEntry, &[u8])> =
            (0..self.inputs.checkpoints.len()).map(|c| self.slice(c, item)).collect();
        let divisor = self.inputs.kernel.divisor;
        let out_width = dtype::width(spec.dtype);
        // Block by block, so that the block's sums stay in L1 while every input adds to it and
        // while they are encoded (the same additions in the same order as a whole chunk at once).
        for start in (0..item.len).step_by(BLOCK) {
            let end = (start + BLOCK).min(item.len);
            let wide = &mut s.wide[start..end];
            for (c, (e, bytes)) in inputs.iter().enumerate() {
                let w = dtype::width(e.dtype);
                dtype::accumulate(e.dtype, &bytes[start * w..end * w], self.inputs.kernel.scaled[c], wide, c == 0);
            }
            dtype::encode_quotients(spec.dtype, wide, divisor, &mut s.out[start * out_width..end * out_width]);
        }
        self.bar.inc(inputs.iter().map(|(_, b)| b.len() as u64).sum());
        // NaN and Inf inputs carry through the sum (an Inf times a zero weight is NaN), so a
        // finite output means finite inputs, and only a non-finite one needs a closer look.
        if self.allow_nonfinite || dtype::first_nonfinite(spec.dtype, &s.out).is_none() {
            return Ok(());
        }
        for c in 0..self.inputs.checkpoints.len() {
            let (e, bytes) = self.slice(c, item);
            if let Some(at) = dtype::first_nonfinite(e.dtype, bytes) {
                return Err(self.nonfinite(c, e, item.start + at));
            }
        }
        self.check_encoded(item, spec, &s.out, |i| s.wide[i] / divisor)
    }

    /// `item` of the newest checkpoint, converted to the output dtype into `s.out`.
    fn copy(&self, item: &Item, spec: &TensorSpec, s: &mut Scratch) -> Result<()> {
        let newest = self.inputs.checkpoints.len() - 1;
        let (e, bytes) = self.slice(newest, item);
        if let (Some(at), false) = (dtype::first_nonfinite(e.dtype, bytes), self.allow_nonfinite) {
            return Err(self.nonfinite(newest, e, item.start + at));
        }
        if e.dtype == spec.dtype {
            s.out.copy_from_slice(bytes);
        } else {
            s.out.copy_from_slice(&dtype::convert(e.dtype, spec.dtype, bytes));
            self.check_encoded(item, spec, &s.out, |i| {
                dtype::to_f64(e.dtype, &bytes[i * dtype::width(e.dtype)..][..dtype::width(e.dtype)])[0]
            })?;
        }
        self.bar.inc(bytes.len() as u64);
        Ok(())
    }

    /// Computes and writes one chunk.
    fn run(&self, item: &Item, s: &mut Scratch) -> Result<()> {
        let spec = &self.plan.specs[item.tensor];
        s.out.resize(item.len * dtype::width(spec.dtype), 0);
        match self.plan.kinds[item.tensor] {
            Kind::Average => self.average(item, spec, s)?,
            Kind::Copy => self.copy(item, spec, s)?,
        }
        let writer = self.writers[item.shard].as_ref().expect("chunks of own shards only");
        writer.write_at(item.slot, item.start * dtype::width(spec.dtype), &s.out)
    }
}

/// Which of `shards` this process writes: all, or those of `part` (shard `s` goes to part
/// `s mod N`, so that the plan, which depends only on the tensors and the shard size, decides
/// every part's shards alike); a part needs a sharded output and at least one shard.
fn own_shards(shards: &[Shard], sharded: bool, part: Option<Part>) -> Result<Vec<bool>> {
    let Some(part) = part else { return Ok(vec![true; shards.len()]) };
    if !sharded {
        return Err(Error::setting(
            Setting::Part,
            "splits a sharded output: name the output NAME.safetensors.index.json or give a shard size",
        ));
    }
    let own: Vec<bool> = (0..shards.len()).map(|s| s % part.count.get() == part.index).collect();
    if !own.contains(&true) {
        return Err(Error::setting(
            Setting::Part,
            format!(
                "{part} gets none of the output's {} shards (shard s goes to part s mod {}): split into at most {} \
                 parts, or give a smaller shard size",
                shards.len(),
                part.count,
                shards.len()
            ),
        ));
    }
    Ok(own)
}

/// Whether every shard of a parted output is written, each with the tensors (names, dtypes,
/// shapes, in order) and the metadata (inputs, weights) this run plans: `Ok(false)` while some are
/// missing; an error for one that holds anything else.
fn shards_written(shards: &[Shard], metadata: &BTreeMap<String, String>) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for s in shards {
        if std::fs::symlink_metadata(&s.path).is_err() {
            missing.push(s.path.clone());
            continue;
        }
        let ck = Checkpoint::open(&s.path)?;
        let planned: Vec<(&str, Dtype, &[usize])> =
            s.specs.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice())).collect();
        let found: Vec<(&str, Dtype, &[usize])> =
            ck.tensors().iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice())).collect();
        if planned != found {
            return Err(Error::format(
                &s.path,
                "does not hold the tensors this average plans for it (names, dtypes, shapes): it was written by \
                 another run",
            ));
        }
        if ck.metadata() != metadata {
            return Err(Error::format(
                &s.path,
                "was written for other inputs or weights (its metadata differs from this average's): it is another \
                 run's shard",
            ));
        }
    }
    Ok(missing)
}

/// Averages checkpoints as `opts` says and writes the result atomically.
pub fn average(opts: &AverageOptions) -> Result<AverageSummary> {
    let started = Instant::now();
    crate::fs::check_file_name(&opts.output)?;
    let inputs = Inputs::open(opts)?;
    let plan = plan_tensors(inputs.newest(), opts)?;
    let OutputPlan { shards, index } = sharded::plan(&opts.output, &plan.specs, opts.shard_size.map(NonZeroU64::get));
    let output_format = format::for_output(&opts.output);
    if index.is_some() && output_format.name() != Safetensors.name() {
        return Err(Error::setting(
            Setting::ShardSize,
            format!("applies to safetensors outputs: a {} output is one file", output_format.name()),
        ));
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
    for path in shards.iter().map(|s| s.path.as_path()).chain(index.as_deref()) {
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
        let writers: Vec<Option<Box<dyn TensorWriter>>> = shards
            .iter()
            .zip(&own)
            .map(|(s, &mine)| {
                mine.then(|| format::for_output(&s.path).writer(&s.path, &s.specs, &metadata)).transpose()
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
            staged.push(w.finish()?);
        }
    }
    if opts.part.is_none() {
        if let Some(index) = &index {
            staged.push(sharded::stage_index(index, &shards, &metadata)?);
        }
    }
    stamps.check()?;
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
    let weighting = weighting_name(&opts.weighting);
    let created_dirs = dirs.keep();
    let TensorPlan { specs, kinds, buffers, stripped, .. } = plan;
    let Inputs { files, weights, n_models, duplicates, .. } = inputs;
    Ok(AverageSummary {
        outputs,
        created_dirs,
        inputs: files
            .into_iter()
            .zip(weights)
            .map(|(f, weight)| SelectedInput { path: f.path, number: f.number, weight })
            .collect(),
        duplicates,
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
