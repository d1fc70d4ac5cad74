//! What the user points `swa` at: checkpoint files (found in directories, numbered by their names,
//! selected, and each opened by the reader of its format) and samples (`.npy` / `.npz`).
//!
//! A new checkpoint format plugs in here: a reader that fills a [`Checkpoint`], one arm in
//! [`open_checkpoint`], and its file names in [`discover::is_checkpoint_name`]. A new data source
//! is a module beside [`npy`] that yields [`npy::Array`]s.

pub mod discover;
pub mod npy;

use std::path::Path;

pub use discover::{discover, name_number, natural_cmp, select, CheckpointFile, Discovery, Duplicate, Selection};
pub use npy::{open_inputs, open_labels, Array};

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::onnx::Model;

/// Opens a checkpoint by its format: an `.onnx` model (its initializers), a sharded checkpoint (its
/// `*.safetensors.index.json`, or a directory holding one), or a `.safetensors` file.
pub fn open_checkpoint(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    if path.extension().is_some_and(|e| e == "onnx") && !path.is_dir() {
        return Model::load(path)?.checkpoint();
    }
    Checkpoint::open(path)
}
