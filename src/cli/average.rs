//! `swa average`.

use std::num::NonZeroU64;
use std::path::PathBuf;

use clap::Args;

use super::args::{parse_dtype, parse_size, part, JsonArgs, KeyArgs, SelectArgs};
use super::{output, render, Outcome};
use swa::average::{self, AverageOptions, BufferPolicy, StripPrefix, Weighting};
use swa::part::Part;
use swa::Result;

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
    /// Which state dict.
    #[command(flatten)]
    pub read: KeyArgs,
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
    /// Output format.
    #[command(flatten)]
    pub out: JsonArgs,
}

/// `--buffers`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BuffersArg {
    /// Copy from the newest selected checkpoint.
    Newest,
    /// Average the floating-point ones.
    Average,
}

impl AverageArgs {
    /// The library options.
    fn resolve(&self, quiet: bool) -> AverageOptions {
        AverageOptions {
            checkpoints: self.checkpoints.clone(),
            selection: self.select.selection(),
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
            key: self.read.key.clone(),
            strip_prefix: self.strip_prefix.as_ref().map(|p| match p.as_str() {
                "" => StripPrefix::Wrapper,
                p => StripPrefix::Given(p.to_string()),
            }),
            quiet: self.out.quiet(quiet),
            part: self.part,
            merge_parts: self.merge_parts,
        }
    }

    /// Runs `swa average`.
    pub fn run(&self, quiet: bool) -> Result<Outcome> {
        let s = average::average(&self.resolve(quiet))?;
        for d in &s.duplicates {
            swa::error::warn(if d.path == d.same_as {
                format!("{} is given twice; it is averaged once", d.path.display())
            } else {
                format!("{} is {} under another name; it is averaged once", d.path.display(), d.same_as.display())
            });
        }
        Ok(Outcome {
            stdout: if self.out.json { output::json(&s) } else { render::average(&s) },
            code: 0,
            failure: None,
        })
    }
}
