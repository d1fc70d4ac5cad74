//! What the user points `swa` at: checkpoint files (found in directories, numbered by their names,
//! selected, and each opened by the reader of its format) and samples ([`samples`]: a source
//! behind one trait; `.npy` / `.npz`, image folders, Parquet).
//!
//! Checkpoint formats are looked up in one registry ([`formats`]: `crate::checkpoint::format`
//! and the ONNX model's initializers): which reads a path, which file names discovery takes, which
//! files a checkpoint reads.

pub mod discover;
pub mod images;
pub mod npy;
pub mod parquet;
pub mod samples;
pub mod table;

use std::path::Path;

pub use discover::{
    discover, labels, name_number, natural_cmp, select, CheckpointFile, Discovery, Duplicate, LeftOut, Selection,
};
pub use npy::{open_inputs, open_labels, Array};
pub use samples::{carries_labels, check_same_classes, DataOptions, SampleSource, Samples, Sampling};

use crate::checkpoint::format::{self, Format, FORMATS};
use crate::checkpoint::safetensors::Safetensors;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// Every checkpoint format swa reads, in the order they are asked: [`FORMATS`] (safetensors,
/// sharded, `torch.save`: `crate::checkpoint::format` has the rules), then an ONNX model's
/// initializers ([`crate::onnx::Initializers`]).
pub fn formats() -> impl Iterator<Item = &'static dyn Format> + Clone {
    FORMATS.iter().copied().chain(std::iter::once(&crate::onnx::Initializers as &'static dyn Format))
}

/// The format that reads `path`: the one surest of it by name and first bytes.
pub fn format_of(path: &Path) -> &'static dyn Format {
    format::surest(formats(), path).unwrap_or(&Safetensors)
}

/// Opens a checkpoint in whatever format it is ([`format_of`]): a `torch.save` file (`key`
/// chooses its state dict, see [`crate::checkpoint::torch::open`]), an `.onnx` model (its
/// initializers), a sharded checkpoint (its `*.safetensors.index.json`, or a directory holding
/// one), a `.safetensors` file. `key` applies to formats that hold several dicts of tensors.
pub fn open_checkpoint(path: impl AsRef<Path>, key: Option<&str>) -> Result<Checkpoint> {
    let path = path.as_ref();
    format_of(path).open(path, key)
}

/// The counter `torch.optim.swa_utils.AveragedModel` (and torchvision's `ExponentialMovingAverage`)
/// keeps beside its wrapped `module.*` weights: not a weight of the model, so it neither blocks
/// nor keeps a prefix, and an output with the prefix stripped (the bare model's names) leaves it
/// out.
pub const AVERAGED_MODEL_COUNTER: &str = "n_averaged";

/// The wrapper prefix every tensor name of `names` starts with (`module.` from DataParallel and
/// `AveragedModel`, `_orig_mod.` from torch.compile, `model.` from PyTorch Lightning), if they all
/// share one ([`AVERAGED_MODEL_COUNTER`] aside).
pub fn common_wrapper_prefix<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Option<&'static str> {
    crate::onnx::bind::PREFIXES.iter().copied().find(|p| {
        let mut all = names.clone().into_iter().filter(|n| *n != AVERAGED_MODEL_COUNTER).peekable();
        all.peek().is_some() && all.all(|n| n.starts_with(p))
    })
}

/// `name` without `prefix`; an error if it lacks it (the prefix is the user's).
pub fn strip_prefix<'a>(name: &'a str, prefix: &str, path: &Path) -> Result<&'a str> {
    match name.strip_prefix(prefix) {
        Some("") => {
            Err(Error::tensor(path, name, format!("is the whole prefix `{prefix}` to strip: its name would be empty")))
        }
        Some(rest) => Ok(rest),
        None => Err(Error::tensor(path, name, format!("does not start with the prefix `{prefix}` to strip"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_the_whole_prefix_is_told_it_would_be_empty() {
        let p = Path::new("ck.safetensors");
        assert_eq!(strip_prefix("model.w", "model.", p).unwrap(), "w");
        let whole = strip_prefix("model.w", "model.w", p).unwrap_err().to_string();
        assert!(whole.contains("would be empty") && !whole.contains("does not start"), "{whole}");
        let other = strip_prefix("net.w", "model.", p).unwrap_err().to_string();
        assert!(other.contains("does not start with the prefix `model.`"), "{other}");
    }

    /// Which format reads a file: by name, and by first bytes where they are a format's signature.
    #[test]
    fn the_surest_format_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let safetensors_head = b"\x10\0\0\0\0\0\0\0{\"a\":1}        ";
        let zip_head = b"PK\x03\x04rest of a zip";
        let cases = [
            (file("a.safetensors", safetensors_head), "safetensors"),
            // Some tools write safetensors as `.bin`; a torch.save zip is torch.save whatever its name.
            (file("b.bin", safetensors_head), "safetensors"),
            (file("c.safetensors", zip_head), "torch.save"),
            (file("d.pt", b"\x80\x02legacy pickle"), "torch.save"),
            (file("e.onnx", zip_head), "ONNX"),
            (file("f.safetensors.index.json", b"{}"), "sharded safetensors"),
            (file("g", safetensors_head), "safetensors"),
            (file("h.weird", b"??"), "safetensors"),
            (dir.path().to_path_buf(), "sharded safetensors"),
        ];
        for (path, format) in cases {
            assert_eq!(format_of(&path).name(), format, "{}", path.display());
        }
        for (name, format) in [
            ("x.safetensors", "safetensors"),
            ("x.pt", "torch.save"),
            ("x.pth.tar", "torch.save"),
            ("X.PT", "torch.save"),
        ] {
            assert_eq!(format::for_output(Path::new(name), None).name(), format, "{name}");
        }
        assert_eq!(format::for_output(Path::new("x.index.json"), None).name(), "safetensors", "shards are safetensors");
    }
}
