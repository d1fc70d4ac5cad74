//! # swa
//!
//! Offline Stochastic Weight Averaging for saved epoch checkpoints, BatchNorm recalibration with
//! ONNX Runtime, and a report of how much it helped.
//!
//! ```no_run
//! use swa::average::{average, AverageOptions, Selection};
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
//! Stages, each a module: [`checkpoint`] (reading), [`average`], [`onnx`] (graph reading, weight
//! binding, the BatchNorm rewrite), [`runtime`] (ONNX Runtime), [`data`] (`.npy`/`.npz`),
//! [`recalibrate`], [`evaluate`], [`pipeline`] (`swa run`) and [`report`].

#![warn(missing_docs)]

pub mod average;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod recalibrate;
pub mod report;
pub mod runtime;

pub use error::{Error, Result};

/// This tool's name and version, as recorded in the files it writes.
pub const VERSION: &str = concat!("swa ", env!("CARGO_PKG_VERSION"));
