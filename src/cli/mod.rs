//! The command line: clap definitions, their validation, and their conversion into the library's
//! option structs. Flags exist only here; the library names settings, never flags.

pub mod commands;
pub mod doctor;
pub mod render;

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use swa::average::{AverageOptions, BufferPolicy, StripPrefix, Weighting};
use swa::checkpoint::dtype;
use swa::evaluate::EvalOptions;
use swa::inputs::Selection;
use swa::part::Part;
use swa::parts::stats::{MergeStatsOptions, PartialStatsOptions};
use swa::recalibrate::{PassOptions, RecalibrateOptions, StatsMode};
use swa::runtime::{Device, Engine};
use swa::soup::{Method, SoupOptions};
use swa::{Error, Result};

/// What a command produced: text for stdout and the exit code (0, or 1 for a failed threshold).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Text for stdout.
    pub stdout: String,
    /// Exit code.
    pub code: u8,
}

/// A count that must be at least 1.
fn at_least_one(s: &str) -> std::result::Result<NonZeroUsize, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a whole number"))?;
    NonZeroUsize::new(n).ok_or_else(|| "must be at least 1".to_string())
}

/// `--center-crop N` or `H,W`.
fn crop(s: &str) -> std::result::Result<(usize, usize), String> {
    match s.parse::<swa::inputs::images::Resize>()? {
        swa::inputs::images::Resize::Shorter(n) => Ok((n, n)),
        swa::inputs::images::Resize::Exact(h, w) => Ok((h, w)),
    }
}

/// `--mean` / `--std`: one value, or one per channel.
#[derive(Debug, Clone)]
pub struct Channels(Vec<f32>);

/// `--mean` / `--std`: one value, or one per channel, separated by commas.
fn floats(s: &str) -> std::result::Result<Channels, String> {
    s.split(',')
        .map(|t| t.trim().parse::<f32>().map_err(|_| format!("`{t}` is not a number")))
        .collect::<std::result::Result<Vec<_>, _>>()
        .and_then(
            |v| if v.iter().all(|x| x.is_finite()) { Ok(Channels(v)) } else { Err("values must be finite".into()) },
        )
}

/// `--preset`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PresetArg {
    /// Resize 256, center crop 224, ImageNet mean and std (torchvision's pretrained models).
    Imagenet,
}

/// How images (image folders, Parquet, uint8 arrays) are read and preprocessed: torchvision's
/// `Resize`, `CenterCrop`, `ToTensor`, `Normalize`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Images (folders, Parquet, uint8 arrays)")]
pub struct DataArgs {
    /// Resize the shorter side to N pixels, or to exactly H,W (bilinear, antialiased: transforms.Resize).
    #[arg(long, value_name = "N|H,W", value_parser = |s: &str| s.parse::<swa::inputs::images::Resize>())]
    pub resize: Option<swa::inputs::images::Resize>,
    /// Crop the centre N×N (or H×W) pixels (transforms.CenterCrop).
    #[arg(long, value_name = "N|H,W", value_parser = crop)]
    pub center_crop: Option<(usize, usize)>,
    /// Subtract this mean after scaling to [0, 1]: one value or one per channel (transforms.Normalize).
    #[arg(long, value_name = "R,G,B", value_parser = floats, allow_negative_numbers = true)]
    pub mean: Option<Channels>,
    /// Divide by this std after subtracting the mean.
    #[arg(long, value_name = "R,G,B", value_parser = floats, allow_negative_numbers = true)]
    pub std: Option<Channels>,
    /// A named preprocessing; --resize, --center-crop, --mean and --std override its parts.
    #[arg(long, value_enum)]
    pub preset: Option<PresetArg>,
    /// The Parquet column of encoded images (bytes, or a struct with a `bytes` field).
    #[arg(long, default_value = "image", value_name = "NAME")]
    pub image_column: String,
    /// The Parquet column of integer labels.
    #[arg(long, default_value = "label", value_name = "NAME")]
    pub label_column: String,
    /// Skip images that cannot be decoded (each is named and counted in the summary) instead of stopping.
    #[arg(long)]
    pub skip_bad_images: bool,
}

impl DataArgs {
    /// The library's data options.
    pub fn options(&self) -> swa::inputs::DataOptions {
        use swa::inputs::images::Preprocess;
        let base = match self.preset {
            Some(PresetArg::Imagenet) => Preprocess::imagenet(),
            None => Preprocess::default(),
        };
        swa::inputs::DataOptions {
            preprocess: Preprocess {
                resize: self.resize.or(base.resize),
                center_crop: self.center_crop.or(base.center_crop),
                mean: self.mean.clone().map(|c| c.0).or(base.mean),
                std: self.std.clone().map(|c| c.0).or(base.std),
            },
            image_column: self.image_column.clone(),
            label_column: self.label_column.clone(),
            skip_bad_images: self.skip_bad_images,
        }
    }
}

/// A fraction in 0..=1 (`--min-accuracy`); NaN, infinities and percentages are refused.
fn fraction(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be a fraction between 0 and 1 (0.9 for 90%), got {s}"))
    }
}

/// Most threads a session may be given: this many per core.
const THREADS_PER_CORE: usize = 4;

/// `--threads`: at least 1, at most [`THREADS_PER_CORE`] per core of this machine (ONNX Runtime
/// starts every thread it is told to, with its own stack).
fn thread_count(s: &str) -> std::result::Result<NonZeroUsize, String> {
    let n = at_least_one(s)?;
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let max = THREADS_PER_CORE * cores;
    if n.get() > max {
        return Err(format!("must be at most {max} ({THREADS_PER_CORE} per core; this machine has {cores})"));
    }
    Ok(n)
}

/// Most CUDA streams (sessions, each with its own activation memory) `--streams` may ask for.
const MAX_STREAMS: usize = 16;

/// Offline Stochastic Weight Averaging and BatchNorm recalibration for saved checkpoints.
#[derive(Debug, Parser)]
#[command(name = "swa", version, about, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// Hide progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Average checkpoints into one SWA model (safetensors, streamed, out of core).
    Average(AverageArgs),
    /// Recalibrate BatchNorm statistics by running the ONNX model over training samples.
    Recalibrate(RecalibrateArgs),
    /// Accuracy, top-k and loss of a model on labelled held-out data.
    Evaluate(EvaluateArgs),
    /// Average, recalibrate, evaluate every checkpoint and the SWA model, and write a report.
    Run(RunArgs),
    /// Choose checkpoints to average by held-out accuracy (greedy, uniform or top-k model soups),
    /// judging every candidate with BatchNorm statistics recalibrated for its own weights.
    Soup(SoupArgs),
    /// List a checkpoint's or model's tensors and BatchNorm layers.
    Inspect(InspectArgs),
    /// Merge the partial statistics of `swa recalibrate --shard I/N --partial-out P` into the
    /// recalibrated model (what one `swa recalibrate` over all samples writes).
    MergeStats(MergeStatsArgs),
    /// Merge the partial results of `swa evaluate --shard I/N --partial-out E.json` and report
    /// (and gate) as `swa evaluate` does.
    MergeEval(MergeEvalArgs),
    /// Which ONNX Runtime swa finds (and how), its version and providers, and the CUDA and cuDNN
    /// libraries `--device cuda` would load: the first thing a bug report needs.
    Doctor(doctor::DoctorArgs),
}

/// `--shard` / `--part`: I/N, counting from 0.
fn part(s: &str) -> std::result::Result<Part, String> {
    s.parse()
}

/// Which checkpoints, by the number in their names.
#[derive(Debug, Args, Clone)]
pub struct SelectArgs {
    /// First number to use (inclusive): `--from 10` keeps epoch_010 and later.
    #[arg(long, value_name = "N")]
    pub from: Option<u64>,
    /// Last number to use (inclusive).
    #[arg(long, value_name = "N")]
    pub to: Option<u64>,
    /// Keep only the last N checkpoints (after --from/--to/--every).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub last: Option<NonZeroUsize>,
    /// Keep every K-th checkpoint, starting with the first.
    #[arg(long, value_name = "K", value_parser = at_least_one)]
    pub every: Option<NonZeroUsize>,
}

impl From<&SelectArgs> for Selection {
    fn from(a: &SelectArgs) -> Self {
        Selection { from: a.from, to: a.to, every: a.every, last: a.last }
    }
}

/// `swa average`.
#[derive(Debug, Args)]
pub struct AverageArgs {
    /// Checkpoints: torch.save files (.pt, .pth, .pth.tar, .bin, Lightning .ckpt), .safetensors,
    /// sharded *.safetensors.index.json, .onnx, or directories of them.
    #[arg(required = true, value_name = "CHECKPOINT")]
    pub checkpoints: Vec<PathBuf>,
    /// Output: a .safetensors file, NAME.safetensors.index.json for shards, or NAME.pt for what
    /// torch.save(state_dict) writes.
    #[arg(short, long, value_name = "OUTPUT")]
    pub output: PathBuf,
    /// Which checkpoints.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Weights, one per selected checkpoint in order (normalised): 0.2,0.3,0.5
    #[arg(long, value_delimiter = ',', conflicts_with = "ema", value_name = "W,...")]
    pub weights: Option<Vec<f64>>,
    /// Exponential moving average with this decay over the checkpoints in order (newest heaviest).
    #[arg(long, value_name = "DECAY")]
    pub ema: Option<f64>,
    /// Continue an earlier uniform average (its n_models metadata) with these checkpoints.
    #[arg(long, value_name = "AVERAGE.safetensors")]
    pub resume: Option<PathBuf>,
    /// Output dtype of floating-point tensors: f32, f16, bf16 or f64 (default: as stored).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<swa::checkpoint::Dtype>,
    /// BatchNorm statistics and integer tensors: copy from the newest checkpoint, or average the float ones.
    #[arg(long, value_enum, default_value = "newest")]
    pub buffers: BuffersArg,
    /// Average even when an input holds NaN or Inf.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Remove a prefix from every tensor name of the output: the wrapper prefix they all share
    /// (module., _orig_mod., model.) without a value, or the PREFIX given.
    #[arg(long, value_name = "PREFIX", num_args = 0..=1, default_missing_value = "")]
    pub strip_prefix: Option<String>,
    /// The state dict to read in torch.save files (default: state_dict, model, model_state_dict,
    /// module, net, or the file itself): e.g. state_dict_ema, callbacks.EMA.ema_state_dict.
    #[arg(long, value_name = "PATH")]
    pub key: Option<String>,
    /// Write shards of at most this size (bytes, or with KB/MB/GB/KiB/MiB/GiB).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub shard_size: Option<NonZeroU64>,
    /// Write only part I of N of a sharded output (its shards s with s mod N = I, reading only
    /// their tensors); the part that finds every shard written writes the index.
    #[arg(long, value_name = "I/N", value_parser = part)]
    pub part: Option<Part>,
    /// Write the index of a sharded output whose parts (--part) are written, after checking every
    /// shard; give the same checkpoints and options as the parts.
    #[arg(long, conflicts_with = "part")]
    pub merge_parts: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--buffers`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BuffersArg {
    /// Copy from the newest selected checkpoint.
    Newest,
    /// Average the floating-point ones.
    Average,
}

fn parse_dtype(s: &str) -> std::result::Result<swa::checkpoint::Dtype, String> {
    dtype::parse_float(s).ok_or_else(|| format!("unknown dtype `{s}`: use f32, f16, bf16 or f64"))
}

fn parse_size(s: &str) -> std::result::Result<NonZeroU64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("bad size `{s}`"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown unit `{u}` in `{s}`")),
    };
    NonZeroU64::new((v * mult) as u64).ok_or_else(|| "must be positive".to_string())
}

impl AverageArgs {
    /// The library options.
    pub fn options(&self, quiet: bool) -> AverageOptions {
        AverageOptions {
            checkpoints: self.checkpoints.clone(),
            selection: (&self.select).into(),
            weighting: match (&self.weights, self.ema) {
                (Some(w), _) => Weighting::Explicit(w.clone()),
                (None, Some(d)) => Weighting::Ema(d),
                _ => Weighting::Uniform,
            },
            resume: self.resume.clone(),
            dtype: self.dtype,
            buffers: match self.buffers {
                BuffersArg::Newest => BufferPolicy::Newest,
                BuffersArg::Average => BufferPolicy::Average,
            },
            allow_nonfinite: self.allow_nonfinite,
            output: self.output.clone(),
            shard_size: self.shard_size,
            key: self.key.clone(),
            strip_prefix: self.strip_prefix.as_ref().map(|p| match p.as_str() {
                "" => StripPrefix::Wrapper,
                p => StripPrefix::Given(p.to_string()),
            }),
            quiet: quiet || self.json,
            part: self.part,
            merge_parts: self.merge_parts,
        }
    }
}

/// How the model runs.
#[derive(Debug, Args, Clone)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N. CUDA that cannot be used is an error, never a silent fallback.
    #[arg(long, default_value = "cpu", value_parser = |s: &str| s.parse::<Device>())]
    pub device: Device,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long, value_name = "N", value_parser = thread_count)]
    pub threads: Option<NonZeroUsize>,
    /// With --device cuda: allow TF32 in convolutions and matrix products (about 2x faster on
    /// Ampere and later; statistics move by about 1e-3 relative, so the default is full fp32).
    #[arg(long)]
    pub tf32: bool,
    /// With --device cuda: batches run at once, each in its own ONNX Runtime session and CUDA
    /// stream, so one batch's copies and launches overlap another's kernels (default 2; 1 halves
    /// the GPU memory for activations; at most 16).
    #[arg(long, value_name = "N")]
    pub streams: Option<usize>,
}

/// A benchmarking knob from the environment, parsed.
fn knob<T: std::str::FromStr<Err = String>>(var: &str) -> Result<Option<T>> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v.parse().map(Some).map_err(|e| Error::usage(format!("{var}: {e}"))),
        _ => Ok(None),
    }
}

impl DeviceArgs {
    /// The library's engine; CUDA-only flags on the CPU are refused. The benchmarking knobs
    /// `SWA_STATS_REDUCTION`, `SWA_CUDNN_SEARCH` and `SWA_ORT_PROFILE` are read here.
    pub fn engine(&self) -> Result<Engine> {
        let streams = match self.streams {
            Some(0) => return Err(Error::usage("--streams must be at least 1")),
            Some(n) if n > MAX_STREAMS => {
                return Err(Error::usage(format!("--streams must be at most {MAX_STREAMS}, got {n}")))
            }
            Some(n) if n > 1 && self.device == Device::Cpu => {
                return Err(Error::usage(
                    "--streams applies to --device cuda; on the CPU one batch runs at a time on all threads",
                ))
            }
            n => n.and_then(NonZeroUsize::new),
        };
        if self.tf32 && self.device == Device::Cpu {
            return Err(Error::usage("--tf32 applies to --device cuda; on the CPU everything runs in fp32"));
        }
        Ok(Engine {
            device: self.device,
            threads: self.threads,
            tf32: self.tf32,
            streams,
            reduction: knob("SWA_STATS_REDUCTION")?,
            cudnn_search: knob("SWA_CUDNN_SEARCH")?.unwrap_or_default(),
            profile: std::env::var_os("SWA_ORT_PROFILE").filter(|p| !p.is_empty()).map(PathBuf::from),
        })
    }
}

/// `--stats`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StatsArg {
    /// Count-weighted pooled statistics over all values, merged in f64 (PreciseBN).
    Precise,
    /// torch.optim.swa_utils.update_bn's estimate: the mean over batches of the batch mean and of
    /// the unbiased batch variance. Only BatchNorm runs in training mode; update_bn runs the whole
    /// model in train mode, so where dropout or stochastic depth comes before a BatchNorm
    /// (EfficientNet) its numbers differ from these.
    Torch,
}

impl From<StatsArg> for StatsMode {
    fn from(a: StatsArg) -> Self {
        match a {
            StatsArg::Precise => StatsMode::Precise,
            StatsArg::Torch => StatsMode::Torch,
        }
    }
}

/// Fails when `inputs` are arrays (which carry no labels) and the labels flag `flag` is missing.
fn needs_labels(inputs: &std::path::Path, labels: Option<&std::path::Path>, flag: &str) -> Result<()> {
    let arrays = inputs.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy") || e.eq_ignore_ascii_case("npz"));
    if arrays && labels.is_none() {
        return Err(Error::usage(format!(
            "{flag} is needed: {} holds arrays, which carry no labels (image folders and Parquet carry their own)",
            inputs.display()
        )));
    }
    Ok(())
}

/// An evaluation of `inputs` against `labels` (or the inputs' own) on the device of `run`.
fn eval_options(
    inputs: &std::path::Path,
    labels: Option<&std::path::Path>,
    data: &DataArgs,
    batch_size: NonZeroUsize,
    top_k: NonZeroUsize,
    run: &DeviceArgs,
    quiet: bool,
) -> Result<EvalOptions> {
    Ok(EvalOptions {
        inputs: inputs.to_path_buf(),
        labels: labels.map(std::path::Path::to_path_buf),
        data: data.options(),
        batch_size,
        top_k,
        engine: run.engine()?,
        quiet,
    })
}

/// The recalibration pass; a batch of one with torch statistics is refused.
fn pass(
    inputs: &std::path::Path,
    data: &DataArgs,
    batch_size: NonZeroUsize,
    max_samples: Option<usize>,
    stats: StatsArg,
    run: &DeviceArgs,
    quiet: bool,
) -> Result<PassOptions> {
    let stats = StatsMode::from(stats);
    if batch_size.get() == 1 && stats == StatsMode::Torch {
        return Err(Error::usage("--batch-size 1 with --stats torch: the unbiased batch variance of one sample is undefined (update_bn fails the same way); use a larger batch or --stats precise"));
    }
    Ok(PassOptions {
        inputs: inputs.to_path_buf(),
        data: data.options(),
        batch_size,
        max_samples,
        stats,
        engine: run.engine()?,
        quiet,
    })
}

/// `swa recalibrate`.
#[derive(Debug, Args)]
pub struct RecalibrateArgs {
    /// The ONNX model, exported with BatchNorm kept.
    #[arg(long, value_name = "MODEL.onnx")]
    pub model: PathBuf,
    /// Tensors to bind into the model by name first (the output of `swa average`, a torch.save file, a Lightning .ckpt, ...).
    #[arg(long, value_name = "W")]
    pub weights: Option<PathBuf>,
    /// Training samples: .npy for a one-input model, .npz with arrays named after the inputs, a
    /// folder of images (class folders or flat), or Parquet with an image column.
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub inputs: PathBuf,
    /// How images are read.
    #[command(flatten)]
    pub data: DataArgs,
    /// Samples per batch.
    #[arg(long, default_value = "64", value_parser = at_least_one)]
    pub batch_size: NonZeroUsize,
    /// Use at most this many samples.
    #[arg(long, value_name = "N")]
    pub max_samples: Option<usize>,
    /// precise: pooled population statistics; torch: update_bn's mean over batches (with only
    /// BatchNorm in training mode, where update_bn also trains dropout and stochastic depth).
    #[arg(long, value_enum, default_value = "precise")]
    pub stats: StatsArg,
    /// Device and threads.
    #[command(flatten)]
    pub run: DeviceArgs,
    /// Keep the model's own values for weights that the checkpoint lacks.
    #[arg(long, alias = "allow-partial")]
    pub allow_missing_weights: bool,
    /// The state dict to read in torch.save files (default: state_dict, model, model_state_dict,
    /// module, net, or the file itself): e.g. state_dict_ema, callbacks.EMA.ema_state_dict.
    #[arg(long, value_name = "PATH")]
    pub key: Option<String>,
    /// Output ONNX model.
    #[arg(short, long, value_name = "OUT.onnx", required_unless_present = "partial_out")]
    pub output: Option<PathBuf>,
    /// Also write the tensors under the checkpoint's names, for model.load_state_dict.
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_weights: Option<PathBuf>,
    /// Run only part I of N of the batches (contiguous ranges of whole batches, counting from 0),
    /// for `swa merge-stats`; needs --partial-out.
    #[arg(long, value_name = "I/N", value_parser = part)]
    pub shard: Option<Part>,
    /// Write the per-layer statistics (f64) of this part instead of a model, for `swa merge-stats`.
    #[arg(long, value_name = "P.safetensors", conflicts_with_all = ["output", "save_weights"])]
    pub partial_out: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

impl RecalibrateArgs {
    /// The library options.
    pub fn options(&self, quiet: bool) -> Result<RecalibrateOptions> {
        Ok(RecalibrateOptions {
            model: self.model.clone(),
            weights: self.weights.clone(),
            allow_missing_weights: self.allow_missing_weights,
            key: self.key.clone(),
            pass: pass(
                &self.inputs,
                &self.data,
                self.batch_size,
                self.max_samples,
                self.stats,
                &self.run,
                quiet || self.json,
            )?,
            output: self.output.clone().expect("clap requires -o without --partial-out"),
            save_weights: self.save_weights.clone(),
        })
    }

    /// The library options of a part (`--partial-out`).
    pub fn partial_options(&self, quiet: bool, output: &std::path::Path) -> Result<PartialStatsOptions> {
        Ok(PartialStatsOptions {
            model: self.model.clone(),
            weights: self.weights.clone(),
            key: self.key.clone(),
            allow_missing_weights: self.allow_missing_weights,
            pass: pass(
                &self.inputs,
                &self.data,
                self.batch_size,
                self.max_samples,
                self.stats,
                &self.run,
                quiet || self.json,
            )?,
            part: self.shard.unwrap_or(Part::WHOLE),
            output: output.to_path_buf(),
        })
    }
}

/// `swa merge-stats`.
#[derive(Debug, Args)]
pub struct MergeStatsArgs {
    /// Partial statistics (`swa recalibrate --shard I/N --partial-out`), every part once, any order.
    #[arg(required = true, value_name = "P.safetensors")]
    pub partials: Vec<PathBuf>,
    /// The ONNX model the parts ran (checked by content hash).
    #[arg(long, value_name = "MODEL.onnx")]
    pub model: PathBuf,
    /// The weights the parts bound (checked by content hash).
    #[arg(long, value_name = "W")]
    pub weights: Option<PathBuf>,
    /// The state dict the parts read in a torch.save file.
    #[arg(long, value_name = "PATH")]
    pub key: Option<String>,
    /// Keep the model's own values for weights that the checkpoint lacks.
    #[arg(long, alias = "allow-partial")]
    pub allow_missing_weights: bool,
    /// Output ONNX model.
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Also write the tensors under the checkpoint's names, for model.load_state_dict.
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_weights: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

impl MergeStatsArgs {
    /// The library options.
    pub fn options(&self) -> MergeStatsOptions {
        MergeStatsOptions {
            partials: self.partials.clone(),
            model: self.model.clone(),
            weights: self.weights.clone(),
            key: self.key.clone(),
            allow_missing_weights: self.allow_missing_weights,
            output: self.output.clone(),
            save_weights: self.save_weights.clone(),
        }
    }
}

/// `swa merge-eval`.
#[derive(Debug, Args)]
pub struct MergeEvalArgs {
    /// Partial evaluations (`swa evaluate --shard I/N --partial-out`), every part once, any order.
    #[arg(required = true, value_name = "E.json")]
    pub partials: Vec<PathBuf>,
    /// Exit with code 1 when top-1 accuracy is below this (a fraction, 0..=1), or when any
    /// sample's logits are not finite.
    #[arg(long, value_name = "A", value_parser = fraction)]
    pub min_accuracy: Option<f64>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `swa evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The ONNX model.
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Tensors to bind into the model first.
    #[arg(long, value_name = "W")]
    pub weights: Option<PathBuf>,
    /// Held-out inputs: .npy, .npz, a folder of class folders of images (ImageFolder), or Parquet.
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub inputs: PathBuf,
    /// Integer class labels [N] (not needed when the inputs carry them: class folders, a Parquet label column).
    #[arg(long, value_name = "Y.npy")]
    pub labels: Option<PathBuf>,
    /// How images are read.
    #[command(flatten)]
    pub data: DataArgs,
    /// Samples per batch.
    #[arg(long, default_value = "256", value_parser = at_least_one)]
    pub batch_size: NonZeroUsize,
    /// k of the top-k accuracy.
    #[arg(long, default_value = "5", value_parser = at_least_one)]
    pub top_k: NonZeroUsize,
    /// Device and threads.
    #[command(flatten)]
    pub run: DeviceArgs,
    /// Exit with code 1 when top-1 accuracy is below this (a fraction, 0..=1), or when any
    /// sample's logits are not finite.
    #[arg(long, value_name = "A", value_parser = fraction)]
    pub min_accuracy: Option<f64>,
    /// Keep the model's own values for weights that the checkpoint lacks.
    #[arg(long, alias = "allow-partial")]
    pub allow_missing_weights: bool,
    /// The state dict to read in torch.save files (default: state_dict, model, model_state_dict,
    /// module, net, or the file itself): e.g. state_dict_ema, callbacks.EMA.ema_state_dict.
    #[arg(long, value_name = "PATH")]
    pub key: Option<String>,
    /// Evaluate only part I of N of the batches (contiguous ranges of whole batches, counting
    /// from 0), for `swa merge-eval`; needs --partial-out.
    #[arg(long, value_name = "I/N", value_parser = part)]
    pub shard: Option<Part>,
    /// Write this part's counts and loss sum (JSON) instead of metrics, for `swa merge-eval`
    /// (which applies --min-accuracy).
    #[arg(long, value_name = "E.json", conflicts_with = "min_accuracy")]
    pub partial_out: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl EvaluateArgs {
    /// The library options.
    pub fn options(&self, quiet: bool) -> Result<EvalOptions> {
        needs_labels(&self.inputs, self.labels.as_deref(), "--labels")?;
        eval_options(
            &self.inputs,
            self.labels.as_deref(),
            &self.data,
            self.batch_size,
            self.top_k,
            &self.run,
            quiet || self.json,
        )
    }
}

/// `swa run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The ONNX model, exported with BatchNorm kept.
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Checkpoint directories or files (all are evaluated; the selection goes into the average).
    #[arg(long, required = true, num_args = 1.., value_name = "DIR|FILE")]
    pub checkpoints: Vec<PathBuf>,
    /// Which checkpoints.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Training samples for recalibration (.npy, .npz, a folder of images, Parquet).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub train_inputs: PathBuf,
    /// Held-out inputs (.npy, .npz, a folder of class folders of images, Parquet).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub eval_inputs: PathBuf,
    /// Held-out integer labels (not needed when the inputs carry them).
    #[arg(long, value_name = "Y.npy")]
    pub eval_labels: Option<PathBuf>,
    /// How images are read (training, select and held-out sets alike).
    #[command(flatten)]
    pub data: DataArgs,
    /// Also recalibrate every checkpoint (the "++" column).
    #[arg(long)]
    pub recalibrate_each: bool,
    /// Also make a model soup of every checkpoint found (greedy, uniform or top-k:K), chosen on
    /// --select-inputs, and report it beside SWA.
    #[arg(long, value_name = "METHOD", value_parser = |s: &str| s.parse::<Method>(), requires = "select_inputs")]
    pub soup: Option<Method>,
    /// The soup's select split (held out, and not the --eval-inputs the report is measured on).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet", requires = "soup")]
    pub select_inputs: Option<PathBuf>,
    /// Labels of the select split.
    #[arg(long, value_name = "Y.npy", requires = "soup")]
    pub select_labels: Option<PathBuf>,
    /// Statistics mode.
    #[arg(long, value_enum, default_value = "precise")]
    pub stats: StatsArg,
    /// Recalibration batch size.
    #[arg(long, default_value = "64", value_parser = at_least_one)]
    pub batch_size: NonZeroUsize,
    /// Evaluation batch size.
    #[arg(long, default_value = "256", value_parser = at_least_one)]
    pub eval_batch_size: NonZeroUsize,
    /// Use at most this many training samples.
    #[arg(long, value_name = "N")]
    pub max_samples: Option<usize>,
    /// k of the top-k accuracy.
    #[arg(long, default_value = "5", value_parser = at_least_one)]
    pub top_k: NonZeroUsize,
    /// Device and threads.
    #[command(flatten)]
    pub run: DeviceArgs,
    /// Keep the model's own values for weights that a checkpoint lacks.
    #[arg(long, alias = "allow-partial")]
    pub allow_missing_weights: bool,
    /// The state dict to read in torch.save files (default: state_dict, model, model_state_dict,
    /// module, net, or the file itself): e.g. state_dict_ema, callbacks.EMA.ema_state_dict.
    #[arg(long, value_name = "PATH")]
    pub key: Option<String>,
    /// Average even when a checkpoint holds NaN or Inf (recalibration still refuses non-finite
    /// weights; BatchNorm statistics are replaced, so non-finite ones are fine).
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Exit with code 1 when the recalibrated SWA model's top-1 is below this (a fraction,
    /// 0..=1), or when any of its logits are not finite.
    #[arg(long, value_name = "A", value_parser = fraction)]
    pub min_accuracy: Option<f64>,
    /// Output directory (created; must be empty unless --force).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an output directory that an earlier `swa run` wrote (it holds `.swa-run`); no other
    /// directory is ever replaced.
    #[arg(long)]
    pub force: bool,
    /// Print report.json on stdout.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    /// The library options.
    pub fn options(&self, quiet: bool) -> Result<swa::pipeline::RunOptions> {
        let quiet = quiet || self.json;
        needs_labels(&self.eval_inputs, self.eval_labels.as_deref(), "--eval-labels")?;
        if let Some(select) = &self.select_inputs {
            needs_labels(select, self.select_labels.as_deref(), "--select-labels")?;
        }
        Ok(swa::pipeline::RunOptions {
            model: self.model.clone(),
            checkpoints: self.checkpoints.clone(),
            selection: (&self.select).into(),
            pass: pass(
                &self.train_inputs,
                &self.data,
                self.batch_size,
                self.max_samples,
                self.stats,
                &self.run,
                quiet,
            )?,
            eval: eval_options(
                &self.eval_inputs,
                self.eval_labels.as_deref(),
                &self.data,
                self.eval_batch_size,
                self.top_k,
                &self.run,
                quiet,
            )?,
            recalibrate_each: self.recalibrate_each,
            allow_missing_weights: self.allow_missing_weights,
            key: self.key.clone(),
            allow_nonfinite: self.allow_nonfinite,
            out: self.out.clone(),
            force: self.force,
            soup: match (self.soup, &self.select_inputs) {
                (Some(method), Some(inputs)) => Some(swa::pipeline::RunSoup {
                    method,
                    select: eval_options(
                        inputs,
                        self.select_labels.as_deref(),
                        &self.data,
                        self.eval_batch_size,
                        self.top_k,
                        &self.run,
                        quiet,
                    )?,
                }),
                _ => None,
            },
        })
    }
}

/// `swa inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A checkpoint (torch.save file, .safetensors, sharded index or its directory) or an .onnx model.
    pub file: PathBuf,
    /// The state dict to read in torch.save files (default: state_dict, model, model_state_dict,
    /// module, net, or the file itself): e.g. state_dict_ema, callbacks.EMA.ema_state_dict.
    #[arg(long, value_name = "PATH")]
    pub key: Option<String>,
    /// Show how this checkpoint's names bind to the ONNX model FILE.
    #[arg(long, value_name = "CHECKPOINT")]
    pub against: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn min_accuracy_is_a_fraction() {
        for ok in ["0", "1", "0.5", "1e-3"] {
            assert!(super::fraction(ok).is_ok(), "{ok}");
        }
        for bad in ["nan", "NaN", "inf", "-inf", "90", "1.5", "-1", "-0.1", "x"] {
            assert!(super::fraction(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thread_counts_are_bounded_by_the_cores() {
        assert!(super::thread_count("1").is_ok());
        assert!(super::thread_count("0").is_err());
        let err = super::thread_count("100000").unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }
}

/// `swa soup`.
#[derive(Debug, Args)]
pub struct SoupArgs {
    /// The ONNX model.
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Candidate checkpoints: directories or files.
    #[arg(long, required = true, num_args = 1.., value_name = "DIR|FILE")]
    pub checkpoints: Vec<PathBuf>,
    /// Which checkpoints are candidates.
    #[command(flatten)]
    pub select: SelectArgs,
    /// The state dict to read in torch.save files.
    #[arg(long, value_name = "PATH")]
    pub key: Option<String>,
    /// greedy (add candidates best first, keep each that does not lower the select accuracy),
    /// uniform (all), or top-k:K (the K best).
    #[arg(long, default_value = "greedy", value_parser = |s: &str| s.parse::<Method>())]
    pub method: Method,
    /// Training samples for BatchNorm recalibration (.npy, .npz, a folder of images, Parquet).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub train_inputs: Option<PathBuf>,
    /// The select split: held-out inputs the ingredients are chosen by.
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub select_inputs: PathBuf,
    /// Labels of the select split (not needed when the inputs carry them).
    #[arg(long, value_name = "Y.npy")]
    pub select_labels: Option<PathBuf>,
    /// A test split, reported for the soup and the best single checkpoint (never used to choose).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub eval_inputs: Option<PathBuf>,
    /// Labels of the test split.
    #[arg(long, value_name = "Y.npy", requires = "eval_inputs")]
    pub eval_labels: Option<PathBuf>,
    /// How images are read (training, select and test sets alike).
    #[command(flatten)]
    pub data: DataArgs,
    /// Recalibrate BatchNorm for every candidate and soup (the default when the model has BatchNorm).
    #[arg(long, conflicts_with = "no_recalibrate")]
    pub recalibrate: bool,
    /// Judge with the averaged stored statistics (for models without BatchNorm, or to compare).
    #[arg(long)]
    pub no_recalibrate: bool,
    /// Statistics mode.
    #[arg(long, value_enum, default_value = "precise")]
    pub stats: StatsArg,
    /// Recalibration batch size.
    #[arg(long, default_value = "64", value_parser = at_least_one)]
    pub batch_size: NonZeroUsize,
    /// Use at most this many training samples.
    #[arg(long, value_name = "N")]
    pub max_samples: Option<usize>,
    /// Evaluation batch size.
    #[arg(long, default_value = "256", value_parser = at_least_one)]
    pub eval_batch_size: NonZeroUsize,
    /// k of the top-k accuracy.
    #[arg(long, default_value = "5", value_parser = at_least_one)]
    pub top_k: NonZeroUsize,
    /// Device and threads.
    #[command(flatten)]
    pub run: DeviceArgs,
    /// Keep the model's own values for weights that a checkpoint lacks.
    #[arg(long, alias = "allow-partial")]
    pub allow_missing_weights: bool,
    /// The soup's weights, under the checkpoints' names.
    #[arg(short, long, value_name = "SOUP.safetensors")]
    pub output: PathBuf,
    /// Also the ONNX model with the soup's weights and statistics.
    #[arg(long, value_name = "SOUP.onnx")]
    pub onnx_out: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

impl SoupArgs {
    /// The library options.
    pub fn options(&self, quiet: bool) -> Result<SoupOptions> {
        let quiet = quiet || self.json;
        let recalibrate = if self.no_recalibrate { Some(false) } else { self.recalibrate.then_some(true) };
        let train = match (&self.train_inputs, recalibrate) {
            (Some(t), _) => t.clone(),
            (None, Some(false)) => PathBuf::new(),
            (None, _) => {
                return Err(Error::usage(
                    "--train-inputs is needed to recalibrate BatchNorm (pass --no-recalibrate to judge with the averaged stored statistics)",
                ))
            }
        };
        needs_labels(&self.select_inputs, self.select_labels.as_deref(), "--select-labels")?;
        if let Some(e) = &self.eval_inputs {
            needs_labels(e, self.eval_labels.as_deref(), "--eval-labels")?;
        }
        let eval = |inputs: &std::path::Path, labels: Option<&std::path::Path>| {
            eval_options(inputs, labels, &self.data, self.eval_batch_size, self.top_k, &self.run, quiet)
        };
        Ok(SoupOptions {
            model: self.model.clone(),
            checkpoints: self.checkpoints.clone(),
            selection: (&self.select).into(),
            key: self.key.clone(),
            method: self.method,
            recalibrate,
            pass: pass(&train, &self.data, self.batch_size, self.max_samples, self.stats, &self.run, quiet)?,
            select: eval(&self.select_inputs, self.select_labels.as_deref())?,
            eval: match &self.eval_inputs {
                Some(i) => Some(eval(i, self.eval_labels.as_deref())?),
                None => None,
            },
            allow_missing_weights: self.allow_missing_weights,
            output: self.output.clone(),
            onnx_output: self.onnx_out.clone(),
        })
    }
}
