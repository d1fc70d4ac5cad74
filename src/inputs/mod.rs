//! What the user points `swa` at: checkpoint files (found in directories, numbered by their names,
//! selected, and each opened by the reader of its format) and samples ([`Samples`]: `.npy` /
//! `.npz`, image folders, Parquet).
//!
//! A new checkpoint format plugs in here: a reader that fills a [`Checkpoint`] (as
//! [`crate::checkpoint::torch`] does), one arm in [`open_checkpoint`], and its file names in
//! [`discover::is_checkpoint_name`]. A new data source
//! is a module beside [`npy`], [`images`] and [`parquet`] and one arm in [`Samples::open`] and
//! [`Samples::batches`].

pub mod discover;
pub mod images;
pub mod npy;
pub mod parquet;
pub mod samples;

use std::path::Path;

pub use discover::{
    discover, labels, name_number, natural_cmp, select, CheckpointFile, Discovery, Duplicate, Selection,
};
pub use npy::{open_inputs, open_labels, Array};
pub use samples::{check_same_classes, DataOptions, Samples};

use crate::checkpoint::{torch, Checkpoint};
use crate::error::{Error, Result};
use crate::onnx::Model;

/// The first bytes of a file, to tell formats apart (empty for a directory or an unreadable file:
/// the reader then says what is wrong).
fn head(path: &Path) -> Vec<u8> {
    let mut buf = vec![0u8; 9];
    let n = crate::fs::open_regular(path).ok().and_then(|mut f| std::io::Read::read(&mut f, &mut buf).ok());
    buf.truncate(n.unwrap_or(0));
    buf
}

/// True if a file of this name and first bytes is read as a `torch.save` file: one in PyTorch's
/// zip format whatever its name, or one with a torch.save name unless it starts like safetensors
/// (a `u64` header length, then `{`: some tools write safetensors as `.bin`).
fn is_torch(name: &str, head: &[u8]) -> bool {
    let safetensors = head.len() >= 9 && head[8] == b'{';
    torch::is_torch_zip(head) || (discover::is_torch_name(name) && !safetensors)
}

/// The reader of a checkpoint path.
enum Format {
    /// A sharded checkpoint's directory, a sharded index, or a `.safetensors` file.
    Safetensors,
    /// An ONNX model's initializers.
    Onnx,
    /// A `torch.save` file.
    Torch,
}

/// Which reader takes `path`: by its name, and for `torch.save` names by its first bytes.
fn format_of(path: &Path) -> Format {
    if path.is_dir() {
        return Format::Safetensors;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(".onnx") {
        Format::Onnx
    } else if is_torch(&name, &head(path)) {
        Format::Torch
    } else {
        Format::Safetensors
    }
}

/// Opens a checkpoint by its format: a `torch.save` file (`.pt`, `.pth`, `.pth.tar`, `.bin`,
/// `.ckpt`, or any file in PyTorch's zip format; `key` chooses its state dict, see
/// [`torch::open`]), an `.onnx` model (its initializers), a sharded checkpoint (its
/// `*.safetensors.index.json`, or a directory holding one), or a `.safetensors` file. `key`
/// applies to `torch.save` files only: the other formats hold one set of tensors.
pub fn open_checkpoint(path: impl AsRef<Path>, key: Option<&str>) -> Result<Checkpoint> {
    let path = path.as_ref();
    match format_of(path) {
        Format::Onnx => Model::load(path)?.checkpoint(),
        Format::Torch => torch::open(path, key),
        Format::Safetensors => Checkpoint::open(path),
    }
}

/// What a checkpoint file holds, for `inspect`: for a `torch.save` file, its candidate state dicts
/// and other top-level keys; `None` for formats that hold one set of tensors.
pub fn torch_contents(path: &Path) -> Result<Option<torch::Contents>> {
    match format_of(path) {
        Format::Torch => torch::contents(path).map(Some),
        Format::Onnx | Format::Safetensors => Ok(None),
    }
}

/// Whether the samples at `path` may carry labels of their own (class folders, a Parquet label
/// column); arrays (`.npy` / `.npz`) never do, so an evaluation of them needs a labels file.
pub fn carries_labels(path: &Path) -> bool {
    let lower = path.to_string_lossy().to_lowercase();
    !(lower.ends_with(".npy") || lower.ends_with(".npz"))
}

/// The wrapper prefix every tensor name of `names` starts with (`module.` from DataParallel,
/// `_orig_mod.` from torch.compile, `model.` from PyTorch Lightning), if they all share one.
pub fn common_wrapper_prefix<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Option<&'static str> {
    crate::onnx::bind::PREFIXES.iter().copied().find(|p| {
        let mut all = names.clone().into_iter().peekable();
        all.peek().is_some() && all.all(|n| n.starts_with(p))
    })
}

/// `name` without `prefix`; an error if it lacks it (the prefix is the user's).
pub fn strip_prefix<'a>(name: &'a str, prefix: &str, path: &Path) -> Result<&'a str> {
    name.strip_prefix(prefix)
        .filter(|rest| !rest.is_empty())
        .ok_or_else(|| Error::tensor(path, name, format!("does not start with the prefix `{prefix}` to strip")))
}
