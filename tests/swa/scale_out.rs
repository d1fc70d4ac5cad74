//! Work split over machines: parts of a recalibration pass, an evaluation and an average, merged,
//! equal the single-machine run; partials that do not belong together are refused; the merge
//! order does not matter; and the Ray example runs the whole job on a local cluster.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;
use predicates::str::contains;
use proptest::prelude::*;
use swa::checkpoint::Checkpoint;
use swa::onnx::bind::Binder;
use swa::part::Part;
use swa::parts::stats::{self, PartialStatsOptions};
use swa::recalibrate::{PassOptions, Prepared, StatsMode};

fn cnn(rel: &str) -> PathBuf {
    fixture(&format!("cnn/{rel}"))
}

/// The CNN's pass: 500 samples in batches of 32 (15 full batches and one of 20), one thread.
fn pass(stats: StatsMode) -> PassOptions {
    let mut p = PassOptions::new(cnn("train.npy"));
    p.batch_size = std::num::NonZeroUsize::new(32).unwrap();
    p.stats = stats;
    p.engine.threads = std::num::NonZeroUsize::new(1);
    p.quiet = true;
    p
}

/// Writes the partial statistics of every part of `n` into `dir`; returns their paths.
fn partials(dir: &Path, stats: StatsMode, n: usize, weights: &Path) -> Vec<PathBuf> {
    partials_of(dir, &pass(stats), n, weights)
}

/// [`partials`] of the pass `pass`.
fn partials_of(dir: &Path, pass: &PassOptions, n: usize, weights: &Path) -> Vec<PathBuf> {
    let stats = pass.stats;
    (0..n)
        .map(|i| {
            let output = dir.join(format!("{stats}-{i}-of-{n}-seed{}.safetensors", pass.seed));
            stats::write(&PartialStatsOptions {
                model: cnn("model.onnx"),
                weights: Some(weights.to_path_buf()),
                key: None,
                allow_missing_weights: false,
                pass: pass.clone(),
                part: Part::new(i, n).unwrap(),
                output: output.clone(),
            })
            .unwrap();
            output
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1e-300) || a == b
}

#[test]
fn merged_parts_equal_the_single_run_for_1_2_3_and_7_parts() {
    let dir = tmp();
    let weights = cnn("expected/swa_average.safetensors");
    let bound = Binder::load(&cnn("model.onnx")).unwrap().bind(Some(Checkpoint::open(&weights).unwrap()), false);
    let prepared = Prepared::new(bound.unwrap()).unwrap();
    for stats in [StatsMode::Precise, StatsMode::Torch] {
        let single = swa::recalibrate::compute(&prepared, &pass(stats)).unwrap();
        for n in [1, 2, 3, 7] {
            let files = partials(dir.path(), stats, n, &weights);
            let merged = stats::merge(files.iter().map(|f| stats::read(f).unwrap()).collect()).unwrap();
            assert_eq!((merged.samples, merged.batches), (500, 16), "{stats} {n}");
            for (layer, (want_mean, want_var)) in single.stats.iter().enumerate() {
                let (mean, var) = merged.layers[layer].finish();
                for c in 0..mean.len() {
                    assert!(
                        close(mean[c], want_mean[c]),
                        "{stats} {n} mean {layer}[{c}]: {} vs {}",
                        mean[c],
                        want_mean[c]
                    );
                    assert!(close(var[c], want_var[c]), "{stats} {n} var {layer}[{c}]: {} vs {}", var[c], want_var[c]);
                }
            }
        }
    }
}

/// Every part of a pass over a random subset in shuffled order reads its share of the same
/// batches: the merge equals the single pass; parts drawn with another seed are refused.
#[test]
fn parts_of_a_drawn_and_shuffled_pass_merge_into_the_single_pass() {
    let dir = tmp();
    let weights = cnn("expected/swa_average.safetensors");
    let bound = Binder::load(&cnn("model.onnx")).unwrap().bind(Some(Checkpoint::open(&weights).unwrap()), false);
    let prepared = Prepared::new(bound.unwrap()).unwrap();
    let mut p = pass(StatsMode::Torch);
    (p.max_samples, p.shuffle, p.seed) = (Some(200), true, 11);
    let single = swa::recalibrate::compute(&prepared, &p).unwrap();
    assert_eq!(single.sampling, swa::inputs::Sampling::new(500, Some(200), 11, true));
    let files = partials_of(dir.path(), &p, 3, &weights);
    let merged = stats::merge(files.iter().map(|f| stats::read(f).unwrap()).collect()).unwrap();
    assert_eq!((merged.samples, merged.batches), (200, 7));
    for (layer, (want_mean, want_var)) in single.stats.iter().enumerate() {
        let (mean, var) = merged.layers[layer].finish();
        assert!(
            mean.iter().zip(want_mean).chain(var.iter().zip(want_var)).all(|(a, b)| close(*a, *b)),
            "layer {layer}"
        );
    }
    p.seed = 12;
    let other = partials_of(dir.path(), &p, 3, &weights);
    let out = dir.path().join("out.onnx");
    merge_stats(&[&files[0], &files[1], &other[2]], &weights, &out)
        .code(2)
        .stderr(contains("the samplings differ (200 of 500 samples drawn at random, in shuffled order (seed 11) vs"));
}

#[test]
fn merge_stats_writes_what_recalibrate_writes() {
    let dir = tmp();
    let d = dir.path();
    let weights = cnn("expected/swa_average.safetensors");
    let files = partials(d, StatsMode::Torch, 3, &weights);
    swa()
        .args(["recalibrate", "-q", "--batch-size", "32", "--stats", "torch", "--threads", "1", "--model"])
        .arg(cnn("model.onnx"))
        .arg("--weights")
        .arg(&weights)
        .arg("--inputs")
        .arg(cnn("train.npy"))
        .arg("-o")
        .arg(d.join("single.onnx"))
        .arg("--save-weights")
        .arg(d.join("single.safetensors"))
        .assert()
        .success();
    let out = swa()
        .arg("merge-stats")
        .args([&files[2], &files[0], &files[1]])
        .arg("--model")
        .arg(cnn("model.onnx"))
        .arg("--weights")
        .arg(&weights)
        .arg("-o")
        .arg(d.join("merged.onnx"))
        .arg("--save-weights")
        .arg(d.join("merged.safetensors"))
        .arg("--json")
        .assert()
        .success();
    let summary: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!((summary["samples"].as_u64(), summary["batches"].as_u64()), (Some(500), Some(16)));
    assert_close(&d.join("merged.safetensors"), &d.join("single.safetensors"), 1e-12, 0.0, |_| true);
    let onnx = |p: &str| Binder::load(&d.join(p)).unwrap().model().checkpoint().unwrap();
    let (merged, single) = (onnx("merged.onnx"), onnx("single.onnx"));
    for t in single.tensors() {
        assert_eq!(merged.bytes(merged.get(&t.name).unwrap()), single.bytes(t), "{}", t.name);
    }
}

/// The partials of the CNN's pass in 7 parts (precise), written once for the tests that need them.
fn seven() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static SEVEN: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    SEVEN.get_or_init(|| {
        let dir = tmp();
        let files = partials(dir.path(), StatsMode::Precise, 7, &cnn("expected/swa_average.safetensors"));
        (dir, files)
    })
}

fn merge_stats(files: &[&PathBuf], weights: &Path, out: &Path) -> assert_cmd::assert::Assert {
    swa()
        .arg("merge-stats")
        .args(files)
        .arg("--model")
        .arg(cnn("model.onnx"))
        .arg("--weights")
        .arg(weights)
        .arg("-o")
        .arg(out)
        .assert()
}

#[test]
fn partials_that_do_not_belong_together_are_refused() {
    let (_keep, files) = seven();
    let dir = tmp();
    let d = dir.path();
    let avg = cnn("expected/swa_average.safetensors");
    let out = d.join("out.onnx");
    let all: Vec<&PathBuf> = files.iter().collect();
    merge_stats(&[all[0], all[1], all[2], all[3], all[4], all[6]], &avg, &out)
        .code(2)
        .stderr(contains("part(s) 5/7 of 7 missing"));
    merge_stats(&[all[0], all[1], all[2], all[3], all[4], all[5], all[6], all[3]], &avg, &out)
        .code(2)
        .stderr(contains("part 3/7 is given twice"));
    // Computed with other weights, or with another batch size.
    let other = d.join("other.safetensors");
    stats::write(&PartialStatsOptions {
        model: cnn("model.onnx"),
        weights: Some(cnn("checkpoints/epoch_008.safetensors")),
        key: None,
        allow_missing_weights: false,
        pass: pass(StatsMode::Precise),
        part: Part::new(6, 7).unwrap(),
        output: other.clone(),
    })
    .unwrap();
    let six = &all[..6];
    merge_stats(&[six, &[&other]].concat(), &avg, &out).code(2).stderr(contains("the weights differ"));
    let mut p = pass(StatsMode::Precise);
    p.batch_size = std::num::NonZeroUsize::new(16).unwrap();
    let batch16 = d.join("batch16.safetensors");
    stats::write(&PartialStatsOptions {
        model: cnn("model.onnx"),
        weights: Some(avg.clone()),
        key: None,
        allow_missing_weights: false,
        pass: p,
        part: Part::new(6, 7).unwrap(),
        output: batch16.clone(),
    })
    .unwrap();
    merge_stats(&[six, &[&batch16]].concat(), &avg, &out).code(2).stderr(contains("the batch sizes differ (32 vs 16)"));
    // The right partials, but another model or other weights given to merge into.
    merge_stats(&all, &cnn("checkpoints/epoch_008.safetensors"), &out)
        .code(2)
        .stderr(contains("were not computed for the model and weights given: the weights differ"));
    swa()
        .arg("merge-stats")
        .args(&all)
        .arg("--model")
        .arg(fixture("mlp/model.onnx"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("the model files differ"));
    // Not a partial at all.
    merge_stats(&[&avg], &avg, &out).code(2).stderr(contains("is not a partial statistics file"));
    assert!(!out.exists());
}

#[test]
fn a_part_without_batches_or_a_shard_without_partial_out_is_refused() {
    let d = tmp();
    let cmd = |extra: &[&str]| {
        let mut c = swa();
        c.current_dir(d.path())
            .args(["recalibrate", "-q", "--batch-size", "256", "--model"])
            .arg(cnn("model.onnx"))
            .arg("--inputs")
            .arg(cnn("train.npy"))
            .args(extra);
        c
    };
    let p = d.path().join("p.safetensors");
    cmd(&["--shard", "0/3", "--partial-out", p.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(contains("--shard 0/3 gets none of the 2 batches: split into at most 2 parts"));
    cmd(&["--shard", "0/2", "-o", "x.onnx"]).assert().code(2).stderr(contains("--partial-out"));
    cmd(&["--shard", "2/2", "--partial-out", "p"]).assert().code(2).stderr(contains("numbered 0 to 1"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn the_order_of_the_partials_does_not_matter(order in Just((0..7).collect::<Vec<usize>>()).prop_shuffle()) {
        let (_keep, files) = seven();
        let read = |order: &[usize]| order.iter().map(|&k| stats::read(&files[k]).unwrap()).collect::<Vec<_>>();
        let reference = stats::merge(read(&[0, 1, 2, 3, 4, 5, 6])).unwrap();
        let shuffled = stats::merge(read(&order)).unwrap();
        prop_assert_eq!(reference.layers, shuffled.layers);
    }
}

#[test]
fn merged_partial_evaluations_equal_the_single_evaluation() {
    let d = tmp();
    let model = cnn("model.onnx");
    let eval = |extra: &[&str]| {
        let mut c = swa();
        c.args(["evaluate", "-q", "--json", "--batch-size", "64", "--threads", "1", "--model"])
            .arg(&model)
            .arg("--weights")
            .arg(cnn("expected/swa_average.safetensors"))
            .arg("--inputs")
            .arg(cnn("eval.npy"))
            .arg("--labels")
            .arg(cnn("eval_labels.npy"))
            .args(extra);
        c
    };
    let single: serde_json::Value = serde_json::from_slice(&eval(&[]).assert().success().get_output().stdout).unwrap();
    let parts: Vec<PathBuf> = (0..3).map(|i| d.path().join(format!("e{i}.json"))).collect();
    for (i, p) in parts.iter().enumerate() {
        eval(&["--shard", &format!("{i}/3"), "--partial-out", p.to_str().unwrap()]).assert().success();
    }
    let merged = swa().arg("merge-eval").arg("--json").args([&parts[1], &parts[2], &parts[0]]).assert().success();
    let merged: serde_json::Value = serde_json::from_slice(&merged.get_output().stdout).unwrap();
    for key in ["samples", "correct", "nonfinite", "per_class", "top1", "top5", "k"] {
        assert_eq!(merged[key], single[key], "{key}");
    }
    let (a, b) = (merged["loss"].as_f64().unwrap(), single["loss"].as_f64().unwrap());
    assert!(close(a, b), "{a} vs {b}");
    // The gate, and parts that do not add up.
    swa()
        .arg("merge-eval")
        .args(&parts)
        .args(["--min-accuracy", "0.999"])
        .assert()
        .code(1)
        .stderr(contains("is below --min-accuracy 0.999"));
    swa().arg("merge-eval").args(&parts[..2]).assert().code(2).stderr(contains("2/3 of 3 missing"));
    let two = d.path().join("two.json");
    eval(&["--shard", "1/2", "--partial-out", two.to_str().unwrap()]).assert().success();
    swa().arg("merge-eval").args([&parts[0], &two]).assert().code(2).stderr(contains("different numbers of parts"));
}

#[test]
fn averaged_parts_equal_the_single_average_and_the_index_waits_for_every_shard() {
    let d = tmp();
    let avg = |dir: &str, extra: &[&str]| {
        let mut c = swa();
        c.args(["average", "-q", "--from", "4", "--shard-size", "20KB", "-o"])
            .arg(d.path().join(dir).join("avg.safetensors.index.json"))
            .arg(cnn("checkpoints"))
            .args(extra);
        c
    };
    for sub in ["one", "parts"] {
        std::fs::create_dir(d.path().join(sub)).unwrap();
    }
    avg("one", &[]).assert().success();
    let index = d.path().join("parts/avg.safetensors.index.json");
    let mut read = 0;
    for i in [2, 0] {
        let out = avg("parts", &["--part", &format!("{i}/3"), "--json"]).assert().success();
        let s: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        read += s["bytes_read"].as_u64().unwrap();
        assert!(!index.exists(), "the index waits for every part");
    }
    avg("parts", &["--merge-parts"]).assert().code(2).stderr(contains("2 of 5 shards are not written"));
    let out = avg("parts", &["--part", "1/3", "--json"]).assert().success();
    let s: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    read += s["bytes_read"].as_u64().unwrap();
    assert!(index.exists(), "the part finishing last writes the index");
    assert_eq!(listing(&d.path().join("one")), listing(&d.path().join("parts")));
    for name in listing(&d.path().join("one")) {
        let bytes = |sub: &str| std::fs::read(d.path().join(sub).join(&name)).unwrap();
        assert_eq!(bytes("one"), bytes("parts"), "{name}");
    }
    let whole = avg("one", &["--json"]).assert().success();
    let whole: serde_json::Value = serde_json::from_slice(&whole.get_output().stdout).unwrap();
    assert_eq!(read, whole["bytes_read"].as_u64().unwrap(), "each part reads only its own tensors");
    avg("parts", &["--merge-parts"]).assert().success();
    avg("parts", &["--part", "5/6"]).assert().code(2).stderr(contains("--part 5/6 gets none of the output's 5 shards"));
}

#[test]
fn a_part_beside_another_averages_shards_or_index_changes_nothing() {
    let d = tmp();
    let index = d.path().join("out/swa.safetensors.index.json");
    let avg = |range: [&str; 2], extra: &[&str]| {
        let mut c = swa();
        c.args(["average", "-q", range[0], range[1], "--shard-size", "30KB", "-o"])
            .arg(&index)
            .arg(cnn("checkpoints"))
            .args(extra);
        c
    };
    std::fs::create_dir(d.path().join("out")).unwrap();
    // Every file of the output directory, with its bytes.
    let contents = || -> Vec<(String, Vec<u8>)> {
        let out = d.path().join("out");
        listing(&out).into_iter().map(|n| (n.clone(), std::fs::read(out.join(&n)).unwrap())).collect()
    };
    avg(["--to", "4"], &[]).assert().success();
    let before = contents();
    assert!(before.len() > 2, "{before:?}");
    // Another average's part: its shards would be served by the old index beside old shards.
    avg(["--from", "5"], &["--part", "0/2"]).assert().code(2).stderr(contains("another run's shard"));
    assert!(before == contents(), "a refused part changed the output directory");
    // With the other shards gone, the old index alone is refused too.
    for (name, _) in &before {
        if name.ends_with("-of-00004.safetensors") && !name.contains("00001") && !name.contains("00003") {
            std::fs::remove_file(d.path().join("out").join(name)).unwrap();
        }
    }
    avg(["--from", "5"], &["--part", "0/2"]).assert().code(2).stderr(contains("is the index of another average"));
    // The same average's parts, re-run over a complete set, are fine.
    std::fs::remove_dir_all(d.path().join("out")).unwrap();
    std::fs::create_dir(d.path().join("out")).unwrap();
    avg(["--from", "5"], &[]).assert().success();
    avg(["--from", "5"], &["--part", "1/2"]).assert().success();
}

#[test]
fn parts_started_together_into_a_new_directory_all_create_it() {
    let d = tmp();
    let index = |dir: &str| d.path().join(dir).join("avg.safetensors.index.json");
    let avg = |out: &Path| {
        let mut c = swa();
        c.args(["average", "-q", "--from", "4", "--shard-size", "20KB", "-o"]).arg(out).arg(cnn("checkpoints"));
        c
    };
    avg(&index("one")).assert().success().stdout(contains("created directory"));
    // Three parts at once, none finding `new/parts`: each makes what is missing, or finds it made.
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let out = index("new/parts");
            std::thread::spawn(move || {
                swa_std()
                    .args(["average", "-q", "--from", "4", "--shard-size", "20KB", "--part", &format!("{i}/3"), "-o"])
                    .arg(out)
                    .arg(cnn("checkpoints"))
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for t in threads {
        let o = t.join().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    avg(&index("new/parts")).arg("--merge-parts").assert().success();
    for name in listing(&d.path().join("one")) {
        let bytes = |sub: &str| std::fs::read(d.path().join(sub).join(&name)).unwrap();
        assert_eq!(bytes("one"), bytes("new/parts"), "{name}");
    }
}

/// The Ray example on a local cluster of 2 CPUs: the merged model equals `swa recalibrate` on
/// one machine.
#[test]
#[ignore = "needs ray: runs examples/ray on a local cluster (python3 -m pip install ray)"]
fn the_ray_example_runs_the_job_on_a_local_cluster() {
    require_python_module("python3", "ray", "python3 -m pip install ray");
    let d = tmp();
    let out = d.path().join("ray");
    let started = std::time::Instant::now();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ray/swa_ray.py");
    let run = std::process::Command::new("python3")
        .arg(script)
        .arg("--swa")
        .arg(swa_bin())
        .arg("--model")
        .arg(cnn("model.onnx"))
        .arg("--checkpoints")
        .arg(cnn("checkpoints"))
        .args(["--from", "4", "--parts", "2", "--num-cpus", "2", "--shard-size", "20KB", "--batch-size", "32"])
        .arg("--train-inputs")
        .arg(cnn("train.npy"))
        .arg("--eval-inputs")
        .arg(cnn("eval.npy"))
        .arg("--eval-labels")
        .arg(cnn("eval_labels.npy"))
        .arg("--out")
        .arg(&out)
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    eprintln!("ray example: {:.1} s", started.elapsed().as_secs_f64());
    let single = d.path().join("single.safetensors");
    swa()
        .args(["recalibrate", "-q", "--batch-size", "32", "--model"])
        .arg(cnn("model.onnx"))
        .arg("--weights")
        .arg(out.join("swa.safetensors.index.json"))
        .arg("--inputs")
        .arg(cnn("train.npy"))
        .arg("-o")
        .arg(d.path().join("single.onnx"))
        .arg("--save-weights")
        .arg(&single)
        .assert()
        .success();
    let stat = |n: &str| n.ends_with("running_mean") || n.ends_with("running_var");
    assert_close(&out.join("swa_bn.safetensors"), &single, 1e-12, 0.0, stat);
    assert_close(&out.join("swa_bn.safetensors"), &cnn("expected/swa_bn_precise.safetensors"), 1e-4, 1e-5, stat);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["metrics"]["samples"], 300);
}

/// The partial statistics are safetensors whatever `--partial-out` is named: a part written as
/// `stats-0.pt` (or `.bin`, `.ckpt`) must merge as one named `.safetensors` does. With outputs
/// routed by name, `--partial-out P.pt` wrote a torch.save zip that `merge-stats` then refused as
/// "not a safetensors file".
#[test]
fn partial_statistics_named_like_torch_files_still_merge() {
    let dir = tmp();
    let d = dir.path();
    let weights = cnn("expected/swa_average.safetensors");
    let names = ["stats-0.pt", "stats-1.bin"];
    for (i, name) in names.iter().enumerate() {
        swa()
            .args(["recalibrate", "-q", "--batch-size", "64", "--threads", "1", "--model"])
            .arg(cnn("model.onnx"))
            .arg("--weights")
            .arg(&weights)
            .arg("--inputs")
            .arg(cnn("train.npy"))
            .args(["--shard", &format!("{i}/2"), "--partial-out"])
            .arg(d.join(name))
            .assert()
            .success();
        let head = std::fs::read(d.join(name)).unwrap();
        assert!(!head.starts_with(b"PK"), "{name} was written as a torch.save zip, not safetensors");
    }
    swa()
        .arg("merge-stats")
        .args(names.iter().map(|n| d.join(n)))
        .arg("--model")
        .arg(cnn("model.onnx"))
        .arg("--weights")
        .arg(&weights)
        .arg("-o")
        .arg(d.join("merged.onnx"))
        .assert()
        .success();
}

/// A damaged partial evaluation is refused saying what is wrong with its counts, as before the
/// task seam: serde's untagged enums replace the task's own error (`missing field `correct``,
/// a negative count) with "data did not match any variant of untagged enum State".
#[test]
fn a_damaged_partial_evaluation_says_which_count_is_wrong() {
    let d = tmp();
    let part = d.path().join("e0.json");
    swa()
        .args(["evaluate", "-q", "--batch-size", "64", "--threads", "1", "--model"])
        .arg(cnn("model.onnx"))
        .arg("--inputs")
        .arg(cnn("eval.npy"))
        .arg("--labels")
        .arg(cnn("eval_labels.npy"))
        .args(["--shard", "0/2", "--partial-out"])
        .arg(&part)
        .assert()
        .success();
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&part).unwrap()).unwrap();
    type Damage = fn(&mut serde_json::Value);
    let cases: [(&str, Damage, &str); 5] = [
        ("missing.json", |c| drop(c.as_object_mut().unwrap().remove("correct")), "missing field `correct`"),
        ("negative.json", |c| c["correct"] = serde_json::json!(-1), "-1"),
        // Counts that no evaluation counts: merged, they gave a top-1 of 333395 % (or overflowed
        // the sums, a panic in debug builds), and the gate passed.
        ("above.json", |c| c["correct"] = serde_json::json!(1_000_000), "cannot have been counted"),
        ("huge.json", |c| c["correct"] = serde_json::json!(1u64 << 63), "cannot have been counted"),
        ("class.json", |c| c["per_class"][0] = serde_json::json!([1, 2]), "cannot have been counted"),
    ];
    for (name, damage, says) in cases {
        let mut v = original.clone();
        damage(&mut v["counts"]);
        let damaged = d.path().join(name);
        std::fs::write(&damaged, serde_json::to_vec(&v).unwrap()).unwrap();
        swa().arg("merge-eval").arg(&damaged).args(["--min-accuracy", "0.5"]).assert().code(2).stderr(contains(says));
    }
    // The undamaged part still reads (and is one part of two: incomplete).
    swa().arg("merge-eval").arg(&part).assert().code(2).stderr(contains("missing"));
    // More non-finite samples than samples: merged, the loss was 0.
    let mut v = original.clone();
    v["counts"]["nonfinite"] = serde_json::json!(1_000);
    let damaged = d.path().join("nonfinite.json");
    std::fs::write(&damaged, serde_json::to_vec(&v).unwrap()).unwrap();
    swa().arg("merge-eval").arg(&damaged).assert().code(2).stderr(contains("cannot have been counted"));
    // Parts of absurd splits: never sized, allocated or printed by the count (a panic, a 16 GB
    // allocation and a 179 MB message before).
    for count in ["18446744073709551615", "1000000000", "10000000"] {
        let mut v = original.clone();
        v["shard"] = serde_json::json!(format!("0/{count}"));
        let damaged = d.path().join(format!("split{count}.json"));
        std::fs::write(&damaged, serde_json::to_vec(&v).unwrap()).unwrap();
        let o = swa().arg("merge-eval").arg(&damaged).timeout(std::time::Duration::from_secs(20)).assert().code(2);
        let stderr = String::from_utf8_lossy(&o.get_output().stderr).into_owned();
        assert!(stderr.len() < 1000 && stderr.contains(&format!("1/{count}, 2/{count}")), "{stderr}");
    }
}

/// Partial statistics whose numbers no pass computes (a NaN mean, a negative M2, a count that is
/// no whole number) are refused naming the layer: merged, they gave a NaN running_mean and a
/// negative running_var.
#[test]
fn partial_statistics_that_cannot_have_been_computed_are_refused() {
    let (_keep, files) = seven();
    let d = tmp();
    let (header, data) = header_of(&files[0]);
    let layer = header.keys().find(|k| k.ends_with(".mean")).unwrap().trim_end_matches(".mean").to_string();
    let damage = |tensor: &str, value: f64, name: &str| {
        let at = header[&format!("{layer}.{tensor}")]["data_offsets"][0].as_u64().unwrap() as usize;
        let mut bytes = data.clone();
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        let path = d.path().join(name);
        write_with_header(&path, &header, &bytes);
        let mut all: Vec<&PathBuf> = files.iter().skip(1).collect();
        all.push(&path);
        merge_stats(&all, &cnn("expected/swa_average.safetensors"), &d.path().join("out.onnx"))
            .code(2)
            .stderr(contains(format!("layer `{layer}`: the statistics cannot have been computed")));
    };
    damage("mean", f64::NAN, "nan_mean.safetensors");
    damage("m2", -1.0, "negative_m2.safetensors");
    damage("m2", f64::INFINITY, "infinite_m2.safetensors");
    damage("count", 2.5, "fractional_count.safetensors");
    damage("count", -3.0, "negative_count.safetensors");
    damage("count", 0.0, "zero_count.safetensors");
    // Finite, but too large to add: two parts near f64::MAX, which the merge would make inf.
    let huge: Vec<PathBuf> = (0..2)
        .map(|k| {
            let (header, data) = header_of(&files[k]);
            let at = header[&format!("{layer}.m2")]["data_offsets"][0].as_u64().unwrap() as usize;
            let mut bytes = data.clone();
            bytes[at..at + 8].copy_from_slice(&f64::MAX.to_le_bytes());
            let path = d.path().join(format!("huge_m2_{k}.safetensors"));
            write_with_header(&path, &header, &bytes);
            path
        })
        .collect();
    let mut all: Vec<&PathBuf> = files.iter().skip(2).collect();
    all.extend(&huge);
    merge_stats(&all, &cnn("expected/swa_average.safetensors"), &d.path().join("out.onnx"))
        .code(2)
        .stderr(contains(format!("the merged statistics of layer `{layer}` are not finite")));
    assert!(!d.path().join("out.onnx").exists());
    // torch statistics: every layer counts the batches of the part.
    let torch = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/partial_stats/mlp_torch_0of2.safetensors");
    let (header, data) = header_of(&torch);
    let second = header.keys().filter(|k| k.ends_with(".batches")).max().unwrap().clone();
    let at = header[&second]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut bytes = data.clone();
    bytes[at..at + 8].copy_from_slice(&1.0f64.to_le_bytes());
    let fewer = d.path().join("fewer_batches.safetensors");
    write_with_header(&fewer, &header, &bytes);
    let e = stats::read(&fewer).unwrap_err().to_string();
    assert!(e.contains("count 2 and 1 batches: every layer runs in every batch"), "{e}");
}
