//! Evaluation tasks beyond classification: figures equal torchmetrics' on outputs PyTorch made
//! (fixtures/tasks/make_task_fixtures.py, torchmetrics 1.9 in float64) and a small reference on
//! random outputs with ties and ignored pixels; parts merge into the whole; regression, multilabel
//! and segmentation fixtures run end to end through `run`, `soup`, `--shard` + `merge-eval`; a
//! metric command gates a run and ranks a soup; bad targets are clear errors that write nothing.

use std::path::{Path, PathBuf};

use crate::common::*;
use predicates::str::contains;
use proptest::prelude::*;
use serde_json::Value;
use swa::batch::Tensor;
use swa::runtime::Fetched;
use swa::tasks::{Context, Metrics, Settings, State, Task};

fn tasks(rel: &str) -> PathBuf {
    fixture(&format!("tasks/{rel}"))
}

fn task(name: &str) -> Task {
    Task::named(name, &Settings::default()).unwrap()
}

/// Feeds `outputs` (shape `shape`) and `targets` to a fresh state of `task`, `batch` samples at a
/// time.
fn feed(task: &Task, shape: &[usize], outputs: &[f32], targets: &Tensor, batch: usize) -> State {
    let mut state = task.state();
    let p = Path::new("fixture");
    let at = Context { model: p, output: "logits", inputs: p, targets: p, classes: None, names: None };
    let n = shape[0];
    let per: usize = shape[1..].iter().product();
    let mut from = 0;
    while from < n {
        let to = (from + batch).min(n);
        let mut s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        s[0] = (to - from) as i64;
        let out = Fetched { shape: s, data: outputs[from * per..to * per].to_vec() };
        let indices: Vec<usize> = (from..to).collect();
        state.update(&out, Some(&targets.rows(&indices)), &indices, &at).unwrap();
        from = to;
    }
    state
}

/// `preds` and `target` of a metrics fixture.
fn case(name: &str) -> (Vec<usize>, Vec<f32>, Tensor) {
    let arrays = swa::inputs::npy::open_npz(&tasks(&format!("metrics/{name}.npz"))).unwrap();
    let get = |n: &str| arrays.iter().find(|a| a.name == n).unwrap_or_else(|| panic!("{n} in {name}"));
    let (p, t) = (get("preds"), get("target"));
    let target = match t.i64_values() {
        Ok(v) => Tensor::i64(t.shape.clone(), v),
        Err(_) => Tensor::f32(t.shape.clone(), t.f32_rows(0, t.len())),
    };
    (p.shape.clone(), p.f32_rows(0, p.len()), target)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(tasks("metrics/expected.json")).unwrap()).unwrap()
}

fn assert_near(what: &str, ours: f64, theirs: &Value) {
    let theirs = theirs.as_f64().unwrap_or(f64::NAN);
    assert!(
        (ours - theirs).abs() <= 1e-6 || (ours.is_nan() && theirs.is_nan()),
        "{what}: swa {ours}, torchmetrics {theirs}"
    );
}

#[test]
fn figures_equal_torchmetrics_on_outputs_pytorch_made() {
    let all = expected();
    for name in ["regression_2d", "regression_1d"] {
        let (shape, preds, target) = case(name);
        let Metrics::Regression(m) = feed(&task("regression"), &shape, &preds, &target, 7).finish().unwrap() else {
            panic!()
        };
        let e = &all[name];
        for (k, v) in [("mse", m.figures.mse), ("mae", m.figures.mae), ("rmse", m.figures.rmse), ("r2", m.figures.r2)] {
            assert_near(&format!("{name} {k}"), v, &e[k]);
        }
        for (j, o) in m.per_output.iter().enumerate() {
            assert_near(&format!("{name} mse[{j}]"), o.mse, &e["mse_per_output"][j]);
            assert_near(&format!("{name} mae[{j}]"), o.mae, &e["mae_per_output"][j]);
            assert_near(&format!("{name} r2[{j}]"), o.r2, &e["r2_per_output"][j]);
        }
    }
    for name in ["multilabel_probs", "multilabel_logits"] {
        let (shape, preds, target) = case(name);
        let Metrics::Multilabel(m) = feed(&task("multilabel"), &shape, &preds, &target, 9).finish().unwrap() else {
            panic!()
        };
        let e = &all[name];
        let f = m.figures;
        for (k, v) in [
            ("ap_macro", f.ap_macro),
            ("ap_micro", f.ap_micro),
            ("f1_macro", f.f1_macro),
            ("f1_micro", f.f1_micro),
            ("exact_match", f.exact_match),
        ] {
            assert_near(&format!("{name} {k}"), v, &e[k]);
        }
        for l in &m.per_label {
            assert_near(&format!("{name} ap[{}]", l.label), l.ap, &e["ap_per_label"][l.label]);
            assert_near(&format!("{name} f1[{}]", l.label), l.f1, &e["f1_per_label"][l.label]);
        }
        assert_eq!(m.sigmoid, name.ends_with("logits"));
    }
    let (shape, preds, target) = case("segmentation");
    let Metrics::Segmentation(m) = feed(&task("segmentation"), &shape, &preds, &target, 3).finish().unwrap() else {
        panic!()
    };
    let e = &all["segmentation"];
    assert!(e["argmax_ties"].as_u64().unwrap() > 0, "the fixture has tied logits");
    let confusion: Vec<Vec<u64>> = serde_json::from_value(e["confusion"].clone()).unwrap();
    assert_eq!(m.confusion, confusion, "ties go to the first class, as torch.argmax");
    assert_near("miou", m.figures.miou, &e["iou_macro"]);
    assert_near("pixel accuracy", m.figures.pixel_accuracy, &e["pixel_accuracy"]);
    assert_eq!(m.ignored, e["ignored"].as_u64().unwrap());
    for c in &m.per_class {
        let theirs = &e["iou_per_class"][c.class];
        if c.iou.is_nan() {
            // Absent from masks and predictions: no IoU here; torchmetrics writes 0 and leaves it
            // out of the mean, as swa does.
            assert_eq!(theirs.as_f64(), Some(0.0));
        } else {
            assert_near(&format!("iou[{}]", c.class), c.iou, theirs);
        }
    }
}

// -------------------------------------------------------------------------------------------------
// A small reference, on random outputs with ties and ignored pixels
// -------------------------------------------------------------------------------------------------

/// Average precision by its definition: over each distinct score from the highest, the recall
/// gained times the precision there.
fn reference_ap(scores: &[f64], targets: &[bool]) -> f64 {
    let positives = targets.iter().filter(|&&t| t).count() as f64;
    if positives == 0.0 {
        return 0.0;
    }
    let mut thresholds: Vec<f64> = scores.to_vec();
    thresholds.sort_by(|a, b| b.total_cmp(a));
    thresholds.dedup();
    let (mut ap, mut last) = (0.0, 0.0);
    for t in thresholds {
        let hit = |i: usize| scores[i] >= t;
        let tp = (0..scores.len()).filter(|&i| hit(i) && targets[i]).count() as f64;
        let predicted = (0..scores.len()).filter(|&i| hit(i)).count() as f64;
        let recall = tp / positives;
        ap += (recall - last) * tp / predicted;
        last = recall;
    }
    ap
}

/// SplitMix64, for reproducible random outputs.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs()) || (a.is_nan() && b.is_nan())
}

/// Splits `n` samples at `cut` into two states and merges them.
fn merged(task: &Task, shape: &[usize], outputs: &[f32], targets: &Tensor, cut: usize) -> State {
    let per: usize = shape[1..].iter().product();
    let n = shape[0];
    let cut = cut.min(n);
    let part = |from: usize, to: usize| {
        let mut s = shape.to_vec();
        s[0] = to - from;
        let idx: Vec<usize> = (from..to).collect();
        (s, outputs[from * per..to * per].to_vec(), targets.rows(&idx))
    };
    let (s1, o1, t1) = part(0, cut);
    let (s2, o2, t2) = part(cut, n);
    let mut a = if cut > 0 { feed(task, &s1, &o1, &t1, 5) } else { task.state() };
    let b = if cut < n { feed(task, &s2, &o2, &t2, 4) } else { task.state() };
    a.merge(&b).unwrap();
    a
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn multilabel_figures_equal_a_reference_and_merge_exactly(
        n in 2usize..40, c in 1usize..5, cut in 0usize..40, seed in any::<u64>(), logits in any::<bool>(),
    ) {
        let mut rng = Rng(seed);
        // Scores on a coarse grid: ties everywhere, 0.5 (the threshold) among them.
        let outputs: Vec<f32> = (0..n * c)
            .map(|_| (rng.below(11) as f32) / 10.0 * if logits { 8.0 } else { 1.0 } - if logits { 4.0 } else { 0.0 })
            .collect();
        let targets: Vec<i64> = (0..n * c).map(|_| (rng.below(3) == 0) as i64).collect();
        let t = Tensor::i64(vec![n, c], targets.clone());
        let whole = feed(&task("multilabel"), &[n, c], &outputs, &t, 6);
        let Metrics::Multilabel(m) = whole.finish().unwrap() else { panic!() };
        let prob = |v: f32| if logits { 1.0 / (1.0 + (-(v as f64)).exp()) } else { v as f64 };
        let mut aps = Vec::new();
        for j in 0..c {
            let s: Vec<f64> = (0..n).map(|i| prob(outputs[i * c + j])).collect();
            let y: Vec<bool> = (0..n).map(|i| targets[i * c + j] == 1).collect();
            let ap = reference_ap(&s, &y);
            prop_assert!(close(m.per_label[j].ap, ap, 1e-12), "label {j}: {} vs {ap}", m.per_label[j].ap);
            aps.push(ap);
        }
        prop_assert!(close(m.figures.ap_macro, aps.iter().sum::<f64>() / c as f64, 1e-12));
        let all: Vec<f64> = outputs.iter().map(|&v| prob(v)).collect();
        let ys: Vec<bool> = targets.iter().map(|&t| t == 1).collect();
        prop_assert!(close(m.figures.ap_micro, reference_ap(&all, &ys), 1e-12));
        let exact = (0..n).filter(|&i| (0..c).all(|j| (all[i * c + j] > 0.5) == ys[i * c + j])).count();
        prop_assert!(close(m.figures.exact_match, exact as f64 / n as f64, 1e-15));
        let parts = merged(&task("multilabel"), &[n, c], &outputs, &t, cut);
        let json = |m: &Metrics| serde_json::to_value(m).unwrap();
        prop_assert_eq!(json(&parts.finish().unwrap()), json(&Metrics::Multilabel(m)));
    }

    #[test]
    fn segmentation_counts_equal_a_reference_and_merge_exactly(
        n in 1usize..6, c in 1usize..5, h in 1usize..6, w in 1usize..6, cut in 0usize..6, seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let outputs: Vec<f32> = (0..n * c * h * w).map(|_| rng.below(4) as f32).collect();
        let masks: Vec<i64> =
            (0..n * h * w).map(|_| if rng.below(5) == 0 { 255 } else { rng.below(c as u64) as i64 }).collect();
        let t = Tensor::i64(vec![n, h, w], masks.clone());
        let shape = [n, c, h, w];
        let whole = feed(&task("segmentation"), &shape, &outputs, &t, 2);
        let Metrics::Segmentation(m) = whole.finish().unwrap() else { panic!() };
        let mut confusion = vec![vec![0u64; c]; c];
        for i in 0..n {
            for p in 0..h * w {
                let y = masks[i * h * w + p];
                if y == 255 {
                    continue;
                }
                let logits: Vec<f32> = (0..c).map(|k| outputs[(i * c + k) * h * w + p]).collect();
                let best = (0..c).fold(0, |b, k| if logits[k] > logits[b] { k } else { b });
                confusion[y as usize][best] += 1;
            }
        }
        prop_assert_eq!(&m.confusion, &confusion);
        prop_assert_eq!(m.ignored, masks.iter().filter(|&&y| y == 255).count() as u64);
        let parts = merged(&task("segmentation"), &shape, &outputs, &t, cut);
        let json = |m: &Metrics| serde_json::to_value(m).unwrap();
        prop_assert_eq!(json(&parts.finish().unwrap()), json(&Metrics::Segmentation(m)));
    }

    #[test]
    fn regression_figures_equal_a_two_pass_reference_and_merge_within_1e_12(
        n in 2usize..50, d in 1usize..4, cut in 0usize..50, seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let outputs: Vec<f32> = (0..n * d).map(|_| rng.below(1000) as f32 / 100.0 - 5.0).collect();
        let targets: Vec<f32> = (0..n * d).map(|_| rng.below(1000) as f32 / 100.0 - 5.0).collect();
        let t = Tensor::f32(vec![n, d], targets.clone());
        let Metrics::Regression(m) = feed(&task("regression"), &[n, d], &outputs, &t, 7).finish().unwrap() else {
            panic!()
        };
        let mut r2 = 0.0;
        for j in 0..d {
            let y: Vec<f64> = (0..n).map(|i| targets[i * d + j] as f64).collect();
            let mean = y.iter().sum::<f64>() / n as f64;
            let tss: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
            let rss: f64 = (0..n).map(|i| (outputs[i * d + j] as f64 - y[i]).powi(2)).sum();
            r2 += 1.0 - rss / tss;
        }
        prop_assert!((m.figures.r2 - r2 / d as f64).abs() < 1e-9, "{} vs {}", m.figures.r2, r2 / d as f64);
        let Metrics::Regression(p) = merged(&task("regression"), &[n, d], &outputs, &t, cut).finish().unwrap() else {
            panic!()
        };
        for (a, b) in [(p.figures.mse, m.figures.mse), (p.figures.mae, m.figures.mae), (p.figures.r2, m.figures.r2)] {
            prop_assert!(close(a, b, 1e-12), "{a} vs {b}");
        }
    }
}

// -------------------------------------------------------------------------------------------------
// End to end
// -------------------------------------------------------------------------------------------------

fn report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// `swa run` over a tabular fixture (`regression`, `multilabel`); `extra` names the task.
fn run_tabular(name: &str, out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = swa();
    cmd.current_dir(tasks(name)).args([
        "run",
        "--model",
        "model.onnx",
        "--checkpoints",
        "checkpoints",
        "--train-inputs",
        "train.npy",
        "--eval-inputs",
        "eval.npy",
        "--eval-labels",
        "eval_targets.npy",
        "--batch-size",
        "32",
        "--stats",
        "torch",
        "--out",
    ]);
    cmd.arg(out).args(extra);
    cmd
}

#[test]
fn regression_and_multilabel_runs_equal_pytorch_and_soups_rank_by_the_task_score() {
    for (name, figures) in [
        ("regression", &["mse", "mae", "rmse", "r2"][..]),
        ("multilabel", &["ap_macro", "ap_micro", "f1_macro", "exact_match"][..]),
    ] {
        let dir = tmp();
        let out = dir.path().join("run");
        run_tabular(
            name,
            &out,
            &[
                "--task",
                name,
                "--soup",
                "greedy",
                "--select-inputs",
                "select.npy",
                "--select-labels",
                "select_targets.npy",
            ],
        )
        .assert()
        .success();
        let r = report(&out);
        let expected = tasks(&format!("{name}/expected/summary.json"));
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(expected).unwrap()).unwrap();
        // update_bn's statistics and swa's agree to float rounding; the figures to 1e-5.
        for f in figures {
            let ours = r["swa_recalibrated"][f].as_f64().unwrap();
            let theirs = expected["swa"]["eval"][f].as_f64().unwrap();
            assert!((ours - theirs).abs() < 1e-5, "{name} SWA {f}: {ours} vs PyTorch {theirs}");
        }
        for c in r["checkpoints"].as_array().unwrap() {
            let key = c["name"].as_str().unwrap().trim_end_matches(".safetensors");
            for f in figures {
                let (ours, theirs) =
                    (c["stored"][f].as_f64().unwrap(), expected["checkpoints"][key]["eval"][f].as_f64().unwrap());
                assert!((ours - theirs).abs() < 1e-5, "{name} {key} {f}: {ours} vs {theirs}");
            }
        }
        // The soup is ranked and kept by the task's score.
        let soup = &r["soup"];
        assert!(soup["select"]["score"].as_str().is_some(), "{soup}");
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        let label = if name == "regression" { "R²" } else { "macro AP" };
        assert!(md.contains(label), "{md}");
        assert!(std::fs::read_to_string(out.join("report.html")).unwrap().contains(label));
    }
}

/// `a` and `b` equal, numbers within 1e-12 relative (sums of f64 added in another order).
fn same_json(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{at}");
            for (k, v) in x {
                same_json(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                same_json(v, w, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(close(x, y, 1e-12), "{at}: {x} vs {y}");
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// The members of an `.npz`, by name (without `.npy`).
fn npz_members(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).unwrap();
            (f.name().trim_end_matches(".npy").to_string(), bytes)
        })
        .collect()
}

#[test]
fn sharded_evaluations_of_each_task_merge_into_the_single_run() {
    let seg = tasks("segmentation");
    let image_flags =
        ["--resize", "16", "--center-crop", "16", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"];
    let cases: Vec<(&str, PathBuf, Vec<String>)> = vec![
        (
            "regression",
            tasks("regression"),
            ["--inputs", "eval.npy", "--labels", "eval_targets.npy", "--weights", "checkpoints/epoch_002.safetensors"]
                .map(String::from)
                .to_vec(),
        ),
        (
            "multilabel",
            tasks("multilabel"),
            ["--inputs", "eval.npy", "--labels", "eval_targets.npy", "--weights", "checkpoints/epoch_002.safetensors"]
                .map(String::from)
                .to_vec(),
        ),
        (
            "segmentation",
            seg.clone(),
            ["--inputs", "images/eval", "--masks", "masks/eval", "--weights", "checkpoints/epoch_002.safetensors"]
                .iter()
                .chain(image_flags.iter())
                .map(|s| s.to_string())
                .collect(),
        ),
    ];
    for (name, dir, args) in cases {
        let evaluate = |extra: &[&str]| {
            let mut c = swa();
            c.current_dir(&dir)
                .args(["evaluate", "--model", "model.onnx", "--task", name, "--batch-size", "4"])
                .args(&args)
                .args(extra);
            c
        };
        let whole: Value =
            serde_json::from_slice(&evaluate(&["--json"]).assert().success().get_output().stdout).unwrap();
        let t = tmp();
        let parts: Vec<PathBuf> = (0..3).map(|i| t.path().join(format!("p{i}.json"))).collect();
        for (i, p) in parts.iter().enumerate() {
            evaluate(&["--shard", &format!("{i}/3"), "--partial-out", p.to_str().unwrap()]).assert().success();
        }
        let mut merge = swa();
        merge.arg("merge-eval").args(parts.iter().rev()).arg("--json");
        let merged: Value = serde_json::from_slice(&merge.assert().success().get_output().stdout).unwrap();
        same_json(&whole, &merged, name);
    }
}

#[test]
fn segmentation_recalibrates_and_counts_as_pytorch_does() {
    let dir = tasks("segmentation");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected/summary.json")).unwrap()).unwrap();
    let t = tmp();
    let out = t.path().join("run");
    let image_flags =
        ["--resize", "16", "--center-crop", "16", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"];
    swa()
        .current_dir(&dir)
        .args(["run", "--model", "model.onnx", "--checkpoints", "checkpoints", "--train-inputs", "images/train"])
        .args(["--eval-inputs", "images/eval", "--masks", "masks/eval", "--task", "segmentation", "--batch-size", "8"])
        .args(["--stats", "torch", "--gate", "miou>=0.5", "--out"])
        .arg(&out)
        .args(image_flags)
        .assert()
        .success();
    // Statistics equal update_bn's.
    assert_close(&out.join("swa.safetensors"), &dir.join("expected/swa_bn.safetensors"), 1e-4, 1e-6, |n| {
        n.contains("running")
    });
    // The confusion matrix equals PyTorch's (the fixture has no near ties).
    assert_eq!(expected["swa"]["near_ties"], 0);
    let eval = swa()
        .current_dir(&dir)
        .args(["evaluate", "--model"])
        .arg(out.join("model_swa.onnx"))
        .args(["--inputs", "images/eval", "--masks", "masks/eval", "--task", "segmentation", "--json"])
        .args(image_flags)
        .assert()
        .success();
    let e: Value = serde_json::from_slice(&eval.get_output().stdout).unwrap();
    assert_eq!(e["confusion"], expected["swa"]["confusion"]);
    assert!((e["miou"].as_f64().unwrap() - expected["swa"]["miou"].as_f64().unwrap()).abs() < 1e-12);
    // Masks given as an array (torchvision's transform of the same files) count the same.
    let from_npy = swa()
        .current_dir(&dir)
        .args(["evaluate", "--model"])
        .arg(out.join("model_swa.onnx"))
        .args(["--inputs", "images/eval", "--labels", "expected/eval_masks.npy", "--task", "segmentation", "--json"])
        .args(image_flags)
        .assert()
        .success();
    let n: Value = serde_json::from_slice(&from_npy.get_output().stdout).unwrap();
    assert_eq!(n["confusion"], e["confusion"]);
    // Each checkpoint with its stored statistics too.
    let r = report(&out);
    for c in r["checkpoints"].as_array().unwrap() {
        let key = c["name"].as_str().unwrap().trim_end_matches(".safetensors");
        let theirs = expected["checkpoints"][key]["miou"].as_f64().unwrap();
        assert!((c["stored"]["miou"].as_f64().unwrap() - theirs).abs() < 1e-9, "{key}");
    }
}

/// A metric command: the negated mean absolute error of the outputs' first column, with numpy.
const METRIC: &str = r#"
import json, sys
import numpy as np
outputs, labels = np.load(sys.argv[1]), np.load(sys.argv[2])
mae = float(np.abs(outputs.reshape(len(outputs), -1)[:, 0] - labels.reshape(len(labels), -1)[:, 0]).mean())
print("computing...")
print(json.dumps({"mae0": mae, "score": -mae, "samples": len(outputs)}))
"#;

fn python() -> &'static str {
    "python3"
}

#[test]
fn a_metric_command_gates_a_run_and_ranks_a_soup() {
    let t = tmp();
    let script = t.path().join("metric.py");
    std::fs::write(&script, METRIC).unwrap();
    let command = format!("{} {} {{outputs}} {{labels}}", python(), script.display());
    let out = t.path().join("run");
    let ok = run_tabular(
        "regression",
        &out,
        &[
            "--metric-command",
            &command,
            "--gate",
            "mae0<=5",
            "--soup",
            "greedy",
            "--select-inputs",
            "select.npy",
            "--select-labels",
            "select_targets.npy",
        ],
    )
    .assert()
    .success();
    let _ = ok;
    let r = report(&out);
    let mae0 = r["swa_recalibrated"]["figures"]["mae0"].as_f64().unwrap();
    assert!((r["swa_recalibrated"]["score"].as_f64().unwrap() + mae0).abs() < 1e-12);
    assert!(r["soup"]["ingredients"].as_array().is_some_and(|a| !a.is_empty()), "{}", r["soup"]);
    // A gate it does not pass fails the run, naming the figure.
    let out2 = t.path().join("run2");
    run_tabular("regression", &out2, &["--metric-command", &command, "--gate", "mae0<=0.001"])
        .assert()
        .code(1)
        .stderr(contains("mae0"));
}

#[test]
fn metric_commands_that_fail_print_no_json_or_a_nan_score_are_errors_that_write_nothing() {
    let t = tmp();
    for (script, says) in [
        ("import sys; sys.exit(3)", "exit status 3"),
        ("print('hello')", "printed no JSON object"),
        ("print('{\"score\": NaN}')", "finite"),
        ("import json; print(json.dumps({'score': float('nan')}))", "finite"),
        ("import json; print(json.dumps({'score': float('inf')}))", "finite"),
        ("print('{\"score\": null}')", "finite"),
        ("print('{\"map\": 0.3}')", "printed no number `score`"),
    ] {
        let p = t.path().join("m.py");
        std::fs::write(&p, script).unwrap();
        let out = t.path().join("out");
        run_tabular("regression", &out, &["--metric-command", &format!("python3 {} {{outputs}}", p.display())])
            .assert()
            .failure()
            .stderr(contains(says));
        assert!(!out.exists(), "{script}: nothing is written");
    }
}

#[test]
fn save_outputs_writes_each_sample_with_its_name_prediction_and_target() {
    let dir = tasks("segmentation");
    let t = tmp();
    let npz = t.path().join("out.npz");
    swa()
        .current_dir(&dir)
        .args(["evaluate", "--model", "model.onnx", "--weights", "checkpoints/epoch_003.safetensors"])
        .args(["--inputs", "images/eval", "--masks", "masks/eval", "--task", "segmentation", "--save-outputs"])
        .arg(&npz)
        .args(["--resize", "16", "--center-crop", "16"])
        .assert()
        .success()
        .stdout(contains("wrote"));
    let members = npz_members(&npz);
    assert_eq!(members.keys().collect::<Vec<_>>(), ["ids", "outputs", "predictions", "targets"]);
    let arrays: Vec<swa::inputs::Array> = ["outputs", "predictions", "targets"]
        .iter()
        .map(|n| {
            let mut a = swa::inputs::npy::parse_npy(Path::new(n), members[*n].clone()).unwrap();
            a.name = n.to_string();
            a
        })
        .collect();
    let get = |n: &str| arrays.iter().find(|a| a.name == n).unwrap();
    assert_eq!(get("outputs").shape, [12, 3, 16, 16]);
    assert_eq!(get("predictions").shape, [12, 16, 16]);
    assert_eq!(get("targets").shape, [12, 16, 16]);
    // ids: numpy's fixed-width unicode (UTF-32), the images' paths.
    let ids = &members["ids"];
    let header_len = u16::from_le_bytes([ids[8], ids[9]]) as usize;
    let header = String::from_utf8_lossy(&ids[10..10 + header_len]);
    assert!(header.contains("'descr': '<U") && header.contains("(12,)"), "{header}");
    let text: String = ids[10 + header_len..]
        .chunks_exact(4)
        .filter_map(|c| char::from_u32(u32::from_le_bytes(c.try_into().unwrap())))
        .filter(|&c| c != '\0')
        .collect();
    assert!(text.contains("000.png") && text.contains("011.png"), "ids are the file names: {text}");
    let (o, p) = (get("outputs").f32_rows(0, 12), get("predictions").i64_values().unwrap());
    for (k, &pred) in p.iter().enumerate().step_by(37) {
        let (i, px) = (k / 256, k % 256);
        let logits: Vec<f32> = (0..3).map(|c| o[(i * 3 + c) * 256 + px]).collect();
        let best = (0..3).fold(0, |b, c| if logits[c] > logits[b] { c } else { b });
        assert_eq!(pred, best as i64);
    }
    // A classification's predictions are class indices, its ids row numbers.
    let npz2 = t.path().join("mlp.npz");
    evaluate_mlp(
        &fixture("mlp/eval.npy"),
        &fixture("mlp/eval_labels.npy"),
        &["--save-outputs", npz2.to_str().unwrap()],
    )
    .assert()
    .success();
    let arrays = swa::inputs::npy::open_npz(&npz2).unwrap();
    let ids = arrays.iter().find(|a| a.name == "ids").unwrap().i64_values().unwrap();
    assert_eq!(ids, (0..ids.len() as i64).collect::<Vec<_>>());
    assert_eq!(arrays.iter().find(|a| a.name == "predictions").unwrap().shape, [ids.len()]);
    // It never replaces an input.
    evaluate_mlp(
        &fixture("mlp/eval.npy"),
        &fixture("mlp/eval_labels.npy"),
        &["--save-outputs", fixture("mlp/eval.npy").to_str().unwrap()],
    )
    .assert()
    .failure();
}

#[test]
fn bad_masks_and_targets_are_clear_errors_naming_the_file_and_sample() {
    let t = tmp();
    let seg = t.path().join("seg");
    copy_dir(&tasks("segmentation"), &seg);
    let evaluate = |extra: &[&str]| {
        let mut c = swa();
        c.current_dir(&seg)
            .args(["evaluate", "--model", "model.onnx", "--inputs", "images/eval", "--task", "segmentation"])
            .args(["--resize", "16", "--center-crop", "16"])
            .args(extra);
        c
    };
    // A missing mask.
    std::fs::rename(seg.join("masks/eval/004.png"), seg.join("masks/eval/004.bak")).unwrap();
    evaluate(&["--masks", "masks/eval"])
        .assert()
        .failure()
        .stderr(contains("004.png"))
        .stderr(contains("no mask for 1 of the 12"));
    std::fs::rename(seg.join("masks/eval/004.bak"), seg.join("masks/eval/004.png")).unwrap();
    // A mask whose size differs from its image's.
    let write_mask = |path: &Path, w: u32, h: u32, value: u8| {
        let file = std::fs::File::create(path).unwrap();
        let mut e = png::Encoder::new(file, w, h);
        e.set_color(png::ColorType::Grayscale);
        e.write_header().unwrap().write_image_data(&vec![value; (w * h) as usize]).unwrap();
    };
    let saved = std::fs::read(seg.join("masks/eval/007.png")).unwrap();
    write_mask(&seg.join("masks/eval/007.png"), 40, 9, 1);
    evaluate(&["--masks", "masks/eval"])
        .assert()
        .failure()
        .stderr(contains("007.png"))
        .stderr(contains("size of its image"));
    // A class outside the model's (not the ignore index).
    let img = image::open(seg.join("images/eval/007.png")).unwrap();
    write_mask(&seg.join("masks/eval/007.png"), img.width(), img.height(), 7);
    evaluate(&["--masks", "masks/eval"]).assert().failure().stderr(contains("007.png")).stderr(contains("class 7"));
    // ... which a remapping may fix.
    evaluate(&["--masks", "masks/eval", "--mask-map", "7:255"]).assert().success();
    std::fs::write(seg.join("masks/eval/007.png"), saved).unwrap();
    // No masks at all, and masks for another task.
    evaluate(&[]).assert().failure().stderr(contains("has no masks"));
    swa()
        .current_dir(tasks("regression"))
        .args([
            "evaluate",
            "--model",
            "model.onnx",
            "--inputs",
            "eval.npy",
            "--labels",
            "eval_targets.npy",
            "--task",
            "segmentation",
        ])
        .assert()
        .failure()
        .stderr(contains("the tasks regression and multilabel"));
    // Regression targets of the wrong shape, and class indices for multilabel.
    let bad = t.path().join("bad.npy");
    write_npy_f32(&bad, &[256, 3], &vec![0.0; 256 * 3]);
    swa()
        .current_dir(tasks("regression"))
        .args(["evaluate", "--model", "model.onnx", "--inputs", "eval.npy", "--task", "regression", "--labels"])
        .arg(&bad)
        .assert()
        .failure()
        .stderr(contains("bad.npy"))
        .stderr(contains("2 outputs"));
    let indices = t.path().join("indices.npy");
    write_npy_i64(&indices, &vec![1; 256]);
    swa()
        .current_dir(tasks("multilabel"))
        .args(["evaluate", "--model", "model.onnx", "--inputs", "eval.npy", "--task", "multilabel", "--labels"])
        .arg(&indices)
        .assert()
        .failure()
        .stderr(contains("the tasks classification and regression"));
    // Gates and scores name the task's figures.
    swa()
        .current_dir(tasks("regression"))
        .args([
            "evaluate",
            "--model",
            "model.onnx",
            "--inputs",
            "eval.npy",
            "--labels",
            "eval_targets.npy",
            "--task",
            "regression",
        ])
        .args(["--gate", "miou>=0.5"])
        .assert()
        .failure()
        .stderr(contains("use one of r2, mse, rmse, mae"))
        .stderr(contains("the task segmentation"));
}

#[test]
fn gates_fail_on_nan_and_lower_is_better_scores_rank_the_other_way() {
    let dir = tasks("regression");
    let evaluate = |extra: &[&str]| {
        let mut c = swa();
        c.current_dir(&dir)
            .args(["evaluate", "--model", "model.onnx", "--inputs", "eval.npy", "--labels", "eval_targets.npy"])
            .args(["--task", "regression", "--weights", "checkpoints/epoch_003.safetensors"])
            .args(extra);
        c
    };
    evaluate(&["--gate", "rmse<=2", "--gate", "r2>=0.5"]).assert().success().stdout(contains("passed"));
    evaluate(&["--gate", "rmse<=0.5"]).assert().code(1).stderr(contains("rmse")).stderr(contains("above"));
    // --score rmse: the report's gain is in RMSE, lower is better.
    let t = tmp();
    let out = t.path().join("run");
    run_tabular("regression", &out, &["--task", "regression", "--score", "rmse"]).assert().success();
    let r = report(&out);
    let (swa_rmse, best_rmse) = (r["swa_recalibrated"]["rmse"].as_f64().unwrap(), r["best"]["rmse"].as_f64().unwrap());
    let best_all = r["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["stored"]["rmse"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(best_rmse, best_all, "the best checkpoint is the lowest RMSE");
    assert!((r["gain"].as_f64().unwrap() - (best_rmse - swa_rmse)).abs() < 1e-12);
}

/// `val.parquet` with target columns added: `value` (float64), `vals` (lists of 10 float32) and
/// `tags` (lists of 10 booleans); returns the same targets as arrays `(vals, tags)`.
fn parquet_with_targets(to: &Path) -> (Vec<f32>, Vec<i64>) {
    use arrow_array::builder::{BooleanBuilder, Float32Builder, ListBuilder};
    use arrow_array::{ArrayRef, Float64Array, RecordBatch};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(fixture("images/val.parquet")).unwrap();
    let batches: Vec<RecordBatch> =
        ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().map(Result::unwrap).collect();
    let mut fields: Vec<arrow_schema::Field> =
        batches[0].schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let (mut vals, mut tags, mut row) = (Vec::new(), Vec::new(), 0usize);
    let mut written = Vec::new();
    for b in &batches {
        let mut value = Vec::new();
        let (mut v, mut t) = (ListBuilder::new(Float32Builder::new()), ListBuilder::new(BooleanBuilder::new()));
        for _ in 0..b.num_rows() {
            value.push(row as f64 * 0.25 - 2.0);
            for j in 0..10 {
                let x = ((row * 7 + j * 3) % 11) as f32 / 5.0 - 1.0;
                let y = (row + j) % 3 == 0;
                v.values().append_value(x);
                t.values().append_value(y);
                vals.push(x);
                tags.push(y as i64);
            }
            v.append(true);
            t.append(true);
            row += 1;
        }
        let mut columns: Vec<ArrayRef> = b.columns().to_vec();
        columns.push(std::sync::Arc::new(Float64Array::from(value)));
        columns.push(std::sync::Arc::new(v.finish()));
        columns.push(std::sync::Arc::new(t.finish()));
        written.push(columns);
    }
    for (name, array) in [
        ("value", &written[0][written[0].len() - 3]),
        ("vals", &written[0][written[0].len() - 2]),
        ("tags", &written[0][written[0].len() - 1]),
    ] {
        fields.push(arrow_schema::Field::new(name, array.data_type().clone(), true));
    }
    let schema = std::sync::Arc::new(arrow_schema::Schema::new(fields));
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(to).unwrap(), schema.clone(), None).unwrap();
    for columns in written {
        w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).unwrap();
    }
    w.close().unwrap();
    (vals, tags)
}

/// Targets in a Parquet column — a float column and lists of floats for regression, lists of
/// booleans for multilabel — count as the same targets given as arrays.
#[test]
fn parquet_float_and_list_columns_are_regression_and_multilabel_targets() {
    let t = tmp();
    let parquet = t.path().join("targets.parquet");
    let (vals, tags) = parquet_with_targets(&parquet);
    let n = tags.len() / 10;
    let (vals_npy, tags_npy) = (t.path().join("vals.npy"), t.path().join("tags.npy"));
    write_npy_f32(&vals_npy, &[n, 10], &vals);
    write_raw_npy(
        &tags_npy,
        "<i8",
        &format!("({n}, 10)"),
        &tags.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    );
    let evaluate = |task: &str, targets: &[&str]| -> Value {
        let out = swa()
            .args(["evaluate", "--model"])
            .arg(fixture("cnn/model.onnx"))
            .arg("--inputs")
            .arg(&parquet)
            .args(["--resize", "20", "--center-crop", "16", "--task", task, "--json"])
            .args(targets)
            .assert()
            .success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    };
    let column = evaluate("regression", &["--label-column", "vals"]);
    let array = evaluate("regression", &["--label-column", "", "--labels", vals_npy.to_str().unwrap()]);
    assert_eq!(column, array);
    assert_eq!(column["samples"].as_u64(), Some(n as u64));
    let column = evaluate("multilabel", &["--label-column", "tags"]);
    let array = evaluate("multilabel", &["--label-column", "", "--labels", tags_npy.to_str().unwrap()]);
    assert_eq!(column, array);
    // A float column is one value per sample: the model's 10 outputs do not fit it, and the
    // message says so.
    swa()
        .args(["evaluate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(&parquet)
        .args(["--resize", "20", "--center-crop", "16", "--task", "regression", "--label-column", "value"])
        .assert()
        .failure()
        .stderr(contains("10 outputs"));
}

/// A table naming the images (`file,v0,…`, in any order, by file name, stem or path) gives the
/// same targets as an array in the folder's order; an image without a row is named.
#[test]
fn a_csv_table_maps_image_file_names_to_regression_targets() {
    let t = tmp();
    let images = tasks("segmentation/images/eval");
    let mut names: Vec<String> =
        std::fs::read_dir(&images).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let value = |i: usize, j: usize| ((i * 13 + j * 5) % 17) as f32 / 4.0 - 2.0;
    let mut csv = String::from("value0,file,");
    csv.push_str(&(1..10).map(|j| format!("value{j}")).collect::<Vec<_>>().join(","));
    csv.push('\n');
    for (i, name) in names.iter().enumerate().rev() {
        // Keyed by stem, file name or path below the folder.
        let key = match i % 3 {
            0 => name.trim_end_matches(".png").to_string(),
            1 => name.clone(),
            _ => format!("./{name}"),
        };
        let rest: Vec<String> = (1..10).map(|j| value(i, j).to_string()).collect();
        csv.push_str(&format!("{},{key},{}\n", value(i, 0), rest.join(",")));
    }
    let table = t.path().join("targets.csv");
    std::fs::write(&table, &csv).unwrap();
    let array = t.path().join("targets.npy");
    let values: Vec<f32> = (0..names.len()).flat_map(|i| (0..10).map(move |j| value(i, j))).collect();
    write_npy_f32(&array, &[names.len(), 10], &values);
    let evaluate = |labels: &Path| -> assert_cmd::assert::Assert {
        swa()
            .args(["evaluate", "--model"])
            .arg(fixture("cnn/model.onnx"))
            .arg("--inputs")
            .arg(&images)
            .args(["--resize", "16", "--center-crop", "16", "--task", "regression", "--json", "--labels"])
            .arg(labels)
            .assert()
    };
    let from_table: Value = serde_json::from_slice(&evaluate(&table).success().get_output().stdout).unwrap();
    let from_array: Value = serde_json::from_slice(&evaluate(&array).success().get_output().stdout).unwrap();
    assert_eq!(from_table, from_array);
    let short: String = csv.lines().take(names.len()).map(|l| format!("{l}\n")).collect();
    std::fs::write(&table, short).unwrap();
    evaluate(&table).failure().stderr(contains("has no row for 1 of the 12 images")).stderr(contains("000.png"));
}

/// What a hostile pass found, each fixed: outputs never replace masks or files that are not an
/// `.npz`; an `images/` + `annotations/` folder that is not ADE20K keeps its values, and the
/// masks found are named; gates name a command's figures as printed and fail on its non-finite
/// outputs; Python's JSON (NaN) and a log line after the object are read; a quoted `"{outputs}"`
/// works; a damaged segmentation part that would overflow is refused; a negative ignore index
/// needs no `=`.
#[test]
fn hostile_findings_stay_fixed() {
    let t = tmp();
    let seg = t.path().join("seg");
    copy_dir(&tasks("segmentation"), &seg);
    let evaluate = |extra: &[&str]| {
        let mut c = swa();
        c.current_dir(&seg)
            .args(["evaluate", "--model", "model.onnx", "--weights", "checkpoints/epoch_003.safetensors"])
            .args(["--task", "segmentation", "--resize", "16", "--center-crop", "16"])
            .args(extra);
        c
    };
    let before = std::fs::read(seg.join("masks/eval/000.png")).unwrap();
    evaluate(&["--inputs", "images/eval", "--masks", "masks/eval", "--save-outputs", "masks/eval/000.png"])
        .assert()
        .failure()
        .stderr(contains("input"));
    evaluate(&[
        "--inputs",
        "images/eval",
        "--masks",
        "masks/eval",
        "--save-outputs",
        "checkpoints/epoch_001.safetensors",
    ])
    .assert()
    .failure()
    .stderr(contains("not an .npz"));
    assert_eq!(std::fs::read(seg.join("masks/eval/000.png")).unwrap(), before);
    // Written into a folder that does not exist yet, then replaced.
    for _ in 0..2 {
        evaluate(&["--inputs", "images/eval", "--masks", "masks/eval", "--save-outputs", "new/out.npz"])
            .assert()
            .success();
    }
    // `images/` beside `annotations/`: masks named as the images, not ADE20K's remapping.
    let custom = t.path().join("custom");
    copy_dir(&seg.join("images"), &custom.join("images"));
    copy_dir(&seg.join("masks"), &custom.join("annotations"));
    let found: Value = serde_json::from_slice(
        &evaluate(&["--inputs", custom.join("images/eval").to_str().unwrap(), "--json"])
            .assert()
            .success()
            .stderr(contains("masks from"))
            .stderr(contains("masks named as the images"))
            .get_output()
            .stdout,
    )
    .unwrap();
    let given: Value = serde_json::from_slice(
        &evaluate(&["--inputs", "images/eval", "--masks", "masks/eval", "--json"])
            .assert()
            .success()
            .get_output()
            .stdout,
    )
    .unwrap();
    assert_eq!(found["confusion"], given["confusion"]);
    // A negative ignore index, and reduce-zero by name.
    evaluate(&["--inputs", "images/eval", "--masks", "masks/eval", "--ignore-index", "-100", "--mask-map", "255:-100"])
        .assert()
        .success();
    evaluate(&["--inputs", "images/eval", "--masks", "masks/eval", "--mask-map", "reduce-zero"]).assert().success();

    // Metric commands.
    let script = t.path().join("m.py");
    std::fs::write(
        &script,
        "import json, sys\nimport numpy as np\no = np.load(sys.argv[1])\n\
         print(json.dumps({'score': 0.5, 'mAP': 0.4, 'ap_small': float('nan')}))\nprint('done')\n",
    )
    .unwrap();
    let reg = tasks("regression");
    let command = |inputs: &str, gate: &str| {
        let mut c = swa();
        c.current_dir(&reg)
            .args(["evaluate", "--model", "model.onnx", "--inputs", inputs, "--labels", "eval_targets.npy"])
            .args(["--metric-command", &format!("python3 \"{}\" \"{{outputs}}\" {{labels}}", script.display())])
            .args(["--gate", gate]);
        c
    };
    command("eval.npy", "mAP>=0.3").assert().success();
    command("eval.npy", "mAP>=0.5").assert().code(1).stderr(contains("mAP"));
    command("eval.npy", "map50>=0.5").assert().code(2).stderr(contains("printed no number `map50`"));
    // A sample with non-finite outputs fails the gate whatever the command says.
    let nan = t.path().join("nan.npy");
    let (shape, mut x) = read_npy(&reg.join("eval.npy"));
    x[..16].fill(f32::NAN);
    write_npy_f32(&nan, &shape, &x);
    command(nan.to_str().unwrap(), "score>=0").assert().code(1).stderr(contains("non-finite"));

    // A damaged part whose counts would overflow is refused.
    let p = t.path().join("p.json");
    swa()
        .current_dir(&seg)
        .args(["evaluate", "--model", "model.onnx", "--inputs", "images/eval", "--masks", "masks/eval", "--task"])
        .args(["segmentation", "--resize", "16", "--center-crop", "16", "--partial-out"])
        .arg(&p)
        .assert()
        .success();
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["counts"]["confusion"][0] = Value::from(u64::MAX);
    std::fs::write(&p, v.to_string()).unwrap();
    swa().arg("merge-eval").arg(&p).assert().code(2).stderr(contains("cannot have been counted"));
}

/// The chart spans scores that are not fractions (a negative R², a negated RMSE): every point
/// lies inside the plot.
#[test]
fn the_chart_spans_scores_outside_0_to_1() {
    let t = tmp();
    let out = t.path().join("run");
    run_tabular("regression", &out, &["--task", "regression", "--score", "rmse"]).assert().success();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let ys: Vec<f64> = html.split(" cy=\"").skip(1).map(|s| s[..s.find('"').unwrap()].parse().unwrap()).collect();
    assert!(!ys.is_empty() && ys.iter().all(|&y| (0.0..=360.0).contains(&y)), "{ys:?}");
    assert!(!html.contains("checkpoint, recalibrated"), "no such series without --recalibrate-each");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("(better)") || md.contains("(worse)"), "{md}");
}

/// A greedy soup over segmentation checkpoints is chosen by the select split's mIoU (masks from
/// `--select-masks`), and keeps an ingredient only when that does not drop.
#[test]
fn a_greedy_soup_of_segmentation_checkpoints_is_chosen_by_miou() {
    let dir = tasks("segmentation");
    let t = tmp();
    let out = t.path().join("soup.safetensors");
    let o = swa()
        .current_dir(&dir)
        .args(["soup", "--model", "model.onnx", "--checkpoints", "checkpoints", "--train-inputs", "images/train"])
        .args(["--select-inputs", "images/eval", "--select-masks", "masks/eval", "--task", "segmentation"])
        .args(["--resize", "16", "--center-crop", "16", "--batch-size", "8", "--json", "-o"])
        .arg(&out)
        .assert()
        .success();
    let s: Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    let candidates = s["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3);
    // Tried best first by mIoU alone; each kept one leaves the soup's mIoU no lower than before.
    let alone: Vec<f64> = candidates.iter().map(|c| c["select_alone"]["miou"].as_f64().unwrap()).collect();
    assert!(alone.windows(2).all(|w| w[0] >= w[1]), "{alone:?}");
    let mut current = alone[0];
    for c in &candidates[1..] {
        if c["kept"].as_bool().unwrap() {
            let now = c["select_in_soup"]["miou"].as_f64().unwrap();
            assert!(now >= current, "{c}");
            current = now;
        }
    }
    assert!((s["select"]["miou"].as_f64().unwrap() - current).abs() < 1e-12);
    assert!(out.exists());
}
