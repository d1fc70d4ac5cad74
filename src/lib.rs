//! # swa
//!
//! Offline Stochastic Weight Averaging for saved epoch checkpoints, BatchNorm recalibration with
//! ONNX Runtime, and a report of how much it helped.
//!
//! ```no_run
//! use swa::average::{average, AverageOptions};
//! use swa::inputs::Selection;
//!
//! let summary = average(&AverageOptions {
//!     checkpoints: vec!["runs/exp1/checkpoints".into()],
//!     selection: Selection { from: Some(30), ..Default::default() },
//!     output: "swa.safetensors".into(),
//!     ..Default::default()
//! })?;
//! println!("averaged {} models into {:?}", summary.n_models, summary.outputs);
//! # Ok::<(), swa::Error>(())
//! ```
//!
//! Layers, each using only those listed before it (docs/architecture.md has the map):
//! [`fs`] (maps, staged outputs) → [`checkpoint`] (safetensors) and [`onnx`] (graph, weight
//! binding, the BatchNorm rewrite) → [`inputs`] (finding and opening checkpoints; samples) and
//! [`runtime`] (ONNX Runtime) → [`average`], [`recalibrate`], [`evaluate`] → [`pipeline`]
//! (`swa run`) and [`report`]. The library takes typed options and returns typed summaries; the
//! command line (flags, their validation, text output) lives in the `swa` binary.

#![warn(missing_docs)]

pub mod average;
pub mod batch;
pub mod checkpoint;
pub mod error;
pub mod evaluate;
pub mod fs;
pub mod inputs;
pub mod inspect;
pub mod onnx;
pub mod part;
pub mod parts;
pub mod pipeline;
pub mod progress;
pub mod recalibrate;
pub mod report;
pub mod runtime;
mod simd;
pub mod soup;
pub mod tasks;

pub use error::{Error, Hint, Result, Setting};

/// This tool's name and version, as recorded in the files it writes.
pub const VERSION: &str = concat!("swa ", env!("CARGO_PKG_VERSION"));
