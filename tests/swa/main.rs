//! The integration tests: one binary, a module per stage. Expected values come from PyTorch
//! (fixtures/make_*.py); ONNX Runtime is found the way users find it (pip's onnxruntime). Helpers
//! are in common.rs; tests that need root, Chromium, Ray or PyTorch are `#[ignore]`d (run them
//! with `cargo test -- --include-ignored`, as `.ci/run` does).

mod architecture;
mod average;
mod bad_inputs;
mod common;
mod evaluate;
mod fuzz_corpus;
mod images;
mod install;
mod keras;
mod properties;
mod recalibrate;
mod report;
mod rounding;
mod run;
mod safety;
mod scale_out;
mod soup;
mod swag;
mod tasks;
mod torch;
