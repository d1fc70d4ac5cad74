//! `swa recalibrate` against torch.optim.swa_utils.update_bn, a float64 pooled-statistics
//! reference, and PyTorch's eval-mode logits.

use std::path::Path;

use crate::common::*;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use swa::onnx::Model;

fn stats(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// The `swa recalibrate --json` command for `weights` bound into `model` over `inputs`, batches
/// of 32, writing `out.onnx` and `out.safetensors` into `dir`.
fn recalibrate_cmd(model: &Path, weights: &Path, inputs: &Path, dir: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = swa();
    cmd.args(["recalibrate", "--batch-size", "32", "--json", "--model"])
        .arg(model)
        .arg("--weights")
        .arg(weights)
        .arg("--inputs")
        .arg(inputs)
        .arg("-o")
        .arg(dir.join("out.onnx"))
        .arg("--save-weights")
        .arg(dir.join("out.safetensors"))
        .args(extra);
    cmd
}

/// Runs [`recalibrate_cmd`]; returns the JSON summary.
fn recalibrate_with(model: &Path, weights: &Path, inputs: &Path, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let a = recalibrate_cmd(model, weights, inputs, dir, extra).assert().success();
    serde_json::from_slice(&a.get_output().stdout).unwrap()
}

/// [`recalibrate_with`] on a fixture's model, SWA average and training inputs.
fn recalibrate(model: &str, stats_mode: &str, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let f = |rel: &str| fixture(&format!("{model}/{rel}"));
    let extra = [&["--stats", stats_mode][..], extra].concat();
    recalibrate_with(&f("model.onnx"), &f("expected/swa_average.safetensors"), &f("train.npy"), dir, &extra)
}

/// Logits of an ONNX model on an input file, through ONNX Runtime.
fn logits(model: &Path, inputs: &Path) -> (Vec<usize>, Vec<f32>) {
    logits_via(model, inputs, false)
}

/// [`logits`], the session opened from external data in a temporary directory when `external`.
fn logits_via(model: &Path, inputs: &Path, external: bool) -> (Vec<usize>, Vec<f32>) {
    let m = Model::load(model).unwrap();
    let engine = swa::runtime::Engine { threads: std::num::NonZeroUsize::new(1), ..Default::default() };
    let mut session = swa::runtime::session_for(&m, &engine, external).unwrap();
    let (shape, x) = read_npy(inputs);
    let mut dims = vec![shape[0] as i64];
    dims.extend(shape[1..].iter().map(|&d| d as i64));
    let out = session.run(ort::inputs!["input" => ort::value::Tensor::from_array((dims, x)).unwrap()]).unwrap();
    let (s, v) = out["logits"].try_extract_tensor::<f32>().unwrap();
    (s.iter().map(|&d| d as usize).collect(), v.to_vec())
}

#[test]
fn concurrent_sessions_return_every_batch_in_file_order() {
    let m = Model::load(fixture("cnn/model.onnx")).unwrap();
    let engine = swa::runtime::Engine { threads: std::num::NonZeroUsize::new(1), ..Default::default() };
    let input = fixture("cnn/eval.npy");
    let specs = swa::onnx::input_specs(&m).unwrap();
    let data = swa::inputs::Samples::open(&input, &specs, &Default::default()).unwrap();
    let (want_shape, want) = logits(&fixture("cnn/model.onnx"), &input);
    let samples = want_shape[0];
    let mut sessions = swa::runtime::sessions_for(&m, &engine, false, 3).unwrap();
    assert_eq!(sessions.len(), 3);
    let (mut sizes, mut got) = (Vec::new(), Vec::new());
    let bar = indicatif::ProgressBar::hidden();
    swa::runtime::run_batches(
        &mut sessions,
        &specs,
        data.batches(0..samples, 7).unwrap(),
        &["logits"],
        &bar,
        |batch, out| {
            let indices = batch.indices;
            let n = indices.len();
            assert_eq!(indices, (sizes.iter().sum::<usize>()..sizes.iter().sum::<usize>() + n).collect::<Vec<_>>());
            assert_eq!(out[0].shape, [n as i64, want_shape[1] as i64]);
            sizes.push(n);
            got.extend_from_slice(&out[0].data);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(sizes.len(), samples.div_ceil(7));
    assert!(sizes[..sizes.len() - 1].iter().all(|&n| n == 7) && sizes.iter().sum::<usize>() == samples);
    assert_eq!(bar.position(), samples as u64);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "logit {i}: {a} in batches of 7 vs {b} in one batch");
    }
    // An error from one batch stops the pass (no hang with batches still in flight).
    let mut seen = 0;
    let err = swa::runtime::run_batches(
        &mut sessions,
        &specs,
        data.batches(0..samples, 7).unwrap(),
        &["logits"],
        &bar,
        |_, _| {
            seen += 1;
            if seen == 2 {
                return Err(swa::Error::usage("stop here"));
            }
            Ok(())
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("stop here") && seen == 2);
}

#[test]
fn torch_mode_matches_update_bn_cnn_and_mlp() {
    for model in ["cnn", "mlp"] {
        let dir = tmp();
        let s = recalibrate(model, "torch", dir.path(), &[]);
        let expected = fixture(&format!("{model}/expected/swa_bn_torch.safetensors"));
        assert_close(&dir.path().join("out.safetensors"), &expected, 1e-4, 1e-6, stats);
        // Everything else is the average itself, and num_batches_tracked counts the batches.
        assert_close(&dir.path().join("out.safetensors"), &expected, 0.0, 1e-6, |n| !stats(n));
        let batches = summary(model)["train_samples"].as_u64().unwrap().div_ceil(32);
        assert_eq!(s["batches"], batches);
        assert_eq!(s["layers"].as_array().unwrap().len(), if model == "cnn" { 6 } else { 2 });
    }
}

#[test]
fn every_statistics_graph_layout_matches_update_bn() {
    // The CPU runs `moments` by default and CUDA `split`; all of them are checked here, on the CPU.
    let f = |rel: &str| fixture(&format!("cnn/{rel}"));
    for layout in ["moments", "training", "centered", "flat", "split", "square"] {
        let dir = tmp();
        let (average, inputs) = (f("expected/swa_average.safetensors"), f("train.npy"));
        recalibrate_cmd(&f("model.onnx"), &average, &inputs, dir.path(), &["--stats", "torch"])
            .env("SWA_STATS_REDUCTION", layout)
            .assert()
            .success();
        assert_close(&dir.path().join("out.safetensors"), &f("expected/swa_bn_torch.safetensors"), 1e-4, 1e-6, stats);
    }
}

#[test]
fn the_cpu_statistics_graph_uses_swas_moments_operator() {
    use swa::onnx::bn::{find, stats_model, Reduction};
    let m = Model::load(fixture("bn/bn3d.onnx")).unwrap();
    let layers = find(&m).unwrap();
    let (g, layout) = stats_model(&m, &layers, Reduction::for_device(false)).unwrap();
    let moments: Vec<_> = g.graph().node.iter().filter(|n| n.op_type() == "BatchMoments").collect();
    assert_eq!(moments.len(), layers.len());
    assert!(moments.iter().all(|n| n.domain() == "ai.swa" && n.input.len() == 3 && n.output.len() == 4));
    assert!(g.proto.opset_import.iter().any(|o| o.domain() == "ai.swa" && o.version() == 1));
    // The operator normalises in place of each BatchNormalization, and applies the Relu that
    // was its only consumer (both BNs of this model have one).
    assert!(!g.graph().node.iter().any(|n| ["BatchNormalization", "Relu"].contains(&n.op_type())));
    let relu = |n: &&&swa::onnx::NodeProto| n.attribute.iter().any(|a| a.name() == "relu" && a.i() == 1);
    assert_eq!(moments.iter().filter(relu).count(), 2);
    // On a residual network it also takes in the Add after a layer (with the Add's other input)
    // and the Relu after that.
    let cnn = Model::load(fixture("cnn/model_dynamo.onnx")).unwrap();
    let (g, _) = stats_model(&cnn, &find(&cnn).unwrap(), Reduction::for_device(false)).unwrap();
    let ops: Vec<&str> = g.graph().node.iter().map(|n| n.op_type()).collect();
    assert!(!ops.iter().any(|o| ["BatchNormalization", "Add", "Relu"].contains(o)), "{ops:?}");
    assert_eq!(g.graph().node.iter().filter(|n| n.op_type() == "BatchMoments" && n.input.len() == 4).count(), 2);
    assert_eq!(layout.offsets.len(), layers.len());
    // CUDA keeps the reductions (its provider would copy every activation to the host for it).
    let (g, _) = stats_model(&m, &layers, Reduction::for_device(true)).unwrap();
    assert!(!g.graph().node.iter().any(|n| n.op_type() == "BatchMoments"));
}

#[test]
fn output_onnx_gives_pytorch_eval_logits() {
    let dir = tmp();
    recalibrate("cnn", "torch", dir.path(), &[]);
    let (shape, got) = logits(&dir.path().join("out.onnx"), &fixture("cnn/eval.npy"));
    let (eshape, want) = read_npy(&fixture("cnn/expected/swa_logits.npy"));
    assert_eq!(shape, eshape);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "logit {i}: {a} vs PyTorch {b}");
    }
    // The statistics are baked in under the checkpoint's names, one initializer per layer.
    let m = Model::load(dir.path().join("out.onnx")).unwrap();
    let names: Vec<&str> = m.graph().initializer.iter().map(|t| t.name()).collect();
    assert!(names.contains(&"layer1.0.bn1.running_mean") && names.contains(&"layer2.0.shortcut.1.running_var"));
    assert!(m.proto.metadata_props.iter().any(|p| p.key() == "swa.recalibration" && p.value() == "torch"));
}

#[test]
fn precise_mode_matches_float64_pooled_statistics() {
    for model in ["cnn", "mlp"] {
        let dir = tmp();
        recalibrate(model, "precise", dir.path(), &[]);
        assert_close(
            &dir.path().join("out.safetensors"),
            &fixture(&format!("{model}/expected/swa_bn_precise.safetensors")),
            1e-4,
            1e-6,
            stats,
        );
    }
}

#[test]
fn npz_inputs_and_max_samples() {
    let dir = tmp();
    let npy = dir.path().join("npy");
    let npz = dir.path().join("npz");
    std::fs::create_dir_all(&npy).unwrap();
    std::fs::create_dir_all(&npz).unwrap();
    recalibrate("cnn", "precise", &npy, &["--max-samples", "96"]);
    let s = recalibrate_with(
        &fixture("cnn/model.onnx"),
        &fixture("cnn/expected/swa_average.safetensors"),
        &fixture("cnn/train.npz"),
        &npz,
        &["--max-samples", "96"],
    );
    assert_eq!(s["samples"], 96);
    assert_close(&npz.join("out.safetensors"), &npy.join("out.safetensors"), 0.0, 0.0, |_| true);
}

/// `--max-samples N` draws N samples uniformly at random (seeded, the draw documented in
/// `swa::inputs::samples::subset`), not the first N; `--shuffle` reads the batches in a shuffled
/// order. Each equals a plain pass over an array holding exactly those rows in that order, bit
/// for bit, and the summary and `--json` say what was drawn and the seed.
#[test]
fn max_samples_draws_at_random_and_shuffle_orders_the_batches() {
    use swa::inputs::Sampling;
    let dir = tmp();
    let train = fixture("cnn/train.npy");
    let (shape, values) = read_npy(&train);
    let (n, per) = (shape[0], shape[1..].iter().product::<usize>());
    let f = |rel: &str| fixture(&format!("cnn/{rel}"));
    for (stats, take, seed, shuffle) in
        [("precise", Some(96), 0, false), ("torch", Some(96), 7, true), ("torch", None, 3, true)]
    {
        let sampling = Sampling::new(n, take, seed, shuffle).unwrap();
        let order = sampling.order().unwrap();
        assert!(take.is_none() || order != (0..96).collect::<Vec<_>>());
        let rows: Vec<f32> = order.iter().flat_map(|&i| values[i * per..(i + 1) * per].iter().copied()).collect();
        let subset = dir.path().join(format!("subset_{seed}.npy"));
        let mut sub_shape = shape.clone();
        sub_shape[0] = order.len();
        write_npy_f32(&subset, &sub_shape, &rows);
        let (drawn, plain) = (dir.path().join(format!("drawn_{seed}")), dir.path().join(format!("plain_{seed}")));
        std::fs::create_dir_all(&drawn).unwrap();
        std::fs::create_dir_all(&plain).unwrap();
        let mut args = vec!["--stats", stats, "--seed"];
        let seed_s = seed.to_string();
        args.push(&seed_s);
        let take_s = take.map(|t| t.to_string());
        if let Some(t) = &take_s {
            args.extend(["--max-samples", t]);
        }
        if shuffle {
            args.push("--shuffle");
        }
        let s = recalibrate_with(&f("model.onnx"), &f("expected/swa_average.safetensors"), &train, &drawn, &args);
        assert_eq!(s["samples"], order.len());
        assert_eq!(
            s["sampling"],
            serde_json::json!({"drawn": order.len(), "of": n, "seed": seed, "shuffled": shuffle})
        );
        assert!(s["preprocessing"].as_str().unwrap().contains(&format!("(seed {seed})")), "{s}");
        recalibrate_with(
            &f("model.onnx"),
            &f("expected/swa_average.safetensors"),
            &subset,
            &plain,
            &["--stats", stats],
        );
        assert_close(&drawn.join("out.safetensors"), &plain.join("out.safetensors"), 0.0, 0.0, |_| true);
    }
    // The text summary says it too.
    let out = swa()
        .args(["recalibrate", "--max-samples", "96", "--model"])
        .arg(f("model.onnx"))
        .arg("--inputs")
        .arg(&train)
        .arg("-o")
        .arg(dir.path().join("text.onnx"))
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains(&format!("96 of {n} samples drawn at random (seed 0)")), "{text}");
    // More than there are: all of them, said.
    let many = (n + 1).to_string();
    recalibrate_cmd(
        &f("model.onnx"),
        &f("expected/swa_average.safetensors"),
        &train,
        dir.path(),
        &["--max-samples", &many],
    )
    .assert()
    .success()
    .stderr(contains(format!("max_samples {many} is more than its {n} samples: all of them are used")));
}

#[test]
fn without_weights_recalibrates_the_models_own_initializers() {
    // The fixture model is freshly initialised: every BN shares one deduplicated mean/var.
    let dir = tmp();
    let out = dir.path().join("own.onnx");
    let saved = dir.path().join("own.safetensors");
    swa()
        .args(["recalibrate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(fixture("cnn/train.npy"))
        .arg("-o")
        .arg(&out)
        .arg("--save-weights")
        .arg(&saved)
        .assert()
        .success()
        .stdout(contains("6 BatchNorm layers"));
    let a = values(&saved, "layer1.0.bn1.running_var");
    let b = values(&saved, "layer1.0.bn2.running_var");
    assert_ne!(a, b);
    assert!(a.iter().all(|v| *v > 0.0 && *v != 1.0));
}

#[test]
fn cuda_without_a_cuda_runtime_is_an_error_not_a_fallback() {
    let dir = tmp();
    swa()
        .args(["recalibrate", "--device", "cuda", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(fixture("mlp/train.npy"))
        .arg("-o")
        .arg(dir.path().join("out.onnx"))
        .assert()
        .code(2)
        .stderr(contains("--device cuda:0"))
        .stderr(contains("CUDA"));
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn sessions_open_from_external_data_like_models_over_2_gib() {
    let (model, x) = (fixture("cnn/model.onnx"), fixture("cnn/eval.npy"));
    assert_eq!(logits_via(&model, &x, true), logits_via(&model, &x, false));
}

#[test]
fn external_data_models_are_read_and_recalibrated() {
    let dir = tmp();
    let external = dir.path().join("external.onnx");
    Model::load(fixture("cnn/model.onnx")).unwrap().save_with(&external, true).unwrap();
    assert!(dir.path().join("external.onnx.data").exists());
    assert!(std::fs::metadata(&external).unwrap().len() < 20_000, "initializers should live in the .data file");
    let a = Model::load(&external).unwrap();
    let b = Model::load(fixture("cnn/model.onnx")).unwrap();
    let names = |m: &Model| {
        m.graph()
            .initializer
            .iter()
            .map(|t| (t.name().to_string(), swa::onnx::tensor_data(t).unwrap().2))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b));
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let average = fixture("cnn/expected/swa_average.safetensors");
    recalibrate_with(&external, &average, &fixture("cnn/train.npy"), &out, &["--stats", "torch"]);
    assert_close(&out.join("out.safetensors"), &fixture("cnn/expected/swa_bn_torch.safetensors"), 1e-4, 1e-6, stats);
}

#[test]
fn binds_through_wrapper_prefixes_and_keeps_the_checkpoints_names() {
    let dir = tmp();
    // A DataParallel + torch.compile state_dict: `module._orig_mod.` before every key.
    let src = swa::checkpoint::Checkpoint::open(fixture("cnn/expected/swa_average.safetensors")).unwrap();
    let tensors: Vec<_> = src
        .tensors()
        .iter()
        .map(|t| {
            let spec = swa::checkpoint::TensorSpec {
                name: format!("module._orig_mod.{}", t.name),
                dtype: t.dtype,
                shape: t.shape.clone(),
            };
            (spec, src.bytes(t).to_vec())
        })
        .collect();
    let wrapped = dir.path().join("wrapped.safetensors");
    swa::checkpoint::write_tensors(&wrapped, &tensors, &Default::default()).unwrap();
    let out = dir.path().join("out.safetensors");
    let s = recalibrate_with(
        &fixture("cnn/model.onnx"),
        &wrapped,
        &fixture("cnn/train.npy"),
        dir.path(),
        &["--stats", "torch"],
    );
    assert_eq!(s["bound"], 32);
    let expected = fixture("cnn/expected/swa_bn_torch.safetensors");
    let want = values(&expected, "layer1.0.bn2.running_var");
    let got = values(&out, "module._orig_mod.layer1.0.bn2.running_var");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4 * w.abs() + 1e-6, "{g} vs {w}");
    }
    let c = swa::checkpoint::Checkpoint::open(&out).unwrap();
    let n = c.get("module._orig_mod.bn1.num_batches_tracked").unwrap();
    assert_eq!(c.bytes(n), 16i64.to_le_bytes());
}

#[test]
fn models_from_the_torch_export_based_exporter() {
    // dynamo=True, optimize=False: other node names, no Identity aliases, weights as external data.
    let dir = tmp();
    let (model, average) = (fixture("cnn/model_dynamo.onnx"), fixture("cnn/expected/swa_average.safetensors"));
    recalibrate_with(&model, &average, &fixture("cnn/train.npy"), dir.path(), &["--stats", "torch"]);
    assert_close(
        &dir.path().join("out.safetensors"),
        &fixture("cnn/expected/swa_bn_torch.safetensors"),
        1e-4,
        1e-6,
        stats,
    );
    let (_, got) = logits(&dir.path().join("out.onnx"), &fixture("cnn/eval.npy"));
    let (_, want) = read_npy(&fixture("cnn/expected/swa_logits.npy"));
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs PyTorch {b}");
    }
}

#[test]
fn batchnorm_1d_3d_and_without_affine_parameters_match_update_bn() {
    // BatchNorm1d(affine=False), whose scale and bias the exporter writes as Constant nodes
    // (dynamo=False) or computes from the input's shape (dynamo=True); BatchNorm1d on (N, C, L);
    // BatchNorm3d. 80 samples in batches of 32: the last batch is partial.
    for (model, data) in [
        ("affine_false", "affine_false"),
        ("affine_false_dynamo", "affine_false"),
        ("bn1d_ncl", "bn1d_ncl"),
        ("bn3d", "bn3d"),
    ] {
        let dir = tmp();
        swa()
            .args(["recalibrate", "--stats", "torch", "--batch-size", "32", "--model"])
            .arg(fixture(&format!("bn/{model}.onnx")))
            .arg("--inputs")
            .arg(fixture(&format!("bn/{data}.npy")))
            .arg("-o")
            .arg(dir.path().join("out.onnx"))
            .arg("--save-weights")
            .arg(dir.path().join("out.safetensors"))
            .assert()
            .success();
        let expected = fixture(&format!("bn/expected/{data}.safetensors"));
        assert_close(&dir.path().join("out.safetensors"), &expected, 1e-4, 1e-6, stats);
    }
}

/// bench/compat.py's measure of how far running statistics are from a reference: the largest,
/// over layers and channels, of |Δvar| / var and |Δmean| / √var.
fn stats_error(actual: &Path, reference: &Path) -> f64 {
    let (a, r) =
        (swa::checkpoint::Checkpoint::open(actual).unwrap(), swa::checkpoint::Checkpoint::open(reference).unwrap());
    let get = |c: &swa::checkpoint::Checkpoint, name: &str| {
        let t = c.get(name).unwrap_or_else(|| panic!("no `{name}`"));
        swa::checkpoint::dtype::to_f64(t.dtype, c.bytes(t))
    };
    let mut worst = 0.0f64;
    for t in r.tensors().iter().filter(|t| t.name.ends_with(".running_var")) {
        let prefix = t.name.trim_end_matches(".running_var");
        let (var, mean) = (get(&r, &t.name), get(&r, &format!("{prefix}.running_mean")));
        let (v, m) = (get(&a, &t.name), get(&a, &format!("{prefix}.running_mean")));
        for c in 0..var.len() {
            worst = worst.max((v[c] - var[c]).abs() / var[c]).max((m[c] - mean[c]).abs() / var[c].sqrt());
        }
    }
    worst
}

#[test]
fn torchvision_shufflenet_statistics_keep_float32_precision() {
    // torchvision's ShuffleNetV2 at reduced width (56 BatchNorm layers, depthwise convolutions,
    // channel shuffles), random init, 96 uint8 images of 64×64 in batches of 32. Against update_bn
    // in float64, swa's statistics must be within 2× of PyTorch's own float32 error (the measure
    // and the target of docs/compatibility.md). The reductions of the `flat` layout, the CPU's
    // before, were 9.3× here; `split` 1.7×, `square` 1.4×, training-mode BatchNormalization 1.1×.
    let f = |rel: &str| fixture(&format!("shufflenet/{rel}"));
    let dir = tmp();
    swa()
        .args(["recalibrate", "--stats", "torch", "--batch-size", "32", "--model"])
        .arg(f("model.onnx"))
        .arg("--inputs")
        .arg(f("train.npy"))
        .arg("-o")
        .arg(dir.path().join("out.onnx"))
        .arg("--save-weights")
        .arg(dir.path().join("out.safetensors"))
        .assert()
        .success();
    let out = dir.path().join("out.safetensors");
    let reference = f("expected/torch_f64.safetensors");
    let (swa_error, torch_error) =
        (stats_error(&out, &reference), stats_error(&f("expected/torch_f32.safetensors"), &reference));
    assert!(
        swa_error <= 2.0 * torch_error,
        "swa's statistics are {swa_error:.2e} from float64 update_bn, PyTorch's float32 ones {torch_error:.2e}"
    );
    assert_close(&out, &f("expected/torch_f32.safetensors"), 1e-4, 1e-6, stats);
}

/// `-o swa.safetensors` wrote an ONNX model under a name every reader takes for safetensors:
/// an ONNX output named like a checkpoint is refused (recalibrate, merge-stats, soup --onnx-out).
#[test]
fn an_onnx_output_named_like_a_checkpoint_is_refused() {
    let dir = tmp();
    for name in ["swa.safetensors", "swa.pt", "SWA.CKPT"] {
        swa()
            .args(["recalibrate", "--model"])
            .arg(fixture("mlp/model.onnx"))
            .arg("--inputs")
            .arg(fixture("mlp/train.npy"))
            .arg("-o")
            .arg(dir.path().join(name))
            .assert()
            .code(2)
            .stderr(contains(format!("{name} is named like a")).and(contains("name it NAME.onnx")));
    }
    swa()
        .args(["soup", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--checkpoints")
        .arg(fixture("mlp/checkpoints"))
        .arg("--select-inputs")
        .arg(fixture("mlp/eval.npy"))
        .arg("--select-labels")
        .arg(fixture("mlp/eval_labels.npy"))
        .args(["--no-recalibrate", "-o"])
        .arg(dir.path().join("soup.safetensors"))
        .arg("--onnx-out")
        .arg(dir.path().join("soup.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("is named like a safetensors checkpoint"));
    assert!(listing(dir.path()).is_empty());
}

/// Where `update_bn` users land: a last batch of one sample under torch statistics names the
/// remedies (the one-fewer `--max-samples` works), and a BatchNorm built with
/// `track_running_stats=False` (computed statistics, training mode whatever `eval()` says) is
/// told what it is, not to "export in eval mode".
#[test]
fn update_bn_users_are_told_what_to_do() {
    let dir = tmp();
    let (shape, values) = read_npy(&fixture("mlp/train.npy"));
    let inputs = dir.path().join("t257.npy");
    write_npy_f32(&inputs, &[257, shape[1]], &[&values[..], &values[..shape[1]]].concat()[..257 * shape[1]]);
    let cmd = |extra: &[&str]| {
        let mut c = swa();
        c.args(["recalibrate", "--stats", "torch", "--batch-size", "64", "--model"])
            .arg(fixture("mlp/model.onnx"))
            .arg("--inputs")
            .arg(&inputs)
            .args(extra)
            .arg("-o")
            .arg(dir.path().join("out.onnx"));
        c
    };
    cmd(&[])
        .assert()
        .code(2)
        .stderr(contains("update_bn fails the same way: leave one sample out (--max-samples 256)"))
        .stderr(contains("--stats precise"));
    cmd(&["--max-samples", "256"]).assert().success();
    swa()
        .args(["recalibrate", "--model"])
        .arg(fixture("bn/track_running_stats_false.onnx"))
        .arg("--inputs")
        .arg(fixture("cnn/train.npy"))
        .arg("-o")
        .arg(dir.path().join("trs.onnx"))
        .assert()
        .code(2)
        .stderr(contains("track_running_stats=False").and(contains("nothing to recalibrate")));
}

/// A checkpoint none of whose tensors matches a weight of the model (a Hugging Face model's
/// `net.` prefix) binds nothing: refused even with `--allow-missing-weights` (which exited 0 and
/// kept the export's own weights), naming the prefix and how to strip it; stripped, it binds.
#[test]
fn a_checkpoint_that_binds_nothing_is_refused_naming_its_prefix() {
    let dir = tmp();
    let (header, data) = header_of(&fixture("mlp/checkpoints/epoch_006.safetensors"));
    let renamed: serde_json::Map<String, serde_json::Value> =
        header.into_iter().map(|(k, v)| if k == "__metadata__" { (k, v) } else { (format!("net.{k}"), v) }).collect();
    let prefixed = dir.path().join("net.safetensors");
    write_with_header(&prefixed, &renamed, &data);
    let recal = |weights: &Path, extra: &[&str]| {
        let mut c = swa();
        c.args(["recalibrate", "--model"])
            .arg(fixture("mlp/model.onnx"))
            .arg("--weights")
            .arg(weights)
            .arg("--inputs")
            .arg(fixture("mlp/train.npy"))
            .arg("-o")
            .arg(dir.path().join("out.onnx"))
            .args(extra);
        c
    };
    for extra in [&[][..], &["--allow-missing-weights"]] {
        recal(&prefixed, extra).assert().code(2).stderr(contains("none of its")).stderr(contains(
            "every name of the checkpoint starts with `net.`; `swa average ... --strip-prefix PREFIX`",
        ));
    }
    assert!(!dir.path().join("out.onnx").exists());
    let stripped = dir.path().join("stripped.safetensors");
    swa().arg("average").arg(&prefixed).args(["--strip-prefix", "net.", "-o"]).arg(&stripped).assert().success();
    recal(&stripped, &[]).assert().success();
}
