//! Checkpoint ensembles, SWAG and calibration against the PyTorch / NumPy references of
//! `fixtures/swag/make_swag_fixture.py` (the CNN fixture's 8 checkpoints; K = 5, S = 3, scale 0.5,
//! draws from `draws.npy`, update_bn over all training samples in batches of 64, which swa's
//! `--stats torch` computes), and their bad inputs.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("swag/expected.json")).unwrap()).unwrap()
}

fn cnn(rel: &str) -> PathBuf {
    fixture(&format!("cnn/{rel}"))
}

/// `swa swag` on the CNN fixture with the reference's settings (but K), plus `extra`.
fn swag(extra: &[&str]) -> assert_cmd::Command {
    let mut c = swa();
    c.args(["swag", "--model"])
        .arg(cnn("model.onnx"))
        .arg("--checkpoints")
        .arg(cnn("checkpoints"))
        .arg("--train-inputs")
        .arg(cnn("train.npy"))
        .arg("--eval-inputs")
        .arg(cnn("eval.npy"))
        .arg("--eval-labels")
        .arg(cnn("eval_labels.npy"))
        .args(["--stats", "torch", "--batch-size", "64", "--scale", "0.5", "-q"])
        .args(extra);
    c
}

fn json_of(c: &mut assert_cmd::Command) -> Value {
    let out = c.arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", combined(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn close(what: &str, got: &Value, want: &Value, tol: f64) {
    let (g, w) = (got.as_f64().unwrap_or_else(|| panic!("{what}: {got}")), want.as_f64().unwrap());
    assert!((g - w).abs() <= tol, "{what}: {g} vs PyTorch's {w} (diff {:.2e}, tolerance {tol:e})", (g - w).abs());
}

/// Every figure of an evaluation against the reference's `prefix_{nll,top1,ece,brier}`.
fn figures(what: &str, got: &Value, want: &Value, prefix: &str, tol: f64) {
    close(&format!("{what} NLL"), &got["loss"], &want[format!("{prefix}_nll")], tol);
    close(&format!("{what} top-1"), &got["top1"], &want[format!("{prefix}_top1")], 1e-12);
    close(&format!("{what} ECE"), &got["ece"], &want[format!("{prefix}_ece")], tol);
    close(&format!("{what} Brier"), &got["brier"], &want[format!("{prefix}_brier")], tol);
}

#[test]
fn swag_moments_equal_the_reference_formulas_in_swa_gaussian_layout() {
    let dir = tmp();
    let moments = dir.path().join("moments.safetensors");
    swag(&["--rank", "5", "--swag-samples", "1", "--save-moments"]).arg(&moments).assert().success();
    let reference = fixture("swag/moments.safetensors");
    let e = expected();
    let names: Vec<&str> = e["parameter_order"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap()).collect();
    assert_eq!(names.len(), 20);
    let mut worst = 0.0f64;
    for name in &names {
        for (ours, theirs) in [("mean", "mean"), ("sq_mean", "sq_mean"), ("cov_mat_sqrt", "dev")] {
            let got = values(&moments, &format!("base.{name}_{ours}"));
            let want = values(&reference, &format!("{name}.{theirs}"));
            assert_eq!(got.len(), want.len(), "{name} {ours}");
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // Written as float32, as swa_gaussian keeps them: 1e-6 relative, or of the
                // tensor's largest value where an element is near 0 (a deviation can be).
                let d = (g - w).abs();
                assert!(d <= 1e-6 * w.abs().max(1e-3 * scale), "base.{name}_{ours}[{i}]: {g} vs {w}");
                worst = worst.max(d / w.abs().max(1e-3 * scale));
            }
        }
    }
    // The layout swa_gaussian's SWAG(max_num_models=5).load_state_dict reads: n_models a long of
    // shape [1], and the base model's buffers. Its own float32 recurrence is ≤ 2e-7 from the f64
    // formulas (ours are rounded once, from f64).
    assert_close(&moments, &fixture("swag/moments_swag_layout.safetensors"), 1e-6, 3e-7, |_| true);
    let (header, _) = header_of(&moments);
    assert_eq!(header["n_models"]["shape"], serde_json::json!([1]));
    assert_eq!(header["n_models"]["dtype"], "I64");
    eprintln!("SWAG moments within {worst:.1e} relative of the f64 formulas");
}

#[test]
fn samples_from_given_draws_equal_the_formula_refit_like_update_bn_and_average_like_pytorch() {
    let dir = tmp();
    let samples = dir.path().join("samples");
    let e = expected();
    let v = json_of(
        swag(&["--rank", "5", "--swag-samples", "3", "--draws"])
            .arg(fixture("swag/draws.npy"))
            .arg("--save-samples")
            .arg(&samples),
    );
    let first = samples.join("sample_000.safetensors");
    // θ = mean + √scale (√var ⊙ z1 + Dᵀz2/√(K−1)) from float32 moments, cast to float32.
    assert_close(&first, &fixture("swag/sample_0.safetensors"), 2e-6, 1e-7, |_| true);
    // Its statistics refitted as update_bn refits them.
    assert_close(&first, &fixture("swag/sample_0_bn.safetensors"), 1e-4, 1e-6, |n| n.contains("running"));
    figures("SWAG model average", &v["evaluation"], &e, "bma", 1e-5);
    assert_eq!(v["rank"], 5);
    assert_eq!(std::fs::read_dir(&samples).unwrap().count(), 3);

    // SWAG-diagonal from the same file's first P columns.
    let diag = dir.path().join("diag");
    let v = json_of(
        swag(&["--swag-samples", "3", "--diag", "--draws"])
            .arg(fixture("swag/draws.npy"))
            .arg("--save-samples")
            .arg(&diag),
    );
    assert_close(&diag.join("sample_000.safetensors"), &fixture("swag/sample_0_diag.safetensors"), 2e-6, 1e-7, |_| {
        true
    });
    figures("SWAG-diagonal model average", &v["evaluation"], &e, "bma_diag", 1e-5);
    assert_eq!(v["rank"], 0);
}

#[test]
fn the_ensemble_equals_the_mean_of_pytorch_softmaxes_stored_and_recalibrated() {
    let e = expected();
    let mut c = swa();
    c.args(["ensemble", "--model"])
        .arg(cnn("model.onnx"))
        .arg("--checkpoints")
        .arg(cnn("checkpoints"))
        .arg("--eval-inputs")
        .arg(cnn("eval.npy"))
        .arg("--eval-labels")
        .arg(cnn("eval_labels.npy"))
        .arg("--train-inputs")
        .arg(cnn("train.npy"))
        .args(["--stats", "torch", "--batch-size", "64", "-q"]);
    let v = json_of(&mut c);
    figures("ensemble (stored statistics)", &v["stored"], &e, "ensemble", 1e-6);
    figures("ensemble (recalibrated)", &v["recalibrated"], &e, "ensemble_recalibrated", 1e-5);
    assert_eq!(v["members"].as_array().unwrap().len(), 8);
    assert_eq!(v["passes"], 24);
}

#[test]
fn ensemble_probabilities_equal_pytorch_within_1e_6() {
    use swa::evaluate::EvalOptions;
    let model = cnn("model.onnx");
    let binder = swa::onnx::bind::Binder::load(&model).unwrap();
    let mut eval = EvalOptions::new(cnn("eval.npy"), cnn("eval_labels.npy"));
    eval.quiet = true;
    let mut mean = swa::ensemble::mean_for(&eval).unwrap();
    for n in 1..=8 {
        let ck = swa::inputs::open_checkpoint(cnn(&format!("checkpoints/epoch_{n:03}.safetensors")), None).unwrap();
        let bound = binder.bind(Some(ck), false).unwrap();
        swa::ensemble::member(&bound.model, &eval, &mut mean).unwrap();
    }
    let got = mean.mean().unwrap();
    let want = swa::inputs::npy::open_npy(&fixture("swag/ensemble_probs.npy")).unwrap().f64_values();
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-6, "ensemble probabilities {worst:e} from PyTorch's");
}

#[test]
fn ece_brier_and_nll_equal_the_numpy_reference_within_1e_9() {
    let e = expected();
    let logits = swa::inputs::npy::open_npy(&cnn("expected/swa_logits.npy")).unwrap();
    let labels = swa::inputs::open_labels(&cnn("eval_labels.npy")).unwrap();
    let mut state = swa::tasks::Classification { k: 5, score: None }.state();
    state.add(&logits.f32_rows(0, logits.len()), 10, &labels, Path::new("y.npy")).unwrap();
    let m = state.finish();
    close("ECE", &m.calibration.ece.into(), &e["swa_ece"], 1e-9);
    close("Brier", &m.calibration.brier.into(), &e["swa_brier"], 1e-9);
    close("NLL", &m.loss.into(), &e["swa_nll"], 1e-9);
    assert_eq!(m.calibration.reliability.len(), 15);
    assert_eq!(m.calibration.reliability.iter().map(|b| b.samples).sum::<usize>(), 300);
}

#[test]
fn the_fitted_temperature_equals_an_f64_pytorch_fit() {
    let e = &expected()["temperature_torch_stats"];
    let mut c = evaluate_model(&cnn("model.onnx"), &cnn("eval.npy"), &cnn("eval_labels.npy"), &[]);
    c.arg("--weights")
        .arg(cnn("expected/swa_bn_torch.safetensors"))
        .args(["--temperature", "fit", "--calibration-inputs"])
        .arg(cnn("select.npy"))
        .arg("--calibration-labels")
        .arg(cnn("select_labels.npy"));
    let v = json_of(&mut c);
    close("temperature", &v["temperature"]["value"], &e["temperature"], 1e-4);
    close("NLL after, calibration set", &v["temperature"]["fit"]["nll_after"], &e["calibration_nll_after"], 1e-5);
    close("NLL after, held out", &v["loss"], &e["eval_nll_after"], 1e-5);
    close("ECE after, held out", &v["ece"], &e["eval_ece_after"], 1e-5);
    assert!(v["temperature"]["before"]["loss"].as_f64().unwrap() > v["loss"].as_f64().unwrap());
}

#[test]
fn swag_parts_merge_into_the_whole_model_average() {
    let dir = tmp();
    let whole = json_of(&mut swag(&["--rank", "5", "--swag-samples", "4"]));
    let mut parts = Vec::new();
    for i in 0..3 {
        let p = dir.path().join(format!("p{i}.npz"));
        swag(&["--rank", "5", "--swag-samples", "4", "--part", &format!("{i}/3"), "--partial-out"])
            .arg(&p)
            .assert()
            .success();
        parts.push(p);
    }
    let mut merge = swa();
    merge.arg("merge-eval").args(parts.iter().rev());
    let merged = json_of(&mut merge);
    for f in ["loss", "ece", "brier", "top1"] {
        close(f, &merged[f], &whole["evaluation"][f], 1e-12);
    }
    // A part missing, or given twice, is refused.
    let out = swa().arg("merge-eval").args(&parts[..2]).output().unwrap();
    assert!(combined(&out).contains("every sample must be drawn by exactly one part"), "{}", combined(&out));
    let out = swa().arg("merge-eval").args([&parts[0], &parts[0], &parts[1], &parts[2]]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn run_reports_swa_ensemble_swag_and_temperature_and_writes_the_division_into_the_onnx() {
    let dir = tmp();
    let out = dir.path().join("run");
    run_cnn(
        &cnn("checkpoints"),
        &out,
        &[
            "--from",
            "4",
            "--ensemble",
            "--swag",
            "--swag-samples",
            "3",
            "--temperature",
            "fit",
            "--temperature-in-onnx",
            "-q",
        ],
    )
    .arg("--calibration-inputs")
    .arg(cnn("select.npy"))
    .arg("--calibration-labels")
    .arg(cnn("select_labels.npy"))
    .assert()
    .success();
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let rows = report["comparison"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for want in [
        "best checkpoint",
        "SWA, recalibrated",
        "temperature",
        "ensemble of 5, stored",
        "ensemble of 5, recalibrated",
        "SWAG (rank 5), 3 samples",
    ] {
        assert!(names.iter().any(|n| n.contains(want)), "{want} not in {names:?}");
    }
    let swag = rows.iter().find(|r| r["name"].as_str().unwrap().starts_with("SWAG")).unwrap();
    assert_eq!((swag["passes"].as_u64(), swag["models"].as_u64()), (Some(6), Some(3)));
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("## SWA, ensemble or SWAG?"));
    // model_swa.onnx divides its logits by T: evaluated, it gives the temperature row's figures.
    let tempered = rows.iter().find(|r| r["name"].as_str().unwrap().contains("temperature")).unwrap();
    let v = json_of(&mut evaluate_model(&out.join("model_swa.onnx"), &cnn("eval.npy"), &cnn("eval_labels.npy"), &[]));
    close("NLL of model_swa.onnx", &v["loss"], &tempered["score"]["loss"], 1e-6);
    let t = report["temperature"]["temperature"].as_f64().unwrap();
    assert!(t > 0.0 && t < 1.0, "{t}");
}

#[test]
fn bad_settings_and_inputs_are_refused_with_nothing_written() {
    let dir = tmp();
    let moments = dir.path().join("m.safetensors");
    let refuse = |args: &[&str], message: &str| {
        let out = swag(args).arg("--save-moments").arg(&moments).output().unwrap();
        let text = combined(&out);
        assert!(!out.status.success() && text.contains(message), "{args:?}: {text}");
        assert!(!moments.exists(), "{args:?} wrote the moments");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{args:?} left files");
    };
    refuse(&["--rank", "0"], "--rank");
    refuse(&["--rank", "9"], "more deviations than the 8 checkpoints");
    refuse(&["--swag-samples", "0"], "--swag-samples");
    refuse(&["--swag-samples", "2", "--part", "2/3", "--partial-out", "p.npz"], "a part would draw none");
    refuse(&["--last", "1"], "at least two checkpoints");
    refuse(&["--scale", "nan"], "--scale");
    refuse(&["--draws", "fixtures/cnn/eval_labels.npy"], "holds draws of shape");
    // A checkpoint with a NaN: the error names it, and the tensor.
    let cks = dir.path().join("cks");
    std::fs::create_dir(&cks).unwrap();
    for n in 1..=3 {
        std::fs::copy(
            cnn(&format!("checkpoints/epoch_{n:03}.safetensors")),
            cks.join(format!("epoch_{n:03}.safetensors")),
        )
        .unwrap();
    }
    let bad = cks.join("epoch_002.safetensors");
    let (header, mut data) = header_of(&bad);
    let at = header["fc.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    data[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    write_with_header(&bad, &header, &data);
    let mut c = swa();
    c.args(["swag", "--model"]).arg(cnn("model.onnx")).arg("--checkpoints").arg(&cks);
    c.arg("--train-inputs").arg(cnn("train.npy")).arg("--eval-inputs").arg(cnn("eval.npy"));
    c.arg("--eval-labels").arg(cnn("eval_labels.npy")).arg("--save-moments").arg(&moments);
    let out = c.output().unwrap();
    let text = combined(&out);
    assert!(
        text.contains("epoch_002.safetensors") && text.contains("fc.weight") && text.contains("not be finite"),
        "{text}"
    );
    assert!(!moments.exists());
    // Temperature: a calibration set of one class, a temperature on another task.
    let one = dir.path().join("one.npy");
    write_npy_i64(&one, &[3; 150]);
    let out = evaluate_model(&cnn("model.onnx"), &cnn("eval.npy"), &cnn("eval_labels.npy"), &["--temperature", "fit"])
        .arg("--calibration-inputs")
        .arg(cnn("select.npy"))
        .arg("--calibration-labels")
        .arg(&one)
        .output()
        .unwrap();
    assert!(combined(&out).contains("one class"), "{}", combined(&out));
    let out = evaluate_model(&cnn("model.onnx"), &cnn("eval.npy"), &cnn("eval_labels.npy"), &["--temperature", "fit"])
        .output()
        .unwrap();
    assert!(combined(&out).contains("--calibration-inputs"), "{}", combined(&out));
    // An ensemble of one.
    let out = swa()
        .args(["ensemble", "--model"])
        .arg(cnn("model.onnx"))
        .arg("--checkpoints")
        .arg(cnn("checkpoints"))
        .args(["--last", "1", "--eval-inputs"])
        .arg(cnn("eval.npy"))
        .arg("--eval-labels")
        .arg(cnn("eval_labels.npy"))
        .output()
        .unwrap();
    assert!(combined(&out).contains("at least two checkpoints"), "{}", combined(&out));
}

#[test]
fn outputs_never_overwrite_inputs_and_tampered_or_foreign_parts_are_refused() {
    let dir = tmp();
    // An output over a checkpoint, or two outputs on one path: refused before any work.
    let ck = dir.path().join("cks");
    std::fs::create_dir(&ck).unwrap();
    for n in 7..=8 {
        std::fs::copy(
            cnn(&format!("checkpoints/epoch_{n:03}.safetensors")),
            ck.join(format!("epoch_{n:03}.safetensors")),
        )
        .unwrap();
    }
    let target = ck.join("epoch_008.safetensors");
    let before = std::fs::read(&target).unwrap();
    let mut c = swa();
    c.args(["swag", "--model"]).arg(cnn("model.onnx")).arg("--checkpoints").arg(&ck);
    c.arg("--train-inputs").arg(cnn("train.npy")).arg("--eval-inputs").arg(cnn("eval.npy"));
    c.arg("--eval-labels").arg(cnn("eval_labels.npy")).args(["--swag-samples", "2", "--save-moments"]).arg(&target);
    let out = c.output().unwrap();
    assert!(combined(&out).contains("is also an input"), "{}", combined(&out));
    assert_eq!(std::fs::read(&target).unwrap(), before);
    let same = dir.path().join("x.npz");
    let out = swag(&["--swag-samples", "2", "--part", "0/2", "--partial-out"])
        .arg(&same)
        .arg("--save-moments")
        .arg(&same)
        .output()
        .unwrap();
    assert!(combined(&out).contains("named twice"), "{}", combined(&out));

    // A part of another evaluation set (same size, other samples) does not merge.
    let p0 = dir.path().join("p0.npz");
    let p1 = dir.path().join("p1.npz");
    swag(&["--swag-samples", "2", "--part", "0/2", "--partial-out"]).arg(&p0).assert().success();
    let mut other = swa();
    other.args(["swag", "--model"]).arg(cnn("model.onnx")).arg("--checkpoints").arg(cnn("checkpoints"));
    other.arg("--train-inputs").arg(cnn("train.npy")).arg("--eval-inputs").arg(cnn("test.npy"));
    other.arg("--eval-labels").arg(cnn("test_labels.npy"));
    other.args([
        "--stats",
        "torch",
        "--batch-size",
        "64",
        "--scale",
        "0.5",
        "-q",
        "--swag-samples",
        "2",
        "--part",
        "1/2",
    ]);
    other.arg("--partial-out").arg(&p1).assert().success();
    let out = swa().arg("merge-eval").args([&p0, &p1]).output().unwrap();
    assert!(combined(&out).contains("another SWAG run"), "{}", combined(&out));

    // A part edited to name a sample far out of range is refused, not a panic.
    let arrays = swa::inputs::npy::open_npz(&p0).unwrap();
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for a in &arrays {
        let values: Vec<u8> = a.f32_rows(0, a.len()).iter().map(|&v| v as u8).collect();
        if a.name == "info" {
            let mut info: Value = serde_json::from_slice(&values).unwrap();
            info["mean"]["batches"][0][0] = serde_json::json!(1_000_000);
            let json = serde_json::to_vec(&info).unwrap();
            members
                .push(("info".into(), swa::inputs::npy::npy_bytes(&[json.len()], swa::inputs::npy::Data::U8(&json))));
        } else if a.name == "sums" {
            members.push((
                "sums".into(),
                swa::inputs::npy::npy_bytes(&a.shape, swa::inputs::npy::Data::F64(&a.f64_values())),
            ));
        } else {
            let v = a.i64_rows(0, a.len());
            members.push((a.name.clone(), swa::inputs::npy::npy_bytes(&a.shape, swa::inputs::npy::Data::I64(&v))));
        }
    }
    let named: Vec<(&str, Vec<u8>)> = members.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let bad = dir.path().join("bad.npz");
    std::fs::write(&bad, swa::inputs::npy::npz_bytes(&named).unwrap()).unwrap();
    let out = swa().arg("merge-eval").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
    assert!(combined(&out).contains("out of range"), "{}", combined(&out));
}

#[test]
fn an_ensemble_member_with_non_finite_outputs_is_counted_not_hidden() {
    let dir = tmp();
    let cks = dir.path().join("cks");
    std::fs::create_dir(&cks).unwrap();
    for n in 7..=8 {
        std::fs::copy(
            cnn(&format!("checkpoints/epoch_{n:03}.safetensors")),
            cks.join(format!("epoch_{n:03}.safetensors")),
        )
        .unwrap();
    }
    let bad = cks.join("epoch_007.safetensors");
    let (header, mut data) = header_of(&bad);
    let at = header["conv1.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    data[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    write_with_header(&bad, &header, &data);
    let mut c = swa();
    c.args(["ensemble", "--model"]).arg(cnn("model.onnx")).arg("--checkpoints").arg(&cks);
    c.arg("--eval-inputs").arg(cnn("eval.npy")).arg("--eval-labels").arg(cnn("eval_labels.npy")).arg("-q");
    let v = json_of(&mut c);
    assert_eq!(v["stored"]["nonfinite"], 300, "{}", v["stored"]);
}

#[test]
fn a_soup_fits_its_temperature_on_the_select_split_and_writes_it_into_its_onnx() {
    let dir = tmp();
    let soup = |extra: &[&str]| {
        let mut c = swa();
        c.args(["soup", "--model"]).arg(cnn("model.onnx")).arg("--checkpoints").arg(cnn("checkpoints"));
        c.arg("--train-inputs").arg(cnn("train.npy")).arg("--select-inputs").arg(cnn("select.npy"));
        c.arg("--select-labels").arg(cnn("select_labels.npy")).arg("--eval-inputs").arg(cnn("test.npy"));
        c.arg("--eval-labels").arg(cnn("test_labels.npy")).args(["--method", "greedy", "-q"]).args(extra);
        c
    };
    let plain = dir.path().join("plain.onnx");
    let v = json_of(
        soup(&["--temperature", "fit", "-o"]).arg(dir.path().join("a.safetensors")).arg("--onnx-out").arg(&plain),
    );
    let t = v["temperature"]["value"].as_f64().unwrap();
    // The same fit as `swa evaluate --temperature fit` on the soup's own model and select split.
    let mut e = evaluate_model(&plain, &cnn("test.npy"), &cnn("test_labels.npy"), &["--temperature", "fit"]);
    e.arg("--calibration-inputs").arg(cnn("select.npy")).arg("--calibration-labels").arg(cnn("select_labels.npy"));
    let ev = json_of(&mut e);
    close("temperature", &ev["temperature"]["value"], &v["temperature"]["value"], 1e-9);
    close("test NLL with T", &ev["loss"], &v["temperature"]["eval"]["loss"], 1e-9);
    // Written into the ONNX output when asked: evaluated as is, it gives the tempered figures.
    let scaled = dir.path().join("scaled.onnx");
    soup(&["--temperature", &t.to_string(), "--temperature-in-onnx", "-o"])
        .arg(dir.path().join("b.safetensors"))
        .arg("--onnx-out")
        .arg(&scaled)
        .assert()
        .success();
    let sv = json_of(&mut evaluate_model(&scaled, &cnn("test.npy"), &cnn("test_labels.npy"), &[]));
    close("test NLL of the scaled ONNX", &sv["loss"], &v["temperature"]["eval"]["loss"], 1e-6);
}
