//! Helpers shared by the tests, one definition each: the `swa` binary as a command and the
//! commands built on it, fixture paths, files written byte by byte (safetensors, `.npy`), and
//! what a test inspects afterwards (listings, snapshots of a directory, outputs).
//!
//! What a test needs from the machine beyond the README's test command (root, Chromium, Ray,
//! PyTorch) makes it `#[ignore = "needs …"]`; run with `--include-ignored` (as `.ci/run` does)
//! without it, such a test fails with what to install — no test passes by skipping its check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use swa::checkpoint::Checkpoint;

// ---------------------------------------------------------------------------------------------
// The binary and commands built on it
// ---------------------------------------------------------------------------------------------

/// The `swa` binary's path.
pub fn swa_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("swa")
}

/// The `swa` binary.
pub fn swa() -> Command {
    Command::from_std(swa_std())
}

/// A std `Command` for the `swa` binary (for spawning, signals and shells).
pub fn swa_std() -> std::process::Command {
    let mut c = std::process::Command::new(swa_bin());
    c.env_remove("GITHUB_STEP_SUMMARY");
    c
}

/// `swa run` on the model and data in `data` (`model.onnx`, `train.npy`, `eval.npy`,
/// `eval_labels.npy`) with `checkpoints`, into `out`, plus `extra` arguments.
pub fn run_std(data: &Path, checkpoints: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = swa_std();
    c.args(["run", "--model"])
        .arg(data.join("model.onnx"))
        .arg("--checkpoints")
        .arg(checkpoints)
        .arg("--train-inputs")
        .arg(data.join("train.npy"))
        .arg("--eval-inputs")
        .arg(data.join("eval.npy"))
        .arg("--eval-labels")
        .arg(data.join("eval_labels.npy"))
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

/// `swa run` on the CNN fixture's data with `checkpoints`, into `out`, plus `extra` arguments.
pub fn run_cnn(checkpoints: &Path, out: &Path, extra: &[&str]) -> Command {
    run_fixture("cnn", checkpoints, out, extra)
}

/// `swa run` on the model and data of fixture `name` (`cnn`, `mlp`) with `checkpoints`, into
/// `out`, plus `extra` arguments.
pub fn run_fixture(name: &str, checkpoints: &Path, out: &Path, extra: &[&str]) -> Command {
    Command::from_std(run_std(&fixture(name), checkpoints, out, extra))
}

/// Copies the MLP fixture's model, checkpoints and data into `dir`.
pub fn mlp_inputs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["model.onnx", "train.npy", "eval.npy", "eval_labels.npy"] {
        std::fs::copy(fixture(&format!("mlp/{f}")), dir.join(f)).unwrap();
    }
    copy_dir(&fixture("mlp/checkpoints"), &dir.join("checkpoints"));
}

/// `swa run --quiet` from `cwd` over the MLP inputs that [`mlp_inputs`] put in `inputs` (a path
/// as seen from `cwd`), into `out`.
pub fn run_mlp_std(cwd: &Path, inputs: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = run_std(inputs, &inputs.join("checkpoints"), out, &[&["--quiet"][..], extra].concat());
    c.current_dir(cwd);
    c
}

/// [`run_mlp_std`] with a 120 s limit.
pub fn run_mlp(cwd: &Path, inputs: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::from_std(run_mlp_std(cwd, inputs, out, extra));
    c.timeout(Duration::from_secs(120));
    c
}

/// `swa evaluate` of `model` on `inputs` against `labels`, with a 60 s limit.
pub fn evaluate_model(model: &Path, inputs: &Path, labels: &Path, extra: &[&str]) -> Command {
    let mut c = swa();
    c.args(["evaluate", "--model"])
        .arg(model)
        .arg("--inputs")
        .arg(inputs)
        .arg("--labels")
        .arg(labels)
        .args(extra)
        .timeout(Duration::from_secs(60));
    c
}

/// `swa evaluate` of the MLP fixture model on `inputs` against `labels`.
pub fn evaluate_mlp(inputs: &Path, labels: &Path, extra: &[&str]) -> Command {
    evaluate_model(&fixture("mlp/model.onnx"), inputs, labels, extra)
}

/// `swa evaluate` of `model` on the MLP fixture's samples and labels.
pub fn evaluate_mlp_model(model: &Path, extra: &[&str]) -> Command {
    evaluate_model(model, &fixture("mlp/eval.npy"), &fixture("mlp/eval_labels.npy"), extra)
}

/// A command's stdout and stderr, for failure messages.
pub fn combined(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A fixture path.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// The MLP fixture's checkpoint after epoch `n` (1 to 6).
pub fn mlp_ck(n: u32) -> PathBuf {
    fixture(&format!("mlp/checkpoints/epoch_00{n}.safetensors"))
}

/// The fixture's summary.json.
pub fn summary(model: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{model}/expected/summary.json"))).unwrap()).unwrap()
}

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------

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

/// A safetensors file's JSON header and the data after it.
pub fn header_of(path: &Path) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), bytes[8 + n..].to_vec())
}

/// Writes a safetensors file of `header` (padded with spaces to a multiple of 8 bytes, as the
/// safetensors writer does) and `data`, whatever they say: for files that lie.
pub fn write_with_header(path: &Path, header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) {
    let mut h = serde_json::to_vec(header).unwrap();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// A copy of MLP checkpoint `n` with `value` at element `at` of (float32) `tensor`, written to `to`.
pub fn mlp_ck_with_value(n: u32, tensor: &str, at: usize, value: f32, to: &Path) {
    let ck = Checkpoint::open(mlp_ck(n)).unwrap();
    let tensors: Vec<_> = ck
        .tensors()
        .iter()
        .map(|t| {
            let mut bytes = ck.bytes(t).to_vec();
            if t.name == tensor {
                bytes[at * 4..at * 4 + 4].copy_from_slice(&value.to_le_bytes());
            }
            (swa::checkpoint::TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() }, bytes)
        })
        .collect();
    swa::checkpoint::write_tensors(to, &tensors, &Default::default()).unwrap();
}

/// Little-endian float32 bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Arrays
// ---------------------------------------------------------------------------------------------

/// An `.npy` with a literal header (`descr`, shape text) followed by `data`, whatever they say.
pub fn raw_npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes [`raw_npy`] to `path`.
pub fn write_raw_npy(path: &Path, descr: &str, shape: &str, data: &[u8]) {
    std::fs::write(path, raw_npy(descr, shape, data)).unwrap();
}

/// Writes a float32 `.npy`.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    write_raw_npy(path, "<f4", &shape_txt, &f32_bytes(data));
}

/// Writes an int64 `.npy` of shape [n].
pub fn write_npy_i64(path: &Path, data: &[i64]) {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_raw_npy(path, "<i8", &format!("({},)", data.len()), &bytes);
}

/// Reads an `.npy` as f32.
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = swa::inputs::npy::open_npy(path).unwrap();
    (a.shape.clone(), a.f32_rows(0, a.len()))
}

// ---------------------------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------------------------

/// Lists a directory's entries (names), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The listing of `dir`, or nothing if it does not exist (yet, or any more).
pub fn listing_if_any(dir: &Path) -> Vec<String> {
    if dir.exists() {
        listing(dir)
    } else {
        Vec::new()
    }
}

/// Every file and directory under `dir` (relative path, kind, size, FNV hash), sorted: equal
/// snapshots mean nothing was lost, changed or left behind.
pub fn snapshot(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else if meta.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
                out.push(format!("{rel} {} {hash:016x}", bytes.len()));
            } else {
                out.push(format!("{rel} (special)"));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Asserts two [`snapshot`]s are equal, naming what was lost, changed or added.
pub fn assert_same(before: &[String], after: &[String]) {
    let lost: Vec<&String> = before.iter().filter(|x| !after.contains(x)).collect();
    let added: Vec<&String> = after.iter().filter(|x| !before.contains(x)).collect();
    assert!(lost.is_empty() && added.is_empty(), "lost or changed: {lost:#?}\nadded: {added:#?}");
}

/// Makes a FIFO at `path` (mkfifo(3): every Unix file system the tests write to has them, so a
/// failure fails the test).
#[cfg(unix)]
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(r, 0, "mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Whether `path` is a FIFO (not following a symbolic link).
#[cfg(unix)]
pub fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

// ---------------------------------------------------------------------------------------------
// What `#[ignore]`d tests need
// ---------------------------------------------------------------------------------------------

/// Fails the test unless it runs as root (for device nodes and mounts; CI runs as root).
#[cfg(unix)]
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root to {what}: run it as root (CI does), or leave it ignored");
}

/// Fails the test unless `python -c "import <module>"` works; `install` says how to get it.
pub fn require_python_module(python: &str, module: &str, install: &str) {
    let o = std::process::Command::new(python).args(["-c", &format!("import {module}")]).output();
    match o {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "this test needs `import {module}` to work in {python} ({install}), or leave it ignored: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("this test needs {python} with {module} ({install}), or leave it ignored: {e}"),
    }
}
