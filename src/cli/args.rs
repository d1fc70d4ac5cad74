//! The flag groups several commands share, declared once (with one help text each), their value
//! parsers, and their resolution into the library's typed options.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use clap::Args;

use swa::checkpoint::{dtype, Dtype};
use swa::evaluate::EvalOptions;
use swa::inputs::images::{Preprocess, Resize};
use swa::inputs::{DataOptions, Selection};
use swa::part::Part;
use swa::recalibrate::{PassOptions, StatsMode};
use swa::runtime::{Device, Engine};
use swa::tasks::{Gate, Task};
use swa::{Error, Result};

// -------------------------------------------------------------------------------------------------
// Value parsers
// -------------------------------------------------------------------------------------------------

/// A count that must be at least 1.
pub fn at_least_one(s: &str) -> std::result::Result<NonZeroUsize, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a whole number"))?;
    NonZeroUsize::new(n).ok_or_else(|| "must be at least 1".to_string())
}

/// `--center-crop N` or `H,W`.
fn crop(s: &str) -> std::result::Result<(usize, usize), String> {
    match s.parse::<Resize>()? {
        Resize::Shorter(n) => Ok((n, n)),
        Resize::Exact(h, w) => Ok((h, w)),
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

/// A fraction in 0..=1 (`--min-accuracy`); NaN, infinities and percentages are refused.
pub fn fraction(s: &str) -> std::result::Result<f64, String> {
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
pub fn thread_count(s: &str) -> std::result::Result<NonZeroUsize, String> {
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

/// `--shard` / `--part`: I/N, counting from 0.
pub fn part(s: &str) -> std::result::Result<Part, String> {
    s.parse()
}

/// `--dtype`.
pub fn parse_dtype(s: &str) -> std::result::Result<Dtype, String> {
    dtype::parse_float(s).ok_or_else(|| format!("unknown dtype `{s}`: use f32, f16, bf16 or f64"))
}

/// `--shard-size`: bytes, or with KB/MB/GB/KiB/MiB/GiB.
pub fn parse_size(s: &str) -> std::result::Result<NonZeroU64, String> {
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

/// A benchmarking knob from the environment, parsed.
fn knob<T: std::str::FromStr<Err = String>>(var: &str) -> Result<Option<T>> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v.parse().map(Some).map_err(|e| Error::usage(format!("{var}: {e}"))),
        _ => Ok(None),
    }
}

// -------------------------------------------------------------------------------------------------
// Flag groups
// -------------------------------------------------------------------------------------------------

/// `--json`.
#[derive(Debug, Args, Clone, Copy)]
pub struct JsonArgs {
    /// Print JSON on stdout instead of text for people.
    #[arg(long)]
    pub json: bool,
    /// Show progress with JSON: the Python module, whose results are the JSON, shows it unless
    /// asked to be quiet (no flag: JSON on the command line is for machines).
    #[arg(skip)]
    pub progress: bool,
}

impl JsonArgs {
    /// Whether progress is hidden, `quiet` or not: JSON for machines hides it.
    pub fn quiet(&self, quiet: bool) -> bool {
        quiet || (self.json && !self.progress)
    }
}

/// Which state dict of a `torch.save` file is read.
#[derive(Debug, Args, Clone)]
pub struct KeyArgs {
    /// The state dict to read in torch.save files (default: state_dict, model, model_state_dict,
    /// module, net, or the file itself): e.g. state_dict_ema, callbacks.EMA.ema_state_dict.
    #[arg(long, value_name = "PATH")]
    pub key: Option<String>,
}

/// How checkpoints are read and bound into the model.
#[derive(Debug, Args, Clone)]
pub struct BindArgs {
    /// Which state dict.
    #[command(flatten)]
    pub read: KeyArgs,
    /// Keep the model's own values for weights that a checkpoint lacks (formerly --allow-partial).
    #[arg(long, alias = "allow-partial")]
    pub allow_missing_weights: bool,
}

/// A model and the weights bound into it first (`recalibrate`, `evaluate`, `merge-stats`).
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// The ONNX model (exported with BatchNorm kept, to recalibrate it).
    #[arg(long, value_name = "MODEL.onnx")]
    pub model: PathBuf,
    /// Tensors to bind into the model by name first: the output of `swa average`, a torch.save
    /// file, a Lightning .ckpt, a safetensors or sharded checkpoint.
    #[arg(long, value_name = "W")]
    pub weights: Option<PathBuf>,
    /// How the weights are read and bound.
    #[command(flatten)]
    pub bind: BindArgs,
}

/// A model and the checkpoints each bound into it in turn (`run`, `soup`).
#[derive(Debug, Args, Clone)]
pub struct CheckpointsArgs {
    /// The ONNX model (exported with BatchNorm kept, to recalibrate it).
    #[arg(long, value_name = "MODEL.onnx")]
    pub model: PathBuf,
    /// Checkpoints: directories or files (`swa run` evaluates all of them and averages the
    /// selection; `swa soup` takes the selection as candidates).
    #[arg(long, required = true, num_args = 1.., value_name = "DIR|FILE")]
    pub checkpoints: Vec<PathBuf>,
    /// Which checkpoints, by number.
    #[command(flatten)]
    pub select: SelectArgs,
    /// How the checkpoints are read and bound.
    #[command(flatten)]
    pub bind: BindArgs,
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

impl SelectArgs {
    /// The library's selection.
    pub fn selection(&self) -> Selection {
        Selection { from: self.from, to: self.to, every: self.every, last: self.last }
    }
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
    #[arg(long, value_name = "N|H,W", value_parser = |s: &str| s.parse::<Resize>())]
    pub resize: Option<Resize>,
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
    /// The most pixels an image may have, decoded or resized; larger ones are bad images (the
    /// default is where PIL refuses a decompression bomb: twice Image.MAX_IMAGE_PIXELS).
    #[arg(long, value_name = "N", default_value_t = swa::inputs::images::DEFAULT_MAX_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_image_pixels: u64,
}

impl DataArgs {
    /// The library's data options.
    pub fn options(&self) -> DataOptions {
        let base = match self.preset {
            Some(PresetArg::Imagenet) => Preprocess::imagenet(),
            None => Preprocess::default(),
        };
        DataOptions {
            preprocess: Preprocess {
                resize: self.resize.or(base.resize),
                center_crop: self.center_crop.or(base.center_crop),
                mean: self.mean.clone().map(|c| c.0).or(base.mean),
                std: self.std.clone().map(|c| c.0).or(base.std),
            },
            image_column: self.image_column.clone(),
            label_column: self.label_column.clone(),
            skip_bad_images: self.skip_bad_images,
            max_image_pixels: self.max_image_pixels,
        }
    }
}

/// Where and how the model runs.
#[derive(Debug, Args, Clone)]
pub struct EngineArgs {
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

impl EngineArgs {
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

/// The recalibration pass over training samples.
#[derive(Debug, Args, Clone)]
pub struct PassArgs {
    /// precise: pooled population statistics; torch: update_bn's mean over batches (with only
    /// BatchNorm in training mode, where update_bn also trains dropout and stochastic depth).
    #[arg(long, value_enum, default_value = "precise")]
    pub stats: StatsArg,
    /// Samples per batch of the recalibration pass.
    #[arg(long, default_value = "64", value_parser = at_least_one)]
    pub batch_size: NonZeroUsize,
    /// Use this many training samples, drawn uniformly at random (with --seed; the same ones in
    /// every --shard part), not the first N (in an image folder, the first classes only).
    #[arg(long, value_name = "N")]
    pub max_samples: Option<usize>,
    /// Read the training batches in shuffled order, as a training DataLoader does: --stats
    /// torch, update_bn's mean over batches, depends on which samples share a batch.
    #[arg(long)]
    pub shuffle: bool,
    /// The seed of --max-samples' draw and of --shuffle's order.
    #[arg(long, value_name = "N", default_value = "0")]
    pub seed: u64,
}

impl PassArgs {
    /// The pass over `inputs`; a batch of one with torch statistics is refused.
    pub fn options(&self, inputs: &Path, data: &DataArgs, engine: &EngineArgs, quiet: bool) -> Result<PassOptions> {
        let stats = StatsMode::from(self.stats);
        if self.batch_size.get() == 1 && stats == StatsMode::Torch {
            return Err(Error::usage("--batch-size 1 with --stats torch: the unbiased batch variance of one sample is undefined (update_bn fails the same way); use a larger batch or --stats precise"));
        }
        Ok(PassOptions {
            inputs: inputs.to_path_buf(),
            data: data.options(),
            batch_size: self.batch_size,
            max_samples: self.max_samples,
            seed: self.seed,
            shuffle: self.shuffle,
            stats,
            engine: engine.engine()?,
            quiet,
        })
    }
}

/// What the model's outputs are scored as: the task and its settings (classification: k of the
/// top-k accuracy). A new task's settings are flags of this group.
#[derive(Debug, Args, Clone)]
pub struct TaskArgs {
    /// What the model's outputs are: class logits [N, C] against class indices (classification),
    /// scores [N, C] against multi-hot rows (multilabel), values [N, D] against float targets
    /// (regression), or logits [N, C, H, W] against masks (segmentation). Never guessed.
    #[arg(long, value_name = "TASK", default_value = "classification",
          value_parser = clap::builder::PossibleValuesParser::new(swa::tasks::TASK_NAMES))]
    pub task: String,
    /// The figure that scores a model (ranks checkpoints and soups, reports the gain), instead of
    /// the task's own (top1; multilabel ap_macro; regression r2; segmentation miou): e.g. rmse,
    /// f1_macro, pixel_accuracy, loss.
    #[arg(long, value_name = "NAME")]
    pub score: Option<String>,
    /// k of the top-k accuracy (classification; default 5).
    #[arg(long, value_name = "K", value_parser = at_least_one)]
    pub top_k: Option<NonZeroUsize>,
    /// The probability above which a label is predicted, for F1 and exact match (multilabel;
    /// default 0.5).
    #[arg(long, value_name = "P", value_parser = fraction)]
    pub threshold: Option<f64>,
    /// The mask value of pixels left out (segmentation; default 255; -100 as PyTorch's loss).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub ignore_index: Option<i64>,
    /// A folder of segmentation masks (palette or grey PNGs of class indices) named as the
    /// images are (`x.jpg` → `x.png`, in the same subfolders). Not needed for VOC
    /// (`JPEGImages/` + `SegmentationClass/`), Cityscapes (`leftImg8bit/` + `gtFine/`) and
    /// ADE20K (`images/` + `annotations/`) folders.
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// Remap mask values before scoring: FROM:TO pairs (`0:255,255:0`), or `reduce-zero` (0 =
    /// unlabelled → the ignore index, k → k-1, as mmsegmentation's reduce_zero_label). ADE20K's
    /// folders are read so unless this is given.
    #[arg(long, value_name = "FROM:TO,...|reduce-zero", allow_hyphen_values = true)]
    pub mask_map: Option<swa::inputs::samples::masks::MaskMap>,
    /// Score with your own program: `CMD {outputs} {labels}` runs on .npy files of the model's
    /// outputs and the targets (in sample order) and prints one JSON object of figures with a
    /// `score`, higher is better (e.g. `python coco_map.py {outputs} {labels}`).
    #[arg(long, value_name = "CMD", conflicts_with_all = ["score", "top_k", "threshold", "ignore_index"])]
    pub metric_command: Option<String>,
}

impl TaskArgs {
    /// The library's task; fails on a setting of another task or a figure the task lacks.
    pub fn task(&self) -> Result<Task> {
        if let Some(command) = &self.metric_command {
            if self.task != "classification" {
                return Err(Error::usage(
                    "--metric-command scores the outputs itself: leave out --task (its targets are passed on as they are)",
                ));
            }
            return swa::tasks::Command::new(command).map(Task::Command).map_err(Error::usage);
        }
        if self.top_k.is_some() && self.task != "classification" {
            return Err(Error::usage(format!("--top-k is a setting of --task classification, not {}", self.task)));
        }
        let settings = swa::tasks::Settings {
            k: self.top_k.map(NonZeroUsize::get),
            score: self.score.clone(),
            threshold: self.threshold,
            ignore_index: self.ignore_index,
        };
        let flagged = |m: String| {
            if let Some(rest) = m.strip_prefix("a threshold ") {
                format!("--threshold {rest} (a setting of --task multilabel)")
            } else if let Some(rest) = m.strip_prefix("an ignore index ") {
                format!("--ignore-index {rest} (a setting of --task segmentation)")
            } else if self.score.is_some() {
                format!("--score: {m}")
            } else {
                m
            }
        };
        Task::named(&self.task, &settings).map_err(|m| Error::usage(flagged(m)))
    }
}

/// SWAG's settings (`swa swag`, `swa run --swag`); its draws' seed is the pass's --seed.
#[derive(Debug, Args, Clone)]
pub struct SwagArgs {
    /// K: the last K checkpoints' deviations from the running mean make SWAG's low-rank
    /// covariance (default: min(20, checkpoints), as swa_gaussian keeps; 1 gives diagonal SWAG).
    #[arg(long, value_name = "K")]
    pub rank: Option<usize>,
    /// S: samples drawn from SWAG's Gaussian, each with BatchNorm refitted, whose predictions are
    /// averaged (the Bayesian model average).
    #[arg(long, value_name = "S", default_value = "30")]
    pub swag_samples: usize,
    /// The covariance scale (swa_gaussian's `scale`; the paper's runs use 0.5).
    #[arg(long, value_name = "X", default_value = "0.5")]
    pub scale: f64,
    /// SWAG-diagonal: the variance alone, no low-rank term.
    #[arg(long, conflicts_with = "rank")]
    pub diag: bool,
    /// Standard-normal draws to use instead of --seed's (.npy [S, P + K]: z1 over the parameters
    /// sorted by name, each flattened, then z2; docs/formats.md), for comparing with another
    /// implementation.
    #[arg(long, value_name = "Z.npy")]
    pub draws: Option<PathBuf>,
    /// Write SWAG's moments (safetensors, swa_gaussian's state-dict names: base.NAME_mean,
    /// base.NAME_sq_mean, base.NAME_cov_mat_sqrt, n_models).
    #[arg(long, value_name = "MOMENTS.safetensors")]
    pub save_moments: Option<PathBuf>,
    /// Write every sampled model (safetensors with its refitted statistics) into this new directory.
    #[arg(long, value_name = "DIR")]
    pub save_samples: Option<PathBuf>,
    /// Refit each sample's BatchNorm on this many training samples, drawn at random with --seed
    /// (default: --max-samples, or all).
    #[arg(long, value_name = "N")]
    pub bn_samples: Option<usize>,
}

/// Temperature scaling (`evaluate`, `run`).
#[derive(Debug, Args, Clone)]
pub struct TemperatureArgs {
    /// Divide the logits by a temperature T before scoring: `fit` finds the T that minimises the
    /// NLL on --calibration-inputs (Newton's method on 1/T), or give T. The figures without it are
    /// reported beside.
    #[arg(long, value_name = "fit|T", value_parser = temperature)]
    pub temperature: Option<TemperatureArg>,
    /// Held-out samples the temperature is fitted on (not the evaluation's own).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub calibration_inputs: Option<PathBuf>,
    /// Class indices of --calibration-inputs (not needed when the inputs carry them).
    #[arg(long, value_name = "Y.npy", requires = "calibration_inputs")]
    pub calibration_labels: Option<PathBuf>,
}

/// `--temperature`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TemperatureArg {
    /// `fit`.
    Fit,
    /// A value.
    Value(f64),
}

fn temperature(s: &str) -> std::result::Result<TemperatureArg, String> {
    if s == "fit" {
        return Ok(TemperatureArg::Fit);
    }
    match s.parse::<f64>() {
        Ok(t) if (1e-6..=1e6).contains(&t) => Ok(TemperatureArg::Value(t)),
        _ => Err(format!("`{s}` is neither `fit` nor a temperature (a number from 1e-6 to 1e6)")),
    }
}

impl TemperatureArgs {
    /// Where the temperature comes from, the calibration set read as `eval` reads its own.
    pub fn source(&self, eval: &EvalOptions, task: &TaskArgs) -> Result<Option<swa::evaluate::TemperatureSource>> {
        use swa::evaluate::TemperatureSource;
        match (self.temperature, &self.calibration_inputs) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(Error::usage("--calibration-inputs is what --temperature fit is fitted on: add --temperature fit")),
            (Some(TemperatureArg::Value(t)), None) => Ok(Some(TemperatureSource::Given(t))),
            (Some(TemperatureArg::Value(_)), Some(_)) => {
                Err(Error::usage("--temperature T is given: --calibration-inputs is for --temperature fit"))
            }
            (Some(TemperatureArg::Fit), None) => Err(Error::usage(
                "--temperature fit needs --calibration-inputs: held-out samples to fit it on (not the evaluation's own)",
            )),
            (Some(TemperatureArg::Fit), Some(inputs)) => {
                needs_labels(inputs, self.calibration_labels.as_deref(), "--calibration-labels", task, None)?;
                if inputs == &eval.inputs {
                    swa::error::warn(
                        "--calibration-inputs are the evaluation's own inputs: the figures after the fit are then not \
                         held out",
                    );
                }
                Ok(Some(TemperatureSource::Fit(Box::new(EvalOptions {
                    inputs: inputs.clone(),
                    labels: self.calibration_labels.clone(),
                    masks: None,
                    mask_map: None,
                    save_outputs: None,
                    ..eval.clone()
                }))))
            }
        }
    }
}

/// The evaluations of commands that also run a recalibration pass (`run`, `soup`).
#[derive(Debug, Args, Clone)]
pub struct EvalBatchArgs {
    /// Samples per evaluation batch.
    #[arg(long, default_value = "256", value_parser = at_least_one)]
    pub eval_batch_size: NonZeroUsize,
    /// The segmentation masks of --select-inputs, as --masks gives those of --eval-inputs.
    #[arg(long, value_name = "DIR")]
    pub select_masks: Option<PathBuf>,
    /// What the outputs are scored as.
    #[command(flatten)]
    pub task: TaskArgs,
}

/// The gate.
#[derive(Debug, Args, Clone)]
pub struct GateArgs {
    /// Exit with code 1 when top-1 accuracy is below this (a fraction, 0..=1), or when any
    /// sample's logits are not finite (`swa run`: the recalibrated SWA model's). The same as
    /// --gate 'top1>=A'.
    #[arg(long, value_name = "A", value_parser = fraction)]
    pub min_accuracy: Option<f64>,
    /// Exit with code 1 unless a figure is within a bound, FIGURE>=X or FIGURE<=X: `miou>=0.72`,
    /// `rmse<=0.1`, `top5>=0.97`, `ap_macro>=0.8`, or any number a --metric-command prints
    /// (repeatable; all must pass; fractions, not percentages). A NaN figure, or any sample's
    /// non-finite outputs, fails it (`swa run`: the recalibrated SWA model's).
    #[arg(long, value_name = "GATE", value_parser = gate)]
    pub gate: Vec<Gate>,
}

/// `--gate`.
fn gate(s: &str) -> std::result::Result<Gate, String> {
    s.parse()
}

impl GateArgs {
    /// Every gate (`--min-accuracy A` as `top1>=A`), each checked to name a figure of `task`.
    pub fn gates(&self, task: &Task) -> Result<Vec<Gate>> {
        let mut gates: Vec<Gate> =
            self.min_accuracy.map(|a| Gate { figure: "top1".into(), at_least: true, bound: a }).into_iter().collect();
        if self.min_accuracy.is_some() && !matches!(task, Task::Classification(_)) {
            return Err(Error::usage(format!(
                "--min-accuracy gates a classifier's top-1; for --task {} use --gate (such as --gate '{}>=0.7')",
                task.name(),
                task.score_figure().name
            )));
        }
        gates.extend(self.gate.iter().cloned());
        for g in &gates {
            g.check(task).map_err(|m| Error::usage(format!("--gate {g}: {m}")))?;
        }
        Ok(gates)
    }
}

// -------------------------------------------------------------------------------------------------
// Rules that span flags
// -------------------------------------------------------------------------------------------------

/// Fails when `inputs` carry no targets of their own (arrays) and the labels flag `flag` is
/// missing (segmentation's masks may also come from --masks).
pub fn needs_labels(
    inputs: &Path,
    labels: Option<&Path>,
    flag: &str,
    task: &TaskArgs,
    masks: Option<&Path>,
) -> Result<()> {
    if labels.is_none() && !swa::inputs::carries_labels(inputs) {
        if task.task == "segmentation" {
            if masks.is_none() {
                return Err(Error::usage(format!(
                    "{flag} (masks [N, H, W] as .npy) is needed: {} holds arrays, which carry no masks",
                    inputs.display()
                )));
            }
            return Ok(());
        }
        return Err(Error::usage(format!(
            "{flag} is needed: {} holds arrays, which carry no labels (image folders and Parquet carry their own)",
            inputs.display()
        )));
    }
    Ok(())
}

/// An evaluation of `inputs` against `labels` (or the inputs' own).
pub fn eval_options(
    inputs: &Path,
    labels: Option<&Path>,
    data: &DataArgs,
    batch_size: NonZeroUsize,
    task: &TaskArgs,
    engine: &EngineArgs,
    quiet: bool,
) -> Result<EvalOptions> {
    Ok(EvalOptions {
        inputs: inputs.to_path_buf(),
        labels: labels.map(Path::to_path_buf),
        data: data.options(),
        batch_size,
        task: task.task()?,
        masks: task.masks.clone(),
        mask_map: task.mask_map.clone(),
        save_outputs: None,
        // A benchmark's forward pass alone (bench/segmentation_bench.py).
        unscored: std::env::var_os("SWA_BENCH_UNSCORED").is_some_and(|v| v == "1"),
        engine: engine.engine()?,
        quiet,
    })
}

impl EvalBatchArgs {
    /// The held-out set `--eval-inputs` / `--eval-labels` (with the task's `--masks`): labels
    /// required where the inputs carry none.
    pub fn held_out(
        &self,
        inputs: &Path,
        labels: Option<&Path>,
        data: &DataArgs,
        engine: &EngineArgs,
        quiet: bool,
    ) -> Result<EvalOptions> {
        needs_labels(inputs, labels, "--eval-labels", &self.task, self.task.masks.as_deref())?;
        eval_options(inputs, labels, data, self.eval_batch_size, &self.task, engine, quiet)
    }

    /// Refuses `--select-masks` in a command without a select split.
    pub fn no_select_split(&self) -> Result<()> {
        match self.select_masks {
            Some(_) => {
                Err(Error::usage("--select-masks belongs to a select split (swa run --soup, swa soup); use --masks"))
            }
            None => Ok(()),
        }
    }
}

/// A part's result is partial: it is written for a merge, never as a model or metrics.
pub const SHARD_NEEDS_PARTIAL_OUT: &str =
    "--shard runs part of the samples: its result is partial, so it needs --partial-out (and a merge)";

#[cfg(test)]
mod tests {
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
