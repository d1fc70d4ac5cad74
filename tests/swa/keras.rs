//! TensorFlow and Keras checkpoints against the references of `fixtures/keras/make_keras_fixture.py`
//! (TensorFlow 2.21, Keras 3.15, tf-keras 2.21, NumPy): Keras 3 `.weights.h5` and `.keras`, Keras 2
//! `.h5`, TF2 object-graph bundles and TF1 `Saver` bundles with EMA shadows; the layout map that
//! binds Keras variables to the tf2onnx graph; the refit written back with Keras' biased variance;
//! and their bad inputs. `outputs_load_in_keras_and_tensorflow` loads what swa writes back into
//! TensorFlow and Keras (it needs them: `SWA_TEST_TF_PYTHON`, which `.ci/run` makes).

use std::path::{Path, PathBuf};

use swa::checkpoint::{dtype, Checkpoint};

use crate::common::*;

fn keras(rel: &str) -> PathBuf {
    fixture(&format!("keras/{rel}"))
}

/// The NumPy reference `expected/mean_<set>.safetensors`: name → (dtype, shape, bytes).
fn reference(set: &str) -> Vec<(String, swa::checkpoint::Dtype, Vec<usize>, Vec<u8>)> {
    let ck = Checkpoint::open(keras(&format!("expected/mean_{set}.safetensors"))).unwrap();
    ck.tensors().iter().map(|t| (t.name.clone(), t.dtype, t.shape.clone(), ck.bytes(t).to_vec())).collect()
}

/// Every tensor of the reference is in `ck`, bit for bit (and nothing else).
fn assert_bit_equal(ck: &Checkpoint, set: &str) {
    let expected = reference(set);
    assert_eq!(ck.tensors().len(), expected.len(), "{}: tensors", ck.path().display());
    for (name, dt, shape, bytes) in expected {
        let t = ck.get(&name).unwrap_or_else(|| panic!("{} lacks {name}", ck.path().display()));
        assert_eq!((t.dtype, &t.shape), (dt, &shape), "{name}");
        assert!(ck.bytes(t) == bytes.as_slice(), "{name}: not the NumPy float64 mean cast back");
    }
}

/// `swa run` on the Keras 3 run directory with `model`, into `out`.
fn run_keras(model: &Path, out: &Path) -> assert_cmd::Command {
    let mut c = swa();
    c.args(["run", "--model"])
        .arg(model)
        .arg("--checkpoints")
        .arg(keras("run"))
        .arg("--train-inputs")
        .arg(keras("train.npy"))
        .arg("--eval-inputs")
        .arg(keras("eval.npy"))
        .arg("--eval-labels")
        .arg(keras("eval_labels.npy"))
        .args(["--batch-size", "16", "--out"])
        .arg(out);
    c
}

/// `swa recalibrate` of the run's first epoch (not the checkpoint the model was exported from).
fn recalibrate_epoch1(model: &Path) -> assert_cmd::Command {
    let mut c = swa();
    c.args(["recalibrate", "--model"])
        .arg(model)
        .arg("--weights")
        .arg(keras("run/weights.01-1.15.weights.h5"))
        .arg("--inputs")
        .arg(keras("train.npy"));
    c
}

fn average(args: &[&Path], extra: &[&str], out: &Path) {
    swa().arg("average").args(args).args(extra).arg("-o").arg(out).assert().success();
}

#[test]
fn averages_equal_numpy_for_every_format() {
    let dir = tmp();
    for (input, extra, set) in [
        ("run", &[][..], "weights_h5"),
        ("keras", &[], "weights_h5"),
        ("k2", &[], "k2"),
        ("tf1", &[], "tf1"),
        ("tf1", &["--key", "ema"], "tf1_ema"),
        ("tf2", &[], "tf2"),
    ] {
        let out = dir.path().join(format!("{input}{}.safetensors", extra.len()));
        average(&[&keras(input)], extra, &out);
        let ck = Checkpoint::open(&out).unwrap();
        assert_bit_equal(&ck, set);
        assert_eq!(ck.metadata()["format"], "tf", "TensorFlow's variables say so");
    }
}

/// `-o swa.weights.h5`, `-o swa.h5` and `-o swa.ckpt` hold the same tensors as the safetensors
/// average; swa reads them back (the TensorFlow and Keras loaders: `outputs_load_in_keras_and_tensorflow`).
#[test]
fn native_outputs_hold_the_average() {
    let dir = tmp();
    for (input, out, set) in [
        ("run", "swa.weights.h5", "weights_h5"),
        ("keras", "from_keras.weights.h5", "weights_h5"),
        ("k2", "swa.h5", "k2"),
        ("tf1", "tf1.ckpt", "tf1"),
        ("tf2", "tf2.ckpt", "tf2"),
    ] {
        let path = dir.path().join(out);
        average(&[&keras(input)], &[], &path);
        let ck = swa::inputs::open_checkpoint(&path, None).unwrap();
        assert_bit_equal(&ck, set);
    }
    // A bundle is two files, both refused over an input.
    let o = swa().arg("average").arg(keras("tf1")).arg("-o").arg(keras("tf1/model.ckpt-30")).assert().failure();
    assert!(combined(o.get_output()).contains("input"), "{}", combined(o.get_output()));
    // Without a Keras input there is nothing to write a .weights.h5 like.
    let o = swa()
        .arg("average")
        .arg(fixture("cnn/checkpoints"))
        .arg("-o")
        .arg(dir.path().join("x.weights.h5"))
        .assert()
        .failure();
    assert!(combined(o.get_output()).contains("write .safetensors"), "{}", combined(o.get_output()));
}

#[test]
fn keras_names_numbers_and_roles() {
    let o = swa().args(["inspect", "--json"]).arg(keras("run/weights.02-0.61.weights.h5")).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    assert_eq!(v["number"], 2, "the epoch, not the val_loss: {v}");
    let o = swa().args(["inspect", "--json"]).arg(keras("tf1/model.ckpt-20.index")).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    assert_eq!(v["number"], 20);
    // The moving statistics are buffers: copied from the newest, not averaged.
    let dir = tmp();
    let out = dir.path().join("a.safetensors");
    let o = swa().arg("average").arg(keras("run")).arg("-o").arg(&out).arg("--json").assert().success();
    let s: serde_json::Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    assert_eq!(s["averaged"], 9, "{s}");
    // A bundle's prefix names it as its .index does.
    swa().arg("inspect").arg(keras("tf2/ckpt-3")).assert().success();
}

/// `swa run` on a Keras run directory: the layout map is derived from the checkpoint the model was
/// exported from (the newest) and kept beside the model; the SWA model's statistics, written back
/// into `swa.weights.h5`, are TensorFlow's training-set statistics (per layer, by a Keras sub-model,
/// float64, the biased variance) within 1e-4 relative.
#[test]
fn run_on_a_keras_directory_writes_back_refitted_statistics() {
    let dir = tmp();
    let model = dir.path().join("model.onnx");
    std::fs::copy(keras("model.onnx"), &model).unwrap();
    let out = dir.path().join("run");
    let o = run_keras(&model, &out).assert().success();
    let text = combined(o.get_output());
    assert!(text.contains("swa.weights.h5"), "{text}");
    let map: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("model.onnx.swa-map.json")).unwrap()).unwrap();
    assert_eq!(map["bound"].as_array().unwrap().len(), 13, "{map}");
    assert!(map["derived_from"].as_str().unwrap().ends_with("weights.03-0.41.weights.h5"), "{map}");
    let written = swa::inputs::open_checkpoint(out.join("swa.weights.h5"), None).unwrap();
    let mut worst = 0.0f64;
    let stats = Checkpoint::open(keras("expected/bn_stats.safetensors")).unwrap();
    for a in stats.tensors() {
        let t = written.get(&a.name).unwrap();
        let got = dtype::to_f64(t.dtype, written.bytes(t));
        let want = dtype::to_f64(a.dtype, stats.bytes(a));
        for (g, w) in got.iter().zip(&want) {
            let rel = (g - w).abs() / w.abs().max(1e-12);
            assert!(rel <= 1e-4, "{}: {g} vs TensorFlow's {w}", a.name);
            worst = worst.max(rel);
        }
    }
    eprintln!("refitted statistics within {worst:.1e} relative of TensorFlow's");
    // The weights are the average's.
    let expected = reference("weights_h5");
    for (name, _, _, bytes) in expected.iter().filter(|(n, ..)| n.ends_with("/vars/0") && n.contains("conv")) {
        assert!(written.bytes(written.get(name).unwrap()) == bytes.as_slice(), "{name}");
    }
    // Report as for PyTorch runs: the checkpoints' losses are Keras' val_loss in the file names.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let losses: Vec<f64> =
        report["checkpoints"].as_array().unwrap().iter().map(|c| c["stored"]["loss"].as_f64().unwrap()).collect();
    for (loss, name) in losses.iter().zip(["1.15", "0.61", "0.41"]) {
        assert_eq!(format!("{loss:.2}"), name, "{losses:?}");
    }
}

/// What swa writes back loads in TensorFlow and Keras, bit for bit, and the Keras model with the
/// refitted statistics predicts what ONNX Runtime predicts (fixtures/keras/check_outputs.py).
#[test]
#[ignore = "needs TensorFlow, Keras 3 and tf-keras (SWA_TEST_TF_PYTHON=/path/to/venv/bin/python)"]
fn outputs_load_in_keras_and_tensorflow() {
    let python = std::env::var("SWA_TEST_TF_PYTHON").unwrap_or_else(|_| "python3".into());
    let install = "pip install tensorflow-cpu==2.21.0 keras==3.15.1 tf-keras==2.21.0 tf2onnx==1.17.0 onnxruntime, and SWA_TEST_TF_PYTHON naming that python";
    for m in ["tensorflow", "keras", "tf_keras", "onnxruntime", "h5py", "tf2onnx"] {
        require_python_module(&python, m, install);
    }
    let dir = tmp();
    for (input, out) in [
        ("run", "swa.weights.h5"),
        ("keras", "fromkeras.weights.h5"),
        ("k2", "k2swa.h5"),
        ("tf1", "tf1swa.ckpt"),
        ("tf2", "tf2swa.ckpt"),
    ] {
        average(&[&keras(input)], &[], &dir.path().join(out));
    }
    let model = dir.path().join("model.onnx");
    std::fs::copy(keras("model.onnx"), &model).unwrap();
    run_keras(&model, &dir.path().join("run")).assert().success();
    let o = std::process::Command::new(&python)
        .arg(keras("check_outputs.py"))
        .arg(dir.path())
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .output()
        .unwrap();
    let text = combined(&o);
    assert!(o.status.success(), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 7, "{text}");
}

#[test]
fn bad_bundles_say_what_is_wrong() {
    let dir = tmp();
    let copy = |name: &str| {
        for f in std::fs::read_dir(keras("tf1")).unwrap() {
            let f = f.unwrap().path();
            if f.file_name().unwrap().to_string_lossy().starts_with("model.ckpt-30") {
                std::fs::copy(&f, dir.path().join(f.file_name().unwrap().to_string_lossy().replace("model", name)))
                    .unwrap();
            }
        }
        dir.path().join(format!("{name}.ckpt-30.index"))
    };
    // A truncated index.
    let index = copy("truncated");
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() - 10]).unwrap();
    let o = swa().arg("inspect").arg(&index).assert().failure();
    assert!(combined(o.get_output()).contains("truncated"), "{}", combined(o.get_output()));
    // A missing shard.
    let index = copy("noshard");
    std::fs::remove_file(dir.path().join("noshard.ckpt-30.data-00000-of-00001")).unwrap();
    let o = swa().arg("inspect").arg(&index).assert().failure();
    let text = combined(o.get_output());
    assert!(text.contains("missing") && text.contains("noshard.ckpt-30.data-00000-of-00001"), "{text}");
    // A truncated data file: the tensor past its end is named.
    let index = copy("short");
    let data = dir.path().join("short.ckpt-30.data-00000-of-00001");
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    let o = swa().arg("inspect").arg(&index).assert().failure();
    let text = combined(o.get_output());
    assert!(text.contains("outside the file"), "{text}");
    // A corrupt block.
    let index = copy("flipped");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&index, &bytes).unwrap();
    let o = swa().arg("inspect").arg(&index).assert().failure();
    assert!(combined(o.get_output()).contains("checksum"), "{}", combined(o.get_output()));
    // A model variable's bytes changed: its crc32c says so (an optimizer slot's are not read).
    let index = copy("corrupt");
    let data = dir.path().join("corrupt.ckpt-30.data-00000-of-00001");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[0] ^= 0x40; // batch_normalization/beta, the first entry
    std::fs::write(&data, &bytes).unwrap();
    let o = swa()
        .arg("average")
        .arg(&index)
        .arg(keras("tf1/model.ckpt-20.index"))
        .arg("-o")
        .arg(dir.path().join("x.safetensors"))
        .assert()
        .failure();
    let text = combined(o.get_output());
    assert!(text.contains("checksum") && text.contains("batch_normalization/beta"), "{text}");
    // An unknown key; `ema` where there are no shadows.
    let o = swa().arg("inspect").arg(keras("tf1/model.ckpt-30.index")).args(["--key", "optimizer"]).assert().failure();
    assert!(combined(o.get_output()).contains("ema"), "{}", combined(o.get_output()));
    let o = swa()
        .arg("average")
        .arg(keras("tf2"))
        .args(["--key", "ema", "-o"])
        .arg(dir.path().join("e.safetensors"))
        .assert()
        .failure();
    assert!(combined(o.get_output()).contains("no ExponentialMovingAverage"), "{}", combined(o.get_output()));
    // Named by prefix, or by the `checkpoint` state file (the latest).
    swa()
        .arg("average")
        .arg(keras("tf2/ckpt-1"))
        .arg(keras("tf2/ckpt-2"))
        .arg("-o")
        .arg(dir.path().join("p.safetensors"))
        .assert()
        .success();
    let o = swa().args(["inspect", "--json"]).arg(keras("tf2/checkpoint")).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    assert_eq!(v["tensors"].as_array().unwrap().len(), 13, "{v}");
}

/// Outputs in the wrong Keras layout for their name, or as a .keras archive, are refused; a bare
/// name for bundle inputs is a bundle.
#[test]
fn keras_and_bundle_output_names() {
    let dir = tmp();
    for (input, out, says) in [
        ("run", "x.keras", "not a .keras archive"),
        ("run", "x.h5", "NAME.weights.h5"),
        ("k2", "x.weights.h5", "NAME.h5"),
    ] {
        let o = swa().arg("average").arg(keras(input)).arg("-o").arg(dir.path().join(out)).assert().failure();
        assert!(combined(o.get_output()).contains(says), "{out}: {}", combined(o.get_output()));
        assert!(!dir.path().join(out).exists());
    }
    swa().arg("average").arg(keras("tf2")).arg("-o").arg(dir.path().join("swa")).assert().success();
    // Saved weights never overwrite the bundle they were read from.
    let o = swa()
        .args(["recalibrate", "--model"])
        .arg(keras("model.onnx"))
        .arg("--weights")
        .arg(keras("tf1/model.ckpt-30.index"))
        .arg("--inputs")
        .arg(keras("train.npy"))
        .arg("-o")
        .arg(dir.path().join("o.onnx"))
        .arg("--save-weights")
        .arg(keras("tf1/model.ckpt-30"))
        .assert()
        .failure();
    assert!(combined(o.get_output()).contains("input"), "{}", combined(o.get_output()));
    // Template outputs keep the input's types; mixed kinds say so.
    let o = swa()
        .arg("average")
        .arg(keras("run"))
        .args(["--dtype", "bf16", "-o"])
        .arg(dir.path().join("b.weights.h5"))
        .assert()
        .failure();
    assert!(combined(o.get_output()).contains("--dtype does not apply"), "{}", combined(o.get_output()));
    let o = swa()
        .arg("average")
        .arg(keras("run"))
        .arg(keras("k2"))
        .arg("-o")
        .arg(dir.path().join("m.safetensors"))
        .assert()
        .failure();
    assert!(combined(o.get_output()).contains("mix Keras 2 and Keras 3"), "{}", combined(o.get_output()));
    assert!(dir.path().join("swa.index").is_file() && dir.path().join("swa.data-00000-of-00001").is_file());
}

#[test]
fn bad_keras_files_say_what_is_wrong() {
    let dir = tmp();
    // Truncated HDF5.
    let bytes = std::fs::read(keras("run/weights.03-0.41.weights.h5")).unwrap();
    for cut in [100, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.path().join(format!("cut{cut}.weights.h5"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let o = swa().arg("inspect").arg(&path).assert().failure();
        assert!(combined(o.get_output()).contains(path.file_name().unwrap().to_str().unwrap()));
    }
    // Chunked and gzip-compressed datasets (fixtures/hdf5/basic.h5, by h5py): refused, named.
    let o = swa().arg("inspect").arg(fixture("hdf5/basic.h5")).assert().failure();
    let text = combined(o.get_output());
    assert!(text.contains("storage/chunked") && text.contains("is chunked"), "{text}");
    // The HDF5 reader itself lists them as such (src/checkpoint/hdf5.rs's tests compare every
    // dataset with h5py's view of it, gzip and shuffle included).
    let bytes = std::fs::read(fixture("hdf5/basic.h5")).unwrap();
    let file = swa::checkpoint::hdf5::parse(&bytes).unwrap();
    assert!(file
        .datasets
        .iter()
        .any(|d| matches!(&d.storage, swa::checkpoint::hdf5::Storage::Filtered(f) if f.contains("gzip"))));
}

/// A checkpoint whose values are not the model's, bound with no map kept yet, says how to make one;
/// a kernel of a layout no initializer has is named.
#[test]
fn binding_without_a_map_says_how_to_make_one() {
    let dir = tmp();
    let model = dir.path().join("model.onnx");
    std::fs::copy(keras("model.onnx"), &model).unwrap();
    let o = recalibrate_epoch1(&model).arg("-o").arg(dir.path().join("out.onnx")).assert().failure();
    let text = combined(o.get_output());
    assert!(text.contains("exported from") && text.contains("swa-map.json"), "{text}");
    assert!(!dir.path().join("model.onnx.swa-map.json").exists());
    // Bound from the exported checkpoint, the map is kept; then any checkpoint of the run binds.
    swa()
        .args(["inspect"])
        .arg(&model)
        .arg("--against")
        .arg(keras("run/weights.03-0.41.weights.h5"))
        .assert()
        .success();
    assert!(dir.path().join("model.onnx.swa-map.json").exists());
    let weights = dir.path().join("swa_bn.weights.h5");
    recalibrate_epoch1(&model)
        .args(["--batch-size", "16", "-o"])
        .arg(dir.path().join("out.onnx"))
        .arg("--save-weights")
        .arg(&weights)
        .assert()
        .success();
    assert!(swa::inputs::open_checkpoint(&weights, None).unwrap().is_tensorflow());
    // update_bn's statistics are PyTorch's.
    let o =
        recalibrate_epoch1(&model).args(["--stats", "torch", "-o"]).arg(dir.path().join("out.onnx")).assert().failure();
    assert!(combined(o.get_output()).contains("biased"), "{}", combined(o.get_output()));
    // A map of another model is not used; a map that binds a moving variance to a mean is refused.
    let text = std::fs::read_to_string(dir.path().join("model.onnx.swa-map.json")).unwrap();
    let mut map: serde_json::Value = serde_json::from_str(&text).unwrap();
    let bound = map["bound"].as_array_mut().unwrap();
    let (i, j) = (
        bound.iter().position(|m| m["variable"] == "layers/batch_normalization/vars/2").unwrap(),
        bound.iter().position(|m| m["variable"] == "layers/batch_normalization/vars/3").unwrap(),
    );
    let (a, b) = (bound[i]["initializer"].clone(), bound[j]["initializer"].clone());
    bound[i]["initializer"] = b;
    bound[j]["initializer"] = a;
    std::fs::write(dir.path().join("model.onnx.swa-map.json"), serde_json::to_vec(&map).unwrap()).unwrap();
    let o = swa()
        .args(["inspect"])
        .arg(&model)
        .arg("--against")
        .arg(keras("run/weights.01-1.15.weights.h5"))
        .assert()
        .failure();
    assert!(combined(o.get_output()).contains("the map is wrong"), "{}", combined(o.get_output()));
}

/// A model exported before training holds one initializer for several variables of equal values
/// (tf2onnx merges equal initializers): no map binds it, and the error says why.
#[test]
fn a_model_that_shares_initializers_is_refused() {
    // The fixture model with the second BatchNorm reading the first one's scale, as tf2onnx merges
    // a fresh model's ones: the second gamma then binds nowhere (its own initializer is read by no
    // node, and a map never binds to such a leftover).
    let dir = tmp();
    let mut model = swa::onnx::Model::load(keras("model.onnx")).unwrap();
    {
        let g = model.graph_mut();
        let bn: Vec<usize> = (0..g.node.len()).filter(|&n| g.node[n].op_type() == "BatchNormalization").collect();
        let shared = g.node[bn[0]].input[1].clone();
        g.node[bn[1]].input[1] = shared;
    }
    let path = dir.path().join("model.onnx");
    model.save(&path).unwrap();
    let ck = swa::inputs::open_checkpoint(keras("run/weights.03-0.41.weights.h5"), None).unwrap();
    let binder = swa::onnx::bind::Binder::load(&path).unwrap();
    let e = binder.report(&ck).unwrap_err().to_string();
    assert!(e.contains("match no initializer") || e.contains("one initializer"), "{e}");
    assert!(!dir.path().join("model.onnx.swa-map.json").exists());
}
