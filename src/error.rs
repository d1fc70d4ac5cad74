//! The one error type of the library: every variant names the file, tensor or ONNX node that failed.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in `swa`, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
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
    /// An option or a combination of options is invalid.
    #[error("{0}")]
    Usage(String),
    /// ONNX Runtime could not be found, loaded or run.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
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

    /// An invalid option.
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Runtime(e.to_string())
    }
}
