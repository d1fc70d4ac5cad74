//! Checkpoint formats behind one trait, and the registry every command looks them up in.
//!
//! A [`Format`] owns everything swa knows about one kind of checkpoint file: the names its files
//! have (which directory discovery takes, and which a number is read from), how sure it is that a
//! path is one of its files (by name and by the first bytes), its reader, the other files a
//! checkpoint reads (shards), the model file of a training run's checkpoint directory, what
//! `inspect` says about the contents beyond the tensors, and its writer where swa writes the
//! format. [`FORMATS`] lists the formats of this module's level; `crate::inputs::formats` adds
//! the ONNX model's initializers, whose reader lives with the ONNX code above this module.
//!
//! Adding a format is one module implementing [`Format`] and one line in [`FORMATS`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Checkpoint, TensorSpec};
use crate::error::{Error, Result};
use crate::fs::Outputs;

/// What a format is shown of a path to say whether the path is one of its files.
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    /// The path.
    pub path: &'a Path,
    /// Its file name.
    pub name: &'a str,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// The file's first [`Probe::HEAD`] bytes (fewer for a short file; none for a directory or a
    /// file that cannot be read, whose reader then says what is wrong).
    pub head: &'a [u8],
}

impl Probe<'_> {
    /// How many bytes of a file [`Probe::head`] holds.
    pub const HEAD: usize = 16;

    /// True if the name ends with one of `suffixes` (in any case: `EPOCH_3.PT`).
    pub fn named(&self, suffixes: &[&str]) -> bool {
        suffixes.iter().any(|s| has_suffix(self.name, s))
    }
}

/// How sure a format is that a path is one of its files; the surest format reads it (the first
/// listed, among equals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Claim {
    /// Any file may be: the reader says what is wrong if it is not.
    Fallback,
    /// The name is one of the format's.
    Name,
    /// The first bytes are the format's signature.
    Content,
    /// Both, or a name that no other format's file has.
    Certain,
}

/// What a file holds beyond its tensors, for `inspect`: its dicts of tensors and which one is read.
#[derive(Debug, Clone, Serialize)]
pub struct Contents {
    /// Every dict of tensors found (a dotted key path → its tensor count; the top level is the
    /// empty path), in the file's order.
    pub state_dicts: Vec<(String, usize)>,
    /// The top level's keys that are not state dicts themselves (epoch, optimizer, callbacks…).
    pub other_keys: Vec<String>,
    /// The state dict read without a key, if there is one (`inspect` with a key: that key).
    pub chosen: Option<String>,
    /// What known state dicts are, by key (`state_dict_ema`: timm's EMA of the weights).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub what: std::collections::BTreeMap<String, String>,
}

/// A checkpoint file being written: tensor data goes in at known offsets from any thread, then
/// [`TensorWriter::finish`] gives the staged files (one, or a TensorFlow bundle's index and data),
/// complete and synced, to publish.
pub trait TensorWriter: Send + Sync {
    /// Writes `bytes` at byte `at` of tensor number `index`'s data.
    fn write_at(&self, index: usize, at: usize, bytes: &[u8]) -> Result<()>;
    /// Finishes the file (checksums, sync), ready to publish.
    fn finish(self: Box<Self>) -> Result<Outputs>;
}

/// One checkpoint format.
pub trait Format: Sync {
    /// What messages and `inspect` call it (`safetensors`, `torch.save`).
    fn name(&self) -> &'static str;

    /// The endings of its files' names: directory discovery takes the files that end so, and a
    /// checkpoint's number is read from the name without it.
    fn suffixes(&self) -> &'static [&'static str];

    /// How sure the format is that `probe` is one of its files; `None` when it is not. Container
    /// signatures are shared (`torch.save` files claim every zip by content, and a `.keras` file
    /// is a zip too): a format whose files have both a name and a signature claims them
    /// [`Claim::Certain`].
    fn claim(&self, probe: &Probe) -> Option<Claim>;

    /// Reads the checkpoint at `path`; `key` chooses the dict of tensors in formats that hold
    /// several (a training checkpoint's model, EMA or optimizer state).
    fn open(&self, path: &Path, key: Option<&str>) -> Result<Checkpoint>;

    /// Every file that reading `path` reads (an index's shards, a model's external data), which
    /// no output may overwrite.
    fn files(&self, path: &Path) -> Result<Vec<PathBuf>> {
        Ok(vec![path.to_path_buf()])
    }

    /// The checkpoint a directory named as one is, when the format stores a checkpoint as a
    /// directory (a sharded checkpoint's directory: its index); such a directory is not searched
    /// for other checkpoints.
    fn checkpoint_dir(&self, _dir: &Path) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    /// The model file in this format of a training run's checkpoint directory (Hugging Face's
    /// `checkpoint-500/model.safetensors`), if the directory holds one.
    fn model_in(&self, _dir: &Path) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    /// What the file holds beyond its tensors, where the format holds several dicts of them.
    fn contents(&self, _path: &Path) -> Result<Option<Contents>> {
        Ok(None)
    }

    /// Whether an output of this file name is written in this format.
    fn writes(&self, _name: &str) -> bool {
        false
    }

    /// Whether an output of this file name, which no format [`Format::writes`], is written in this
    /// format when its input is of this format (a TensorFlow bundle's bare prefix).
    fn writes_like(&self, _name: &str) -> bool {
        false
    }

    /// The name under which `swa run` also writes the recalibrated weights in this format, written
    /// like `like` (a run's newest checkpoint), where the format is not PyTorch's.
    fn native_output(&self, _like: &Path) -> Option<&'static str> {
        None
    }

    /// The files an output named `target` is written to (a bundle's index and data), which the
    /// caller checks as outputs.
    fn output_files(&self, target: &Path) -> Vec<PathBuf> {
        vec![target.to_path_buf()]
    }

    /// A writer of `tensors` (in this order) and `metadata` to staged files beside `target`.
    /// `like` is the checkpoint the output is written like (the newest input): formats that hold
    /// more than tensors (Keras' groups and optimizer, a bundle's object graph) take that from it.
    fn writer(
        &self,
        target: &Path,
        _tensors: &[TensorSpec],
        _metadata: &BTreeMap<String, String>,
        _like: Option<&Path>,
    ) -> Result<Box<dyn TensorWriter>> {
        Err(Error::format(target, format!("swa does not write {} files", self.name())))
    }
}

/// The formats of this level, in the order they are asked (the first of equally sure ones reads
/// a file; a run directory's model file is looked for in this order).
pub static FORMATS: &[&dyn Format] = &[
    &super::sharded::Sharded,
    &super::safetensors::Safetensors,
    &super::keras::Keras,
    &super::torch::Torch,
    // After torch.save: `-o x.ckpt` is a Lightning checkpoint unless the input is a bundle.
    &super::tf_bundle::TfBundle,
];

/// The format an output named like `path` is written in: of those that write such names, the
/// format of `like` (the checkpoint it is written like: `-o swa.ckpt` is a TensorFlow bundle for
/// bundle inputs and a `torch.save` file for Lightning's), else the first; else safetensors.
pub fn for_output(path: &Path, like: Option<&Path>) -> &'static dyn Format {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut writers = FORMATS.iter().copied().filter(|f| f.writes(&name)).peekable();
    let first = writers.peek().copied();
    let input = like.and_then(|l| surest(FORMATS.iter().copied(), l));
    writers
        .find(|f| input.is_some_and(|i| i.name() == f.name()))
        .or(first)
        .or(input.filter(|i| i.writes_like(&name)))
        .unwrap_or(&super::safetensors::Safetensors)
}

/// True if `name` ends with `suffix`, ignoring ASCII case (suffixes are lower-case).
pub fn has_suffix(name: &str, suffix: &str) -> bool {
    name.len() >= suffix.len()
        && name.is_char_boundary(name.len() - suffix.len())
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// `name` without `suffix` at its end, in any case.
pub fn strip_suffix<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    has_suffix(name, suffix).then(|| &name[..name.len() - suffix.len()])
}

/// The first [`Probe::HEAD`] bytes of a file (empty for a directory or an unreadable file).
pub fn head(path: &Path) -> Vec<u8> {
    let mut buf = vec![0u8; Probe::HEAD];
    let mut n = 0;
    if let Ok(mut f) = crate::fs::open_regular(path) {
        while n < buf.len() {
            match std::io::Read::read(&mut f, &mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    }
    buf.truncate(n);
    buf
}

/// Of `formats`, the one surest that `path` is its file (the first among equals); `None` when
/// none claims it.
pub fn surest<'a>(formats: impl IntoIterator<Item = &'a dyn Format>, path: &Path) -> Option<&'a dyn Format> {
    let is_dir = path.is_dir();
    let head = if is_dir { Vec::new() } else { head(path) };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let probe = Probe { path, name: &name, is_dir, head: &head };
    let mut best: Option<(Claim, &dyn Format)> = None;
    for f in formats {
        if let Some(c) = f.claim(&probe) {
            if best.is_none_or(|(b, _)| c > b) {
                best = Some((c, f));
            }
        }
    }
    best.map(|(_, f)| f)
}
