//! `swa evaluate`: metrics, thresholds for CI, and bad labelled data.

use crate::common::*;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

fn evaluate(extra: &[&str]) -> assert_cmd::assert::Assert {
    evaluate_with_env(extra, &[])
}

fn evaluate_with_env(extra: &[&str], env: &[(&str, &std::path::Path)]) -> assert_cmd::assert::Assert {
    let mut c = swa();
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(["evaluate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--weights")
        .arg(fixture("cnn/expected/swa_bn_torch.safetensors"))
        .arg("--inputs")
        .arg(fixture("cnn/eval.npy"))
        .args(extra)
        .assert()
}

#[test]
fn json_metrics_match_pytorch() {
    let a = evaluate(&["--labels", fixture("cnn/eval_labels.npy").to_str().unwrap(), "--json", "--batch-size", "64"])
        .success();
    let m: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    let expected = summary("cnn");
    assert_eq!(m["samples"], 300);
    assert_eq!(m["correct"], expected["swa_bn_torch_correct"]);
    assert!((m["loss"].as_f64().unwrap() - expected["swa_bn_torch_loss"].as_f64().unwrap()).abs() < 1e-5);
    assert!(m["top5"].as_f64().unwrap() >= m["top1"].as_f64().unwrap());
    assert_eq!(m["per_class"].as_array().unwrap().len(), 10);
}

/// A k of top-k at or above the model's classes (12 of 10) was reported as top-12 of 100 %:
/// it is capped at the classes, and a warning says so; the table says top-10 too.
#[test]
fn a_top_k_of_at_least_the_classes_is_capped_and_said() {
    let labels = fixture("cnn/eval_labels.npy");
    let a = evaluate(&["--labels", labels.to_str().unwrap(), "--json", "--top-k", "12"]).success();
    let m: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(m["top10"], 1.0);
    assert!(m.get("top12").is_none(), "{m}");
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(
        stderr.contains("swa: warning: the model gives logits for 10 classes: top-12 is reported as top-10"),
        "{stderr}"
    );
    evaluate(&["--labels", labels.to_str().unwrap(), "--top-k", "12"]).success().stdout(contains("| top-10 |"));
    // Below the classes: as asked, without a word.
    evaluate(&["--labels", labels.to_str().unwrap(), "--top-k", "9"])
        .success()
        .stdout(contains("| top-9 |"))
        .stderr("");
    // Parts asked for top-12 and top-10 of 10 classes count the same thing: they merge.
    let dir = tmp();
    let parts: Vec<std::path::PathBuf> = (0..2).map(|i| dir.path().join(format!("p{i}.json"))).collect();
    for (i, k) in [(0, "12"), (1, "10")] {
        let shard = format!("{i}/2");
        let out = parts[i].to_str().unwrap();
        evaluate(&["--labels", labels.to_str().unwrap(), "--top-k", k, "--shard", &shard, "--partial-out", out])
            .success();
    }
    let a = swa().arg("merge-eval").args(&parts).arg("--json").assert().success();
    let m: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!((m["top10"].as_f64(), m["samples"].as_u64()), (Some(1.0), Some(300)), "{m}");
    // A part claiming a top-k of every class that misses samples cannot have been counted.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&parts[0]).unwrap()).unwrap();
    v["counts"]["k"] = serde_json::json!(1_000_000_000_000_000_000u64);
    v["counts"]["correct_k"] = v["counts"]["correct"].clone();
    std::fs::write(&parts[0], serde_json::to_vec(&v).unwrap()).unwrap();
    swa().arg("merge-eval").args(&parts).assert().code(2).stderr(contains("holds every sample"));
}

#[test]
fn min_accuracy_sets_the_exit_code_and_writes_a_step_summary() {
    let labels = fixture("cnn/eval_labels.npy");
    let dir = tmp();
    let summary_file = dir.path().join("summary.md");
    evaluate(&["--labels", labels.to_str().unwrap(), "--min-accuracy", "0.5"]).code(0).stdout(contains("passed"));
    evaluate_with_env(
        &["--labels", labels.to_str().unwrap(), "--min-accuracy", "0.99"],
        &[("GITHUB_STEP_SUMMARY", &summary_file)],
    )
    .code(1)
    .stderr(contains("below --min-accuracy 0.99"));
    assert!(std::fs::read_to_string(&summary_file).unwrap().contains("FAILED"));
}

#[test]
fn labels_that_do_not_fit() {
    let dir = tmp();
    let short = dir.path().join("short.npy");
    write_npy_i64(&short, &[1, 2, 3]);
    evaluate(&["--labels", short.to_str().unwrap()])
        .code(2)
        .stderr(contains("short.npy: has 3 labels for 300 samples"));
    let big = dir.path().join("big.npy");
    write_npy_i64(&big, &vec![50; 300]);
    evaluate(&["--labels", big.to_str().unwrap()])
        .code(2)
        .stderr(contains("big.npy: label 50 at sample 0 is out of range for 10 classes"));
}

#[test]
fn model_output_that_is_not_logits() {
    let dir = tmp();
    let mut m = swa::onnx::Model::load(fixture("mlp/model.onnx")).unwrap();
    let hidden = m.graph().node.iter().find(|n| n.op_type() == "Relu").unwrap().output[0].clone();
    m.graph_mut().output[0] = swa::onnx::ValueInfoProto { name: Some(hidden.clone()), ..Default::default() };
    // A 3-D output: unsqueeze the hidden activations.
    let path = dir.path().join("hidden.onnx");
    let g = m.graph_mut();
    g.initializer.push(swa::onnx::tensor("axes1", swa::checkpoint::Dtype::I64, &[1], 1i64.to_le_bytes().to_vec()));
    g.node.push(swa::onnx::node("Unsqueeze", "u".into(), &[&hidden, "axes1"], &["hidden3d"], vec![]));
    g.output[0].name = Some("hidden3d".into());
    m.save(&path).unwrap();
    swa()
        .args(["evaluate", "--model"])
        .arg(&path)
        .arg("--inputs")
        .arg(fixture("mlp/eval.npy"))
        .arg("--labels")
        .arg(fixture("mlp/eval_labels.npy"))
        .assert()
        .code(2)
        .stderr(contains("evaluation needs logits [N, classes]"));
}

#[test]
fn a_bad_label_in_a_part_is_named_by_its_sample_in_the_whole_set() {
    let dir = tmp();
    let mut labels = vec![0i64; 300];
    labels[200] = 50;
    let bad = dir.path().join("bad.npy");
    write_npy_i64(&bad, &labels);
    let part = dir.path().join("p.json");
    swa()
        .args(["evaluate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(fixture("cnn/eval.npy"))
        .arg("--labels")
        .arg(&bad)
        .args(["--batch-size", "64", "--shard", "1/2", "--partial-out"])
        .arg(&part)
        .assert()
        .code(2)
        .stderr(contains("bad.npy: label 50 at sample 200 is out of range for 10 classes"));
    assert!(!part.exists());
}

#[test]
fn paths_that_are_not_what_their_names_say_are_explained() {
    let dir = tmp();
    // A missing image is missing, not "a single image"; a directory named like an array is a
    // directory, not arrays without labels.
    let missing = dir.path().join("nope.jpg");
    evaluate_model(&fixture("cnn/model.onnx"), &missing, &fixture("cnn/eval_labels.npy"), &[])
        .assert()
        .code(2)
        .stderr(contains("nope.jpg").and(contains("single image").not()));
    let npy_dir = dir.path().join("val.npy");
    std::fs::create_dir(&npy_dir).unwrap();
    swa()
        .args(["evaluate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(&npy_dir)
        .assert()
        .code(2)
        .stderr(contains("--labels is needed").not());
}
