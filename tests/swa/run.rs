//! `swa run` end to end on the PyTorch fixtures.

use std::path::Path;

use crate::common::*;
use predicates::str::contains;

fn run(out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    run_cnn(&fixture("cnn/checkpoints"), out, extra).assert()
}

#[test]
fn swa_accuracy_equals_pytorch_for_the_same_weights() {
    let dir = tmp();
    let out = dir.path().join("report");
    let a =
        run(&out, &["--from", "4", "--stats", "torch", "--batch-size", "32", "--recalibrate-each", "--json"]).success();
    let r: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    let expected = summary("cnn");
    assert_eq!(r["swa_recalibrated"]["correct"], expected["swa_bn_torch_correct"]);
    assert_eq!(r["swa_recalibrated"]["samples"], 300);
    assert_eq!(r["checkpoints"].as_array().unwrap().len(), 8);
    assert!(r["checkpoints"].as_array().unwrap().iter().all(|c| c["recalibrated"]["top1"].is_number()));
    assert_eq!(r["averaged"].as_array().unwrap().len(), 5);
    assert_eq!(
        listing(&out),
        [".swa-run", "model_swa.onnx", "report.html", "report.json", "report.md", "swa.safetensors"]
    );
    assert_close(&out.join("swa.safetensors"), &fixture("cnn/expected/swa_bn_torch.safetensors"), 1e-4, 1e-6, |_| true);
    // Nothing but the output directory is left beside it.
    assert_eq!(listing(dir.path()), ["report"]);
}

#[test]
fn refuses_a_non_empty_out_unless_forced_and_gates_on_accuracy() {
    // `--force` replaces only what an earlier `swa run` wrote: make one, and add a file to it.
    let dir = tmp();
    let out = dir.path().join("out");
    run(&out, &["--last", "2"]).success();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let before = listing(&out);
    assert!(before.contains(&"keep.txt".to_string()) && before.contains(&".swa-run".to_string()), "{before:?}");
    run(&out, &["--last", "2"]).code(2).stderr(contains("exists and is not empty: pass --force"));
    assert_eq!(listing(&out), before);
    run(&out, &["--last", "2", "--force", "--min-accuracy", "0.999"]).code(1).stderr(contains("below --min-accuracy"));
    assert!(out.join("report.html").exists() && !out.join("keep.txt").exists());
    assert_eq!(listing(dir.path()), ["out"], "left beside the output");
}

#[test]
fn checkpoints_that_do_not_bind_leave_nothing() {
    let dir = tmp();
    let out = dir.path().join("out");
    run_cnn(&fixture("mlp/checkpoints"), &out, &[])
        .assert()
        .code(2)
        .stderr(contains("epoch_001.safetensors: "))
        .stderr(contains("tensor `bn1.bias`: has shape [64] but the graph's initializer `bn1.bias` has shape [16]"));
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn inspect_lists_tensors_batchnorm_and_binding() {
    swa()
        .arg("inspect")
        .arg(fixture("cnn/model.onnx"))
        .arg("--against")
        .arg(fixture("cnn/checkpoints/epoch_003.safetensors"))
        .assert()
        .success()
        .stdout(contains("BatchNorm layers: 6"))
        .stdout(contains("layer2.0.shortcut.1 (32 channels"))
        .stdout(contains("32 bound, 0 unmatched, 6 integer tensors skipped, 0 model weights unbound"));
    let a = swa().args(["inspect", "--json"]).arg(fixture("mlp/checkpoints/epoch_002.safetensors")).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["batchnorm"].as_array().unwrap().len(), 2);
    assert_eq!(v["metadata"]["epoch"], "2");
}
