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
//! Layers, each using only those below it (docs/architecture.md has the map, and
//! `tests/swa/architecture.rs` checks it): [`error`] → [`progress`], [`part`], [`batch`] → [`fs`]
//! (inputs mapped or read, staged outputs) → [`checkpoint`] (named tensors; the checkpoint
//! formats behind [`checkpoint::Format`]) → [`onnx`] (graph, weight binding, the BatchNorm
//! rewrite) → [`runtime`] (ONNX Runtime) → [`inputs`] (finding and opening checkpoints; samples
//! behind [`inputs::SampleSource`]) → [`tasks`] (what outputs are scored as) → [`average`],
//! [`recalibrate`], [`evaluate`], [`inspect`] → [`soup`], [`parts`], [`report`] → [`pipeline`]
//! (`swa run`). The library takes typed options and returns typed summaries; the command line
//! (flags, the rules between them, text output) lives in the `swa` binary. Inputs are read into
//! memory unless the process allows memory maps ([`fs::allow_maps`], as the binary does).

#![warn(missing_docs)]

pub mod average;
pub mod batch;
pub mod checkpoint;
pub mod ensemble;
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
pub mod swag;
pub mod tasks;

pub use error::{Error, Hint, Result, Setting};

/// This tool's name and version, as recorded in the files it writes.
pub const VERSION: &str = concat!("swa ", env!("CARGO_PKG_VERSION"));
