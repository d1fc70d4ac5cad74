//! `torch.save` checkpoints (fixtures/make_torch_fixtures.py wrote them with real PyTorch from the
//! committed safetensors checkpoints): read without running pickle code, averaged bit for bit like
//! the same tensors in safetensors, Lightning's names numbered by epoch, and `-o NAME.pt` written.

use std::path::{Path, PathBuf};

use crate::common::*;
use predicates::str::contains;
use swa::checkpoint::Checkpoint;

fn torch(rel: &str) -> PathBuf {
    fixture(&format!("torch/{rel}"))
}

fn average_json(args: &[&std::ffi::OsStr], out: &Path) -> serde_json::Value {
    let a = swa().arg("average").args(args).arg("-o").arg(out).arg("--json").assert().success();
    serde_json::from_slice(&a.get_output().stdout).unwrap()
}

/// Every tensor of `a` is in `b` under the same name (after `rename`), with the same dtype, shape
/// and bytes.
fn same_tensors(a: &Checkpoint, b: &Checkpoint, rename: impl Fn(&str) -> String) {
    assert_eq!(a.tensors().len(), b.tensors().len(), "{} vs {}", a.path().display(), b.path().display());
    for t in a.tensors() {
        let u = b.get(&rename(&t.name)).unwrap_or_else(|| panic!("{} lacks {}", b.path().display(), t.name));
        assert_eq!((t.dtype, &t.shape), (u.dtype, &u.shape), "{}", t.name);
        assert_eq!(a.bytes(t), b.bytes(u), "bytes of {}", t.name);
    }
}

fn open(path: &Path) -> Checkpoint {
    swa::inputs::open_checkpoint(path, None).unwrap()
}

#[test]
fn average_of_pt_files_equals_average_of_the_same_safetensors_bit_for_bit() {
    let dir = tmp();
    let (pt, st) = (dir.path().join("pt.safetensors"), dir.path().join("st.safetensors"));
    let a = average_json(&[torch("cnn_pt").as_os_str(), "--from".as_ref(), "3".as_ref()], &pt);
    let b = average_json(&[fixture("cnn/checkpoints").as_os_str(), "--from".as_ref(), "3".as_ref()], &st);
    assert_eq!(a["n_models"], 6);
    assert_eq!(a["n_models"], b["n_models"]);
    same_tensors(&open(&pt), &open(&st), str::to_string);
}

#[test]
fn lightning_checkpoints_are_numbered_by_their_epoch_and_the_prefix_can_be_stripped() {
    let dir = tmp();
    let out = dir.path().join("l.safetensors");
    // Lightning's epochs are 0-based in the names: epoch=3 is the fourth epoch, epoch_004.
    let s = average_json(
        &[torch("cnn_ckpt").as_os_str(), "--from".as_ref(), "3".as_ref(), "--strip-prefix".as_ref()],
        &out,
    );
    let numbers: Vec<u64> = s["inputs"].as_array().unwrap().iter().map(|i| i["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 4, 5, 6, 7]);
    assert_eq!(s["stripped_prefix"], "model.");
    let st = dir.path().join("st.safetensors");
    average_json(&[fixture("cnn/checkpoints").as_os_str(), "--from".as_ref(), "4".as_ref()], &st);
    same_tensors(&open(&out), &open(&st), str::to_string);
    // Without --strip-prefix the names keep Lightning's `model.`.
    let kept = dir.path().join("kept.safetensors");
    average_json(&[torch("cnn_ckpt").as_os_str(), "--from".as_ref(), "3".as_ref()], &kept);
    same_tensors(&open(&st), &open(&kept), |n| format!("model.{n}"));
}

#[test]
fn swa_run_on_lightning_checkpoints_reports_what_it_reports_on_safetensors() {
    let dir = tmp();
    let report = |checkpoints: &Path, from: &str, out: &str| -> serde_json::Value {
        let out = dir.path().join(out);
        let a = run_cnn(checkpoints, &out, &["--from", from, "--stats", "torch", "--batch-size", "32", "--json"])
            .assert()
            .success();
        serde_json::from_slice(&a.get_output().stdout).unwrap()
    };
    let l = report(&torch("cnn_ckpt"), "3", "lightning");
    let s = report(&fixture("cnn/checkpoints"), "4", "safetensors");
    for key in ["swa_stored", "swa_recalibrated", "train_samples", "eval_samples"] {
        assert_eq!(l[key], s[key], "{key}");
    }
    let scores = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        r["checkpoints"].as_array().unwrap().iter().map(|c| c["stored"].clone()).collect()
    };
    assert_eq!(scores(&l), scores(&s));
    assert_eq!(s["swa_recalibrated"]["correct"], summary("cnn")["swa_bn_torch_correct"]);
}

#[test]
fn a_training_dict_with_module_prefixes_and_an_optimizer_is_read_and_binds() {
    let dir = tmp();
    let out = dir.path().join("m.safetensors");
    let s = average_json(&[torch("mlp_module").as_os_str()], &out);
    assert_eq!(s["n_models"], 6);
    let st = dir.path().join("st.safetensors");
    average_json(&[fixture("mlp/checkpoints").as_os_str()], &st);
    same_tensors(&open(&st), &open(&out), |n| format!("module.{n}"));
    // Binding into the ONNX model sees through `module.`.
    swa()
        .args(["evaluate", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--weights")
        .arg(torch("mlp_module/epoch_006.pth"))
        .arg("--inputs")
        .arg(fixture("mlp/eval.npy"))
        .arg("--labels")
        .arg(fixture("mlp/eval_labels.npy"))
        .assert()
        .success();
}

#[test]
fn key_chooses_the_ema_weights_of_timm_and_lightning() {
    let timm = torch("timm/checkpoint-3.pth.tar");
    let sd = open(&timm);
    same_tensors(&open(&fixture("cnn/checkpoints/epoch_003.safetensors")), &sd, str::to_string);
    let ema = swa::inputs::open_checkpoint(&timm, Some("state_dict_ema")).unwrap();
    let w = ema.get("conv1.weight").unwrap();
    let want: Vec<f64> = values(&fixture("cnn/checkpoints/epoch_003.safetensors"), "conv1.weight");
    let got = swa::checkpoint::dtype::to_f64(w.dtype, ema.bytes(w));
    assert!(got.iter().zip(&want).all(|(g, x)| *g == x * 0.25));
    let l = swa::inputs::open_checkpoint(torch("cnn_ckpt/epoch=2-step=30.ckpt"), Some("callbacks.EMA.ema_state_dict"))
        .unwrap();
    assert_eq!(l.tensors().len(), open(&fixture("cnn/checkpoints/epoch_003.safetensors")).tensors().len());
    // A key that is not there names what is.
    swa()
        .args(["inspect", "--key", "state_dict_emaa"])
        .arg(&timm)
        .assert()
        .code(2)
        .stderr(contains("state_dict_emaa"))
        .stderr(contains("state_dict_ema"));
}

#[test]
fn inspect_lists_the_state_dicts_and_the_number_of_a_file() {
    let a = swa().args(["inspect", "--json"]).arg(torch("cnn_ckpt/epoch=2-step=30.ckpt")).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["number"], 2);
    let dicts: Vec<String> =
        v["torch"]["state_dicts"].as_array().unwrap().iter().map(|d| d[0].as_str().unwrap().to_string()).collect();
    assert!(dicts.contains(&"state_dict".to_string()), "{dicts:?}");
    assert!(dicts.iter().any(|d| d.ends_with("ema_state_dict")), "{dicts:?}");
    assert_eq!(v["torch"]["chosen"], "state_dict");
    swa()
        .arg("inspect")
        .arg(torch("cnn_ckpt/epoch=2-step=30.ckpt"))
        .assert()
        .success()
        .stdout(contains("number: 2"))
        .stdout(contains("<- read"));
}

#[test]
fn tied_weights_storage_offsets_strides_and_16_bit_dtypes() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(torch("expected.json")).unwrap()).unwrap();
    for (file, key) in [("views.pt", "views"), ("tied.pt", "tied")] {
        let ck = open(&torch(file));
        for (name, want) in expected[key].as_object().unwrap() {
            let t = ck.get(name).unwrap_or_else(|| panic!("{file} lacks {name}"));
            let got = if swa::checkpoint::dtype::is_float(t.dtype) {
                swa::checkpoint::dtype::to_f64(t.dtype, ck.bytes(t))
            } else {
                ck.bytes(t).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
            };
            let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(got, want, "{file}: {name}");
        }
    }
    let views = open(&torch("views.pt"));
    assert_eq!(views.get("t").unwrap().shape, [4, 3]);
    assert_eq!(views.get("scalar").unwrap().shape, Vec::<usize>::new());
    assert_eq!(views.get("empty").unwrap().shape, [0, 3]);
    let half = open(&torch("half.pt"));
    assert_eq!(half.get("fc1.weight").unwrap().dtype, swa::checkpoint::Dtype::BF16);
    assert_eq!(half.get("fc2.weight").unwrap().dtype, swa::checkpoint::Dtype::F16);
    assert_eq!(half.get("bn1.num_batches_tracked").unwrap().dtype, swa::checkpoint::Dtype::I64);
}

#[test]
fn pickles_that_call_code_are_refused_and_nothing_runs() {
    let marker = Path::new("/tmp/swa-pwned");
    let _ = std::fs::remove_file(marker);
    for (file, global) in [("malicious_system.pt", "system"), ("malicious_eval.pt", "eval")] {
        let dir = tmp();
        swa()
            .arg("average")
            .arg(torch(file))
            .arg("-o")
            .arg(dir.path().join("out.safetensors"))
            .assert()
            .code(2)
            .stderr(contains(global));
        assert!(listing(dir.path()).is_empty());
    }
    assert!(!marker.exists(), "pickle code ran");
}

/// Names outside the allow-list beside the state dict (a class and a `functools.partial` in
/// Lightning-style hyper-parameters, written by torch.save): the state dict is read, and each name
/// is named with where it is.
#[test]
fn names_beside_the_state_dict_are_read_past_and_named() {
    let dir = tmp();
    let o = swa()
        .arg("average")
        .arg(torch("foreign_hparams.pt"))
        .arg("-o")
        .arg(dir.path().join("out.safetensors"))
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&o.get_output().stderr).into_owned();
    for (name, at) in [
        ("torch.nn.modules.activation.GELU", "hyper_parameters.act"),
        ("functools.partial", "hyper_parameters.optimizer"),
        ("torch.optim.sgd.SGD", "hyper_parameters.optimizer"),
    ] {
        assert!(
            stderr.contains(&format!(
                "swa: warning: {}: holds the name {name} at `{at}`",
                torch("foreign_hparams.pt").display()
            )),
            "{stderr}"
        );
    }
    swa().arg("inspect").arg(torch("foreign_hparams.pt")).assert().success().stderr(contains("functools.partial"));
    // The Lightning, timm and plain fixtures hold nothing to warn about.
    for f in ["cnn_ckpt/epoch=0-step=10.ckpt", "timm/checkpoint-3.pth.tar", "mlp_module/epoch_001.pth"] {
        swa().arg("inspect").arg(torch(f)).assert().success().stderr("");
    }
}

#[test]
fn legacy_torch_files_get_advice() {
    let dir = tmp();
    swa()
        .arg("average")
        .arg(torch("legacy.pt"))
        .arg("-o")
        .arg(dir.path().join("out.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("legacy.pt"))
        .stderr(contains("re-save"));
}

#[test]
fn average_writes_what_torch_save_writes() {
    let dir = tmp();
    let pt = dir.path().join("swa.pt");
    let st = dir.path().join("swa.safetensors");
    average_json(&[torch("cnn_pt").as_os_str()], &pt);
    average_json(&[fixture("cnn/checkpoints").as_os_str()], &st);
    same_tensors(&open(&st), &open(&pt), str::to_string);
    // --resume continues a .pt average like a safetensors one.
    let more = dir.path().join("more.pt");
    let s = average_json(&[torch("cnn_pt/epoch_008.pt").as_os_str(), "--resume".as_ref(), pt.as_os_str()], &more);
    assert_eq!(s["n_models"], 9);
}

/// `torch.load(weights_only=True)` takes what `swa average -o NAME.pt` writes, and holds the same
/// tensors as the safetensors average, in the same order. PyTorch is that of
/// `SWA_TEST_TORCH_PYTHON` (a venv's python; `.ci/run` makes one), else python3's.
#[test]
#[ignore = "needs PyTorch: torch.load reads swa's .pt output (SWA_TEST_TORCH_PYTHON=/path/to/venv/bin/python)"]
fn torch_load_takes_what_average_writes() {
    let python = std::env::var("SWA_TEST_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let install = "pip install torch safetensors, and SWA_TEST_TORCH_PYTHON naming that python";
    require_python_module(&python, "torch", install);
    require_python_module(&python, "safetensors.torch", install);
    let dir = tmp();
    let pt = dir.path().join("swa.pt");
    let st = dir.path().join("swa.safetensors");
    average_json(&[torch("cnn_pt").as_os_str()], &pt);
    average_json(&[fixture("cnn/checkpoints").as_os_str()], &st);
    let script = "import sys, torch\nsd = torch.load(sys.argv[1], weights_only=True)\n\
                  from safetensors.torch import load_file\nst = load_file(sys.argv[2])\n\
                  assert list(sd) == list(st), (list(sd), list(st))\n\
                  assert all(torch.equal(sd[k], st[k]) for k in sd)\nprint('ok', len(sd))";
    let out = std::process::Command::new(&python).args(["-c", script]).arg(&pt).arg(&st).output().unwrap();
    assert!(out.status.success(), "{}", combined(&out));
    let n = open(&st).tensors().len();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ok {n}"), "{}", combined(&out));
}

/// A torch.save archive (stored members) of `pickle` and `storages` (`ck/data/0`, …), written by
/// the `zip` crate.
fn archive_of(pickle: &[u8], storages: &[&[u8]]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut members = vec![("ck/data.pkl".to_string(), pickle), ("ck/byteorder".to_string(), b"little".as_slice())];
    members.extend(storages.iter().enumerate().map(|(i, s)| (format!("ck/data/{i}"), *s)));
    for (name, bytes) in members {
        w.start_file(name, stored).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Pickle opcodes: a BINUNICODE string, a GLOBAL.
fn pkl_str(s: &str) -> Vec<u8> {
    [&[b'X'][..], &(s.len() as u32).to_le_bytes(), s.as_bytes()].concat()
}

fn pkl_global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

#[test]
fn a_small_pickle_cannot_make_the_reader_copy_one_object_without_bound() {
    // Each pickle fetches one memoised object again and again, a few bytes per fetch, and each
    // fetch used to copy it: a few MiB of file asked for GiBs of memory.
    let big = "A".repeat(1 << 20);
    let storage_pid = |key: &[u8]| {
        [&b"("[..], &pkl_str("storage"), &pkl_global("torch", "FloatStorage"), key, &pkl_str("cpu"), b"K\x01t"].concat()
    };
    let dims: Vec<u8> = [&b"("[..], &b"K\x01".repeat(64), b"t"].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // A persistent id whose 1 MiB key is copied into every storage: 300 MiB.
        (
            "storage key",
            [pkl_str(&big), b"q\x00".to_vec(), storage_pid(b"h\x00"), b"q\x01".to_vec(), b"h\x01Q0".repeat(300)]
                .concat(),
        ),
        // `_codecs.encode` of a 1 MiB string, called 300 times: 300 MiB.
        (
            "_codecs.encode",
            [
                pkl_global("_codecs", "encode"),
                b"q\x00".to_vec(),
                pkl_str(&big),
                pkl_str("latin1"),
                b"\x86q\x01".to_vec(),
                b"h\x00h\x01R0".repeat(300),
            ]
            .concat(),
        ),
        // STACK_GLOBAL of a 1 MiB module name, 300 times.
        (
            "STACK_GLOBAL",
            [pkl_str(&big), b"q\x00".to_vec(), pkl_str("f"), b"q\x01".to_vec(), b"h\x00h\x01\x930".repeat(300)]
                .concat(),
        ),
        // `_rebuild_tensor_v2` with 64-dimension size and stride, 200 000 times: 200 MiB from
        // a 1 MiB pickle.
        (
            "tensor dims",
            [
                pkl_global("torch._utils", "_rebuild_tensor_v2"),
                b"q\x00(".to_vec(),
                storage_pid(&pkl_str("0")),
                b"QK\x00".to_vec(),
                dims.clone(),
                dims,
                b"\x89Ntq\x01".to_vec(),
                b"h\x00h\x01R0".repeat(200_000),
            ]
            .concat(),
        ),
    ];
    for (what, body) in cases {
        let pickle = [&b"\x80\x02"[..], &body, b"}X\x01\x00\x00\x00wh\x00s."].concat();
        let file = archive_of(&pickle, &[&[0u8; 4]]);
        let err = swa::checkpoint::torch::open_bytes(Path::new("bomb.pt"), &file, None)
            .map(|n| format!("read {n} tensors"))
            .unwrap_or_else(|e| e.to_string());
        assert!(err.contains("pickle copies more than"), "{what}: {err}");
    }
}

#[test]
fn lightnings_last_ckpt_is_not_counted_twice() {
    // ModelCheckpoint(save_last=True) copies the newest checkpoint to last.ckpt: a directory
    // average took it as a fifth, unnumbered model, so the newest counted twice (and --last 2
    // averaged the newest with itself).
    let dir = tmp();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    for e in 3..=7 {
        let name = format!("epoch={e}-step={}.ckpt", (e + 1) * 10);
        std::fs::copy(torch(&format!("cnn_ckpt/{name}")), run.join(name)).unwrap();
    }
    std::fs::copy(torch("cnn_ckpt/epoch=7-step=80.ckpt"), run.join("last.ckpt")).unwrap();
    let out = dir.path().join("avg.safetensors");
    let s = average_json(&[run.as_os_str(), "--strip-prefix".as_ref()], &out);
    assert_eq!(s["n_models"], 5, "{s}");
    let numbers: Vec<u64> = s["inputs"].as_array().unwrap().iter().map(|i| i["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 4, 5, 6, 7]);
    let st = dir.path().join("st.safetensors");
    average_json(&[fixture("cnn/checkpoints").as_os_str(), "--from".as_ref(), "4".as_ref()], &st);
    same_tensors(&open(&out), &open(&st), str::to_string);
    // Named on its own, it is read.
    let last = dir.path().join("last.safetensors");
    assert_eq!(average_json(&[run.join("last.ckpt").as_os_str()], &last)["n_models"], 1);
}

#[test]
fn a_bin_file_that_holds_safetensors_is_read_as_safetensors() {
    let dir = tmp();
    let bin = dir.path().join("pytorch_model.bin");
    std::fs::copy(fixture("cnn/checkpoints/epoch_003.safetensors"), &bin).unwrap();
    let out = dir.path().join("avg.safetensors");
    average_json(&[bin.as_os_str()], &out);
    same_tensors(&open(&out), &open(&fixture("cnn/checkpoints/epoch_003.safetensors")), str::to_string);
    swa().arg("inspect").arg(&bin).assert().success().stdout(contains("conv1.weight"));
}

/// `swa average lightning_logs/version_0` looks into its `checkpoints/` (it said the folder
/// held no checkpoint); `swa inspect` on a folder of checkpoints says what it holds and which to
/// inspect (it said the folder held no *.safetensors.index.json).
#[test]
fn a_lightning_run_folder_means_its_checkpoints() {
    let dir = tmp();
    let version = dir.path().join("lightning_logs/version_0");
    copy_dir(&torch("cnn_ckpt"), &version.join("checkpoints"));
    std::fs::write(version.join("hparams.yaml"), "lr: 0.1\n").unwrap();
    let a = swa()
        .arg("average")
        .arg(&version)
        .arg("--json")
        .arg("-o")
        .arg(dir.path().join("swa.safetensors"))
        .assert()
        .success();
    let s: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    let n = std::fs::read_dir(torch("cnn_ckpt"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("epoch="))
        .count();
    assert_eq!(s["inputs"].as_array().unwrap().len(), n, "{s}");
    swa()
        .arg("inspect")
        .arg(version.join("checkpoints"))
        .assert()
        .code(2)
        .stderr(contains(format!("is a folder of {n} checkpoints")))
        .stderr(contains("inspect one of them"));
    // Lightning's root folder (`default_root_dir`) and its `lightning_logs/` mean the one run
    // there (they held "no checkpoint"); with two runs, each is named.
    let home = tmp();
    copy_dir(&version, &home.path().join("lightning_logs/version_0"));
    for (k, root) in [home.path().to_path_buf(), home.path().join("lightning_logs")].into_iter().enumerate() {
        let out = dir.path().join(format!("root{k}.safetensors"));
        let s = average_json(&[root.as_os_str()], &out);
        assert_eq!(s["inputs"].as_array().unwrap().len(), n, "{s}");
        swa().arg("inspect").arg(&root).assert().code(2).stderr(contains(format!("is a folder of {n} checkpoints")));
    }
    // timm's mid-epoch recovery-E-B copies (numbered by their batch) are left out beside them.
    std::fs::copy(
        version
            .join("checkpoints")
            .join(std::fs::read_dir(torch("cnn_ckpt")).unwrap().next().unwrap().unwrap().file_name()),
        version.join("checkpoints/recovery-3-900.ckpt"),
    )
    .unwrap();
    let s = average_json(&[version.as_os_str()], &dir.path().join("rec.safetensors"));
    assert_eq!(s["inputs"].as_array().unwrap().len(), n, "{s}");
    assert!(s["left_out"].to_string().contains("recovery-3-900.ckpt"), "{s}");
    copy_dir(&torch("cnn_ckpt"), &home.path().join("lightning_logs/version_1/checkpoints"));
    swa()
        .arg("average")
        .arg(home.path())
        .arg("-o")
        .arg(dir.path().join("two.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("holds 2 Lightning runs (version_0, version_1): point at one"));
    // A run's folder of one checkpoint (the Trainer's `checkpoint-500/`) is inspected as that file.
    let hf = dir.path().join("checkpoint-500");
    std::fs::create_dir(&hf).unwrap();
    std::fs::copy(fixture("cnn/checkpoints/epoch_003.safetensors"), hf.join("model.safetensors")).unwrap();
    for beside in ["optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"] {
        std::fs::copy(torch("tied.pt"), hf.join(beside)).unwrap();
    }
    std::fs::write(hf.join("trainer_state.json"), "{}").unwrap();
    swa().arg("inspect").arg(&hf).assert().success().stdout(contains("38 tensors"));
}

/// `inspect` says what the state dicts of known training code are (Lightning's
/// EMAWeightAveraging keeps the EMA under `state_dict` and the raw weights under
/// `current_model_state`; timm's `state_dict_ema`), and `--key` moves the `<- read` marker.
#[test]
fn inspect_says_what_each_state_dict_is_and_which_is_read() {
    let out = |extra: &[&str], file: &str| {
        let a = swa().arg("inspect").arg(torch(file)).args(extra).assert().success();
        String::from_utf8_lossy(&a.get_output().stdout).into_owned()
    };
    let text = out(&[], "ema_weight_averaging.ckpt");
    assert!(text.contains("state_dict                               16 tensors  <- read  (EMA weights: Lightning's EMAWeightAveraging"), "{text}");
    assert!(text.contains("current_model_state                      16 tensors  (raw weights"), "{text}");
    let text = out(&["--key", "current_model_state"], "ema_weight_averaging.ckpt");
    assert!(text.contains("current_model_state                      16 tensors  <- read"), "{text}");
    assert!(!text.contains("state_dict                               16 tensors  <- read"), "{text}");
    assert!(out(&[], "timm/checkpoint-3.pth.tar").contains("(timm's EMA of the weights"));
    let a = swa().arg("inspect").arg(torch("ema_weight_averaging.ckpt")).arg("--json").assert().success();
    let v: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert!(v["torch"]["what"]["current_model_state"].as_str().unwrap().contains("raw weights"), "{v}");
}

/// A pickled `nn.Module` (a script's `{"epoch", "model": model}`, `torch.save(model)`,
/// Ultralytics' `"ema"` in half precision beside `"model": None`) is read out of its pickled
/// state without importing or running its class: the tensors PyTorch's `state_dict()` gives, in
/// its order, bit for bit, non-persistent buffers left out, with a warning that says so. An
/// object that is not a module says what it is and how to get a state dict.
#[test]
fn pickled_modules_are_read_as_their_state_dict() {
    let order: serde_json::Value =
        serde_json::from_slice(&std::fs::read(torch("modules/expected_order.json")).unwrap()).unwrap();
    let names =
        |k: &str| order[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>();
    for (file, expected, key) in [
        ("model.pt", "expected_model", "model"),
        ("whole.pt", "expected_model", "model"),
        ("ultralytics.pt", "expected_ema", "ema"),
    ] {
        let ck = open(&torch(&format!("modules/{file}")));
        let theirs = Checkpoint::open(torch(&format!("modules/{expected}.safetensors"))).unwrap();
        same_tensors(&ck, &theirs, str::to_string);
        assert_eq!(ck.tensors().iter().map(|t| t.name.clone()).collect::<Vec<_>>(), names(key), "{file}");
        swa()
            .arg("inspect")
            .arg(torch(&format!("modules/{file}")))
            .assert()
            .success()
            .stdout(contains("a pickled nn.Module (__main__.Net)"))
            .stderr(contains("is a pickled nn.Module (__main__.Net): swa read its 23 parameters and buffers"));
    }
    // Averaged like any checkpoint.
    let dir = tmp();
    let out = dir.path().join("avg.safetensors");
    average_json(&[torch("modules/model.pt").as_os_str(), torch("modules/whole.pt").as_os_str()], &out);
    let (avg, theirs) =
        (Checkpoint::open(&out).unwrap(), Checkpoint::open(torch("modules/expected_model.safetensors")).unwrap());
    same_tensors(&avg, &theirs, str::to_string);
    swa()
        .arg("inspect")
        .arg(torch("modules/opaque.pt"))
        .assert()
        .code(2)
        .stderr(contains(
            "`model` is a pickled object of class __main__.Settings (refusing global __main__.Settings), not a dict of tensors",
        ))
        .stderr(contains("save its state_dict()"));
    // Modules that share their submodules would make the walk exponential: swa gives up.
    swa()
        .arg("inspect")
        .arg(torch("modules/shared.pt"))
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .code(2)
        .stderr(contains("is a pickled nn.Module (torch.nn.modules.module.Module) whose tensors swa cannot read"));
}
