//! The integration tests: one binary, a module per stage. Expected values come from PyTorch
//! (fixtures/make_fixtures.py); ONNX Runtime is found the way users find it (pip's onnxruntime).

mod architecture;
mod average;
mod bad_inputs;
mod common;
mod evaluate;
mod fuzz_corpus;
mod images;
mod install;
mod properties;
mod recalibrate;
mod report;
mod rounding;
mod run;
mod safety;
mod scale_out;
mod soup;
mod torch;
