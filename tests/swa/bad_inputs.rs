//! Bad input to `swa average`: a clear message naming the file or tensor, exit code 2, and no output.

use std::path::{Path, PathBuf};

use crate::common::*;
use predicates::str::contains;

fn ck(n: u32) -> PathBuf {
    fixture(&format!("mlp/checkpoints/epoch_00{n}.safetensors"))
}

/// Runs `swa average` over `inputs` into a fresh directory; checks exit 2, the message, and that
/// the directory is still empty.
fn fails(inputs: &[&Path], extra: &[&str], message: &str) {
    let dir = tmp();
    let out = dir.path().join("out.safetensors");
    swa().arg("average").args(extra).args(inputs).arg("-o").arg(&out).assert().code(2).stderr(contains(message));
    assert!(listing(dir.path()).is_empty(), "left behind: {:?}", listing(dir.path()));
}

fn header_of(path: &Path) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), bytes[8 + n..].to_vec())
}

fn write_with_header(path: &Path, header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

#[test]
fn truncated_file() {
    let dir = tmp();
    let bad = dir.path().join("epoch_009.safetensors");
    let bytes = std::fs::read(ck(1)).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    fails(&[&ck(1), &bad], &[], "epoch_009.safetensors: truncated or corrupt");
}

#[test]
fn header_length_beyond_the_file() {
    let dir = tmp();
    let bad = dir.path().join("short.safetensors");
    let mut bytes = std::fs::read(ck(1)).unwrap();
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
    let mut bytes = std::fs::read(ck(1)).unwrap();
    bytes[9] = b'!';
    std::fs::write(&bad, bytes).unwrap();
    fails(&[&bad], &[], "json.safetensors: corrupt safetensors header");
}

#[test]
fn offsets_outside_the_data_or_overlapping() {
    let dir = tmp();
    let (mut header, data) = header_of(&ck(1));
    let bad = dir.path().join("offsets.safetensors");
    header["fc1.weight"]["data_offsets"] = serde_json::json!([0, data.len() + 64]);
    write_with_header(&bad, &header, &data);
    fails(&[&bad], &[], "offsets.safetensors");
    let (mut header, data) = header_of(&ck(1));
    let first = header["bn1.bias"]["data_offsets"].clone();
    header["bn1.weight"]["data_offsets"] = first;
    write_with_header(&bad, &header, &data);
    fails(&[&bad], &[], "overlap or lie outside the data");
}

#[test]
fn checkpoints_that_disagree() {
    fails(&[&ck(1), &fixture("cnn/checkpoints/epoch_001.safetensors")], &[], "checkpoints disagree");
    let dir = tmp();
    let (mut header, data) = header_of(&ck(2));
    header["head.bias"]["dtype"] = "I32".into();
    let bad = dir.path().join("dtype.safetensors");
    write_with_header(&bad, &header, &data);
    fails(&[&ck(1), &bad], &[], "`head.bias` is F32 in");
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
    let (header, mut data) = header_of(&ck(2));
    let start = header["fc2.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    data[start + 12..start + 16].copy_from_slice(&f32::NAN.to_le_bytes());
    let bad = dir.path().join("epoch_002.safetensors");
    write_with_header(&bad, &header, &data);
    fails(&[&ck(1), &bad], &[], "epoch_002.safetensors: tensor `fc2.weight`: holds a non-finite value (NaN or Inf) at element 3");
    let out = dir.path().join("ok.safetensors");
    swa().args(["average", "--allow-nonfinite"]).arg(ck(1)).arg(&bad).arg("-o").arg(&out).assert().success();
    assert!(values(&out, "fc2.weight")[3].is_nan());
}

#[test]
fn unwritable_output_and_output_equal_to_input() {
    let dir = tmp();
    swa()
        .arg("average")
        .arg(ck(1))
        .arg("-o")
        .arg(dir.path().join("missing/dir/out.safetensors"))
        .assert()
        .code(2)
        .stderr(contains("missing/dir: cannot create the output here"));
    let copy = dir.path().join("epoch_001.safetensors");
    std::fs::copy(ck(1), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    swa().arg("average").arg(&copy).arg(ck(2)).arg("-o").arg(&copy).assert().code(2).stderr(contains("is also an input: refusing to overwrite it"));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
    assert_eq!(listing(dir.path()), ["epoch_001.safetensors"]);
}

#[test]
fn full_disk_leaves_nothing() {
    // A 64 KiB tmpfs holds less than the average; mounting needs root, which CI has.
    let dir = tmp();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&mnt).status().is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping full_disk_leaves_nothing: cannot mount a tmpfs here (needs root)");
        return;
    }
    let out = mnt.join("out.safetensors");
    let result = swa().arg("average").arg(fixture("cnn/checkpoints")).arg("-o").arg(&out).assert().code(2).stderr(contains("No space left on device"));
    drop(result);
    let left = listing(&mnt);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert!(left.is_empty(), "left behind on the full disk: {left:?}");
}
