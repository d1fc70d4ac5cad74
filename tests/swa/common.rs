//! Helpers shared by the tests.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use swa::checkpoint::Checkpoint;

/// The `swa` binary.
pub fn swa() -> Command {
    let mut c = Command::cargo_bin("swa").unwrap();
    c.env_remove("GITHUB_STEP_SUMMARY");
    c
}

/// A fixture path.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The fixture's summary.json.
pub fn summary(model: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{model}/expected/summary.json"))).unwrap()).unwrap()
}

/// Asserts every tensor of `expected` is in `actual` with the same shape and values within
/// `rel`·|expected| + `abs`; integer tensors must be equal. Returns the largest difference.
pub fn assert_close(actual: &Path, expected: &Path, rel: f64, abs: f64, only: impl Fn(&str) -> bool) -> f64 {
    let a = Checkpoint::open(actual).unwrap();
    let e = Checkpoint::open(expected).unwrap();
    let mut worst = 0.0f64;
    let mut checked = 0;
    for t in e.tensors().iter().filter(|t| only(&t.name)) {
        let u = a.get(&t.name).unwrap_or_else(|| panic!("{} lacks `{}`", actual.display(), t.name));
        assert_eq!(u.shape, t.shape, "shape of {}", t.name);
        if swa::checkpoint::dtype::is_float(t.dtype) {
            let x = swa::checkpoint::dtype::to_f64(u.dtype, a.bytes(u));
            let y = swa::checkpoint::dtype::to_f64(t.dtype, e.bytes(t));
            for (i, (p, q)) in x.iter().zip(&y).enumerate() {
                let d = (p - q).abs();
                assert!(d <= rel * q.abs() + abs, "`{}`[{i}]: {p} vs expected {q} (diff {d})", t.name);
                worst = worst.max(d);
            }
        } else {
            assert_eq!(a.bytes(u), e.bytes(t), "integer tensor {}", t.name);
        }
        checked += 1;
    }
    assert!(checked > 0, "nothing compared");
    worst
}

/// Float values of a tensor.
pub fn values(path: &Path, name: &str) -> Vec<f64> {
    let c = Checkpoint::open(path).unwrap();
    let t = c.get(name).unwrap_or_else(|| panic!("{} lacks {name}", path.display()));
    swa::checkpoint::dtype::to_f64(t.dtype, c.bytes(t))
}

/// Writes a float32 `.npy`.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    write_npy(path, "<f4", &shape_txt, &data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
}

/// Writes an int64 `.npy` of shape [n].
pub fn write_npy_i64(path: &Path, data: &[i64]) {
    write_npy(
        path,
        "<i8",
        &format!("({},)", data.len()),
        &data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    );
}

fn write_npy(path: &Path, descr: &str, shape: &str, bytes: &[u8]) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytes);
    std::fs::write(path, out).unwrap();
}

/// Reads an `.npy` as f32.
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = swa::inputs::npy::open_npy(path).unwrap();
    (a.shape.clone(), a.f32_rows(0, a.len()))
}

/// Lists a directory's entries (names), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// `swa run` on the CNN fixture's data with `checkpoints`, into `out`, plus `extra` arguments.
pub fn run_cnn(checkpoints: &Path, out: &Path, extra: &[&str]) -> Command {
    run_fixture("cnn", checkpoints, out, extra)
}

/// `swa run` on the model and data of fixture `name` (`cnn`, `mlp`) with `checkpoints`, into
/// `out`, plus `extra` arguments.
pub fn run_fixture(name: &str, checkpoints: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = swa();
    c.args(["run", "--model"])
        .arg(fixture(&format!("{name}/model.onnx")))
        .arg("--checkpoints")
        .arg(checkpoints)
        .arg("--train-inputs")
        .arg(fixture(&format!("{name}/train.npy")))
        .arg("--eval-inputs")
        .arg(fixture(&format!("{name}/eval.npy")))
        .arg("--eval-labels")
        .arg(fixture(&format!("{name}/eval_labels.npy")))
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}
