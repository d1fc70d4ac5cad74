//! `swa soup` against the same algorithms written in PyTorch (fixtures/make_soup_fixtures.py:
//! select split = eval.npy[:150], test split = eval.npy[150:], update_bn-style recalibration with
//! batches of 32), and its bad inputs.

use std::path::Path;

use crate::common::*;
use predicates::str::contains;

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("cnn/expected/soup.json")).unwrap()).unwrap()
}

/// `swa soup` on the CNN fixture with torch statistics, batches of 32, the select and test
/// splits, into `out`, plus `extra`; returns the JSON summary.
fn soup(out: &Path, extra: &[&str]) -> serde_json::Value {
    let a = soup_of(&fixture("cnn/checkpoints"), out, extra).assert().success();
    serde_json::from_slice(&a.get_output().stdout).unwrap()
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect()
}

#[test]
fn greedy_soup_equals_pytorch_ingredient_for_ingredient() {
    let dir = tmp();
    let out = dir.path().join("soup.safetensors");
    let s = soup(&out, &["--onnx-out", dir.path().join("soup.onnx").to_str().unwrap()]);
    let want = &expected()["greedy"];
    let candidates = s["candidates"].as_array().unwrap();
    let order: Vec<String> = candidates.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(order, names(&want["order"]), "the ranking alone");
    for c in candidates {
        let alone = &expected()["alone"][c["name"].as_str().unwrap()];
        assert_eq!(c["select_alone"]["correct"], alone["correct"], "{} alone", c["name"]);
        let loss = c["select_alone"]["loss"].as_f64().unwrap();
        assert!((loss - alone["loss"].as_f64().unwrap()).abs() < 1e-4, "{} alone: loss {loss}", c["name"]);
    }
    for step in want["steps"].as_array().unwrap() {
        let c = candidates.iter().find(|c| c["name"] == step["candidate"]).unwrap();
        assert_eq!(c["select_in_soup"]["correct"], step["correct"], "{} in the soup", step["candidate"]);
        assert_eq!(c["kept"], step["kept"], "{} kept", step["candidate"]);
    }
    assert_eq!(names(&s["ingredients"]), names(&want["ingredients"]));
    assert_eq!(s["select"]["correct"], want["select_correct"]);
    assert_eq!(s["eval"]["correct"], want["test_correct"]);
    assert_eq!(s["n_models"], want["ingredients"].as_array().unwrap().len());
    assert_eq!(s["best_single"]["name"], want["order"][0]);
    // The soup's weights and recalibrated statistics equal PyTorch's, under the checkpoint's names.
    assert_close(&out, &fixture("cnn/expected/soup_greedy.safetensors"), 1e-4, 1e-6, |_| true);
    let ck = swa::checkpoint::Checkpoint::open(&out).unwrap();
    assert_eq!(ck.metadata()["weighting"], "greedy-soup");
    assert_eq!(ck.metadata()["n_models"], "2");
    assert!(dir.path().join("soup.onnx").exists());
}

#[test]
fn uniform_soup_is_swa_average_then_recalibrate() {
    let dir = tmp();
    let out = dir.path().join("uniform.safetensors");
    let s = soup(&out, &["--method", "uniform"]);
    assert_eq!(s["n_models"], 8);
    assert_eq!(s["select"]["correct"], expected()["uniform"]["select_correct"]);
    assert_eq!(s["eval"]["correct"], expected()["uniform"]["test_correct"]);
    let avg = dir.path().join("avg.safetensors");
    swa().arg("average").arg(fixture("cnn/checkpoints")).arg("-o").arg(&avg).assert().success();
    let rec = dir.path().join("rec.safetensors");
    swa()
        .args(["recalibrate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--weights")
        .arg(&avg)
        .arg("--inputs")
        .arg(fixture("cnn/train.npy"))
        .args(["--stats", "torch", "--batch-size", "32", "-o"])
        .arg(dir.path().join("rec.onnx"))
        .arg("--save-weights")
        .arg(&rec)
        .assert()
        .success();
    assert_close(&out, &rec, 1e-6, 1e-7, |n| !n.ends_with("num_batches_tracked"));
}

#[test]
fn top_k_and_no_recalibration_equal_pytorch() {
    let dir = tmp();
    let s = soup(&dir.path().join("top3.safetensors"), &["--method", "top-k:3"]);
    assert_eq!(names(&s["ingredients"]), names(&expected()["top3"]["ingredients"]));
    assert_eq!(s["select"]["correct"], expected()["top3"]["select_correct"]);
    assert_eq!(s["eval"]["correct"], expected()["top3"]["test_correct"]);
    let raw = dir.path().join("raw.safetensors");
    let s = soup(&raw, &["--method", "uniform", "--no-recalibrate"]);
    assert_eq!(s["recalibrated"], false);
    assert_eq!(s["select"]["correct"], expected()["no_recalibrate_uniform"]["select_correct"]);
    // The soup's sums are `swa average`'s kernel: the same floats, bit for bit, as the average of
    // the same checkpoints with their float buffers averaged (integers come from the first
    // ingredient in a soup, the newest checkpoint in an average).
    let avg = dir.path().join("avg.safetensors");
    swa()
        .arg("average")
        .arg(fixture("cnn/checkpoints"))
        .args(["--buffers", "average", "-o"])
        .arg(&avg)
        .assert()
        .success();
    assert_close(&raw, &avg, 0.0, 0.0, |n| !n.ends_with("num_batches_tracked"));
}

#[test]
fn bad_soups_are_refused_clearly() {
    let dir = tmp();
    let base = |out: &str| {
        let mut c = swa();
        c.args(["soup", "--model"])
            .arg(fixture("cnn/model.onnx"))
            .arg("--checkpoints")
            .arg(fixture("cnn/checkpoints"))
            .arg("--train-inputs")
            .arg(fixture("cnn/train.npy"))
            .arg("--select-inputs")
            .arg(fixture("cnn/select.npy"))
            .arg("-o")
            .arg(dir.path().join(out));
        c
    };
    base("a.safetensors").assert().code(2).stderr(contains("--select-labels"));
    let with_labels = |out: &str| {
        let mut c = base(out);
        c.arg("--select-labels").arg(fixture("cnn/select_labels.npy"));
        c
    };
    with_labels("b.safetensors").args(["--method", "top-k:9"]).assert().code(2).stderr(contains("top-k:9 needs"));
    with_labels("c.safetensors").args(["--method", "best"]).assert().code(2).stderr(contains("greedy, uniform"));
    with_labels("d.onnx").assert().code(2).stderr(contains("name the output NAME.safetensors (or NAME.pt"));
    // The select split passed again as the test split: a warning, the test figures are not held out.
    with_labels("e.safetensors")
        .args(["--batch-size", "32", "--method", "uniform", "--eval-inputs"])
        .arg(fixture("cnn/select.npy"))
        .arg("--eval-labels")
        .arg(fixture("cnn/select_labels.npy"))
        .assert()
        .success()
        .stderr(contains("the select and eval splits are the same file"));
    // A model without BatchNorm cannot be recalibrated.
    swa()
        .args(["soup", "--recalibrate", "--allow-partial", "--model"])
        .arg(fixture("cnn/model_folded.onnx"))
        .arg("--checkpoints")
        .arg(fixture("cnn/checkpoints"))
        .arg("--train-inputs")
        .arg(fixture("cnn/train.npy"))
        .arg("--select-inputs")
        .arg(fixture("cnn/select.npy"))
        .arg("--select-labels")
        .arg(fixture("cnn/select_labels.npy"))
        .arg("-o")
        .arg(dir.path().join("f.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("has no BatchNormalization node"));
    let left: Vec<String> = listing(dir.path()).into_iter().filter(|n| n != "e.safetensors").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn swa_run_reports_the_soup_beside_swa() {
    let dir = tmp();
    let out = dir.path().join("out");
    let a = swa()
        .args(["run", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--checkpoints")
        .arg(fixture("cnn/checkpoints"))
        .arg("--train-inputs")
        .arg(fixture("cnn/train.npy"))
        .arg("--eval-inputs")
        .arg(fixture("cnn/test.npy"))
        .arg("--eval-labels")
        .arg(fixture("cnn/test_labels.npy"))
        .arg("--select-inputs")
        .arg(fixture("cnn/select.npy"))
        .arg("--select-labels")
        .arg(fixture("cnn/select_labels.npy"))
        .args(["--soup", "greedy", "--from", "4", "--stats", "torch", "--batch-size", "32", "--json", "--out"])
        .arg(&out)
        .assert()
        .success();
    let r: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    let want = &expected()["greedy"];
    assert_eq!(names(&r["soup"]["ingredients"]), names(&want["ingredients"]));
    assert_eq!(r["soup"]["eval"]["correct"], want["test_correct"]);
    assert_eq!(r["soup"]["candidates"].as_array().unwrap().len(), 8);
    assert!(r["best"]["topk"].is_number() && r["best"]["loss"].is_number());
    for f in ["soup.safetensors", "model_soup.onnx"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## greedy soup") && md.contains("greedy soup of 2"), "{md}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("class=\"ingredient\"").count(), 2);
    assert!(html.contains("class=\"swa soup\""));
}

/// `swa soup` of `checkpoints` on the CNN fixture (torch statistics, batches of 32, select and
/// test splits), plus `extra`.
fn soup_of(checkpoints: &Path, out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut c = swa();
    c.args(["soup", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--checkpoints")
        .arg(checkpoints)
        .arg("--train-inputs")
        .arg(fixture("cnn/train.npy"))
        .arg("--select-inputs")
        .arg(fixture("cnn/select.npy"))
        .arg("--select-labels")
        .arg(fixture("cnn/select_labels.npy"))
        .arg("--eval-inputs")
        .arg(fixture("cnn/test.npy"))
        .arg("--eval-labels")
        .arg(fixture("cnn/test_labels.npy"))
        .args(["--stats", "torch", "--batch-size", "32", "--json", "-o"])
        .arg(out)
        .args(extra);
    c
}

/// The CNN checkpoints in the Hugging Face layout: `run/checkpoint-N/model.safetensors`.
fn hugging_face_run(dir: &Path) -> std::path::PathBuf {
    let run = dir.join("run");
    for n in 1..=8 {
        let ck = run.join(format!("checkpoint-{n}"));
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::copy(fixture(&format!("cnn/checkpoints/epoch_{n:03}.safetensors")), ck.join("model.safetensors"))
            .unwrap();
    }
    run
}

/// `epoch_004.safetensors` → `checkpoint-4/model.safetensors`.
fn hf_name(name: &str) -> String {
    let n: u64 = name.trim_start_matches("epoch_").trim_end_matches(".safetensors").parse().unwrap();
    format!("checkpoint-{n}/model.safetensors")
}

#[test]
fn candidates_in_the_hugging_face_layout_are_told_apart() {
    // Every candidate is `model.safetensors`: the summary named them all alike, and `swa run
    // --soup` looked the ingredients up by that name, reporting the first candidate again and
    // again.
    let dir = tmp();
    let run = hugging_face_run(dir.path());
    let a = soup_of(&run, &dir.path().join("soup.safetensors"), &[]).assert().success();
    let s: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    let want = &expected()["greedy"];
    let order: Vec<String> =
        s["candidates"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().into()).collect();
    assert_eq!(order, names(&want["order"]).iter().map(|n| hf_name(n)).collect::<Vec<_>>());
    let ingredients: Vec<String> = names(&want["ingredients"]).iter().map(|n| hf_name(n)).collect();
    assert_eq!(names(&s["ingredients"]), ingredients);
    assert_eq!(s["best_single"]["name"], hf_name(want["order"][0].as_str().unwrap()));
    let out = dir.path().join("out");
    let a = run_cnn(&run, &out, &["--stats", "torch", "--batch-size", "32", "--json", "--soup", "greedy"])
        .arg("--select-inputs")
        .arg(fixture("cnn/select.npy"))
        .arg("--select-labels")
        .arg(fixture("cnn/select_labels.npy"))
        .assert()
        .success();
    let r: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(names(&r["soup"]["ingredients"]), ingredients);
}

#[test]
fn a_uniform_soup_refuses_a_candidate_that_lacks_a_tensor() {
    // With --allow-partial every candidate binds; the uniform sum skipped the missing tensor and
    // still divided by the number of candidates: fc.bias came out 7/8 of the average.
    let dir = tmp();
    let cks = dir.path().join("cks");
    std::fs::create_dir(&cks).unwrap();
    for n in 1..=8 {
        let name = format!("epoch_{n:03}.safetensors");
        std::fs::copy(fixture(&format!("cnn/checkpoints/{name}")), cks.join(&name)).unwrap();
    }
    let first = cks.join("epoch_001.safetensors");
    let ck = swa::checkpoint::Checkpoint::open(fixture("cnn/checkpoints/epoch_001.safetensors")).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = ck
        .tensors()
        .iter()
        .filter(|t| t.name != "fc.bias")
        .map(|t| (t.name.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), ck.bytes(t)).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &first).unwrap();
    let out = dir.path().join("soup.safetensors");
    soup_of(&cks, &out, &["--method", "uniform", "--allow-partial"])
        .assert()
        .code(2)
        .stderr(contains("epoch_001.safetensors"))
        .stderr(contains("fc.bias"));
    assert!(!out.exists());
}

#[test]
fn swa_run_warns_when_the_soup_is_chosen_on_the_held_out_set() {
    let dir = tmp();
    let out = dir.path().join("out");
    run_cnn(&fixture("cnn/checkpoints"), &out, &["--stats", "torch", "--batch-size", "32", "--soup", "uniform"])
        .arg("--select-inputs")
        .arg(fixture("cnn/eval.npy"))
        .arg("--select-labels")
        .arg(fixture("cnn/eval_labels.npy"))
        .assert()
        .success()
        .stderr(contains("the select and eval splits are the same file"));
}

/// `--onnx-out` carries the soup's `swa.*` metadata whether or not BatchNorm was recalibrated
/// (as `swa recalibrate -o` does): with `--no-recalibrate` the model had none.
#[test]
fn a_soup_judged_with_stored_statistics_records_its_metadata_in_the_onnx_model() {
    let dir = tmp();
    let onnx = dir.path().join("soup.onnx");
    swa()
        .args(["soup", "-q", "--no-recalibrate", "--method", "uniform", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--checkpoints")
        .arg(fixture("cnn/checkpoints"))
        .args(["--from", "6", "--select-inputs"])
        .arg(fixture("cnn/select.npy"))
        .arg("--select-labels")
        .arg(fixture("cnn/select_labels.npy"))
        .arg("-o")
        .arg(dir.path().join("soup.pt"))
        .arg("--onnx-out")
        .arg(&onnx)
        .assert()
        .success();
    let m = swa::onnx::Model::load(&onnx).unwrap();
    let get = |k: &str| m.proto.metadata_props.iter().find(|p| p.key() == k).map(|p| p.value().to_string());
    assert_eq!(get("swa.weighting").as_deref(), Some("uniform-soup"));
    assert_eq!(get("swa.n_models").as_deref(), Some("3"));
}

/// A model with a fixed batch dimension: the hint names the flag that sets the soup's evaluation
/// batches (`--eval-batch-size`; `--batch-size` is its recalibration pass, and passing it changed
/// nothing).
#[test]
fn a_fixed_batch_model_is_told_the_soups_evaluation_flag() {
    let dir = tmp();
    swa()
        .args(["soup", "-q", "--no-recalibrate", "--allow-missing-weights", "--model"])
        .arg(fixture("cnn/model_folded.onnx"))
        .arg("--checkpoints")
        .arg(fixture("cnn/checkpoints"))
        .args(["--from", "7", "--batch-size", "2", "--select-inputs"])
        .arg(fixture("cnn/select.npy"))
        .arg("--select-labels")
        .arg(fixture("cnn/select_labels.npy"))
        .arg("-o")
        .arg(dir.path().join("soup.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("`swa soup`: --eval-batch-size 2"));
}
