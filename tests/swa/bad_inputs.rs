//! Bad input to `swa average`: a clear message naming the file or tensor, exit code 2, and no output.

use std::path::Path;

use crate::common::*;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

/// Runs `swa average` over `inputs` into a fresh directory; checks exit 2, the message, and that
/// the directory is still empty.
fn fails(inputs: &[&Path], extra: &[&str], message: &str) {
    let dir = tmp();
    let out = dir.path().join("out.safetensors");
    swa().arg("average").args(extra).args(inputs).arg("-o").arg(&out).assert().code(2).stderr(contains(message));
    assert!(listing(dir.path()).is_empty(), "left behind: {:?}", listing(dir.path()));
}

#[test]
fn truncated_file() {
    let dir = tmp();
    let bad = dir.path().join("epoch_009.safetensors");
    let bytes = std::fs::read(mlp_ck(1)).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    fails(&[&mlp_ck(1), &bad], &[], "epoch_009.safetensors: truncated or corrupt");
}

#[test]
fn header_length_beyond_the_file() {
    let dir = tmp();
    let bad = dir.path().join("short.safetensors");
    let mut bytes = std::fs::read(mlp_ck(1)).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&bad, bytes).unwrap();
    fails(&[&bad], &[], "short.safetensors: ");
    std::fs::write(&bad, b"abc").unwrap();
    fails(&[&bad], &[], "short.safetensors: not a safetensors file or truncated");
}

#[test]
fn bad_json_header() {
    let dir = tmp();
    let bad = dir.path().join("json.safetensors");
    let mut bytes = std::fs::read(mlp_ck(1)).unwrap();
    bytes[9] = b'!';
    std::fs::write(&bad, bytes).unwrap();
    fails(&[&bad], &[], "json.safetensors: corrupt safetensors header");
}

#[test]
fn offsets_outside_the_data_or_overlapping() {
    let dir = tmp();
    let (mut header, data) = header_of(&mlp_ck(1));
    let bad = dir.path().join("offsets.safetensors");
    header["fc1.weight"]["data_offsets"] = serde_json::json!([0, data.len() + 64]);
    write_with_header(&bad, &header, &data);
    fails(&[&bad], &[], "offsets.safetensors");
    let (mut header, data) = header_of(&mlp_ck(1));
    let first = header["bn1.bias"]["data_offsets"].clone();
    header["bn1.weight"]["data_offsets"] = first;
    write_with_header(&bad, &header, &data);
    fails(&[&bad], &[], "overlap or lie outside the data");
}

#[test]
fn checkpoints_that_disagree() {
    fails(&[&mlp_ck(1), &fixture("cnn/checkpoints/epoch_001.safetensors")], &[], "checkpoints disagree");
    let dir = tmp();
    let (mut header, data) = header_of(&mlp_ck(2));
    header["head.bias"]["dtype"] = "I32".into();
    let bad = dir.path().join("epoch_002.safetensors");
    write_with_header(&bad, &header, &data);
    fails(&[&mlp_ck(1), &bad], &[], "I32 in");
    fails(&[&mlp_ck(1), &bad], &[], "`head.bias` is ");
}

#[test]
fn empty_selection_and_bad_weights() {
    let dir = fixture("mlp/checkpoints");
    fails(&[&dir], &["--from", "50"], "no checkpoint selected in 50..=");
    fails(&[&dir], &["--weights", "1,2"], "--weights has 2 values for 6 selected checkpoints");
    fails(&[&dir], &["--from", "5", "--weights", "0,0"], "--weights sum to zero");
    fails(&[&dir], &["--ema", "1.5"], "--ema decay must be in (0, 1)");
}

#[test]
fn nonfinite_values_error_unless_allowed() {
    let dir = tmp();
    let (header, mut data) = header_of(&mlp_ck(2));
    let start = header["fc2.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    data[start + 12..start + 16].copy_from_slice(&f32::NAN.to_le_bytes());
    let bad = dir.path().join("epoch_002.safetensors");
    write_with_header(&bad, &header, &data);
    fails(
        &[&mlp_ck(1), &bad],
        &[],
        "epoch_002.safetensors: tensor `fc2.weight`: holds a non-finite value (NaN or Inf) at element 3",
    );
    let out = dir.path().join("ok.safetensors");
    swa().args(["average", "--allow-nonfinite"]).arg(mlp_ck(1)).arg(&bad).arg("-o").arg(&out).assert().success();
    assert!(values(&out, "fc2.weight")[3].is_nan());
    // A failure once the output's directories are made removes them again.
    swa()
        .arg("average")
        .arg(mlp_ck(1))
        .arg(&bad)
        .arg("-o")
        .arg(dir.path().join("new/sub/avg.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("holds a non-finite value"));
    assert!(!dir.path().join("new").exists(), "the directories made for the output were left");
}

#[test]
fn unwritable_output_and_output_equal_to_input() {
    let dir = tmp();
    // Missing directories are created (and said so); one under a regular file cannot be.
    let out = dir.path().join("missing/dir/out.safetensors");
    swa()
        .arg("average")
        .arg(mlp_ck(1))
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stdout(contains(format!("created directory {}/\n", dir.path().join("missing").display())))
        .stdout(contains(format!("created directory {}/\n", dir.path().join("missing/dir").display())));
    assert!(out.is_file());
    std::fs::remove_dir_all(dir.path().join("missing")).unwrap();
    let json = swa().arg("average").arg(mlp_ck(1)).arg("--json").arg("-o").arg(&out).assert().success();
    let s: serde_json::Value = serde_json::from_slice(&json.get_output().stdout).unwrap();
    assert_eq!(s["created_dirs"], serde_json::json!([dir.path().join("missing"), dir.path().join("missing/dir")]));
    std::fs::remove_dir_all(dir.path().join("missing")).unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    swa()
        .arg("average")
        .arg(mlp_ck(1))
        .arg("-o")
        .arg(dir.path().join("file/dir/out.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("file: cannot create the output here: not a directory"));
    assert_eq!(listing(dir.path()), ["file"]);
    std::fs::remove_file(dir.path().join("file")).unwrap();
    // A read-only directory. Root writes anywhere (CAP_DAC_OVERRIDE), so as root (CI) swa runs
    // without that capability: the directory's mode applies to it as to anyone.
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let mut unprivileged = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"])
            .arg(swa_bin())
            .env_remove("GITHUB_STEP_SUMMARY");
        assert_cmd::Command::from_std(c)
    } else {
        swa()
    };
    unprivileged
        .arg("average")
        .arg(mlp_ck(1))
        .arg("-o")
        .arg(locked.join("new/out.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("locked/new: cannot create the output here: Permission denied"));
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert!(listing(&locked).is_empty());
    std::fs::remove_dir(&locked).unwrap();
    let copy = dir.path().join("epoch_001.safetensors");
    std::fs::copy(mlp_ck(1), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    swa()
        .arg("average")
        .arg(&copy)
        .arg(mlp_ck(2))
        .arg("-o")
        .arg(&copy)
        .assert()
        .code(2)
        .stderr(contains("is also an input: refusing to overwrite it"));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
    assert_eq!(listing(dir.path()), ["epoch_001.safetensors"]);
}

#[cfg(unix)]
#[test]
#[ignore = "needs root: mounts a 64 KiB tmpfs to fill"]
fn full_disk_leaves_nothing() {
    // A 64 KiB tmpfs holds less than the average.
    require_root("mount a tmpfs");
    let dir = tmp();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(mounted.status.success(), "mount -t tmpfs failed as root: {}", combined(&mounted));
    /// Unmounts when the test ends, also when it fails.
    struct Mounted<'a>(&'a Path);
    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _mounted = Mounted(&mnt);
    let out = mnt.join("out.safetensors");
    swa()
        .arg("average")
        .arg(fixture("cnn/checkpoints"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("No space left on device"));
    assert!(listing(&mnt).is_empty(), "left behind on the full disk: {:?}", listing(&mnt));
    // A torch.save output reserves its space up front too: the disk is found full before the
    // average is computed, not by the writes of its tensors.
    swa()
        .arg("average")
        .arg(fixture("cnn/checkpoints"))
        .arg("-o")
        .arg(mnt.join("out.pt"))
        .assert()
        .code(2)
        .stderr(contains("cannot reserve"));
    assert!(listing(&mnt).is_empty(), "left behind on the full disk: {:?}", listing(&mnt));
}

/// Runs `swa recalibrate` with `args` into a fresh directory; checks exit 2, the message, and
/// that nothing was written.
fn recalibrate_fails(args: &[&std::ffi::OsStr], message: &str) {
    let dir = tmp();
    swa()
        .arg("recalibrate")
        .args(args)
        .arg("-o")
        .arg(dir.path().join("out.onnx"))
        .arg("--save-weights")
        .arg(dir.path().join("out.safetensors"))
        .assert()
        .code(2)
        .stderr(contains(message));
    assert!(listing(dir.path()).is_empty(), "left behind: {:?}", listing(dir.path()));
}

fn os(p: &Path) -> &std::ffi::OsStr {
    p.as_os_str()
}

#[test]
fn recalibrate_model_without_batchnorm() {
    let m = fixture("cnn/model_folded.onnx");
    let x = fixture("cnn/train.npy");
    recalibrate_fails(
        &[os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&x)],
        "has no BatchNormalization node",
    );
    recalibrate_fails(&[os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&x)], "TrainingMode.PRESERVE");
}

#[test]
fn recalibrate_batchnorm_in_training_mode() {
    let dir = tmp();
    let mut m = swa::onnx::Model::load(fixture("mlp/model.onnx")).unwrap();
    let bn = m.graph_mut().node.iter_mut().find(|n| n.op_type() == "BatchNormalization").unwrap();
    bn.attribute.retain(|a| a.name() != "training_mode");
    bn.attribute.push(swa::onnx::int_attr("training_mode", 1));
    let path = dir.path().join("training.onnx");
    m.save(&path).unwrap();
    let x = fixture("mlp/train.npy");
    recalibrate_fails(&[os(Path::new("--model")), os(&path), os(Path::new("--inputs")), os(&x)], "is in training mode");
}

#[test]
fn recalibrate_inputs_that_do_not_fit() {
    let m = fixture("cnn/model.onnx");
    let wrong = fixture("mlp/train.npy");
    recalibrate_fails(
        &[os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&wrong)],
        "has shape [300, 32], but model input `input` expects [?, 3, 16, 16]",
    );
    let dir = tmp();
    let npz = dir.path().join("named.npz");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
        z.start_file(
            "pixels.npy",
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
        )
        .unwrap();
        std::io::Write::write_all(&mut z, &std::fs::read(fixture("cnn/eval.npy")).unwrap()).unwrap();
        z.start_file("other.npy", zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut z, &std::fs::read(fixture("cnn/eval.npy")).unwrap()).unwrap();
        z.finish().unwrap();
    }
    recalibrate_fails(
        &[os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&npz)],
        "has no array named `input` for the model input of that name (it has: pixels, other)",
    );
}

#[test]
fn recalibrate_too_few_samples_and_batch_of_one() {
    let m = fixture("mlp/model.onnx");
    let x = fixture("mlp/train.npy");
    let args = [os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&x)];
    recalibrate_fails(
        &[&args[..], &[os(Path::new("--batch-size")), os(Path::new("1000"))]].concat(),
        "has 300 samples, fewer than one batch of 1000",
    );
    recalibrate_fails(
        &[
            &args[..],
            &[os(Path::new("--batch-size")), os(Path::new("1")), os(Path::new("--stats")), os(Path::new("torch"))],
        ]
        .concat(),
        "--batch-size 1 with --stats torch",
    );
}

/// `recalibrate` of the MLP fixture on `inputs` in batches of 32 fails with `message`.
fn recalibrate_mlp_fails(inputs: &Path, message: &str) {
    let m = fixture("mlp/model.onnx");
    let args = [Path::new("--model"), &m, Path::new("--inputs"), inputs, Path::new("--batch-size"), Path::new("32")];
    recalibrate_fails(&args.map(os), message);
}

#[test]
fn recalibrate_nan_names_the_first_layer() {
    let dir = tmp();
    let (shape, mut x) = read_npy(&fixture("mlp/train.npy"));
    x[40 * 32 + 5] = f32::NAN;
    let path = dir.path().join("nan.npy");
    write_npy_f32(&path, &shape, &x);
    recalibrate_mlp_fails(
        &path,
        "(BatchNormalization): its input holds NaN or Inf in batch 2 (the first layer where it appears)",
    );
}

#[test]
fn recalibrate_names_a_variance_beyond_float32_as_such() {
    // Finite inputs whose first BatchNorm's batch variance (about 1e42) exceeds float32's range:
    // the message used to say the input holds NaN or Inf, which it does not.
    let dir = tmp();
    let (shape, x) = read_npy(&fixture("mlp/train.npy"));
    let x: Vec<f32> = x.iter().map(|v| v * 1e21).collect();
    assert!(x.iter().all(|v| v.is_finite()));
    let path = dir.path().join("huge.npy");
    write_npy_f32(&path, &shape, &x);
    recalibrate_mlp_fails(
        &path,
        "(BatchNormalization): its input's batch variance exceeds float32's range (activations of about 1e19 or more) \
         in batch 1",
    );
}

#[test]
fn recalibrate_weights_that_do_not_fit_the_graph() {
    let m = fixture("cnn/model.onnx");
    let x = fixture("cnn/train.npy");
    let mlp = fixture("mlp/checkpoints/epoch_001.safetensors");
    recalibrate_fails(
        &[os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&x), os(Path::new("--weights")), os(&mlp)],
        "tensor `bn1.bias`: has shape [64] but the graph's initializer `bn1.bias` has shape [16]",
    );
    let dir = tmp();
    let (header, data) = header_of(&fixture("cnn/checkpoints/epoch_001.safetensors"));
    let renamed: serde_json::Map<String, serde_json::Value> =
        header.into_iter().map(|(k, v)| (if k.starts_with("__") { k } else { format!("encoder.{k}") }, v)).collect();
    let other = dir.path().join("renamed.safetensors");
    write_with_header(&other, &renamed, &data);
    recalibrate_fails(
        &[os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&x), os(Path::new("--weights")), os(&other)],
        "renamed.safetensors: none of its 32 floating-point tensors matches a weight of the model (its names: \
         encoder.bn1.bias",
    );
    let (mut header, data) = header_of(&fixture("cnn/checkpoints/epoch_001.safetensors"));
    header["fc.weight"]["shape"] = serde_json::json!([32, 10]);
    let bad = dir.path().join("transposed.safetensors");
    write_with_header(&bad, &header, &data);
    recalibrate_fails(
        &[os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&x), os(Path::new("--weights")), os(&bad)],
        "tensor `fc.weight`: has shape [32, 10] but the graph's initializer `fc.weight` has shape [10, 32]",
    );
}

#[test]
fn recalibrate_corrupt_onnx_and_missing_runtime() {
    let dir = tmp();
    let bad = dir.path().join("corrupt.onnx");
    std::fs::write(&bad, b"\x08\x07garbage that is not protobuf \xff\xff\xff").unwrap();
    let x = fixture("mlp/train.npy");
    recalibrate_fails(
        &[os(Path::new("--model")), os(&bad), os(Path::new("--inputs")), os(&x)],
        "corrupt.onnx: not a valid ONNX model",
    );
    let out = tmp();
    swa()
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .args(["recalibrate", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(&x)
        .arg("-o")
        .arg(out.path().join("new/sub/o.onnx"))
        .assert()
        .code(2)
        .stderr(contains("ORT_DYLIB_PATH is /nonexistent/libonnxruntime.so, which is not a file"))
        .stderr(contains("pip install onnxruntime"));
    assert!(listing(out.path()).is_empty(), "left behind: {:?}", listing(out.path()));
}

#[test]
fn recalibrate_that_cannot_write_its_weights_leaves_no_model() {
    let dir = tmp();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    swa()
        .args(["recalibrate", "--model"])
        .arg(fixture("mlp/model.onnx"))
        .arg("--inputs")
        .arg(fixture("mlp/train.npy"))
        .arg("-o")
        .arg(dir.path().join("out.onnx"))
        .arg("--save-weights")
        .arg(dir.path().join("file/out.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("file: cannot create the output here: not a directory"));
    assert_eq!(listing(dir.path()), ["file"]);
}

#[test]
fn recalibrate_cuda_options_on_the_cpu_and_zero_streams() {
    let (m, x) = (fixture("mlp/model.onnx"), fixture("mlp/train.npy"));
    for (extra, message) in [
        (&["--streams", "2"][..], "--streams applies to --device cuda"),
        (&["--tf32"][..], "--tf32 applies to --device cuda"),
        (&["--device", "cuda", "--streams", "0"][..], "--streams must be at least 1"),
    ] {
        let mut args = vec![os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&x)];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        recalibrate_fails(&args, message);
    }
}

// ---------------------------------------------------------------------------------------------
// Messages that point at the real cause
// ---------------------------------------------------------------------------------------------

#[test]
fn recalibrate_nan_in_the_weights_names_the_tensor_not_a_batchnorm_node() {
    let dir = tmp();
    let w = dir.path().join("nan_weights.safetensors");
    mlp_ck_with_value(1, "fc1.weight", 3, f32::NAN, &w);
    let (m, x) = (fixture("mlp/model.onnx"), fixture("mlp/train.npy"));
    recalibrate_fails(
        &[os(Path::new("--model")), os(&m), os(Path::new("--inputs")), os(&x), os(Path::new("--weights")), os(&w)],
        "nan_weights.safetensors: tensor `fc1.weight`: holds a non-finite value (NaN or Inf) at element 3",
    );
    // Non-finite running statistics are what recalibration replaces: they are no reason to refuse.
    let stats = dir.path().join("nan_stats.safetensors");
    let ck = swa::checkpoint::Checkpoint::open(mlp_ck(1)).unwrap();
    let var = ck.tensors().iter().find(|t| t.name.ends_with("running_var")).unwrap().name.clone();
    mlp_ck_with_value(1, &var, 0, f32::NAN, &stats);
    swa()
        .args(["recalibrate", "--model"])
        .arg(&m)
        .arg("--inputs")
        .arg(&x)
        .arg("--weights")
        .arg(&stats)
        .arg("-o")
        .arg(dir.path().join("ok.onnx"))
        .assert()
        .success();
}

#[test]
fn run_takes_allow_nonfinite_as_its_message_says() {
    let dir = tmp();
    let cks = dir.path().join("ck");
    std::fs::create_dir(&cks).unwrap();
    mlp_ck_with_value(1, "fc1.weight", 0, f32::INFINITY, &cks.join("epoch_001.safetensors"));
    std::fs::copy(mlp_ck(2), cks.join("epoch_002.safetensors")).unwrap();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| run_fixture("mlp", &cks, &out, extra).assert();
    run(&[]).code(2).stderr(contains("tensor `fc1.weight`")).stderr(contains("pass --allow-nonfinite"));
    // Accepted; the average then holds Inf, which recalibration refuses by name.
    run(&["--allow-nonfinite"])
        .code(2)
        .stderr(contains("tensor `fc1.weight`: holds a non-finite value"))
        .stderr(contains("BatchNorm statistics cannot be computed"));
    assert!(!dir.path().join("out").exists());
}

#[test]
fn evaluate_an_integer_first_output_names_it_and_asks_for_float_logits() {
    use swa::onnx::proto::{type_proto, TypeProto};
    let dir = tmp();
    let mut m = swa::onnx::Model::load(fixture("mlp/model.onnx")).unwrap();
    let logits = m.graph().output[0].name().to_string();
    let g = m.graph_mut();
    g.node.push(swa::onnx::node(
        "ArgMax",
        "argmax".into(),
        &[&logits],
        &["pred"],
        vec![swa::onnx::int_attr("axis", 1)],
    ));
    let int64 = TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(7), shape: None })),
        ..Default::default()
    };
    g.output
        .insert(0, swa::onnx::ValueInfoProto { name: Some("pred".into()), r#type: Some(int64), ..Default::default() });
    let declared = dir.path().join("declared.onnx");
    m.save(&declared).unwrap();
    evaluate_mlp_model(&declared, &[])
        .assert()
        .code(2)
        .stderr(contains("first output `pred` is I64; evaluation expects float32 logits"));
    // Without a declared type, ONNX Runtime's refusal still names the output.
    m.graph_mut().output[0].r#type = None;
    let undeclared = dir.path().join("undeclared.onnx");
    m.save(&undeclared).unwrap();
    evaluate_mlp_model(&undeclared, &[]).assert().code(2).stderr(contains("output `pred`"));
}

#[test]
fn a_fixed_batch_dimension_asks_for_that_batch_size() {
    use swa::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let dir = tmp();
    let mut m = swa::onnx::Model::load(fixture("mlp/model.onnx")).unwrap();
    let input = &mut m.graph_mut().input[0];
    let Some(type_proto::Value::TensorType(t)) = input.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
        panic!("not a tensor input")
    };
    t.shape.as_mut().unwrap().dim[0].value = Some(Value::DimValue(1));
    let fixed = dir.path().join("fixed.onnx");
    m.save(&fixed).unwrap();
    evaluate_mlp_model(&fixed, &[])
        .assert()
        .code(2)
        .stderr(contains("has a fixed batch dimension of 1 ([1, 32])"))
        .stderr(contains("pass --batch-size 1 (with `swa run` or `swa soup`: --eval-batch-size 1)"));
    evaluate_mlp_model(&fixed, &["--batch-size", "1"]).assert().success();
    recalibrate_fails(
        &[os(Path::new("--model")), os(&fixed), os(Path::new("--inputs")), os(&fixture("mlp/train.npy"))],
        "but batches of 64 samples were asked for: pass --batch-size 1,",
    );
}

#[test]
fn labels_of_another_dtype_are_told_which_integer_types_work() {
    let dir = tmp();
    let y = dir.path().join("y.npy");
    let labels: Vec<f32> = std::iter::repeat_n(1.0, 200).collect();
    write_npy_f32(&y, &[200], &labels);
    evaluate_mlp(&fixture("mlp/eval.npy"), &y, &[])
        .assert()
        .code(2)
        .stderr(contains("int64, int32, int16, uint16 or uint8"));
    // An integer type the reader does not take (int8) is not told to use float32.
    let mut bytes = std::fs::read(&y).unwrap();
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let descr = bytes.windows(3).position(|w| w == b"<f4").unwrap();
    bytes[descr..descr + 3].copy_from_slice(b"|i1");
    bytes.truncate(header_end + 200);
    std::fs::write(&y, bytes).unwrap();
    evaluate_mlp(&fixture("mlp/eval.npy"), &y, &[])
        .assert()
        .code(2)
        .stderr(contains("int64, int32, int16, uint16 or uint8"))
        .stderr(contains("use float32").not());
}

#[test]
fn a_copied_buffer_that_overflows_the_output_dtype_is_refused() {
    let dir = tmp();
    let big = dir.path().join("big.safetensors");
    let spec = |name: &str| swa::checkpoint::TensorSpec {
        name: name.into(),
        dtype: swa::checkpoint::Dtype::F32,
        shape: vec![2],
    };
    let tensors = [(spec("w"), f32_bytes(&[1.0, 2.0])), (spec("bn.running_var"), f32_bytes(&[3.0, 1e6]))];
    swa::checkpoint::write_tensors(&big, &tensors, &Default::default()).unwrap();
    fails(
        &[&big],
        &["--dtype", "f16"],
        "tensor `bn.running_var`: element 1 is 1000000 in the output, beyond the range of F16",
    );
}

#[test]
fn resume_with_a_negative_n_models_says_it_is_invalid() {
    let dir = tmp();
    let (mut header, data) = header_of(&mlp_ck(1));
    header.insert("__metadata__".into(), serde_json::json!({"n_models": "-3"}));
    let prior = dir.path().join("prior.safetensors");
    write_with_header(&prior, &header, &data);
    fails(&[&mlp_ck(2)], &["--resume", prior.to_str().unwrap()], "has an invalid `n_models` in its metadata: \"-3\"");
}

/// The MLP fixture with an int64 input `ids` cast to its float input, as a model that embeds
/// token ids takes them.
fn int64_input_model(dir: &Path) -> std::path::PathBuf {
    use swa::onnx::proto::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto, ValueInfoProto};
    let mut m = swa::onnx::Model::load(fixture("mlp/model.onnx")).unwrap();
    let g = m.graph_mut();
    let input = g.input.iter().position(|i| i.name() == "input").unwrap();
    let dims = [
        tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimParam("batch".into())),
            ..Default::default()
        },
        tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(32)),
            ..Default::default()
        },
    ];
    g.input[input] = ValueInfoProto {
        name: Some("ids".into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(swa::onnx::DataType::Int64 as i32),
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let cast = swa::onnx::node("Cast", "cast".into(), &["ids"], &["input"], vec![swa::onnx::int_attr("to", 1)]);
    g.node.insert(0, cast);
    let path = dir.join("ids.onnx");
    m.save(&path).unwrap();
    path
}

#[test]
fn int64_inputs_take_integer_arrays_and_say_so_of_float_ones() {
    let dir = tmp();
    let model = int64_input_model(dir.path());
    let (shape, x) = read_npy(&fixture("mlp/eval.npy"));
    let ids: Vec<i64> = x.iter().map(|v| (v * 4.0).round() as i64).collect();
    let ids_path = dir.path().join("ids.npy");
    write_raw_npy(
        &ids_path,
        "<i8",
        &format!("({}, {})", shape[0], shape[1]),
        &ids.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    );
    evaluate_model(&model, &ids_path, &fixture("mlp/eval_labels.npy"), &["--json"]).assert().success();
    evaluate_model(&model, &fixture("mlp/eval.npy"), &fixture("mlp/eval_labels.npy"), &[])
        .assert()
        .code(2)
        .stderr(contains("eval.npy: holds F32 values, but model input `ids` takes int64 values"));
}

#[test]
fn a_torch_save_output_is_one_file_whatever_the_case_of_its_name() {
    let dir = tmp();
    let average = |out: &str, extra: &[&str]| {
        let mut c = swa();
        c.arg("average").arg(fixture("mlp/checkpoints")).arg("-o").arg(dir.path().join(out)).args(extra);
        c.assert()
    };
    average("a.PT", &["--shard-size", "1KB"]).code(2).stderr(contains("--shard-size applies to safetensors outputs"));
    average("b.pt", &["--part", "0/2"]).code(2).stderr(contains("--part splits a sharded safetensors output"));
    average("c.PT", &[]).success();
    swa().arg("inspect").arg(dir.path().join("c.PT")).assert().success().stdout(contains("torch.save file"));
    assert_eq!(listing(dir.path()), ["c.PT"]);
}
