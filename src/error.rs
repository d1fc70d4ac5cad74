//! The one error type of the library: every variant names the file, tensor, ONNX node or setting
//! that failed. Sources are kept (`#[source]`), so a caller prints the whole chain once.
//!
//! The library never names a command-line flag: an invalid setting is reported as a [`Setting`]
//! (the field of the options struct), and advice that needs a setting changed is a [`Hint`].
//! The `swa` binary renders both with its own flag names.
//!
//! What the library notices and goes on past (a checkpoint that holds names a pickle should not)
//! is a warning: [`warn`] records it once, and the caller prints what [`take_warnings`] returns.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in `swa`, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid checkpoint, model or array file.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor is unusable (shape, dtype, non-finite values...).
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },
    /// A node of an ONNX graph is unusable.
    #[error("ONNX node `{node}` ({op}): {message}")]
    Node {
        /// The node's name (or its first output where it has none).
        node: String,
        /// The operator type.
        op: String,
        /// What is wrong with it.
        message: String,
    },
    /// Inputs that must agree do not.
    #[error("{0}")]
    Mismatch(String),
    /// A combination of inputs or options is invalid.
    #[error("{0}")]
    Usage(String),
    /// One setting of the options is invalid: `message` follows the setting's name.
    #[error("`{}` {message}", setting.field())]
    Setting {
        /// The setting.
        setting: Setting,
        /// What is wrong with its value, worded to follow its name.
        message: String,
    },
    /// ONNX Runtime could not be found or loaded, or refused what it was given.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// ONNX Runtime returned an error.
    #[error("ONNX Runtime")]
    Ort(#[from] ort::Error),
    /// ONNX Runtime refused a model, or failed to run it.
    #[error("{}: ONNX Runtime", path.display())]
    Session {
        /// The model file (for a graph swa derived from a model, that model's).
        path: PathBuf,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// The caller asked the work to stop ([`crate::progress::request_stop`]); nothing was written.
    #[error("interrupted: nothing was written")]
    Interrupted,
    /// An error, and the setting to change to get past it.
    #[error("{}{}", chain(error), hint.library_text())]
    Hinted {
        /// The error.
        error: Box<Error>,
        /// What to change.
        hint: Hint,
    },
}

/// A setting of the library's options, named in errors about its value. The binary maps each to
/// its flag; the library's own messages use the field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Setting {
    /// `Selection::from` / `Selection::to` (a range of numbers in names).
    Range,
    /// `Selection::every`.
    Every,
    /// `Selection::last`.
    Last,
    /// `Weighting::Explicit`.
    Weights,
    /// `Weighting::Ema`.
    Ema,
    /// `AverageOptions::resume`.
    Resume,
    /// `AverageOptions::shard_size`.
    ShardSize,
    /// The batch size of a pass.
    BatchSize,
    /// The statistics mode.
    Stats,
    /// `Engine::device`.
    Device,
    /// `Engine::streams`.
    Streams,
    /// `Engine::tf32`.
    Tf32,
    /// The output directory of `swa run`.
    Out,
    /// The part of a pass or evaluation this process runs (`I/N`).
    Shard,
    /// The part of an average's output shards this process writes (`I/N`).
    Part,
    /// `PassOptions::shuffle`.
    Shuffle,
    /// `SwagOptions::samples`.
    Samples,
    /// `SwagOptions::rank`.
    Rank,
    /// `SwagOptions::scale`.
    Scale,
    /// A temperature.
    Temperature,
    /// `AverageOptions::dtype`.
    Dtype,
}

impl Setting {
    /// The name of the setting in the library's options.
    pub fn field(self) -> &'static str {
        match self {
            Setting::Range => "from/to",
            Setting::Every => "every",
            Setting::Last => "last",
            Setting::Weights => "weights",
            Setting::Ema => "ema",
            Setting::Resume => "resume",
            Setting::ShardSize => "shard_size",
            Setting::BatchSize => "batch_size",
            Setting::Stats => "stats",
            Setting::Device => "device",
            Setting::Streams => "streams",
            Setting::Tf32 => "tf32",
            Setting::Out => "out",
            Setting::Shard => "shard",
            Setting::Part => "part",
            Setting::Shuffle => "shuffle",
            Setting::Samples => "samples",
            Setting::Rank => "rank",
            Setting::Scale => "scale",
            Setting::Temperature => "temperature",
            Setting::Dtype => "dtype",
        }
    }
}

/// Advice attached to an error: the setting that gets past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hint {
    /// Allowing non-finite values averages anyway.
    AllowNonfinite,
    /// Allowing a partial binding keeps the model's own values for the missing weights.
    AllowMissingWeights,
    /// A smaller batch (or fewer CUDA streams, when `streams` > 1) needs less memory.
    LessMemory {
        /// CUDA streams in use.
        streams: usize,
    },
    /// The pass has fewer samples than one batch.
    SmallerBatch {
        /// Whether the samples were capped by `max_samples`.
        capped: bool,
    },
    /// Replacing an existing output directory needs `force`.
    Force,
    /// The output directory is not one to replace, whatever the settings: another one is needed.
    NeverReplaced,
    /// The model's inputs have a fixed batch dimension: batches must be exactly that size.
    FixedBatch {
        /// The fixed batch size.
        size: usize,
        /// Whether the batches are an evaluation's (`EvalOptions::batch_size`) rather than a
        /// recalibration pass's.
        evaluation: bool,
    },
    /// An image could not be read or decoded: skipping such images is a setting.
    SkipBadImages,
    /// Images come out of preprocessing at another size than the batches need: crop them to it.
    CenterCrop {
        /// The height needed.
        height: usize,
        /// The width needed.
        width: usize,
        /// The other way to get there.
        or: CropAlternative,
    },
    /// A uint8 array of images (N, H, W, C) is read as images only with preprocessing settings.
    ImageArray,
    /// A Parquet file lacks the image column: its name is a setting.
    ImageColumn,
    /// A checkpoint whose names all carry a prefix the model's do not: average it with the
    /// prefix stripped.
    StripPrefix,
    /// An image has more pixels (decoded or resized) than the limit, which is a setting.
    MaxImagePixels,
    /// The labels are in a column of another name: its name is a setting.
    LabelColumn,
    /// Parts scored by a metric command merge when the merge is given the command (a setting).
    MetricCommand,
    /// A batch of one sample under torch statistics (a last batch): fewer samples, another batch
    /// size or precise statistics avoid it.
    BatchOfOne {
        /// The samples of the pass, where known (one fewer drops the last batch).
        samples: Option<usize>,
        /// Whether the source made its batches itself (a Python loader's): the batch size is its.
        own_batches: bool,
    },
    /// A TensorFlow checkpoint binds through a layout map derived from the checkpoint the model was
    /// exported from: binding that one first keeps the map beside the model.
    LayoutMap,
}

/// Besides a center crop, what else gets images to the size a model or the batches need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CropAlternative {
    /// torchvision's ImageNet preprocessing (resize 256, crop 224).
    Preset,
    /// Resizing to exactly that size.
    ExactResize,
}

impl Hint {
    /// The advice in the library's terms (setting names).
    pub fn library_text(self) -> String {
        match self {
            Hint::AllowNonfinite => "; set `allow_nonfinite` to average anyway".into(),
            Hint::AllowMissingWeights => " Set `allow_missing_weights` to keep the model's own values for them".into(),
            Hint::LayoutMap => ". Bind the checkpoint the model was exported from first (the map is then kept beside \
                                 the model), or export the model from this one"
                .into(),
            Hint::LessMemory { streams } if streams > 1 => {
                format!(" (each of the {streams} streams holds its own activations: use 1 stream, or a smaller batch)")
            }
            Hint::LessMemory { .. } => " (try a smaller batch)".into(),
            Hint::SmallerBatch { capped } => {
                format!(
                    "{}: lower `batch_size` or give more samples",
                    if capped { " (after `max_samples`)" } else { "" }
                )
            }
            Hint::Force => ": set `force` to replace it".into(),
            Hint::NeverReplaced => ": it is not replaced, even with `force`; choose another `out`".into(),
            Hint::FixedBatch { size, .. } => {
                format!(": set `batch_size` to {size}, or export the model with a dynamic batch dimension")
            }
            Hint::SkipBadImages => " (set `skip_bad_images` to skip and count such images)".into(),
            Hint::MaxImagePixels => " (raise `max_image_pixels` to read it)".into(),
            Hint::LabelColumn => " (set `label_column`)".into(),
            Hint::MetricCommand => " (set `metric_command` to that command)".into(),
            Hint::BatchOfOne { own_batches: true, .. } => {
                " (update_bn fails the same way: leave out a last batch of one sample, as a DataLoader's \
                 drop_last=True does, or use precise statistics)"
                    .into()
            }
            Hint::BatchOfOne { .. } => {
                " (update_bn fails the same way: lower `max_samples` by one, choose a `batch_size` that leaves no batch \
                 of one, or use precise statistics)"
                    .into()
            }
            Hint::CenterCrop { height, width, or } => format!(
                ": set `center_crop` to {height}x{width} (with `resize` to resize first), or {}",
                match or {
                    CropAlternative::Preset => "use the ImageNet preset".to_string(),
                    CropAlternative::ExactResize => format!("set `resize` to exactly {height}x{width}"),
                }
            ),
            Hint::ImageArray => {
                " (a uint8 array of images (N, H, W, C) is read as images with `mean`/`std`, `center_crop` or a \
                 preset)"
                    .into()
            }
            Hint::ImageColumn => ": name the image column with `image_column`".into(),
            Hint::StripPrefix => "; average the checkpoint with that prefix stripped (`strip_prefix`)".into(),
        }
    }
}

/// An error followed by its sources, joined by `: `.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// A format error in `path`.
    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    /// An error about tensor `tensor` of `path`.
    pub fn tensor(path: impl AsRef<Path>, tensor: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Tensor { path: path.as_ref().to_path_buf(), tensor: tensor.into(), message: message.into() }
    }

    /// An error about an ONNX node.
    pub fn node(node: impl Into<String>, op: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Node { node: node.into(), op: op.into(), message: message.into() }
    }

    /// An invalid combination of inputs or options.
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    /// An invalid value of `setting`; `message` follows the setting's name.
    pub fn setting(setting: Setting, message: impl Into<String>) -> Self {
        Error::Setting { setting, message: message.into() }
    }

    /// This error with advice on what to change.
    pub fn hint(self, hint: Hint) -> Self {
        Error::Hinted { error: Box::new(self), hint }
    }
}

static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records a warning for the caller to show (once: a message already recorded is not repeated).
pub fn warn(message: impl Into<String>) {
    let message = message.into();
    let mut w = WARNINGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !w.contains(&message) {
        w.push(message);
    }
}

/// The warnings recorded since the last call, in the order they were recorded.
pub fn take_warnings() -> Vec<String> {
    std::mem::take(&mut *WARNINGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}
