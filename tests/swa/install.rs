//! How an installed `swa` finds its runtime: `swa doctor`, the Python environment it is installed
//! in (pip's `<env>/bin/swa`) before any other, and pip's CUDA libraries for `--device cuda`.

use std::path::{Path, PathBuf};

use predicates::str::contains;

use crate::common::{fixture, swa, swa_bin, tmp};

/// `swa doctor --json`, run by `cmd`.
fn doctor_json(mut cmd: assert_cmd::Command) -> serde_json::Value {
    let out = cmd.args(["doctor", "--json"]).assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

/// The ONNX Runtime library the tests use (pip's onnxruntime, found the way users find it).
fn real_library() -> PathBuf {
    let d = doctor_json(swa());
    PathBuf::from(
        d["onnxruntime"]["found"]["path"].as_str().expect("the tests need ONNX Runtime: pip install onnxruntime"),
    )
}

/// A fake Python environment at `prefix`: `bin/swa` (a copy of the binary: the executable's own
/// path is what it goes by, and a symlink would resolve to the original) and, when `library` is
/// given, `onnxruntime/capi` holding it (a hard link, or a copy: swa loads a library by its
/// canonical path, so a symbolic link would be the original). Returns the copy and its
/// site-packages.
fn fake_env(prefix: &Path, library: Option<&Path>) -> (PathBuf, PathBuf) {
    let exe = prefix.join("bin/swa");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(swa_bin(), &exe).unwrap();
    let sp = prefix.join("lib/python3.11/site-packages");
    let capi = sp.join("onnxruntime/capi");
    std::fs::create_dir_all(&capi).unwrap();
    if let Some(lib) = library {
        let here = capi.join(lib.file_name().unwrap());
        if std::fs::hard_link(lib, &here).is_err() {
            std::fs::copy(lib, &here).unwrap();
        }
        std::fs::create_dir_all(sp.join("onnxruntime-1.32.0.dist-info")).unwrap();
    }
    (exe, sp)
}

/// Runs `exe` with a clean environment as far as the search is concerned.
fn installed(exe: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(exe);
    c.env_remove("ORT_DYLIB_PATH")
        .env_remove("VIRTUAL_ENV")
        .env_remove("CONDA_PREFIX")
        .env_remove("GITHUB_STEP_SUMMARY");
    c
}

#[test]
fn doctor_prints_the_library_its_version_and_providers() {
    let lib = real_library();
    let assert = swa().arg("doctor").assert().success();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    for want in [
        &format!("library:    {}", lib.display()),
        "found by:",
        "providers:  ",
        "CPUExecutionProvider",
        "libcudart.so.13",
        "libcudnn.so.9",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    let d = doctor_json(swa());
    let version = d["version"].as_str().unwrap();
    assert!(version.starts_with("1."), "{version}");
    let name = lib.file_name().unwrap().to_str().unwrap();
    assert!(!name.contains(".so.1.") || name.ends_with(version), "{name} is not version {version}");
    assert_eq!(d["swa"], env!("CARGO_PKG_VERSION"));
    assert!(d["load_error"].is_null(), "{}", d["load_error"]);
}

#[test]
fn doctor_says_where_it_looked_when_nothing_is_found_and_fails() {
    let dir = tmp();
    let missing = dir.path().join("nowhere/libonnxruntime.so");
    swa()
        .arg("doctor")
        .env("ORT_DYLIB_PATH", &missing)
        .assert()
        .code(1)
        .stdout(contains("not found; looked in:"))
        .stdout(contains(format!("{} (ORT_DYLIB_PATH)", missing.display())))
        .stdout(contains("pip install onnxruntime"));
}

#[test]
fn doctor_fails_when_the_library_it_found_does_not_load() {
    let dir = tmp();
    let broken = dir.path().join("libonnxruntime.so");
    std::fs::write(&broken, b"not a library").unwrap();
    for json in [false, true] {
        let mut c = swa();
        c.arg("doctor").env("ORT_DYLIB_PATH", &broken);
        if json {
            c.arg("--json");
        }
        let out = c.assert().code(1).get_output().stdout.clone();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains(if json { "\"load_error\": \"" } else { "load error:" }), "{out}");
    }
}

#[test]
fn the_environment_swa_is_installed_in_comes_first() {
    let lib = real_library();
    let dir = tmp();
    let (exe, sp) = fake_env(&dir.path().join("venv"), Some(&lib));
    // An active environment whose "library" would not load: it must not be the one chosen.
    let other = dir.path().join("other/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.99.0");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, b"not a library").unwrap();
    let d = doctor_json({
        let mut c = installed(&exe);
        c.env("VIRTUAL_ENV", dir.path().join("other"));
        c
    });
    let found = &d["onnxruntime"]["found"];
    assert_eq!(found["rule"], "own_environment");
    assert_eq!(
        PathBuf::from(found["path"].as_str().unwrap()),
        sp.join("onnxruntime/capi").join(lib.file_name().unwrap())
    );
    assert!(d["load_error"].is_null(), "{}", d["load_error"]);
    assert_eq!(d["python_packages"], serde_json::json!(["onnxruntime 1.32.0"]));
    assert_eq!(PathBuf::from(d["cuda"]["site_packages"][0].as_str().unwrap()), sp);

    // And it runs a model from there.
    installed(&exe)
        .args(["evaluate", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(fixture("mlp/eval.npy"))
        .arg("--labels")
        .arg(fixture("mlp/eval_labels.npy"))
        .assert()
        .success();
}

#[test]
fn cuda_libraries_are_looked_for_in_the_environment_and_a_wrong_major_version_is_named() {
    let lib = real_library();
    let dir = tmp();
    let (exe, sp) = fake_env(&dir.path().join("venv"), Some(&lib));
    // An onnxruntime-gpu look-alike (a CPU library with a provider file beside it) and a CUDA 12
    // runtime from an older PyTorch.
    std::fs::write(sp.join("onnxruntime/capi/libonnxruntime_providers_cuda.so"), b"").unwrap();
    let cuda12 = sp.join("nvidia/cuda_runtime/lib/libcudart.so.12");
    std::fs::create_dir_all(cuda12.parent().unwrap()).unwrap();
    std::fs::write(&cuda12, b"").unwrap();

    let d = doctor_json(installed(&exe));
    let cudart = &d["cuda"]["libraries"][0];
    assert_eq!(cudart["soname"], "libcudart.so.13");
    assert_eq!(cudart["other_versions"], serde_json::json!([cuda12.display().to_string()]));
    let looked: Vec<&str> = cudart["looked"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(looked.contains(&sp.join("nvidia/cu13/lib").to_str().unwrap()), "{looked:?}");
    assert!(looked.contains(&sp.join("nvidia/cuda_runtime/lib").to_str().unwrap()), "{looked:?}");
    let system_has_cuda = cudart["location"]["kind"] == "system";

    let out = installed(&exe)
        .args(["recalibrate", "--device", "cuda", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(fixture("mlp/train.npy"))
        .arg("-o")
        .arg(dir.path().join("out.onnx"))
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&out);
    assert!(err.contains("--device cuda:0: the CUDA provider failed to load"), "{err}");
    if !system_has_cuda {
        for want in [
            "libcudart.so.13 is missing",
            &sp.join("nvidia/cu13/lib").display().to_string(),
            &format!("found only other major versions: {}", cuda12.display()),
            "pip install \"nvidia-cuda-runtime==13.*\"",
            "pip install \"nvidia-cudnn-cu13==9.*\"",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
    }
}

#[test]
fn a_cpu_only_runtime_says_how_to_get_the_cuda_one() {
    let lib = real_library();
    let dir = tmp();
    let (exe, _) = fake_env(&dir.path().join("venv"), Some(&lib));
    installed(&exe)
        .args(["evaluate", "--device", "cuda", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(fixture("mlp/eval.npy"))
        .arg("--labels")
        .arg(fixture("mlp/eval_labels.npy"))
        .assert()
        .code(2)
        .stderr(contains("has no CUDA provider"))
        .stderr(contains("pip install swa-tool-gpu"));
}
