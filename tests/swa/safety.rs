//! Safety and data-loss regressions: `--force` and outputs never destroy inputs or what is not
//! theirs, outputs are atomic (also on Ctrl-C) and keep sane modes, paths read from files stay
//! inside their directory, and bad numbers, bad arrays and odd files end in exit code 2 with a
//! message, never a panic, a hang or a silently wrong result.
//!
//! Each test is named by the behaviour it checks, grouped by the harm it guards against
//! (docs/reliability.md lists them under the guarantee they test). Everything happens in
//! temporary directories; tests that need root are ignored unless asked for, and fail when they
//! are run without root.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use swa::checkpoint::{Dtype, TensorSpec};

/// Runs `cmd`; checks first that nothing under `root` was lost, changed or added, then exit code
/// 2 and a message about `--out`.
fn refused_and_intact(mut cmd: assert_cmd::Command, root: &Path, before: &[String]) {
    let o = cmd.output().unwrap();
    assert_same(before, &snapshot(root));
    assert_eq!(o.status.code(), Some(2), "{}", combined(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"), "no mention of --out: {}", combined(&o));
}

/// Entries a failed or interrupted write may leave: temporary files and staging directories.
fn debris(dir: &Path) -> Vec<String> {
    listing_if_any(dir).into_iter().filter(|n| n.ends_with(".partial") || n.starts_with(".swa-run.")).collect()
}

// ---------------------------------------------------------------------------------------------
// `swa run --force` replaces only what an earlier `swa run` wrote
// ---------------------------------------------------------------------------------------------

#[test]
fn force_onto_the_checkpoints_directory_deletes_nothing() {
    let dir = tmp();
    let inputs = dir.path().join("in");
    mlp_inputs(&inputs);
    let before = snapshot(dir.path());
    refused_and_intact(run_mlp(dir.path(), &inputs, &inputs.join("checkpoints"), &["--force"]), dir.path(), &before);
}

#[test]
fn force_onto_the_working_directory_holding_the_inputs_deletes_nothing() {
    let dir = tmp();
    mlp_inputs(dir.path());
    let before = snapshot(dir.path());
    // `--out .` beside the inputs.
    refused_and_intact(run_mlp(dir.path(), Path::new("."), Path::new("."), &["--force"]), dir.path(), &before);
}

#[test]
fn force_onto_the_parent_spelling_of_the_working_directory_deletes_nothing() {
    let dir = tmp();
    let m = dir.path().join("m");
    mlp_inputs(&m);
    let before = snapshot(dir.path());
    // From inside `m`, `--out ../m` is `m` itself.
    refused_and_intact(run_mlp(&m, Path::new("."), Path::new("../m"), &["--force"]), dir.path(), &before);
}

#[test]
fn force_onto_an_ancestor_of_the_working_directory_or_of_an_input_deletes_nothing() {
    let dir = tmp();
    let base = dir.path().join("base");
    let inputs = base.join("in");
    mlp_inputs(&inputs);
    let cwd = dir.path().join("work/inner");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(cwd.join("notes.txt"), "mine").unwrap();
    let before = snapshot(dir.path());
    // An ancestor of the working directory.
    refused_and_intact(run_mlp(&cwd, &inputs, &dir.path().join("work"), &["--force"]), dir.path(), &before);
    // An ancestor of the inputs (`base` holds `in/`).
    refused_and_intact(run_mlp(&cwd, &inputs, &base, &["--force"]), dir.path(), &before);
}

#[test]
fn force_onto_a_directory_swa_did_not_write_deletes_nothing() {
    let dir = tmp();
    let inputs = dir.path().join("in");
    mlp_inputs(&inputs);
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("thesis.tex"), "years of work").unwrap();
    let before = snapshot(dir.path());
    refused_and_intact(run_mlp(dir.path(), &inputs, &other, &["--force"]), dir.path(), &before);
}

#[test]
fn force_replaces_an_earlier_swa_run_output() {
    // Existing behaviour that must survive the fix: the marker of the first run is recognised.
    let dir = tmp();
    let inputs = dir.path().join("in");
    mlp_inputs(&inputs);
    let out = dir.path().join("out");
    run_mlp(dir.path(), &inputs, &out, &["--last", "2"]).assert().success();
    let first = std::fs::read(out.join("report.json")).unwrap();
    run_mlp(dir.path(), &inputs, &out, &["--last", "3", "--force"]).assert().success();
    let names = listing(&out);
    for f in ["model_swa.onnx", "report.html", "report.json", "report.md", "swa.safetensors"] {
        assert!(names.contains(&f.to_string()), "{f} missing from {names:?}");
    }
    assert_ne!(std::fs::read(out.join("report.json")).unwrap(), first, "the second run did not replace the first");
    assert_eq!(listing(dir.path()), ["in", "out"], "left behind beside the output");
}

// ---------------------------------------------------------------------------------------------
// Concurrent runs into one `--out`: one wins, the other fails
// ---------------------------------------------------------------------------------------------

/// Two `swa run` started together into the same `--out` (which does not exist yet): exactly one
/// may win; the other must fail with exit 2 instead of deleting the winner's output and
/// succeeding too. Deterministic in practice: both check `--out` within milliseconds of their
/// start, and a run takes seconds, so both always get past the start-up check today.
#[test]
fn concurrent_runs_into_one_out_do_not_both_succeed() {
    let dir = tmp();
    let inputs = dir.path().join("in");
    mlp_inputs(&inputs);
    let out = dir.path().join("out");
    let spawn = || {
        run_mlp_std(dir.path(), &inputs, &out, &["--last", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort();
    assert_eq!(
        codes,
        [Some(0), Some(2)],
        "both runs claimed --out: stderr {:?} / {:?}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let names = listing(&out);
    for f in ["model_swa.onnx", "report.html", "report.json", "report.md", "swa.safetensors"] {
        assert!(names.contains(&f.to_string()), "{f} missing from {names:?}");
    }
    assert!(debris(dir.path()).is_empty(), "left behind: {:?}", debris(dir.path()));
}

// ---------------------------------------------------------------------------------------------
// Outputs onto an input's external-data file are refused
// ---------------------------------------------------------------------------------------------

#[test]
fn outputs_never_overwrite_an_input_models_external_data() {
    let dir = tmp();
    let model = dir.path().join("model_dynamo.onnx");
    let data = dir.path().join("model_dynamo.onnx.data");
    std::fs::copy(fixture("cnn/model_dynamo.onnx"), &model).unwrap();
    std::fs::copy(fixture("cnn/model_dynamo.onnx.data"), &data).unwrap();
    let before = snapshot(dir.path());
    let recalibrate = || {
        let mut c = swa();
        c.args(["recalibrate", "--max-samples", "128", "--model"])
            .arg(&model)
            .arg("--inputs")
            .arg(fixture("cnn/train.npy"))
            .timeout(Duration::from_secs(60));
        c
    };
    // -o onto the .data file.
    recalibrate().arg("-o").arg(&data).assert().code(2).stderr(contains("input"));
    assert_same(&before, &snapshot(dir.path()));
    // --save-weights onto the .data file.
    recalibrate()
        .arg("-o")
        .arg(dir.path().join("out.onnx"))
        .arg("--save-weights")
        .arg(&data)
        .assert()
        .code(2)
        .stderr(contains("input"));
    assert_same(&before, &snapshot(dir.path()));
    // `swa average` of the model's initializers onto its own .data file.
    swa().arg("average").arg(&model).arg("-o").arg(&data).assert().code(2).stderr(contains("input"));
    assert_same(&before, &snapshot(dir.path()));
}

// ---------------------------------------------------------------------------------------------
// Outputs that are not regular files are kept
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn a_fifo_as_output_is_refused_and_kept() {
    let dir = tmp();
    let fifo = dir.path().join("out.safetensors");
    mkfifo(&fifo);
    swa()
        .arg("average")
        .arg(mlp_ck(1))
        .arg(mlp_ck(2))
        .arg("-o")
        .arg(&fifo)
        .timeout(Duration::from_secs(30))
        .assert()
        .code(2)
        .stderr(contains("out.safetensors"));
    assert!(is_fifo(&fifo), "the FIFO was replaced");
    assert_eq!(listing(dir.path()), ["out.safetensors"]);
}

/// A character device like `/dev/null` (as root) must not be replaced by a regular file. The
/// device node is made in a temporary directory (`mknod`, root only), never the real /dev/null:
/// today's code would replace it for the whole machine.
#[cfg(unix)]
#[test]
#[ignore = "needs root: makes a character device node (mknod) to write to"]
fn a_device_node_as_output_is_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    require_root("make a device node (mknod)");
    let dir = tmp();
    let null = dir.path().join("null");
    let made = std::process::Command::new("mknod").arg(&null).args(["c", "1", "3"]).output().unwrap();
    assert!(made.status.success(), "mknod {} c 1 3 failed as root: {}", null.display(), combined(&made));
    let output =
        swa().arg("average").arg(mlp_ck(1)).arg("-o").arg(&null).timeout(Duration::from_secs(30)).output().unwrap();
    let still = std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device();
    assert!(still, "the device node was replaced by a regular file (exit {:?})", output.status.code());
    // Refused before any work, like every existing output that is not a regular file.
    assert_eq!(output.status.code(), Some(2), "{}", combined(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a regular file (a FIFO, socket or device): refusing to replace it"), "{stderr}");
    assert_eq!(listing(dir.path()), ["null"]);
}

#[cfg(unix)]
#[test]
fn a_symlink_as_output_is_refused_and_kept() {
    let dir = tmp();
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.path().join("out.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    swa()
        .arg("average")
        .arg(mlp_ck(1))
        .arg(mlp_ck(2))
        .arg("-o")
        .arg(&link)
        .assert()
        .code(2)
        .stderr(contains("out.safetensors"));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink was replaced");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert_eq!(listing(dir.path()), ["out.safetensors", "precious.txt"]);
}

#[test]
fn a_directory_as_output_is_refused_and_kept() {
    let dir = tmp();
    let d = dir.path().join("out.safetensors");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("inside.txt"), "x").unwrap();
    swa()
        .arg("average")
        .arg(mlp_ck(1))
        .arg(mlp_ck(2))
        .arg("-o")
        .arg(&d)
        .assert()
        .code(2)
        .stderr(contains("out.safetensors"));
    assert!(d.is_dir());
    assert_eq!(listing(&d), ["inside.txt"]);
    assert_eq!(listing(dir.path()), ["out.safetensors"]);
}

// ---------------------------------------------------------------------------------------------
// Multi-file outputs are all or nothing
// ---------------------------------------------------------------------------------------------

#[test]
fn sharded_output_whose_index_cannot_be_written_leaves_no_shards() {
    let dir = tmp();
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::create_dir(&index).unwrap();
    swa()
        .arg("average")
        .arg(fixture("mlp/checkpoints"))
        .arg("-o")
        .arg(&index)
        .args(["--shard-size", "20KB"])
        .assert()
        .code(2)
        .stderr(contains("model.safetensors.index.json"));
    assert_eq!(listing(dir.path()), ["model.safetensors.index.json"], "shards left behind");
    assert!(listing(&index).is_empty());
}

#[test]
fn recalibrate_whose_model_cannot_be_published_leaves_no_weights() {
    let dir = tmp();
    let x = dir.path().join("X.onnx");
    std::fs::create_dir(&x).unwrap();
    let w = dir.path().join("W.safetensors");
    swa()
        .args(["recalibrate", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(fixture("mlp/train.npy"))
        .arg("-o")
        .arg(&x)
        .arg("--save-weights")
        .arg(&w)
        .timeout(Duration::from_secs(60))
        .assert()
        .code(2)
        .stderr(contains("X.onnx"));
    assert!(!w.exists(), "--save-weights was published although the model was not");
    assert_eq!(listing(dir.path()), ["X.onnx"]);
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C and SIGTERM leave no temporary files
// ---------------------------------------------------------------------------------------------

/// A one-tensor F32 checkpoint of `n` zeros, sparse (instant to make, no disk used).
fn big_checkpoint(path: &Path, n: u64) {
    let header = serde_json::json!({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}});
    write_with_header(path, header.as_object().unwrap(), &[]);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(f.metadata().unwrap().len() + 4 * n).unwrap();
}

/// Spawns `cmd`, waits until `started(dir listing)` (or the process exits), sends `signal`, and
/// checks that the process ends within 10 s and leaves no temporary files in `watch`. Returns
/// whether the signal was sent (false: the process ended first).
fn interrupted_leaves_nothing(
    mut cmd: std::process::Command,
    signal: &str,
    watch: &Path,
    started: fn(&[String]) -> bool,
) -> bool {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    let mut exited_early = None;
    // Until the temporary output shows up, or 3 s at most (a fix may name it differently).
    while t0.elapsed() < Duration::from_secs(3) {
        if let Some(s) = child.try_wait().unwrap() {
            exited_early = Some(s);
            break;
        }
        if started(&listing_if_any(watch)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(s) = exited_early {
        let _ = child.wait();
        eprintln!("note: the process ended ({s}) before it could be interrupted; checking leftovers only");
    } else {
        std::thread::sleep(Duration::from_millis(200));
        let sent = std::process::Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} failed");
        let t1 = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if t1.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("swa did not end within 10 s of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let left = debris(watch);
    assert!(left.is_empty(), "left behind after SIG{signal}: {left:?}");
    exited_early.is_none()
}

fn average_big(dir: &Path) -> std::process::Command {
    let inputs = dir.join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    for i in 1..=3 {
        big_checkpoint(&inputs.join(format!("epoch_{i}.safetensors")), 48 << 20);
    }
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut c = swa_std();
    c.args(["average", "--quiet"]).arg(&inputs).arg("-o").arg(out.join("avg.safetensors"));
    c
}

fn run_into(dir: &Path) -> std::process::Command {
    let inputs = dir.join("in");
    mlp_inputs(&inputs);
    let outs = dir.join("outs");
    std::fs::create_dir_all(&outs).unwrap();
    run_mlp_std(dir, &inputs, &outs.join("report"), &["--recalibrate-each"])
}

#[cfg(unix)]
#[test]
fn sigint_during_average_leaves_no_partial_file() {
    let dir = tmp();
    let cmd = average_big(dir.path());
    interrupted_leaves_nothing(cmd, "INT", &dir.path().join("out"), |l| l.iter().any(|n| n.ends_with(".partial")));
    assert!(listing(&dir.path().join("out")).iter().all(|n| n == "avg.safetensors"));
}

#[cfg(unix)]
#[test]
fn sigterm_during_average_leaves_no_partial_file() {
    let dir = tmp();
    let cmd = average_big(dir.path());
    interrupted_leaves_nothing(cmd, "TERM", &dir.path().join("out"), |l| l.iter().any(|n| n.ends_with(".partial")));
    assert!(listing(&dir.path().join("out")).iter().all(|n| n == "avg.safetensors"));
}

#[cfg(unix)]
#[test]
fn sigint_during_run_leaves_no_staging_directory() {
    let dir = tmp();
    let cmd = run_into(dir.path());
    interrupted_leaves_nothing(cmd, "INT", &dir.path().join("outs"), |l| l.iter().any(|n| n.starts_with(".swa-run.")));
}

#[cfg(unix)]
#[test]
fn sigterm_during_run_leaves_no_staging_directory() {
    let dir = tmp();
    let cmd = run_into(dir.path());
    interrupted_leaves_nothing(cmd, "TERM", &dir.path().join("outs"), |l| l.iter().any(|n| n.starts_with(".swa-run.")));
}

#[cfg(unix)]
#[test]
fn sigterm_during_run_removes_the_directories_made_for_its_output() {
    let dir = tmp();
    let inputs = dir.path().join("in");
    mlp_inputs(&inputs);
    let deeper = dir.path().join("new/deeper");
    let cmd = run_mlp_std(dir.path(), &inputs, &deeper.join("report"), &["--recalibrate-each"]);
    if interrupted_leaves_nothing(cmd, "TERM", &deeper, |l| l.iter().any(|n| n.starts_with(".swa-run."))) {
        assert_eq!(listing(dir.path()), ["in"], "the directories made for the output were left");
    }
}

// ---------------------------------------------------------------------------------------------
// Output file modes follow the umask, replaced files keep theirs
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Runs swa with `args` under umask 022 (set in a shell, not in the test process).
#[cfg(unix)]
fn swa_umask_022(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new("sh")
        .args(["-c", "umask 022; exec \"$0\" \"$@\""])
        .arg(swa_bin())
        .args(args)
        .env_remove("GITHUB_STEP_SUMMARY")
        .output()
        .unwrap()
}

#[cfg(unix)]
#[test]
fn new_outputs_follow_the_umask_and_replaced_ones_keep_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let new = dir.path().join("new.safetensors");
    let o = swa_umask_022(&[
        "average".as_ref(),
        mlp_ck(1).as_os_str(),
        mlp_ck(2).as_os_str(),
        "-o".as_ref(),
        new.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&new), 0o644, "new output under umask 022: {:o}", mode(&new));

    let old = dir.path().join("old.safetensors");
    std::fs::copy(mlp_ck(3), &old).unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = swa_umask_022(&[
        "average".as_ref(),
        mlp_ck(1).as_os_str(),
        mlp_ck(2).as_os_str(),
        "-o".as_ref(),
        old.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&old), 0o640, "replaced output lost its mode: {:o}", mode(&old));

    let onnx = dir.path().join("recal.onnx");
    let m = fixture("mlp/model.onnx");
    let x = fixture("mlp/train.npy");
    let o = swa_umask_022(&[
        "recalibrate".as_ref(),
        "--model".as_ref(),
        m.as_os_str(),
        "--inputs".as_ref(),
        x.as_os_str(),
        "-o".as_ref(),
        onnx.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&onnx), 0o644, "new recalibrated model under umask 022: {:o}", mode(&onnx));
}

// ---------------------------------------------------------------------------------------------
// ONNX external data outside the model's directory, and bad offsets, are refused
// ---------------------------------------------------------------------------------------------

/// Writes the MLP model to `path` with its smallest initializer of ≥ 16 bytes moved to external
/// data with these `location`, `offset` and `length` values; returns that initializer's bytes.
fn model_with_external(path: &Path, location: &str, offset: &str, length: Option<&str>) -> Vec<u8> {
    use swa::onnx::proto::StringStringEntryProto;
    let mut model = swa::onnx::Model::load(fixture("mlp/model.onnx")).unwrap();
    let t = model
        .graph_mut()
        .initializer
        .iter_mut()
        .filter(|t| swa::onnx::tensor_data(t).is_ok_and(|(_, _, b)| b.len() >= 16))
        .min_by_key(|t| swa::onnx::tensor_data(t).unwrap().2.len())
        .expect("an initializer of at least 16 bytes");
    let (_, _, bytes) = swa::onnx::tensor_data(t).unwrap();
    let kv = |k: &str, v: &str| StringStringEntryProto { key: Some(k.into()), value: Some(v.into()) };
    let length = length.map(str::to_string).unwrap_or(bytes.len().to_string());
    t.raw_data = None;
    t.float_data.clear();
    t.data_location = Some(1);
    t.external_data = vec![kv("location", location), kv("offset", offset), kv("length", &length)];
    std::fs::write(path, prost::Message::encode_to_vec(&model.proto)).unwrap();
    bytes
}

#[test]
fn external_data_outside_the_models_directory_is_refused() {
    let dir = tmp();
    let secret_dir = dir.path().join("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    let secret = secret_dir.join("data.bin");
    let model = model_dir.join("m.onnx");
    let bytes = model_with_external(&model, "placeholder", "0", None);
    std::fs::write(&secret, &bytes).unwrap();
    let absolute = secret.to_string_lossy().into_owned();
    for location in ["../secret/data.bin", absolute.as_str(), "/etc/passwd", "../../../../../../../../etc/passwd"] {
        model_with_external(&model, location, "0", None);
        swa().arg("inspect").arg(&model).assert().code(2).stderr(contains("outside"));
    }
    model_with_external(&model, "../secret/data.bin", "0", None);
    evaluate_model(&model, &fixture("mlp/eval.npy"), &fixture("mlp/eval_labels.npy"), &[])
        .assert()
        .code(2)
        .stderr(contains("outside"));
    let out = tmp();
    swa()
        .args(["recalibrate", "--model"])
        .arg(&model)
        .arg("--inputs")
        .arg(fixture("mlp/train.npy"))
        .arg("-o")
        .arg(out.path().join("o.onnx"))
        .timeout(Duration::from_secs(60))
        .assert()
        .code(2)
        .stderr(contains("outside"));
    assert!(listing(out.path()).is_empty());
}

#[test]
fn unparsable_or_negative_external_offsets_and_lengths_are_errors() {
    let dir = tmp();
    let model = dir.path().join("m.onnx");
    let bytes = model_with_external(&model, "m.data", "0", None);
    std::fs::write(dir.path().join("m.data"), &bytes).unwrap();
    swa().arg("inspect").arg(&model).assert().success();
    for (offset, length, word) in
        [("-5", None, "offset"), ("abc", None, "offset"), ("0", Some("-1"), "length"), ("0", Some("xyz"), "length")]
    {
        model_with_external(&model, "m.data", offset, length);
        swa().arg("inspect").arg(&model).assert().code(2).stderr(contains(word));
    }
}

// ---------------------------------------------------------------------------------------------
// Sharded indexes naming files outside their directory are refused
// ---------------------------------------------------------------------------------------------

#[test]
fn index_weight_map_outside_its_directory_is_refused() {
    let dir = tmp();
    // (No path component may contain the keyword "outside" the message is checked for.)
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::copy(mlp_ck(1), elsewhere.join("x.safetensors")).unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let index = model.join("model.safetensors.index.json");
    let names: Vec<String> =
        swa::checkpoint::Checkpoint::open(mlp_ck(1)).unwrap().tensors().iter().map(|t| t.name.clone()).collect();
    let absolute = elsewhere.join("x.safetensors").to_string_lossy().into_owned();
    // The last one does not exist: "outside", not "No such file", shows the check comes before opening.
    for shard in ["../elsewhere/x.safetensors", absolute.as_str(), "../nonexistent/x.safetensors"] {
        let weight_map: serde_json::Map<String, serde_json::Value> =
            names.iter().map(|n| (n.clone(), shard.into())).collect();
        std::fs::write(
            &index,
            serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": weight_map})).unwrap(),
        )
        .unwrap();
        let out = dir.path().join("out.safetensors");
        swa()
            .arg("average")
            .arg(&index)
            .arg("-o")
            .arg(&out)
            .assert()
            .code(2)
            .stderr(contains("outside"))
            .stderr(contains("No such file").not());
        assert!(!out.exists());
        swa().arg("inspect").arg(&index).assert().code(2).stderr(contains("outside"));
    }
}

#[cfg(unix)]
#[test]
fn shards_in_a_subdirectory_open_and_symlinks_out_are_refused() {
    let dir = tmp();
    let model = dir.path().join("model");
    std::fs::create_dir_all(model.join("sub")).unwrap();
    std::fs::copy(mlp_ck(1), model.join("sub/x.safetensors")).unwrap();
    let names: Vec<String> =
        swa::checkpoint::Checkpoint::open(mlp_ck(1)).unwrap().tensors().iter().map(|t| t.name.clone()).collect();
    let index = model.join("model.safetensors.index.json");
    let write_index = |shard: &str| {
        let weight_map: serde_json::Map<String, serde_json::Value> =
            names.iter().map(|n| (n.clone(), shard.into())).collect();
        std::fs::write(&index, serde_json::to_vec(&serde_json::json!({"weight_map": weight_map})).unwrap()).unwrap();
    };
    write_index("sub/x.safetensors");
    let opened = swa::checkpoint::Checkpoint::open(&index).unwrap();
    assert_eq!(opened.tensors().len(), names.len());
    // A link inside the directory that leads out of it.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::copy(mlp_ck(1), elsewhere.join("y.safetensors")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("y.safetensors"), model.join("link.safetensors")).unwrap();
    write_index("link.safetensors");
    swa().arg("inspect").arg(&index).assert().code(2).stderr(contains("outside"));
}

// ---------------------------------------------------------------------------------------------
// ONNX Runtime is never loaded from the working directory
// ---------------------------------------------------------------------------------------------

#[test]
fn runtime_discovery_ignores_a_library_planted_in_the_working_directory() {
    let evaluate_in = |cwd: &Path| {
        let mut c = evaluate_mlp(&fixture("mlp/eval.npy"), &fixture("mlp/eval_labels.npy"), &[]);
        c.current_dir(cwd).env_remove("ORT_DYLIB_PATH").env_remove("VIRTUAL_ENV").env_remove("CONDA_PREFIX");
        c.output().unwrap()
    };
    // The README's test command installs onnxruntime with pip into python3's environment, where
    // swa finds it without ORT_DYLIB_PATH: without it this check would prove nothing.
    let clean = tmp();
    let baseline = evaluate_in(clean.path());
    assert!(
        baseline.status.success(),
        "ONNX Runtime is not found without ORT_DYLIB_PATH (pip install onnxruntime==1.32.0, as the README says): {}",
        combined(&baseline)
    );
    let dir = tmp();
    let capi = dir.path().join("onnxruntime/capi");
    std::fs::create_dir_all(&capi).unwrap();
    std::fs::write(capi.join("libonnxruntime.so.1.99"), b"\x7fELF not really a library").unwrap();
    let o = evaluate_in(dir.path());
    assert!(o.status.success(), "a planted capi/ directory (namespace package) was used: {}", combined(&o));
    // A planted regular package (with __init__.py) is what `python -c` finds first in the cwd.
    std::fs::write(dir.path().join("onnxruntime/__init__.py"), b"").unwrap();
    let o = evaluate_in(dir.path());
    assert!(o.status.success(), "a planted onnxruntime package in the cwd was loaded: {}", combined(&o));
}

/// A folder owned by another user, or group-writable for a group that is not its owner's own,
/// is skipped like a world-writable one; group-writable for the owner's own group is the owner's.
#[test]
#[ignore = "needs root: gives a folder to another user and another group"]
fn a_library_folder_of_another_user_or_group_is_skipped() {
    use std::os::unix::fs::PermissionsExt;
    use swa::runtime::locate::{search, Roots};
    require_root("chown a folder to another user and group");
    let t = tmp();
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("libonnxruntime.so.1.32.0"), b"").unwrap();
    let roots = Roots { exe: Some(bin.join("swa")), ..Roots::default() };
    let why = || search(&roots, Vec::new).skipped.iter().map(|k| k.why.clone()).collect::<Vec<_>>();
    std::os::unix::fs::chown(&bin, Some(65534), None).unwrap();
    assert_eq!(why(), ["it is owned by user 65534, neither root nor you"]);
    std::os::unix::fs::chown(&bin, Some(0), Some(65534)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o775)).unwrap();
    assert_eq!(why(), ["it is writable by group 65534, which is not its owner's own group"]);
    std::os::unix::fs::chown(&bin, Some(0), Some(0)).unwrap();
    assert!(why().is_empty());
}

/// `swa` copied (here: linked) into a folder where others can write, as a copy in `/tmp` is:
/// a `libonnxruntime.so.99` planted beside it is skipped, said, and the real one loaded; the same
/// for `./swa` run from the folder that holds it.
#[test]
fn a_library_beside_the_executable_is_loaded_only_where_no_one_else_could_plant_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    if std::fs::hard_link(swa_bin(), bin.join("swa")).is_err() {
        std::fs::copy(swa_bin(), bin.join("swa")).unwrap();
    }
    let planted = bin.join("libonnxruntime.so.99");
    std::fs::write(&planted, b"\x7fELF not really a library").unwrap();
    let doctor = |cwd: &Path, exe: &Path| {
        let mut c = std::process::Command::new(exe);
        c.arg("doctor")
            .current_dir(cwd)
            .env_remove("ORT_DYLIB_PATH")
            .env_remove("VIRTUAL_ENV")
            .env_remove("CONDA_PREFIX");
        c.output().unwrap()
    };
    // Sticky and writable by everyone, as /tmp is.
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let o = doctor(dir.path(), &bin.join("swa"));
    let text = combined(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "skipped {} (beside the swa executable): it is writable by everyone",
            planted.display()
        )),
        "{text}"
    );
    assert!(text.contains("found by:   python3's onnxruntime package"), "{text}");
    // Writable by the owner only, but the working directory.
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = doctor(&bin, Path::new("./swa"));
    let text = combined(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("it is the working directory"), "{text}");
    // From elsewhere, the folder is the user's own: the library there is loaded (and is no library).
    let o = doctor(dir.path(), &bin.join("swa"));
    assert_eq!(o.status.code(), Some(1), "{}", combined(&o));
    assert!(combined(&o).contains("libonnxruntime.so.99"), "{}", combined(&o));
}

// ---------------------------------------------------------------------------------------------
// NaN logits are not correct predictions
// ---------------------------------------------------------------------------------------------

#[test]
fn nan_logits_fail_the_accuracy_gate_in_evaluate() {
    let dir = tmp();
    let x = dir.path().join("nan.npy");
    write_npy_f32(&x, &[200, 32], &vec![f32::NAN; 200 * 32]);
    let o = evaluate_mlp(&x, &fixture("mlp/eval_labels.npy"), &["--min-accuracy", "0.99"]).output().unwrap();
    // The gate's verdict (exit 1), not an error (exit 2) that would fail the job for another reason.
    assert_eq!(o.status.code(), Some(1), "{}", combined(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let verdict = "fails --min-accuracy 0.99 whatever its top-1 (0.0000): 200 samples gave non-finite logits";
    assert!(stderr.contains(verdict), "no `{verdict}` in: {stderr}");
}

#[test]
fn nan_logits_fail_the_accuracy_gate_in_run() {
    let dir = tmp();
    let inputs = dir.path().join("in");
    mlp_inputs(&inputs);
    write_npy_f32(&inputs.join("eval.npy"), &[200, 32], &vec![f32::NAN; 200 * 32]);
    let out = dir.path().join("out");
    let o = run_mlp(dir.path(), &inputs, &out, &["--min-accuracy", "0.99"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", combined(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let verdict =
        "recalibrated SWA fails --min-accuracy 0.99 whatever its top-1 (0.0000): 200 samples gave non-finite logits";
    assert!(stderr.contains(verdict), "no `{verdict}` in: {stderr}");
}

// ---------------------------------------------------------------------------------------------
// --min-accuracy out of range is a usage error
// ---------------------------------------------------------------------------------------------

#[test]
fn min_accuracy_outside_zero_to_one_is_a_usage_error() {
    for v in ["nan", "90", "1.5", "-1", "inf"] {
        evaluate_mlp(&fixture("mlp/eval.npy"), &fixture("mlp/eval_labels.npy"), &[&format!("--min-accuracy={v}")])
            .assert()
            .code(2)
            .stderr(contains("min-accuracy"));
    }
    let dir = tmp();
    let inputs = dir.path().join("in");
    mlp_inputs(&inputs);
    let out = dir.path().join("out");
    run_mlp(dir.path(), &inputs, &out, &["--min-accuracy=90"]).assert().code(2).stderr(contains("min-accuracy"));
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------------
// Evaluating nothing is an error
// ---------------------------------------------------------------------------------------------

#[test]
fn evaluate_on_zero_samples_is_an_error() {
    let dir = tmp();
    let x = dir.path().join("x.npy");
    let y = dir.path().join("y.npy");
    write_npy_f32(&x, &[0, 32], &[]);
    write_npy_i64(&y, &[]);
    evaluate_mlp(&x, &y, &[]).assert().code(2).stderr(contains("sample"));
}

// ---------------------------------------------------------------------------------------------
// A truncated stored .npz member is an error
// ---------------------------------------------------------------------------------------------

#[test]
fn stored_npz_member_shorter_than_its_header_is_an_error() {
    let dir = tmp();
    let name = swa::onnx::Model::load(fixture("mlp/model.onnx")).unwrap().inputs()[0].name().to_string();
    let npz = dir.path().join("short.npz");
    {
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let mut z = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
        // Claims 300 rows, holds 100; the next member is big enough to "fill" the rest.
        z.start_file(format!("{name}.npy"), stored).unwrap();
        std::io::Write::write_all(&mut z, &raw_npy("<f4", "(300, 32)", &f32_bytes(&vec![0.5; 100 * 32]))).unwrap();
        z.start_file("y.npy", stored).unwrap();
        std::io::Write::write_all(&mut z, &raw_npy("<f4", "(400, 32)", &f32_bytes(&vec![0.25; 400 * 32]))).unwrap();
        z.finish().unwrap();
    }
    let out = tmp();
    swa()
        .args(["recalibrate", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(&npz)
        .arg("-o")
        .arg(out.path().join("o.onnx"))
        .timeout(Duration::from_secs(60))
        .assert()
        .code(2)
        .stderr(contains("truncated"));
    assert!(listing(out.path()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// One checkpoint under two spellings counts once
// ---------------------------------------------------------------------------------------------

/// `swa average --json` averaged `distinct` files and reported the other `duplicates` spellings,
/// each under `duplicates` in the summary and in a warning. swa does not refuse a file named
/// twice (docs/reliability.md: "averaged once and reported"), so any failure fails the test: an
/// exit 2 for an unrelated reason must not pass for the refusal of a duplicate.
fn counted_once(o: &std::process::Output, distinct: u64, duplicates: usize) {
    assert_eq!(o.status.code(), Some(0), "{}", combined(o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_models"], distinct, "a checkpoint was counted twice: {}", v["inputs"]);
    assert_eq!(v["inputs"].as_array().unwrap().len() as u64, distinct, "{}", v["inputs"]);
    let reported = v["duplicates"].as_array().unwrap();
    assert_eq!(reported.len(), duplicates, "duplicates: {}", v["duplicates"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    for d in reported {
        let (path, same_as) = (d["path"].as_str().unwrap(), d["same_as"].as_str().unwrap());
        let warning = format!("swa: warning: {path} is {same_as} under another name; it is averaged once");
        assert!(stderr.contains(&warning), "no `{warning}` in: {stderr}");
    }
}

#[test]
fn the_same_checkpoint_under_two_spellings_is_counted_once() {
    let dir = tmp();
    copy_dir(&fixture("mlp/checkpoints"), &dir.path().join("ck"));
    let run = |args: &[&std::ffi::OsStr]| {
        swa()
            .current_dir(dir.path())
            .arg("average")
            .arg("--json")
            .args(args)
            .arg("-o")
            .arg("out.safetensors")
            .output()
            .unwrap()
    };
    counted_once(&run(&["ck".as_ref(), "./ck".as_ref()]), 6, 6);
    let abs = dir.path().join("ck");
    counted_once(&run(&["ck".as_ref(), abs.as_os_str()]), 6, 6);
    counted_once(&run(&["ck/epoch_003.safetensors".as_ref(), "./ck/epoch_003.safetensors".as_ref()]), 1, 1);
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("epoch_006.safetensors", dir.path().join("ck/epoch_007.safetensors")).unwrap();
        let o = run(&["ck".as_ref()]);
        counted_once(&o, 6, 1);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            v["duplicates"][0]["path"], "ck/epoch_007.safetensors",
            "the link, not its target, is the duplicate"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Weights that overflow, f16 overflow, n_models that wraps
// ---------------------------------------------------------------------------------------------

#[test]
fn huge_weights_do_not_zero_the_model() {
    let dir = tmp();
    let out = dir.path().join("out.safetensors");
    let o = swa()
        .arg("average")
        .arg(mlp_ck(1))
        .arg(mlp_ck(2))
        .args(["--weights", "1e308,1e308"])
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    // Normalised without overflowing: an even average (docs/reliability.md), not a refusal.
    assert_eq!(o.status.code(), Some(0), "{}", combined(&o));
    let (a, b, got) = (values(&mlp_ck(1), "fc1.weight"), values(&mlp_ck(2), "fc1.weight"), values(&out, "fc1.weight"));
    assert!(got.iter().any(|v| *v != 0.0), "an all-zero fc1.weight");
    for i in 0..got.len() {
        let want = (a[i] + b[i]) / 2.0;
        assert!((got[i] - want).abs() <= 1e-6 + 1e-5 * want.abs(), "fc1.weight[{i}]: {} vs {want}", got[i]);
    }
}

#[test]
fn f16_output_that_overflows_is_refused() {
    let dir = tmp();
    let big = dir.path().join("big.safetensors");
    let spec = TensorSpec { name: "w".into(), dtype: Dtype::F32, shape: vec![4] };
    swa::checkpoint::write_tensors(&big, &[(spec, f32_bytes(&[1.0, 70000.0, 2.0, 3.0]))], &Default::default()).unwrap();
    let out = dir.path().join("out.safetensors");
    swa()
        .arg("average")
        .arg(&big)
        .args(["--dtype", "f16"])
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("`w`"));
    assert_eq!(listing(dir.path()), ["big.safetensors"]);
}

#[test]
fn resume_with_an_n_models_that_would_wrap_is_refused() {
    let dir = tmp();
    let (mut header, data) = header_of(&mlp_ck(1));
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt", "n_models": u64::MAX.to_string()}));
    let prior = dir.path().join("prior.safetensors");
    write_with_header(&prior, &header, &data);
    let out = dir.path().join("out.safetensors");
    swa()
        .arg("average")
        .arg("--resume")
        .arg(&prior)
        .arg(mlp_ck(2))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("n_models"));
    assert_eq!(listing(dir.path()), ["prior.safetensors"]);
}

// ---------------------------------------------------------------------------------------------
// Numbers in names: the epoch number, and one number per checkpoint
// ---------------------------------------------------------------------------------------------

fn selected(o: &std::process::Output) -> Vec<String> {
    assert!(o.status.success(), "{}", combined(o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Path::new(i["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_epoch_number_wins_over_other_numbers_in_the_name() {
    let dir = tmp();
    let d = dir.path().join("ck");
    std::fs::create_dir(&d).unwrap();
    for (n, name) in [(1, "epoch_1_lr1e-4"), (2, "epoch_2_lr1e-3"), (3, "epoch_3_lr1e-3")] {
        std::fs::copy(mlp_ck(n), d.join(format!("{name}.safetensors"))).unwrap();
    }
    let out = dir.path().join("out.safetensors");
    let o = swa().arg("average").arg("--json").arg(&d).args(["--last", "1"]).arg("-o").arg(&out).output().unwrap();
    assert_eq!(selected(&o), ["epoch_3_lr1e-3.safetensors"]);
    let o = swa().arg("average").arg("--json").arg(&d).args(["--from", "2"]).arg("-o").arg(&out).output().unwrap();
    assert_eq!(selected(&o), ["epoch_2_lr1e-3.safetensors", "epoch_3_lr1e-3.safetensors"]);
}

#[test]
fn two_checkpoints_with_the_same_number_are_refused() {
    let dir = tmp();
    let d = dir.path().join("ck");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(mlp_ck(1), d.join("epoch_1.safetensors")).unwrap();
    std::fs::copy(mlp_ck(2), d.join("epoch_2.safetensors")).unwrap();
    std::fs::copy(mlp_ck(3), d.join("epoch-2.safetensors")).unwrap();
    let out = dir.path().join("out.safetensors");
    swa()
        .arg("average")
        .arg(&d)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("epoch_2.safetensors"))
        .stderr(contains("epoch-2.safetensors"));
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------------
// Overflowing shapes and malformed graphs: exit 2, never a panic (101)
// ---------------------------------------------------------------------------------------------

#[test]
fn npy_shape_whose_size_overflows_is_an_error_not_a_panic() {
    let dir = tmp();
    let x = dir.path().join("huge.npy");
    write_raw_npy(&x, "<f4", "(4611686018427387904, 32)", &[]);
    evaluate_mlp(&x, &fixture("mlp/eval_labels.npy"), &[]).assert().code(2).stderr(contains("huge.npy"));
    // Labels: int64 with shape 2^62 (no data) must not read as "0 labels".
    let y = dir.path().join("labels.npy");
    write_raw_npy(&y, "<i8", "(4611686018427387904,)", &[]);
    evaluate_mlp(&fixture("mlp/eval.npy"), &y, &[])
        .assert()
        .code(2)
        .stderr(contains("labels.npy"))
        .stderr(contains("0 labels").not());
}

#[test]
fn identity_node_without_outputs_is_an_error_not_a_panic() {
    let dir = tmp();
    let mut m = swa::onnx::Model::load(fixture("mlp/model.onnx")).unwrap();
    let init = m.graph().initializer[0].name().to_string();
    m.graph_mut().node.push(swa::onnx::node("Identity", "no_outputs".into(), &[&init], &[], vec![]));
    let path = dir.path().join("identity.onnx");
    m.save(&path).unwrap();
    swa().arg("inspect").arg(&path).assert().code(2).stderr(contains("no_outputs"));
    let out = tmp();
    swa()
        .args(["recalibrate", "--model"])
        .arg(&path)
        .arg("--inputs")
        .arg(fixture("mlp/train.npy"))
        .arg("-o")
        .arg(out.path().join("o.onnx"))
        .timeout(Duration::from_secs(60))
        .assert()
        .code(2)
        .stderr(contains("no_outputs"));
    assert!(listing(out.path()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Unbounded or zero options are usage errors
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn absurd_thread_counts_and_zero_top_k_are_usage_errors() {
    // Today's code hands 100000 to ONNX Runtime, which would start that many threads (more than
    // this machine's pid_max). The address space is capped so that such an attempt fails fast
    // instead of exhausting the machine; the test still requires a usage error naming --threads.
    let o = std::process::Command::new("sh")
        .args(["-c", "ulimit -v 4194304; exec timeout -s KILL 20 \"$0\" \"$@\""])
        .arg(swa_bin())
        .args(["evaluate", "--threads", "100000", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(fixture("mlp/eval.npy"))
        .arg("--labels")
        .arg(fixture("mlp/eval_labels.npy"))
        .env_remove("GITHUB_STEP_SUMMARY")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", combined(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--threads"), "{}", combined(&o));
    evaluate_mlp(&fixture("mlp/eval.npy"), &fixture("mlp/eval_labels.npy"), &["--top-k", "0"])
        .assert()
        .code(2)
        .stderr(contains("--top-k"));
}

// ---------------------------------------------------------------------------------------------
// FIFOs and directories as inputs fail fast, with a clear message
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` with a 10 s limit; fails if it hung.
fn no_hang(mut cmd: assert_cmd::Command, what: &str) -> std::process::Output {
    cmd.timeout(Duration::from_secs(10));
    let t0 = Instant::now();
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(t0.elapsed() < Duration::from_millis(9500), "{what}: swa hung (killed after 10 s)");
    o
}

#[cfg(unix)]
#[test]
fn a_fifo_as_an_input_fails_fast() {
    let dir = tmp();
    let fifo = dir.path().join("x.npy");
    mkfifo(&fifo);
    let o = no_hang(evaluate_mlp(&fifo, &fixture("mlp/eval_labels.npy"), &[]), "--inputs FIFO");
    assert_eq!(o.status.code(), Some(2), "{}", combined(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("x.npy"));

    let ckfifo = dir.path().join("epoch_009.safetensors");
    mkfifo(&ckfifo);
    let mut c = swa();
    c.arg("average").arg(mlp_ck(1)).arg(&ckfifo).arg("-o").arg(dir.path().join("out.safetensors"));
    let o = no_hang(c, "checkpoint FIFO");
    assert_eq!(o.status.code(), Some(2), "{}", combined(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("epoch_009.safetensors"));
    assert!(!dir.path().join("out.safetensors").exists());

    // A directory of checkpoints that holds a FIFO.
    let d = dir.path().join("ck");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(mlp_ck(1), d.join("epoch_001.safetensors")).unwrap();
    mkfifo(&d.join("epoch_002.safetensors"));
    let mut c = swa();
    c.arg("average").arg(&d).arg("-o").arg(dir.path().join("out.safetensors"));
    let o = no_hang(c, "FIFO in a checkpoint directory");
    // Refused by name before it is opened, like a FIFO named on the command line.
    assert_eq!(o.status.code(), Some(2), "{}", combined(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("epoch_002.safetensors: is a FIFO (named pipe), not a regular file"),
        "{}",
        combined(&o)
    );
}

#[test]
fn a_directory_as_an_array_file_gets_a_clear_message() {
    let dir = tmp();
    let d = dir.path().join("x.npy");
    std::fs::create_dir(&d).unwrap();
    evaluate_mlp(&d, &fixture("mlp/eval_labels.npy"), &[])
        .assert()
        .code(2)
        .stderr(contains("x.npy"))
        .stderr(contains("directory"))
        .stderr(contains("No such device").not());
    evaluate_mlp(&fixture("mlp/eval.npy"), &d, &[])
        .assert()
        .code(2)
        .stderr(contains("directory"))
        .stderr(contains("No such device").not());
}

// ---------------------------------------------------------------------------------------------
// Messages that name the file, the tensor and the cause
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_an_npy_given_as_a_checkpoint_says_it_is_not_safetensors() {
    let dir = tmp();
    let out = dir.path().join("out.safetensors");
    swa()
        .arg("average")
        .arg(fixture("mlp/train.npy"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("train.npy"))
        .stderr(contains("not a safetensors file"));
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn messages_a_checkpoint_with_no_tensors_is_refused() {
    let dir = tmp();
    let empty = dir.path().join("empty.safetensors");
    write_with_header(&empty, &serde_json::Map::new(), &[]);
    let out = dir.path().join("out.safetensors");
    swa().arg("average").arg(&empty).arg("-o").arg(&out).assert().code(2).stderr(contains("empty.safetensors"));
    assert_eq!(listing(dir.path()), ["empty.safetensors"]);
}

#[test]
fn messages_unsupported_dtypes_and_bad_sizes_name_the_tensor() {
    let dir = tmp();
    let (header, data) = header_of(&mlp_ck(1));
    let first = header.keys().find(|k| *k != "__metadata__").unwrap().clone();
    for (dtype, shape, needle) in [
        ("F4", serde_json::json!([2]), "F4 is not supported"),
        ("F32", serde_json::json!([1_000_000]), "needs"),
        ("F32", serde_json::json!([u64::MAX / 2, 4]), "overflows"),
    ] {
        let mut h = header.clone();
        let offsets = h[&first]["data_offsets"].clone();
        h.insert(first.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}));
        let bad = dir.path().join("bad.safetensors");
        write_with_header(&bad, &h, &data);
        let o = swa().arg("inspect").arg(&bad).output().unwrap();
        let text = combined(&o);
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(text.contains(&first) && text.contains("bad.safetensors") && text.contains(needle), "{text}");
        assert!(!text.contains("needs 0"), "{text}");
    }
}

#[test]
fn messages_fp8_tensors_are_reported_as_copied_not_averaged() {
    use swa::checkpoint::{write_tensors, Dtype, TensorSpec};
    let dir = tmp();
    let mut inputs = Vec::new();
    for k in 0..2u8 {
        let path = dir.path().join(format!("epoch_{k}.safetensors"));
        let t = vec![
            (TensorSpec { name: "w".into(), dtype: Dtype::F32, shape: vec![2] }, f32_bytes(&[k as f32, 1.0])),
            (TensorSpec { name: "q".into(), dtype: Dtype::F8_E4M3, shape: vec![4] }, vec![k; 4]),
        ];
        write_tensors(&path, &t, &Default::default()).unwrap();
        inputs.push(path);
    }
    let out = dir.path().join("out.safetensors");
    let o = swa().arg("average").args(&inputs).arg("-o").arg(&out).arg("--json").output().unwrap();
    assert!(o.status.success(), "{}", combined(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["buffers"]["copied_fp8"], serde_json::json!(["q"]), "{v}");
    let o = swa().arg("average").args(&inputs).arg("-o").arg(dir.path().join("out2.safetensors")).output().unwrap();
    let text = combined(&o);
    assert!(text.contains("FP8") && text.contains("not averaged"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Report names, output spellings, signals and stderr, long names, job summaries
// ---------------------------------------------------------------------------------------------

/// Hugging Face `Trainer` layout: `run/checkpoint-N/model.safetensors`. Every checkpoint has the
/// same file name; the report must still tell them apart and mark only the averaged ones.
#[test]
fn checkpoints_sharing_a_file_name_are_told_apart_in_the_report() {
    let dir = tmp();
    let run = dir.path().join("run");
    for i in 1..=4 {
        std::fs::create_dir_all(run.join(format!("checkpoint-{i}"))).unwrap();
        std::fs::copy(mlp_ck(i), run.join(format!("checkpoint-{i}/model.safetensors"))).unwrap();
    }
    let out = dir.path().join("out");
    run_fixture("mlp", &run, &out, &["--quiet", "--last", "2"]).assert().success();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let names: Vec<&str> =
        report["checkpoints"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    let averaged: Vec<&str> = report["averaged"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(unique.len(), 4, "checkpoints not told apart: {names:?}");
    assert_eq!(averaged, names[2..], "averaged {averaged:?} of {names:?}");
    assert!(names[3].contains("checkpoint-4"), "{names:?}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(md.matches("| ✓ |").count(), 2, "{md}");
}

/// `--out link/` (or `link/.`) makes the kernel follow `link`: it must be refused as a symbolic
/// link before any work, not fail after the run with "another process created it".
#[cfg(unix)]
#[test]
fn out_through_a_symlink_spelled_with_a_trailing_slash_is_refused_up_front() {
    let dir = tmp();
    let inputs = dir.path().join("in");
    mlp_inputs(&inputs);
    run_mlp(dir.path(), &inputs, Path::new("earlier"), &[]).assert().success();
    std::os::unix::fs::symlink("earlier", dir.path().join("link")).unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    std::os::unix::fs::symlink("empty", dir.path().join("elink")).unwrap();
    for out in ["link/", "link/.", "elink/"] {
        let before = snapshot(dir.path());
        let o = run_mlp(dir.path(), &inputs, Path::new(out), &["--force"]).output().unwrap();
        assert_same(&before, &snapshot(dir.path()));
        assert_eq!(o.status.code(), Some(2), "{out}: {}", combined(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("symbolic link") && !err.contains("another process"), "{out}: {err}");
    }
    // The same spellings of a real directory name that directory.
    run_mlp(dir.path(), &inputs, Path::new("earlier/."), &["--force"]).assert().success();
    run_mlp(dir.path(), &inputs, Path::new("earlier/"), &["--force"]).assert().success();
    assert!(listing(&dir.path().join("earlier")).contains(&"report.json".to_string()));
    assert!(debris(dir.path()).is_empty(), "{:?}", debris(dir.path()));
    // A file output spelled as a directory is refused before any work.
    let o =
        swa().arg("average").arg(mlp_ck(1)).arg(mlp_ck(2)).arg("-o").arg(dir.path().join("avg.safetensors/")).output();
    let o = o.unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", combined(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("names a directory"), "{}", combined(&o));
}

/// `nohup swa run …` (SIGHUP ignored), or a background job of a script (SIGINT ignored): an
/// ignored signal must stay ignored, not become "clean up and exit 129".
#[cfg(unix)]
#[test]
fn a_signal_ignored_by_the_parent_stays_ignored() {
    let dir = tmp();
    let inner = run_into(dir.path());
    let mut cmd = std::process::Command::new("sh");
    cmd.current_dir(dir.path())
        .arg("-c")
        .arg("trap '' HUP INT; exec \"$@\"")
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let outs = dir.path().join("outs");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5)
        && child.try_wait().unwrap().is_none()
        && !listing(&outs).iter().any(|n| n.starts_with(".swa-run."))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    for signal in ["HUP", "INT"] {
        let _ = std::process::Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", combined(&o));
    assert!(listing(&outs.join("report")).contains(&"report.json".to_string()));
}

/// `swa evaluate … 2>&1 | head -1`: once stderr is a broken pipe, warnings and the gate message
/// cannot be written; the exit code must still be the verdict (1), not a panic (101).
#[cfg(unix)]
#[test]
fn a_broken_stderr_does_not_turn_a_verdict_into_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut c = swa_std();
    c.args(["evaluate", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(fixture("mlp/eval.npy"))
        .arg("--labels")
        .arg(fixture("mlp/eval_labels.npy"))
        .args(["--min-accuracy", "1"])
        .stdout(Stdio::null())
        .stderr(writer);
    assert_eq!(c.status().unwrap().code(), Some(1));
    let mut c = swa_std();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    c.args(["inspect", "no-such-file.safetensors"]).stdout(Stdio::null()).stderr(writer);
    assert_eq!(c.status().unwrap().code(), Some(2));
}

/// A checkpoint's name goes into the Markdown report (and the GitHub job summary): a `|` or a
/// line break in it must not add cells or rows that forge results.
#[test]
fn checkpoint_names_cannot_forge_markdown_table_cells() {
    let dir = tmp();
    let cks = dir.path().join("ck");
    std::fs::create_dir(&cks).unwrap();
    std::fs::copy(mlp_ck(1), cks.join("epoch_1 | ✓ | 99.99% | 100.00%.safetensors")).unwrap();
    std::fs::copy(mlp_ck(2), cks.join("epoch_2\n| forged | ✓ | 100.00% |.safetensors")).unwrap();
    let out = dir.path().join("out");
    run_fixture("mlp", &cks, &out, &["--quiet"]).assert().success();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let table: Vec<&str> = md
        .split("## Checkpoints")
        .nth(1)
        .unwrap()
        .split("\"++\"")
        .next()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('|'))
        .collect();
    assert_eq!(table.len(), 4, "header, rule and two rows expected:\n{md}");
    let cells = |l: &str| l.replace("\\|", "").matches('|').count();
    assert!(table.iter().all(|l| cells(l) == cells(table[0])), "{table:#?}");
}

/// An output name near the file-name limit (255 bytes) can be written: the temporary file beside
/// it must not need a longer name.
#[test]
fn an_output_name_near_the_length_limit_can_be_written() {
    let dir = tmp();
    let name = format!("{}.safetensors", "a".repeat(240));
    let out = dir.path().join(&name);
    swa().arg("average").arg(mlp_ck(1)).arg(mlp_ck(2)).arg("-o").arg(&out).assert().success();
    assert_eq!(listing(dir.path()), [name]);
}

/// `GITHUB_STEP_SUMMARY` naming a FIFO nobody reads (or a directory): the summary is skipped;
/// the command must not hang before giving its verdict.
#[cfg(unix)]
#[test]
fn a_job_summary_that_is_not_a_regular_file_does_not_hang() {
    let dir = tmp();
    let fifo = dir.path().join("summary");
    mkfifo(&fifo);
    for summary in [fifo.as_path(), dir.path()] {
        let mut c = evaluate_mlp(&fixture("mlp/eval.npy"), &fixture("mlp/eval_labels.npy"), &["--min-accuracy", "0"]);
        c.env("GITHUB_STEP_SUMMARY", summary).timeout(Duration::from_secs(20));
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}: {}", summary.display(), combined(&o));
    }
    assert!(is_fifo(&fifo));
}
