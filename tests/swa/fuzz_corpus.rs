//! Replays the fuzzers' seed corpus (`fuzz/corpus/<target>/`) and every input that once crashed a
//! target (`fuzz/regressions/<target>/`) through the targets' own bodies (`fuzz/src/lib.rs`), so
//! a fixed crash stays fixed without nightly or cargo-fuzz.

use std::path::Path;

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

/// A fuzz target's body.
type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("safetensors_header", targets::safetensors_header),
    ("shard_index", targets::shard_index),
    ("npy", targets::npy),
    ("npz", targets::npz),
    ("onnx", targets::onnx),
    ("torch", targets::torch),
    ("image", targets::image),
    ("parquet", targets::parquet),
    ("partial_eval", targets::partial_eval),
    ("partial_stats", targets::partial_stats),
    ("mask", targets::mask),
    ("table", targets::table),
    ("swag_part", targets::swag_part),
    ("tf_bundle", targets::tf_bundle),
    ("keras_h5", targets::keras_h5),
];

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_is_handled_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for &(name, target) in TARGETS {
        let seeds = files(&root.join("corpus").join(name));
        assert!(!seeds.is_empty(), "no seed corpus for the fuzz target {name}");
        for file in seeds.iter().chain(&files(&root.join("regressions").join(name))) {
            let bytes = std::fs::read(file).unwrap();
            if std::panic::catch_unwind(|| target(&bytes)).is_err() {
                panic!("fuzz target {name} panicked on {}", file.display());
            }
        }
    }
}
