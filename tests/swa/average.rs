//! `swa average` against torch.optim.swa_utils.AveragedModel, and its options.

use crate::common::*;
use swa::checkpoint::Checkpoint;

#[test]
fn equals_pytorch_averaged_model_cnn_and_mlp() {
    for (model, from) in [("cnn", "4"), ("mlp", "3")] {
        let dir = tmp();
        let out = dir.path().join("swa.safetensors");
        let assert = swa()
            .args(["average", "--from", from])
            .arg(fixture(&format!("{model}/checkpoints")))
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
        assert!(stdout.contains(&format!("epoch_00{from}.safetensors")), "{stdout}");
        assert!(!stdout.contains(&format!("epoch_00{}.safetensors", from.parse::<u32>().unwrap() - 1)), "{stdout}");
        let worst =
            assert_close(&out, &fixture(&format!("{model}/expected/swa_average.safetensors")), 0.0, 1e-6, |_| true);
        assert!(worst < 1e-6);
    }
}

#[test]
fn records_metadata_and_json_summary() {
    let dir = tmp();
    let out = dir.path().join("avg.safetensors");
    let assert = swa()
        .args(["average", "--last", "3", "--json"])
        .arg(fixture("cnn/checkpoints"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let s: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(s["n_models"], 3);
    assert_eq!(s["inputs"].as_array().unwrap().len(), 3);
    assert_eq!(s["inputs"][0]["number"], 6);
    assert_eq!(s["buffers"]["policy"], "newest");
    assert_eq!(s["buffers"]["copied"], 18);
    assert!(s["bytes_read"].as_u64().unwrap() > 0 && s["seconds"].as_f64().unwrap() >= 0.0);
    let ck = Checkpoint::open(&out).unwrap();
    let meta = ck.metadata();
    assert_eq!(meta["n_models"], "3");
    assert_eq!(meta["weighting"], "uniform");
    assert!(meta["swa_version"].starts_with("swa "));
    let sources: Vec<String> = serde_json::from_str(&meta["sources"]).unwrap();
    assert!(sources[2].ends_with("epoch_008.safetensors"), "{sources:?}");
}

#[test]
fn buffers_come_from_the_newest_or_are_averaged() {
    let dir = tmp();
    let newest = dir.path().join("n.safetensors");
    let averaged = dir.path().join("a.safetensors");
    let ck = fixture("cnn/checkpoints");
    swa().args(["average", "--from", "7"]).arg(&ck).arg("-o").arg(&newest).assert().success();
    swa().args(["average", "--from", "7", "--buffers", "average"]).arg(&ck).arg("-o").arg(&averaged).assert().success();
    let e7 = fixture("cnn/checkpoints/epoch_007.safetensors");
    let e8 = fixture("cnn/checkpoints/epoch_008.safetensors");
    let name = "layer1.0.bn1.running_var";
    assert_eq!(values(&newest, name), values(&e8, name));
    let want: Vec<f64> = values(&e7, name).iter().zip(values(&e8, name)).map(|(a, b)| (a + b) / 2.0).collect();
    for (x, y) in values(&averaged, name).iter().zip(want) {
        assert!((x - y).abs() < 1e-6);
    }
    let (a, b) = (Checkpoint::open(&averaged).unwrap(), Checkpoint::open(&e8).unwrap());
    let n = "bn1.num_batches_tracked";
    assert_eq!(a.bytes(a.get(n).unwrap()), b.bytes(b.get(n).unwrap()));
}

#[test]
fn resume_continues_an_average() {
    let dir = tmp();
    let ck = fixture("cnn/checkpoints");
    let first = dir.path().join("first.safetensors");
    let resumed = dir.path().join("resumed.safetensors");
    let all = dir.path().join("all.safetensors");
    swa().args(["average", "--from", "4", "--to", "6"]).arg(&ck).arg("-o").arg(&first).assert().success();
    swa().args(["average", "--from", "7", "--resume"]).arg(&first).arg(&ck).arg("-o").arg(&resumed).assert().success();
    swa().args(["average", "--from", "4"]).arg(&ck).arg("-o").arg(&all).assert().success();
    assert_close(&resumed, &all, 0.0, 1e-6, |_| true);
    assert_eq!(Checkpoint::open(&resumed).unwrap().metadata()["n_models"], "5");
}

#[test]
fn explicit_weights_that_pick_one_checkpoint_give_it_back() {
    let dir = tmp();
    let out = dir.path().join("one.safetensors");
    swa()
        .args(["average", "--from", "4", "--weights", "0,0,1,0,0"])
        .arg(fixture("cnn/checkpoints"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert_close(&out, &fixture("cnn/checkpoints/epoch_006.safetensors"), 0.0, 0.0, |n| {
        !n.contains("running") && !n.contains("num_batches")
    });
}

#[test]
fn ema_weights_newest_heaviest() {
    let dir = tmp();
    let out = dir.path().join("ema.safetensors");
    let a = swa()
        .args(["average", "--from", "6", "--ema", "0.5", "--json"])
        .arg(fixture("cnn/checkpoints"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let s: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    let w: Vec<f64> = s["inputs"].as_array().unwrap().iter().map(|i| i["weight"].as_f64().unwrap()).collect();
    assert_eq!(w, [0.25, 0.25, 0.5]);
}

#[test]
fn output_dtype_and_shards() {
    let dir = tmp();
    let single = dir.path().join("single.safetensors");
    let index = dir.path().join("model.safetensors.index.json");
    let ck = fixture("cnn/checkpoints");
    swa().args(["average", "--from", "4"]).arg(&ck).arg("-o").arg(&single).assert().success();
    swa().args(["average", "--from", "4", "--shard-size", "20KiB"]).arg(&ck).arg("-o").arg(&index).assert().success();
    let files = listing(dir.path());
    assert!(files.iter().any(|f| f.starts_with("model-00001-of-")), "{files:?}");
    let shards = files.iter().filter(|f| f.starts_with("model-0")).count();
    assert!(shards > 2, "{files:?}");
    assert_close(&index, &single, 0.0, 0.0, |_| true);
    // A sharded checkpoint (its directory) is an input like any other.
    let again = dir.path().join("again.safetensors");
    swa().arg("average").arg(&index).arg(&index).arg("-o").arg(&again).assert().success();
    assert_close(&again, &single, 0.0, 0.0, |_| true);

    let half = dir.path().join("bf16.safetensors");
    swa().args(["average", "--from", "4", "--dtype", "bf16"]).arg(&ck).arg("-o").arg(&half).assert().success();
    let c = Checkpoint::open(&half).unwrap();
    assert_eq!(c.get("fc.weight").unwrap().dtype, swa::checkpoint::Dtype::BF16);
    assert_eq!(c.get("bn1.num_batches_tracked").unwrap().dtype, swa::checkpoint::Dtype::I64);
    assert_close(&half, &single, 1e-2, 1e-6, |_| true);
}

#[test]
fn deterministic_whatever_the_thread_count() {
    let dir = tmp();
    let ck = fixture("cnn/checkpoints");
    let mut outs = Vec::new();
    for threads in ["1", "2", "5"] {
        let out = dir.path().join(format!("t{threads}.safetensors"));
        swa().env("RAYON_NUM_THREADS", threads).args(["average"]).arg(&ck).arg("-o").arg(&out).assert().success();
        outs.push(std::fs::read(out).unwrap());
    }
    assert!(outs.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn onnx_initializers_are_checkpoints_too() {
    let dir = tmp();
    let out = dir.path().join("from_onnx.safetensors");
    let model = fixture("cnn/model.onnx");
    swa().arg("average").arg(&model).arg(&model).arg("-o").arg(&out).assert().success();
    let c = Checkpoint::open(&out).unwrap();
    assert!(c.get("conv1.weight").is_some());
}

#[test]
fn orders_numbers_naturally_not_lexically() {
    let dir = tmp();
    for (src, dst) in [(1, "ckpt-2"), (2, "ckpt-10"), (3, "ckpt-9")] {
        std::fs::copy(
            fixture(&format!("mlp/checkpoints/epoch_00{src}.safetensors")),
            dir.path().join(format!("{dst}.safetensors")),
        )
        .unwrap();
    }
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let a = swa()
        .args(["average", "--last", "1", "--json"])
        .arg(dir.path())
        .arg("-o")
        .arg(out.join("x.safetensors"))
        .assert()
        .success();
    let s: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert!(s["inputs"][0]["path"].as_str().unwrap().ends_with("ckpt-10.safetensors"), "{s}");
}

#[test]
fn resume_from_an_f32_average_of_bf16_checkpoints() {
    let dir = tmp();
    let ck = fixture("cnn/checkpoints");
    let bf16 = |n: u32| {
        let out = dir.path().join(format!("epoch_{n:03}.safetensors"));
        swa()
            .args(["average", "--dtype", "bf16"])
            .arg(ck.join(format!("epoch_{n:03}.safetensors")))
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        out
    };
    let (a, b, c) = (bf16(4), bf16(5), bf16(6));
    let first = dir.path().join("first.avg");
    let resumed = dir.path().join("resumed.avg");
    let all = dir.path().join("all.avg");
    swa().args(["average", "--dtype", "f32"]).arg(&a).arg(&b).arg("-o").arg(&first).assert().success();
    swa()
        .args(["average", "--dtype", "f32", "--resume"])
        .arg(&first)
        .arg(&c)
        .arg("-o")
        .arg(&resumed)
        .assert()
        .success();
    swa().args(["average", "--dtype", "f32"]).arg(&a).arg(&b).arg(&c).arg("-o").arg(&all).assert().success();
    assert_close(&resumed, &all, 1e-6, 1e-7, |_| true);
    // Without --resume, an earlier average (no number in its name) among numbered checkpoints is
    // refused, pointing at --resume; checkpoints of different dtypes are refused.
    swa()
        .arg("average")
        .arg(&first)
        .arg(&c)
        .arg("-o")
        .arg(dir.path().join("mixed.avg"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--resume continues an earlier average"));
    let numbered = dir.path().join("epoch_003.safetensors");
    std::fs::copy(&first, &numbered).unwrap();
    swa()
        .arg("average")
        .arg(&numbered)
        .arg(&c)
        .arg("-o")
        .arg(dir.path().join("mixed.avg"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("checkpoints disagree"));
}

#[cfg(unix)]
#[test]
fn a_file_under_two_names_is_averaged_once_and_reported() {
    let dir = tmp();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    for n in 1..=3 {
        let name = format!("epoch_00{n}.safetensors");
        std::fs::copy(fixture(&format!("mlp/checkpoints/{name}")), ck.join(&name)).unwrap();
    }
    // A "latest" symlink has no number: beside numbered checkpoints it is left out, and said.
    std::os::unix::fs::symlink("epoch_003.safetensors", ck.join("latest.safetensors")).unwrap();
    std::fs::hard_link(ck.join("epoch_001.safetensors"), dir.path().join("epoch_001.safetensors")).unwrap();
    let assert = swa()
        .current_dir(dir.path())
        .args([
            "average",
            "--json",
            "ck",
            "./ck/epoch_002.safetensors",
            "epoch_001.safetensors",
            "-o",
            "out.safetensors",
        ])
        .assert()
        .success()
        .stderr(predicates::str::contains("left out ck/latest.safetensors: it has no number in its name"));
    let s: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(s["n_models"], 3);
    let numbers: Vec<u64> = s["inputs"].as_array().unwrap().iter().map(|i| i["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let left_out: Vec<&str> = s["duplicates"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(left_out, ["./ck/epoch_002.safetensors", "epoch_001.safetensors"]);
    // Resuming from one of the checkpoints would count it twice.
    swa()
        .current_dir(dir.path())
        .args(["average", "ck", "--resume", "ck/epoch_002.safetensors", "-o", "again.safetensors"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--resume ck/epoch_002.safetensors is also one of the checkpoints"));
}

/// timm's `last.pth.tar` and `model_best.pth.tar`, torchvision's `checkpoint.pth` and the
/// Trainer's final `model.safetensors` are copies beside numbered checkpoints: they were averaged
/// in as extra models, sorted newest. Left out and said; named explicitly, a copy is read; of
/// two spellings of one file (a hard link), the numbered one is kept.
#[test]
fn numberless_copies_beside_numbered_checkpoints_are_left_out_and_said() {
    let dir = tmp();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    for n in 1..=3 {
        std::fs::copy(mlp_ck(n), ck.join(format!("epoch_00{n}.safetensors"))).unwrap();
    }
    std::fs::copy(mlp_ck(3), ck.join("last.safetensors")).unwrap();
    std::fs::copy(mlp_ck(2), ck.join("model_best.safetensors")).unwrap();
    let json = |a: &assert_cmd::assert::Assert| -> serde_json::Value {
        serde_json::from_slice(&a.get_output().stdout).unwrap()
    };
    let a =
        swa().arg("average").arg(&ck).arg("--json").arg("-o").arg(dir.path().join("a.safetensors")).assert().success();
    assert_eq!(json(&a)["n_models"], 3);
    assert_eq!(json(&a)["left_out"].as_array().map(Vec::len), Some(2));
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    for copy in ["last.safetensors", "model_best.safetensors"] {
        assert!(stderr.contains(&format!("left out {}: it has no number", ck.join(copy).display())), "{stderr}");
    }
    let named = dir.path().join("named.safetensors");
    swa().arg("average").args((1..=3).map(mlp_ck)).arg("-o").arg(&named).assert().success();
    assert_close(&dir.path().join("a.safetensors"), &named, 0.0, 0.0, |_| true);
    // The Hugging Face Trainer: checkpoint-N/ folders and save_model()'s model.safetensors.
    let run = dir.path().join("run");
    for n in 1..=2 {
        std::fs::create_dir_all(run.join(format!("checkpoint-{n}"))).unwrap();
        std::fs::copy(mlp_ck(n), run.join(format!("checkpoint-{n}/model.safetensors"))).unwrap();
    }
    std::fs::copy(mlp_ck(2), run.join("model.safetensors")).unwrap();
    let a = swa()
        .arg("average")
        .arg(&run)
        .arg("--json")
        .arg("-o")
        .arg(dir.path().join("hf.safetensors"))
        .assert()
        .success();
    assert_eq!(json(&a)["n_models"], 2);
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("left out"));
    // A hard-linked copy named with its numbered spelling: the numbered one is kept.
    std::fs::remove_file(ck.join("last.safetensors")).unwrap();
    std::fs::hard_link(ck.join("epoch_003.safetensors"), ck.join("last.safetensors")).unwrap();
    let a = swa()
        .arg("average")
        .arg(ck.join("last.safetensors"))
        .arg(ck.join("epoch_001.safetensors"))
        .arg(ck.join("epoch_003.safetensors"))
        .arg("--json")
        .arg("-o")
        .arg(dir.path().join("h.safetensors"))
        .assert()
        .success();
    let s = json(&a);
    let inputs: Vec<&str> = s["inputs"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert!(inputs[1].ends_with("epoch_003.safetensors"), "{inputs:?}");
    assert!(s["duplicates"][0]["path"].as_str().unwrap().ends_with("last.safetensors"), "{s}");
}

/// `--resume` continues what the file says it is: an EMA resumed over the next checkpoints equals
/// one EMA over all of them (it was continued as a uniform average of 6 models, labelled
/// `uniform`); an average with explicit weights, or one asked to change its weighting, is refused.
#[test]
fn an_ema_resumes_as_the_same_ema() {
    let dir = tmp();
    let ck = fixture("mlp/checkpoints");
    let out = |name: &str| dir.path().join(name);
    let average = |extra: &[&str], o: &str| {
        swa().arg("average").arg(&ck).args(extra).arg("--json").arg("-o").arg(out(o)).assert()
    };
    average(&["--to", "3", "--ema", "0.9"], "ema3.safetensors").success();
    let resumed =
        average(&["--from", "4", "--resume", out("ema3.safetensors").to_str().unwrap()], "resumed.safetensors")
            .success();
    let s: serde_json::Value = serde_json::from_slice(&resumed.get_output().stdout).unwrap();
    assert_eq!((s["weighting"].as_str(), s["n_models"].as_u64()), (Some("ema(0.9)"), Some(6)), "{s}");
    average(&["--ema", "0.9"], "all.safetensors").success();
    assert_close(&out("resumed.safetensors"), &out("all.safetensors"), 1e-6, 1e-7, |_| true);
    // Asked again for the same EMA: the same; for another weighting: refused.
    average(
        &["--from", "4", "--ema", "0.9", "--resume", out("ema3.safetensors").to_str().unwrap()],
        "again.safetensors",
    )
    .success();
    average(&["--from", "4", "--ema", "0.5", "--resume", out("ema3.safetensors").to_str().unwrap()], "x.safetensors")
        .code(2)
        .stderr(predicates::str::contains("as it was made (ema(0.9)); it cannot be continued as ema(0.5)"));
    average(&["--to", "3", "--weights", "1,2,7"], "w3.safetensors").success();
    average(&["--from", "4", "--resume", out("w3.safetensors").to_str().unwrap()], "x.safetensors")
        .code(2)
        .stderr(predicates::str::contains("was averaged with explicit weights"));
    assert!(!out("x.safetensors").exists());
}

/// torchvision's `model_ema` (an `AveragedModel`): `module.*` weights and an `n_averaged`
/// counter. The counter neither blocks stripping `module.` (it was refused for lacking the
/// prefix) nor keeps the prefix when it is found; the stripped output is what the bare model loads.
#[test]
fn averaged_model_checkpoints_strip_to_the_bare_model() {
    let dir = tmp();
    let ck = dir.path().join("ema");
    std::fs::create_dir(&ck).unwrap();
    for n in 1..=2 {
        let (header, mut data) = header_of(&mlp_ck(n));
        let mut renamed = serde_json::Map::new();
        for (k, v) in header {
            renamed.insert(if k == "__metadata__" { k } else { format!("module.{k}") }, v);
        }
        let at = data.len() as u64;
        data.extend(7i64.to_le_bytes());
        renamed.insert(
            "n_averaged".into(),
            serde_json::json!({"dtype": "I64", "shape": [], "data_offsets": [at, at + 8]}),
        );
        write_with_header(&ck.join(format!("epoch_{n}.safetensors")), &renamed, &data);
    }
    for strip in ["module.", ""] {
        let out = dir.path().join(format!("out{}.safetensors", strip.len()));
        let a = swa()
            .arg("average")
            .arg(&ck)
            .arg("--strip-prefix")
            .arg(strip)
            .arg("--json")
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        let s: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
        assert_eq!(s["stripped_prefix"], "module.", "{s}");
        let (header, _) = header_of(&out);
        assert!(!header.contains_key("n_averaged") && header.contains_key("fc1.weight"), "{:?}", header.keys());
        let plain = dir.path().join("plain.safetensors");
        swa().arg("average").arg(mlp_ck(1)).arg(mlp_ck(2)).arg("-o").arg(&plain).assert().success();
        assert_close(&out, &plain, 0.0, 0.0, |_| true);
    }
}
