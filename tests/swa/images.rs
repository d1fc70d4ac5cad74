//! Image folders, Parquet and uint8 arrays: preprocessing equal to torchvision's, labels from
//! class folders, and clear errors for bad data. Expected tensors come from torchvision
//! (fixtures/make_image_fixtures.py).

use std::path::Path;

use crate::common::*;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use swa::inputs::images::{Preprocess, Resize};
use swa::inputs::{DataOptions, Samples};
use swa::onnx::InputSpec;

fn spec(dims: &[i64]) -> Vec<InputSpec> {
    vec![InputSpec::float("input", dims.to_vec())]
}

fn small(mean: &[f32], std: &[f32]) -> DataOptions {
    DataOptions {
        preprocess: Preprocess {
            resize: Some(Resize::Shorter(20)),
            center_crop: Some((16, 16)),
            mean: Some(mean.to_vec()),
            std: Some(std.to_vec()),
        },
        ..Default::default()
    }
}

/// Resize 20, centre crop 16, no normalization: tensors of `v / 255`.
fn unnormalised() -> DataOptions {
    DataOptions {
        preprocess: Preprocess { mean: None, std: None, ..small(&[0.0], &[1.0]).preprocess },
        ..Default::default()
    }
}

fn imagenet_small() -> DataOptions {
    small(&[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225])
}

/// All samples of `path` in one batch.
fn tensors(path: &Path, dims: &[i64], data: &DataOptions) -> (Samples, Vec<f32>) {
    let samples = Samples::open(path, &spec(dims), data).unwrap();
    let n = samples.len().unwrap();
    let batch = samples.batches(0..n, n).unwrap().next().unwrap().unwrap();
    assert_eq!(batch.indices, (0..n).collect::<Vec<_>>());
    let values = batch.inputs.into_iter().next().unwrap().values.into_f32().unwrap();
    (samples, values)
}

/// Largest difference per image, in units of 1/255 before normalization (`scale` = 255 * std).
fn per_image_diff(ours: &[f32], theirs: &[f32], per: usize, scale: f32) -> Vec<f32> {
    assert_eq!(ours.len(), theirs.len());
    ours.chunks(per)
        .zip(theirs.chunks(per))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs() * scale).fold(0.0, f32::max))
        .collect()
}

/// The ImageFolder order of fixtures/images/val (as torchvision lists it).
const VAL: [&str; 16] = [
    "cat/a_odd_420.jpg",
    "cat/b_444.jpg",
    "cat/c_progressive.jpg",
    "cat/d_gray.jpg",
    "cat/e_exif_rotated.JPG",
    "cat/nested/f_in_subfolder.jpg",
    "dog/a_rgb.png",
    "dog/b_gray.png",
    "dog/c_rgba.png",
    "dog/d_palette.png",
    "dog/e_rgb16.png",
    "dog/f_gray16.png",
    "zebra/D_upper.jpeg",
    "zebra/a.bmp",
    "zebra/b_tiny.png",
    "zebra/c_exact.jpg",
];

/// JPEG decoding is zune-jpeg's, not libjpeg-turbo's: its IDCT and chroma upsampling round a
/// little differently, which resizing then spreads. Every other step is bit for bit.
const JPEG_TOLERANCE: f32 = 4.0;

#[test]
fn an_image_folder_is_preprocessed_like_torchvision() {
    let (samples, ours) = tensors(&fixture("images/val"), &[-1, 3, 16, 16], &imagenet_small());
    let (shape, theirs) = read_npy(&fixture("images/expected/val.npy"));
    assert_eq!(shape, [16, 3, 16, 16]);
    assert_eq!(samples.classes().unwrap(), ["cat", "dog", "zebra"]);
    let (_, labels) = read_npy(&fixture("images/expected/val_labels.npy"));
    assert_eq!(samples.labels().unwrap().iter().map(|&l| l as f32).collect::<Vec<_>>(), labels);
    for ((name, d), std) in VAL.iter().zip(per_image_diff(&ours, &theirs, 768, 255.0 * 0.229)).zip([0.229f32]) {
        let _ = std;
        if name.to_lowercase().ends_with(".jpg") || name.to_lowercase().ends_with(".jpeg") {
            assert!(d <= JPEG_TOLERANCE, "{name}: {d} levels of 255 from torchvision");
        } else {
            // PNG (RGB, L, RGBA, palette, 16-bit) and BMP decode exactly: the same floats.
            assert!(d < 1e-3, "{name}: {d} levels of 255 from torchvision");
        }
    }
    let description = samples.preprocessing().unwrap();
    assert!(description.contains("image folder (3 classes) as RGB NCHW"), "{description}");
    assert!(description.contains("resize shorter side 20 (bilinear, antialias), center crop 16x16"), "{description}");
}

#[test]
fn photo_sized_jpegs_with_the_imagenet_preset_match_torchvision_within_the_jpeg_tolerance() {
    let data = DataOptions {
        preprocess: Preprocess { mean: None, std: None, ..Preprocess::imagenet() },
        ..Default::default()
    };
    let (_, ours) = tensors(&fixture("images/big"), &[-1, 3, 224, 224], &data);
    let (shape, theirs) = read_npy(&fixture("images/expected/big_u8.npy"));
    assert_eq!(shape, [4, 224, 224, 3]);
    let plane = 224 * 224;
    let mut worst = 0f32;
    let mut total = 0f64;
    for (k, image) in theirs.chunks(plane * 3).enumerate() {
        for (i, &v) in image.iter().enumerate() {
            let (pixel, c) = (i / 3, i % 3);
            let d = (ours[k * plane * 3 + c * plane + pixel] * 255.0 - v).abs();
            worst = worst.max(d);
            total += d as f64;
        }
    }
    let mean = total / theirs.len() as f64;
    eprintln!("photo-sized JPEGs: worst {worst} levels, mean {mean}");
    assert!(worst <= JPEG_TOLERANCE, "worst {worst} levels");
    assert!(mean < 0.5, "mean {mean} levels");
}

/// Pillow makes its vertical pass first where the height shrinks by more than twice what the
/// width does; the images of fixtures/images/tall (portraits on both sides of that rule, a wide
/// one, ones made larger) resize to the bytes torchvision gives on PIL, cropped or not.
#[test]
fn tall_images_resize_to_pils_bytes_in_pils_order_of_passes() {
    for (what, resize, crop, (h, w)) in
        [("shorter", Resize::Shorter(24), Some((24, 24)), (24, 24)), ("exact", Resize::Exact(30, 20), None, (30, 20))]
    {
        let data = DataOptions {
            preprocess: Preprocess { resize: Some(resize), center_crop: crop, mean: None, std: None },
            ..Default::default()
        };
        let (_, ours) = tensors(&fixture("images/tall"), &[-1, 3, h as i64, w as i64], &data);
        let (shape, theirs) = read_npy(&fixture(&format!("images/expected/tall_{what}.npy")));
        assert_eq!(shape, [8, h, w, 3]);
        let plane = h * w;
        for (k, image) in theirs.chunks(plane * 3).enumerate() {
            let off = image
                .iter()
                .enumerate()
                .filter(|&(i, &v)| (ours[k * plane * 3 + (i % 3) * plane + i / 3] * 255.0 - v).abs() > 1e-3)
                .count();
            assert_eq!(off, 0, "{what}: image {k} has {off} values off");
        }
    }
}

/// A random subset in shuffled order reads, from an image folder and from Parquet (rows of any
/// row group, in any order), the same tensors and labels as the whole set's rows at those
/// indices; drawn from the set, not its first classes.
#[test]
fn a_shuffled_random_subset_reads_the_rows_it_names_from_folders_and_parquet() {
    use swa::inputs::Sampling;
    let sampling = Sampling::new(16, Some(7), 5, true).unwrap();
    let order = sampling.order().unwrap();
    for path in [fixture("images/val"), fixture("images/val.parquet")] {
        let (whole, all) = tensors(&path, &[-1, 3, 16, 16], &imagenet_small());
        let sub = Samples::open(&path, &spec(&[-1, 3, 16, 16]), &imagenet_small()).unwrap().sampled(sampling).unwrap();
        assert_eq!(sub.len(), Some(7));
        let mut read = Vec::new();
        for b in sub.batches(0..7, 3).unwrap() {
            let b = b.unwrap();
            read.extend(b.inputs[0].values.clone().into_f32().unwrap());
            let labels: Vec<i64> = b.indices.iter().map(|&k| whole.labels().unwrap()[order[k]]).collect();
            assert_eq!(b.targets.unwrap().values, swa::batch::Values::I64(labels));
        }
        let expected: Vec<f32> = order.iter().flat_map(|&i| all[i * 768..(i + 1) * 768].iter().copied()).collect();
        assert!(read == expected, "{}", path.display());
        assert!(sub.preprocessing().unwrap().ends_with("7 of 16 samples drawn at random, in shuffled order (seed 5)"));
        let classes: std::collections::HashSet<i64> = order.iter().map(|&i| whole.labels().unwrap()[i]).collect();
        assert!(classes.len() > 1);
    }
}

/// TIFFs, in torchvision's `IMG_EXTENSIONS` and so in `ImageFolder`, as Pillow writes them (RGB
/// raw, LZW, Deflate, PackBits; grey, 16-bit grey, RGBA): the tensors and labels torchvision
/// gives, bit for bit. A palette TIFF, which the decoder does not read, is named as such.
#[test]
fn tiff_folders_read_as_torchvision_reads_them() {
    let (samples, ours) = tensors(&fixture("images/tiff"), &[-1, 3, 16, 16], &imagenet_small());
    let (shape, theirs) = read_npy(&fixture("images/expected/tiff.npy"));
    assert_eq!(shape, [7, 3, 16, 16]);
    for (k, d) in per_image_diff(&ours, &theirs, 768, 255.0 * 0.229).into_iter().enumerate() {
        assert!(d <= 1e-3, "image {k}: {d}");
    }
    let (_, labels) = read_npy(&fixture("images/expected/tiff_labels.npy"));
    assert_eq!(samples.labels().unwrap().iter().map(|&l| l as f32).collect::<Vec<_>>(), labels);
    let palette = Samples::open(&fixture("images/tiff_palette"), &spec(&[-1, 3, 16, 16]), &imagenet_small()).unwrap();
    let message = swa::error::chain(&palette.batch_at(&[0]).unwrap_err());
    assert!(message.contains("palette.tif: uses a feature swa's image decoder does not read"), "{message}");
    assert!(message.contains("RGBPalette"), "{message}");
}

/// A Hub dataset repository as downloaded (README.md, data/<split>-*.parquet) is read through its
/// `data/` folder: one split as it is, several named with the path of each.
#[test]
fn a_hub_repository_root_reads_its_data_split() {
    let spec = spec(&[-1, 3, 16, 16]);
    let hub = fixture("images/hub");
    let message =
        Samples::open(&hub, &spec, &imagenet_small()).err().map(|e| swa::error::chain(&e)).unwrap_or_default();
    let (test, train) = (hub.join("data/test"), hub.join("data/train"));
    assert!(
        message.contains(&format!(
            "2 splits (test, train): point at one by its prefix, {} or {}",
            test.display(),
            train.display()
        )),
        "{message}"
    );
    let (_, from_split) = tensors(&train, &[-1, 3, 16, 16], &imagenet_small());
    let dir = tmp();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(hub.join("README.md"), dir.path().join("README.md")).unwrap();
    std::fs::copy(hub.join("data/train-00000-of-00001.parquet"), dir.path().join("data/train-00000-of-00001.parquet"))
        .unwrap();
    let (root, from_root) = tensors(dir.path(), &[-1, 3, 16, 16], &imagenet_small());
    let (parquet, from_parquet) = tensors(&fixture("images/val.parquet"), &[-1, 3, 16, 16], &imagenet_small());
    assert!(from_root == from_split && from_root == from_parquet);
    assert_eq!(root.labels(), parquet.labels());
    // The split's prefix, which the message names, is a training input too (it was stamped as a
    // file, and "No such file or directory").
    swa()
        .args(["recalibrate", "--resize", "20", "--center-crop", "16", "--batch-size", "4", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(&train)
        .arg("-o")
        .arg(dir.path().join("out.onnx"))
        .assert()
        .success();
}

#[test]
fn grayscale_models_get_pil_luma() {
    let (samples, ours) = tensors(&fixture("images/val"), &[-1, 1, 16, 16], &small(&[0.5], &[0.25]));
    let (_, theirs) = read_npy(&fixture("images/expected/val_gray.npy"));
    for (name, d) in VAL.iter().zip(per_image_diff(&ours, &theirs, 256, 255.0 * 0.25)) {
        let jpeg = name.to_lowercase().contains(".jp");
        assert!(d <= if jpeg { JPEG_TOLERANCE } else { 1e-3 }, "{name}: {d}");
    }
    assert!(samples.preprocessing().unwrap().contains("grayscale (L)"));
}

#[test]
fn a_flat_folder_parquet_and_uint8_arrays_read_the_same_way() {
    let data = unnormalised();
    let (samples, ours) = tensors(&fixture("images/train"), &[-1, 3, 16, 16], &data);
    assert!(samples.labels().is_none() && samples.classes().is_none());
    let (_, theirs) = read_npy(&fixture("images/expected/train.npy"));
    assert!(per_image_diff(&ours, &theirs, 768, 255.0).iter().all(|&d| d <= JPEG_TOLERANCE));

    // Parquet holds the same files' bytes: the same tensors as the folder, bit for bit, but for the
    // image with an EXIF orientation, which `datasets` (and so swa, for Parquet) turns.
    let (folder, from_folder) = tensors(&fixture("images/val"), &[-1, 3, 16, 16], &imagenet_small());
    let (parquet, from_parquet) = tensors(&fixture("images/val.parquet"), &[-1, 3, 16, 16], &imagenet_small());
    let exif = VAL.iter().position(|n| n.contains("exif")).unwrap();
    for (i, (a, b)) in from_folder.chunks(768).zip(from_parquet.chunks(768)).enumerate() {
        assert_eq!(a == b, i != exif, "{}", VAL[i]);
    }
    assert_eq!(folder.labels(), parquet.labels());
    // Batches that cross the file's row groups (of 4) give the same rows.
    // Started in a later row group too (the row groups before the start are not read).
    for start in [3, 4, 5, 9, 12, 15] {
        let rows: Vec<f32> = parquet
            .batches(start..16, 5)
            .unwrap()
            .flat_map(|b| b.unwrap().inputs.remove(0).values.into_f32().unwrap())
            .collect();
        assert!(rows == from_parquet[start * 768..], "from row {start}");
    }

    let normalize = DataOptions {
        preprocess: Preprocess { resize: None, center_crop: None, ..imagenet_small().preprocess },
        ..Default::default()
    };
    let (u8s, ours) = tensors(&fixture("images/val_u8.npy"), &[-1, 3, 16, 16], &normalize);
    let (_, theirs) = read_npy(&fixture("images/expected/val_u8.npy"));
    assert_eq!(ours, theirs, "uint8 arrays: ToTensor and Normalize are bit for bit");
    assert!(u8s.preprocessing().unwrap().starts_with("uint8 images"));
}

#[test]
fn evaluate_on_an_image_folder_equals_evaluate_on_torchvision_tensors() {
    let run = |inputs: &Path, extra: &[&str]| -> serde_json::Value {
        let out = swa()
            .args(["evaluate", "--model"])
            .arg(fixture("cnn/model.onnx"))
            .arg("--inputs")
            .arg(inputs)
            .args(extra)
            .args(["--json", "--batch-size", "5"])
            .assert()
            .success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    };
    let labels = fixture("images/expected/val_labels.npy");
    let npy = run(&fixture("images/expected/val.npy"), &["--labels", labels.to_str().unwrap()]);
    let pre = ["--resize", "20", "--center-crop", "16", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"];
    let mut folder = run(&fixture("images/val"), &pre);
    let parquet = run(&fixture("images/val.parquet"), &pre);
    // Class folders name the per-class rows; the arrays' rows are numbered only.
    let names: Vec<&str> =
        folder["per_class"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cat", "dog", "zebra"]);
    for c in folder["per_class"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("name");
    }
    for key in ["samples", "correct", "top5", "per_class"] {
        assert_eq!(folder[key], npy[key], "{key}");
        assert_eq!(parquet[key], npy[key], "{key}");
    }
    assert!((folder["loss"].as_f64().unwrap() - npy["loss"].as_f64().unwrap()).abs() < 1e-3);
    assert!(folder["preprocessing"].as_str().unwrap().contains("center crop 16x16"));
    assert!(npy.get("preprocessing").is_none());
}

/// `swa run` of the cnn fixture trained on `images/train` and evaluated on `eval`, into `out`.
fn run_on_images(eval: &Path, out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut c = swa();
    c.args(["run", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--checkpoints")
        .arg(fixture("cnn/checkpoints"))
        .arg("--train-inputs")
        .arg(fixture("images/train"))
        .arg("--eval-inputs")
        .arg(eval)
        .args(extra)
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn run_reads_image_folders_for_training_and_evaluation() {
    let dir = tmp();
    let out = dir.path().join("run");
    let pre = ["--resize", "20", "--center-crop", "16", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"];
    let a =
        run_on_images(&fixture("images/val"), &out, &[&pre[..], &["--batch-size", "4"]].concat()).assert().success();
    let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["eval_samples"], 16, "{stdout}");
    assert_eq!(report["train_samples"], 12);
    let data = report["data"].to_string();
    assert!(data.contains("image folder (3 classes)") && data.contains("images as RGB NCHW"), "{data}");
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("center crop 16x16"));
}

/// A copy of the val folder to break.
fn val_copy() -> tempfile::TempDir {
    let dir = tmp();
    copy_dir(&fixture("images/val"), dir.path());
    dir
}

fn evaluate_folder(dir: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    swa()
        .args(["evaluate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(dir)
        .args(["--resize", "20", "--center-crop", "16"])
        .args(extra)
        .assert()
}

#[test]
fn a_numbered_split_with_a_file_missing_is_refused_naming_it() {
    let dir = tmp();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let part = |i: usize, of: usize| data.join(format!("train-{i:05}-of-{of:05}.parquet"));
    for i in [0, 2] {
        std::fs::copy(fixture("images/val.parquet"), part(i, 3)).unwrap();
    }
    // The folder, and the split's prefix.
    for inputs in [data.clone(), data.join("train")] {
        evaluate_folder(&inputs, &[]).code(2).stderr(contains(
            "train-00001-of-00003.parquet: is missing: split `train` has 3 files and 2 of them are here",
        ));
    }
    // All three: the split is read whole (three times the fixture's rows).
    std::fs::copy(fixture("images/val.parquet"), part(1, 3)).unwrap();
    let one = evaluate_folder(&fixture("images/val.parquet"), &["--json"]).success().get_output().stdout.clone();
    let all = evaluate_folder(&data, &["--json"]).success().get_output().stdout.clone();
    let samples = |out: &[u8]| serde_json::from_slice::<serde_json::Value>(out).unwrap()["samples"].as_u64().unwrap();
    assert_eq!(samples(&all), 3 * samples(&one));
    // Numbered from 1 (the highest is the count) with the first missing, and a file of another count.
    std::fs::rename(part(0, 3), part(3, 3)).unwrap();
    evaluate_folder(&data, &[]).success();
    std::fs::remove_file(part(1, 3)).unwrap();
    evaluate_folder(&data, &[]).code(2).stderr(contains("train-00001-of-00003.parquet: is missing"));
    std::fs::copy(fixture("images/val.parquet"), part(1, 4)).unwrap();
    evaluate_folder(&data, &[]).code(2).stderr(contains("are numbered as parts of"));
    // Split names with hyphens: `my-train` and `my-test` side by side are two splits, not one
    // split `my` read together.
    let hyphens = tmp();
    for split in ["my-train", "my-test"] {
        std::fs::copy(fixture("images/val.parquet"), hyphens.path().join(format!("{split}-00000-of-00001.parquet")))
            .unwrap();
    }
    evaluate_folder(hyphens.path(), &[])
        .code(2)
        .stderr(contains("holds the Parquet files of 2 splits (my-test, my-train)"));
    evaluate_folder(&hyphens.path().join("my-train"), &["--json"]).success();
}

#[test]
fn a_corrupt_image_is_named_or_skipped_and_counted() {
    let dir = val_copy();
    std::fs::write(dir.path().join("dog/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(
        dir.path().join("cat/truncated.jpg"),
        &std::fs::read(fixture("images/val/cat/b_444.jpg")).unwrap()[..200],
    )
    .unwrap();
    evaluate_folder(dir.path(), &[])
        .code(2)
        .stderr(contains("broken.png").or(contains("truncated.jpg")))
        .stderr(contains("--skip-bad-images"));
    let a = evaluate_folder(dir.path(), &["--skip-bad-images", "--json"]).success();
    let m: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(m["samples"], 16);
    let skipped = m["skipped"].to_string();
    assert!(skipped.contains("broken.png") && skipped.contains("truncated.jpg"), "{skipped}");
    evaluate_folder(dir.path(), &["--skip-bad-images"]).success().stdout(contains("skipped 2 images"));
}

#[test]
fn bad_folders_and_parquet_are_clear_errors() {
    // An empty class folder.
    let dir = val_copy();
    std::fs::create_dir(dir.path().join("empty_class")).unwrap();
    evaluate_folder(dir.path(), &[]).code(2).stderr(contains("class folder `empty_class` holds no images"));
    // A file that is not an image.
    let dir = val_copy();
    std::fs::write(dir.path().join("cat/notes.txt"), "hello").unwrap();
    evaluate_folder(dir.path(), &[]).code(2).stderr(contains("notes.txt")).stderr(contains("not images"));
    // Hidden files (.DS_Store) are not samples, and are not errors.
    let dir = val_copy();
    std::fs::write(dir.path().join("cat/.DS_Store"), "x").unwrap();
    evaluate_folder(dir.path(), &[]).success();
    // An image with an image name that is not one.
    let dir = val_copy();
    std::fs::write(dir.path().join("cat/fake.jpg"), "GIF89a....").unwrap();
    evaluate_folder(dir.path(), &[]).code(2).stderr(contains("fake.jpg"));
    // More class folders than the model has classes.
    let dir = tmp();
    for k in 0..11 {
        let class = dir.path().join(format!("class_{k:02}"));
        std::fs::create_dir(&class).unwrap();
        std::fs::copy(fixture("images/val/zebra/c_exact.jpg"), class.join("x.jpg")).unwrap();
    }
    evaluate_folder(dir.path(), &[])
        .code(2)
        .stderr(contains("has 11 class folders, but the model gives logits for 10"));
    // Parquet without the named column, and labels given twice.
    evaluate_folder(&fixture("images/val.parquet"), &["--image-column", "img"])
        .code(2)
        .stderr(contains("has no column `img` (its columns: image, label)"));
    evaluate_folder(&fixture("images/val"), &["--labels", fixture("images/expected/val_labels.npy").to_str().unwrap()])
        .code(2)
        .stderr(contains("carries its own labels"));
    // A flat folder has no labels.
    evaluate_folder(&fixture("images/train"), &[]).code(2).stderr(contains("has no labels"));
    // Sizes that cannot be batched, and preprocessing asked of float samples.
    swa()
        .args(["evaluate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(fixture("images/val"))
        .assert()
        .code(2)
        .stderr(contains("is 23x37 after preprocessing, but the batches are 16x16"))
        .stderr(contains("--center-crop 16"));
    swa()
        .args(["evaluate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(fixture("cnn/eval.npy"))
        .args(["--labels", fixture("cnn/eval_labels.npy").to_str().unwrap(), "--mean", "0.5"])
        .assert()
        .code(2)
        .stderr(contains("already preprocessed"));
}

#[test]
fn train_and_eval_folders_must_name_the_same_classes() {
    let train = val_copy();
    std::fs::rename(train.path().join("zebra"), train.path().join("horse")).unwrap();
    let out = tmp();
    swa()
        .args(["run", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--checkpoints")
        .arg(fixture("cnn/checkpoints"))
        .arg("--train-inputs")
        .arg(train.path())
        .arg("--eval-inputs")
        .arg(fixture("images/val"))
        .args(["--resize", "20", "--center-crop", "16", "--out"])
        .arg(out.path().join("run"))
        .assert()
        .code(2)
        .stderr(contains("class folders of"))
        .stderr(contains("only in"))
        .stderr(contains("horse"));
}

/// A class folder of `n` files that are not images.
fn all_bad(n: usize) -> tempfile::TempDir {
    let dir = tmp();
    for class in ["a", "b"] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        for k in 0..n {
            std::fs::write(dir.path().join(class).join(format!("{k}.jpg")), "junk").unwrap();
        }
    }
    dir
}

#[test]
fn skipping_every_image_leaves_nothing_and_is_an_error() {
    let dir = all_bad(3);
    evaluate_folder(dir.path(), &["--skip-bad-images"]).code(2).stderr(contains("left no samples to evaluate"));
    let out = tmp();
    swa()
        .args(["recalibrate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(dir.path())
        .args(["--center-crop", "16", "--skip-bad-images", "--batch-size", "2", "-o"])
        .arg(out.path().join("m.onnx"))
        .assert()
        .code(2)
        .stderr(contains("left 0 samples"));
    assert!(!out.path().join("m.onnx").exists());
}

#[test]
fn shards_that_skipped_images_merge_into_the_single_run() {
    let dir = val_copy();
    std::fs::write(dir.path().join("dog/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(dir.path().join("cat/empty.jpg"), b"").unwrap();
    let work = tmp();
    let evaluate_part = |extra: &[&str], out: &Path| {
        let mut args = vec!["--skip-bad-images", "--batch-size", "2", "--partial-out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        evaluate_folder(dir.path(), &args).success();
    };
    let mut parts = Vec::new();
    for i in 0..3 {
        let p = work.path().join(format!("p{i}.json"));
        evaluate_part(&["--shard", &format!("{i}/3")], &p);
        parts.push(p);
    }
    let merged = swa().arg("merge-eval").args(&parts).arg("--json").assert().success();
    let merged: serde_json::Value = serde_json::from_slice(&merged.get_output().stdout).unwrap();
    let whole = evaluate_folder(dir.path(), &["--skip-bad-images", "--batch-size", "2", "--json"]).success();
    let whole: serde_json::Value = serde_json::from_slice(&whole.get_output().stdout).unwrap();
    for key in ["samples", "correct", "top5", "per_class"] {
        assert_eq!(merged[key], whole[key], "{key}");
    }
    assert_eq!(whole["samples"], 16);
    assert_eq!(merged["skipped"].as_array().unwrap().len(), 2);
    // A part preprocessed otherwise is not one of the same evaluation.
    let other = work.path().join("other.json");
    evaluate_part(&["--mean", "0.5,0.5,0.5", "--shard", "2/3"], &other);
    swa().arg("merge-eval").args(&parts[..2]).arg(&other).assert().code(2).stderr(contains("preprocessed differently"));
}

#[test]
fn statistics_shards_that_skipped_images_merge_into_the_single_run() {
    let dir = val_copy();
    std::fs::write(dir.path().join("dog/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(dir.path().join("cat/empty.jpg"), b"").unwrap();
    let work = tmp();
    let recalibrate = |extra: &[&str], out: &str| {
        let a = swa()
            .args(["recalibrate", "--model"])
            .arg(fixture("cnn/model.onnx"))
            .arg("--inputs")
            .arg(dir.path())
            .args(["--resize", "20", "--center-crop", "16", "--skip-bad-images", "--batch-size", "2", "--json"])
            .args(["--stats", "precise", "--threads", "1"])
            .args(extra)
            .arg(if out.ends_with(".onnx") { "-o" } else { "--partial-out" })
            .arg(work.path().join(out))
            .assert()
            .success();
        serde_json::from_slice::<serde_json::Value>(&a.get_output().stdout).unwrap()
    };
    let whole = recalibrate(&["--save-weights", work.path().join("whole.safetensors").to_str().unwrap()], "whole.onnx");
    let mut parts = Vec::new();
    for i in 0..3 {
        recalibrate(&["--shard", &format!("{i}/3")], &format!("p{i}.safetensors"));
        parts.push(work.path().join(format!("p{i}.safetensors")));
    }
    let merged = swa()
        .arg("merge-stats")
        .args(&parts)
        .arg("--model")
        .arg(fixture("cnn/model.onnx"))
        .arg("-o")
        .arg(work.path().join("merged.onnx"))
        .arg("--save-weights")
        .arg(work.path().join("merged.safetensors"))
        .arg("--json")
        .assert()
        .success();
    let merged: serde_json::Value = serde_json::from_slice(&merged.get_output().stdout).unwrap();
    assert_eq!(whole["samples"], 16);
    for key in ["samples", "skipped", "preprocessing"] {
        assert_eq!(merged[key], whole[key], "{key}");
    }
    assert_eq!(merged["skipped"].as_array().unwrap().len(), 2);
    // The same statistics up to the f32 rounding of sums merged in another order.
    assert_close(&work.path().join("merged.safetensors"), &work.path().join("whole.safetensors"), 1e-6, 1e-7, |_| true);
    // A part preprocessed otherwise is not one of the same pass.
    recalibrate(&["--shard", "2/3", "--mean", "0.5,0.5,0.5"], "other.safetensors");
    let e = swa()
        .arg("merge-stats")
        .args(&parts[..2])
        .arg(work.path().join("other.safetensors"))
        .arg("--model")
        .arg(fixture("cnn/model.onnx"))
        .arg("-o")
        .arg(work.path().join("bad.onnx"))
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&e.get_output().stderr).into_owned();
    assert!(stderr.contains("preprocessing"), "{stderr}");
}

#[test]
fn awkward_but_valid_folders_read_as_torchvision_reads_them() {
    // The first image is bad and the model fixes the size: skipping works from the first image.
    let dir = val_copy();
    std::fs::write(dir.path().join("cat/a_odd_420.jpg"), "junk").unwrap();
    swa()
        .args(["evaluate", "--model"])
        .arg(fixture("cnn/model.onnx"))
        .arg("--inputs")
        .arg(dir.path())
        .args(["--resize", "16,16", "--skip-bad-images", "--json"])
        .assert()
        .success()
        .stdout(contains("\"samples\": 15"));
    // A class folder whose name is not UTF-8, and a folder reached twice through a link.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let dir = val_copy();
        std::fs::rename(dir.path().join("dog"), dir.path().join(std::ffi::OsStr::from_bytes(b"d\xffg"))).unwrap();
        std::os::unix::fs::symlink("nested", dir.path().join("cat/nested_again")).unwrap();
        let a = evaluate_folder(dir.path(), &["--json"]).success();
        let m: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
        assert_eq!(m["samples"], 17, "the linked folder's image counts twice, as torchvision counts it");
        // A real loop is refused.
        std::os::unix::fs::symlink("..", dir.path().join("cat/nested/up")).unwrap();
        evaluate_folder(dir.path(), &[]).code(2).stderr(contains("a loop"));
    }
    // A negative mean is a value, not a flag.
    evaluate_folder(&fixture("images/val"), &["--mean", "-0.5", "--std", "2"]).success();
}

#[test]
fn hugging_face_split_files_are_chosen_by_prefix_and_never_mixed() {
    let dir = tmp();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(fixture("images/val.parquet"), data.join("train-00000-of-00001.parquet")).unwrap();
    std::fs::copy(fixture("images/val.parquet"), data.join("test-00000-of-00001.parquet")).unwrap();
    evaluate_folder(&data, &[]).code(2).stderr(contains("Parquet files of 2 splits (test, train)"));
    evaluate_folder(&data.join("test"), &["--json"]).success().stdout(contains("\"samples\": 16"));
    evaluate_folder(&data.join("test"), &["--label-column", "labels"])
        .code(2)
        .stderr(contains("has no label column `labels` (its columns: image, label)"));
}

/// A part whose images all fail to decode is still a part: it counts its skipped images and the
/// parts merge into the single run's figures. It failed ("left no samples to evaluate"), so a
/// sharded evaluation that the single run completes could not be merged at all.
#[test]
fn a_part_whose_images_were_all_skipped_still_merges() {
    let dir = val_copy();
    // Samples 4..8 in ImageFolder order: the second batch of 4, part 1 of 4.
    for f in ["cat/e_exif_rotated.JPG", "cat/nested/f_in_subfolder.jpg", "dog/a_rgb.png", "dog/b_gray.png"] {
        std::fs::write(dir.path().join(f), b"not an image").unwrap();
    }
    let work = tmp();
    let mut parts = Vec::new();
    for i in 0..4 {
        let p = work.path().join(format!("p{i}.json"));
        let shard = format!("{i}/4");
        evaluate_folder(
            dir.path(),
            &["--skip-bad-images", "--batch-size", "4", "--shard", &shard, "--partial-out", p.to_str().unwrap()],
        )
        .success();
        parts.push(p);
    }
    let merged = swa().arg("merge-eval").args(&parts).arg("--json").assert().success();
    let merged: serde_json::Value = serde_json::from_slice(&merged.get_output().stdout).unwrap();
    let whole = evaluate_folder(dir.path(), &["--skip-bad-images", "--batch-size", "4", "--json"]).success();
    let whole: serde_json::Value = serde_json::from_slice(&whole.get_output().stdout).unwrap();
    for key in ["samples", "correct", "top5", "per_class", "skipped"] {
        assert_eq!(merged[key], whole[key], "{key}");
    }
    assert_eq!(whole["samples"], 12);
    // Parts that together evaluated nothing are still an evaluation of zero samples: an error.
    let none = val_copy();
    for f in walk_files(none.path()) {
        std::fs::write(f, b"not an image").unwrap();
    }
    let mut empty = Vec::new();
    for i in 0..2 {
        let p = work.path().join(format!("e{i}.json"));
        let shard = format!("{i}/2");
        let args = ["--skip-bad-images", "--batch-size", "8", "--shard", &shard, "--partial-out", p.to_str().unwrap()];
        evaluate_folder(none.path(), &args).success();
        empty.push(p);
    }
    swa().arg("merge-eval").args(&empty).assert().code(2).stderr(contains("no samples"));
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every file an image or Parquet folder holds is an input: an output there (over an image, or
/// beside it where the next run reads it) is refused before any work, naming the folder.
#[test]
fn an_output_inside_an_input_folder_is_refused() {
    let dir = val_copy();
    let before = snapshot(dir.path());
    let image = dir.path().join("dog/a_rgb.png");
    let recalibrate = |inputs: &Path, out: &Path| {
        swa()
            .args(["recalibrate", "--model"])
            .arg(fixture("cnn/model.onnx"))
            .arg("--inputs")
            .arg(inputs)
            .args(["--resize", "20", "--center-crop", "16", "--batch-size", "4", "-o"])
            .arg(out)
            .assert()
    };
    let inside = "is inside the input folder";
    recalibrate(dir.path(), &image).code(2).stderr(contains(inside));
    recalibrate(dir.path(), &dir.path().join("dog/new/m.onnx")).code(2).stderr(contains(inside));
    evaluate_folder(dir.path(), &["--shard", "0/1", "--partial-out", image.to_str().unwrap()])
        .code(2)
        .stderr(contains(format!("output {}/dog/a_rgb.png {inside} {}", dir.path().display(), dir.path().display())));
    // Also spelled through a folder that does not exist yet, and `..`.
    for out in [dir.path().join("cat/run"), dir.path().join("cat/x/../run")] {
        run_on_images(dir.path(), &out, &["--resize", "20", "--center-crop", "16"])
            .assert()
            .code(2)
            .stderr(contains(inside));
    }
    assert_same(&before, &snapshot(dir.path()));
    // A Parquet folder: said as such, not found out as a folder that changed under the run.
    let data = tmp();
    std::fs::copy(fixture("images/val.parquet"), data.path().join("val-00000-of-00001.parquet")).unwrap();
    recalibrate(data.path(), &data.path().join("m.onnx")).code(2).stderr(contains(inside));
    assert_eq!(listing(data.path()), ["val-00000-of-00001.parquet"]);
}

/// A PNG of `w`x`h` grey pixels, all black (it compresses to almost nothing).
fn black_png(path: &Path, w: u32, h: u32) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut e = png::Encoder::new(file, w, h);
    e.set_color(png::ColorType::Grayscale);
    let mut writer = e.write_header().unwrap();
    writer.write_image_data(&vec![0u8; (w * h) as usize]).unwrap();
}

/// Images whose size would cost more than a pixel limit (decoded, or once resized) are bad
/// images, refused before a byte is decoded or resampled: a 60000x1 PNG resized to 256 on its
/// shorter side allocated 11.8 GB and aborted, a 20000x20000 PNG of 380 KB cost 1.6 GB.
#[test]
fn images_above_the_pixel_limit_are_bad_images_found_before_decoding() {
    let dir = val_copy();
    black_png(&dir.path().join("dog/wide.png"), 60000, 1);
    let a = evaluate_folder(dir.path(), &["--batch-size", "4"]).code(2);
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(stderr.contains("wide.png: would be 1200000x20 once resized, a side longer than 1048576"), "{stderr}");
    let a = evaluate_folder(dir.path(), &["--batch-size", "4", "--max-image-pixels", "1000000"]).code(2);
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(
        stderr.contains("wide.png: is 1200000x20 once resized = 24000000 pixels, more than the limit of 1000000"),
        "{stderr}"
    );
    assert!(stderr.contains("--max-image-pixels") && stderr.contains("--skip-bad-images"), "{stderr}");
    let a = evaluate_folder(dir.path(), &["--batch-size", "4", "--skip-bad-images", "--json"]).success();
    let m: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(m["samples"], 16);
    assert!(m["skipped"].to_string().contains("wide.png"));
    std::fs::remove_file(dir.path().join("dog/wide.png")).unwrap();
    // A header that claims 20000x20000 is refused from the header: no data is needed to say so.
    let mut huge = Vec::new();
    {
        let mut e = png::Encoder::new(&mut huge, 20000, 20000);
        e.set_color(png::ColorType::Grayscale);
        let mut w = e.write_header().unwrap();
        // The start of the image data only: the size is known from the header before it.
        w.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x63, 0x00, 0x00]).unwrap();
    }
    std::fs::write(dir.path().join("dog/huge.png"), &huge).unwrap();
    evaluate_folder(dir.path(), &["--batch-size", "4"])
        .code(2)
        .stderr(contains("huge.png: is 20000x20000 = 400000000 pixels, more than the limit"));
    std::fs::remove_file(dir.path().join("dog/huge.png")).unwrap();
    // The limit is a setting: a low one refuses the fixtures' own images; 0 is no limit to set.
    evaluate_folder(dir.path(), &["--batch-size", "4", "--max-image-pixels", "300"])
        .code(2)
        .stderr(contains("more than the limit of 300"));
    // One below the crop's 256 pixels: the batches themselves are too large, said before any image.
    evaluate_folder(dir.path(), &["--batch-size", "4", "--max-image-pixels", "255"])
        .code(2)
        .stderr(contains("gives images of 16x16 after preprocessing = 256 pixels, more than an image may have (255"));
    evaluate_folder(dir.path(), &["--batch-size", "4", "--max-image-pixels", "0"])
        .code(2)
        .stderr(contains("--max-image-pixels"));
}

/// A JPEG cut after its scan header decoded "successfully" (grey where the data was missing):
/// truncated images are bad images, as in PIL; a PNG without only its IEND chunk PIL reads, and so
/// does swa.
#[test]
fn a_truncated_jpeg_is_a_bad_image() {
    let dir = val_copy();
    let whole = std::fs::read(fixture("images/val/cat/b_444.jpg")).unwrap();
    let scan = whole.windows(2).position(|m| m == [0xFF, 0xDA]).unwrap();
    for (name, cut) in [("after_scan_header.jpg", scan + 14), ("no_end_marker.jpg", whole.len() - 2)] {
        std::fs::write(dir.path().join("cat").join(name), &whole[..cut]).unwrap();
    }
    // A PNG without its closing IEND chunk, whose image data is whole, PIL reads: so does swa.
    let png = std::fs::read(fixture("images/val/dog/a_rgb.png")).unwrap();
    std::fs::write(dir.path().join("dog/no_iend.png"), &png[..png.len() - 12]).unwrap();
    let a = evaluate_folder(dir.path(), &["--batch-size", "4", "--skip-bad-images", "--json"]).success();
    let m: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    let skipped = m["skipped"].to_string();
    assert_eq!(m["samples"], 17, "{skipped}");
    assert!(
        skipped.contains("after_scan_header.jpg: is truncated") && skipped.contains("no_end_marker.jpg: is truncated"),
        "{skipped}"
    );
}

/// `val.parquet` rewritten with its label column renamed `labels`, or holding the class names as
/// strings.
fn relabelled_parquet(to: &Path, rename: bool) {
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(fixture("images/val.parquet")).unwrap();
    let batches: Vec<RecordBatch> =
        ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().map(Result::unwrap).collect();
    let schema = batches[0].schema();
    let label = schema.index_of("label").unwrap();
    let fields: Vec<arrow_schema::Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match (i == label, rename) {
            (true, true) => f.as_ref().clone().with_name("labels"),
            (true, false) => arrow_schema::Field::new("label", arrow_schema::DataType::Utf8, false),
            _ => f.as_ref().clone(),
        })
        .collect();
    let schema = std::sync::Arc::new(arrow_schema::Schema::new(fields));
    let out = std::fs::File::create(to).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(out, schema.clone(), None).unwrap();
    for b in batches {
        let mut columns: Vec<ArrayRef> = b.columns().to_vec();
        if !rename {
            let names: Vec<String> = (0..b.num_rows()).map(|i| format!("class {i}")).collect();
            columns[label] = std::sync::Arc::new(StringArray::from(names));
        }
        w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).unwrap();
    }
    w.close().unwrap();
}

/// Labels as Hugging Face users have them: a `labels` column is named with the columns there are
/// and `--label-column` (it said "has no labels" and nothing more); a label column of strings
/// does not stop a recalibration, which reads no labels; `--label-column ''` turns labels off.
#[test]
fn parquet_labels_are_found_named_or_left_alone() {
    let dir = tmp();
    let renamed = dir.path().join("renamed.parquet");
    relabelled_parquet(&renamed, true);
    evaluate_folder(&renamed, &[]).code(2).stderr(
        contains("has no label column `label` (its columns: image, labels)").and(contains("--label-column NAME")),
    );
    evaluate_folder(&renamed, &["--label-column", "labels", "--json"]).success();
    let strings = dir.path().join("strings.parquet");
    relabelled_parquet(&strings, false);
    let recalibrate = |extra: &[&str]| {
        swa()
            .args(["recalibrate", "--model"])
            .arg(fixture("cnn/model.onnx"))
            .arg("--inputs")
            .arg(&strings)
            .args(["--resize", "20", "--center-crop", "16", "--batch-size", "4"])
            .args(extra)
            .arg("-o")
            .arg(dir.path().join("m.onnx"))
            .assert()
    };
    recalibrate(&[]).success();
    evaluate_folder(&strings, &[])
        .code(2)
        .stderr(contains("label column `label` holds Utf8, not integer class indices"));
    // Labels off: an evaluation then needs a labels file.
    evaluate_folder(&renamed, &["--label-column", ""]).code(2).stderr(contains("labels are turned off"));
}

/// Hugging Face `datasets` turns an image by its EXIF orientation when it decodes an `Image`
/// feature; torchvision's `ImageFolder` does not: a Parquet row is turned, the same file in a
/// folder is not (a 36x24 JPEG with orientation 6 is 24x36 from Parquet, as
/// `ImageOps.exif_transpose` gives it).
#[test]
fn parquet_images_are_turned_by_their_exif_orientation_and_folders_are_not() {
    use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
    let dir = tmp();
    let jpeg = std::fs::read(fixture("images/val/cat/e_exif_rotated.JPG")).unwrap();
    let schema = std::sync::Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("image", arrow_schema::DataType::Binary, false),
        arrow_schema::Field::new("label", arrow_schema::DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        std::sync::Arc::new(BinaryArray::from(vec![jpeg.as_slice()])),
        std::sync::Arc::new(Int64Array::from(vec![0i64])),
    ];
    let parquet = dir.path().join("rotated.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&parquet).unwrap(), schema.clone(), None).unwrap();
    w.write(&RecordBatch::try_new(schema, columns).unwrap()).unwrap();
    w.close().unwrap();
    let folder = dir.path().join("flat");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("e.jpg"), &jpeg).unwrap();
    let spec = [InputSpec::float("input", vec![-1, 3, -1, -1])];
    let options =
        DataOptions { preprocess: Preprocess { mean: Some(vec![0.5]), ..Default::default() }, ..Default::default() };
    let shape = |p: &Path| Samples::open(p, &spec, &options).unwrap().sample_shapes()[0].clone();
    assert_eq!(shape(&folder), [3, 24, 36]);
    assert_eq!(shape(&parquet), [3, 36, 24]);
    // The pixels too: val.parquet and its save_to_disk copy give what `datasets` decodes (EXIF
    // applied) through torchvision's transform, within JPEG's tolerance, PNGs bit for bit.
    let (_, theirs) = read_npy(&fixture("images/expected/val_datasets.npy"));
    for path in [fixture("images/val.parquet"), fixture("images/saved")] {
        let (_, ours) = tensors(&path, &[-1, 3, 16, 16], &imagenet_small());
        for (name, d) in VAL.iter().zip(per_image_diff(&ours, &theirs, 768, 255.0 * 0.229)) {
            let jpeg = name.to_lowercase().contains(".jp");
            assert!(d <= if jpeg { JPEG_TOLERANCE } else { 1e-3 }, "{}: {name}: {d}", path.display());
        }
    }
}

/// What PIL does with files a decoder might treat otherwise, on files Pillow wrote: a PNG
/// without its closing IEND chunk is read (to torchvision's tensor, bit for bit), a JPEG cut short
/// is refused as PIL refuses it ("image file is truncated").
#[test]
fn pil_written_edge_files_are_read_or_refused_as_pil_does() {
    let plain = unnormalised();
    let (_, ours) = tensors(&fixture("images/no_iend"), &[-1, 3, 16, 16], &plain);
    let (_, theirs) = read_npy(&fixture("images/expected/no_iend.npy"));
    assert!(per_image_diff(&ours, &theirs, 768, 255.0)[0] <= 1e-3);
    let cut = Samples::open(&fixture("images/truncated"), &spec(&[-1, 3, 16, 16]), &plain).unwrap();
    let message = swa::error::chain(&cut.batch_at(&[0]).unwrap_err());
    assert!(message.contains("cut.jpg: is truncated"), "{message}");
}

/// What users have that swa does not read is said as such: a webdataset shard was "not a .npy
/// array (bad magic)". A broken Arrow file and a `DatasetDict` folder say what they are.
#[test]
fn data_swa_does_not_read_is_named_for_what_it_is() {
    let dir = tmp();
    std::fs::write(dir.path().join("shard-000000.tar"), b"ustar stuff").unwrap();
    std::fs::write(dir.path().join("data-00000-of-00001.arrow"), b"ARROW1").unwrap();
    let saved = dir.path().join("saved");
    std::fs::create_dir_all(saved.join("train")).unwrap();
    std::fs::write(saved.join("dataset_dict.json"), b"{\"splits\": [\"train\"]}").unwrap();
    for (path, says) in [
        (dir.path().join("shard-000000.tar"), "is a tar archive (a webdataset shard?): swa does not read those; convert it to Parquet (datasets: `ds.to_parquet"),
        (dir.path().join("data-00000-of-00001.arrow"), "is not a valid Arrow file: it has no schema"),
        (saved.clone(), "is a DatasetDict saved with save_to_disk, of 1 splits (train): point at one"),
    ] {
        evaluate_folder(&path, &[]).code(2).stderr(contains(says));
    }
}

/// `datasets`' `save_to_disk` folders (a Dataset, a split of a DatasetDict) and their `.arrow`
/// files read the rows `datasets` wrote: the same tensors as the Parquet file of the same rows,
/// bit for bit (its Image feature turned by EXIF orientation), its ClassLabel as labels and class
/// names, in any order.
#[test]
fn save_to_disk_folders_read_as_datasets_wrote_them() {
    use swa::inputs::Sampling;
    let (parquet, from_parquet) = tensors(&fixture("images/val.parquet"), &[-1, 3, 16, 16], &imagenet_small());
    for path in
        [fixture("images/saved"), fixture("images/saved_dict/train"), fixture("images/saved/data-00000-of-00001.arrow")]
    {
        let (saved, from_saved) = tensors(&path, &[-1, 3, 16, 16], &imagenet_small());
        assert!(from_saved == from_parquet, "{}", path.display());
        assert_eq!(saved.labels(), parquet.labels());
        assert_eq!(saved.classes().map(|c| c.join(",")).as_deref(), Some("cat,dog,zebra"));
        assert!(saved.preprocessing().unwrap().starts_with("Arrow column `image`"));
        let sampling = Sampling::new(16, Some(9), 2, true).unwrap();
        let sub = Samples::open(&path, &spec(&[-1, 3, 16, 16]), &imagenet_small()).unwrap().sampled(sampling).unwrap();
        let read: Vec<f32> = sub
            .batches(0..9, 4)
            .unwrap()
            .flat_map(|b| b.unwrap().inputs.remove(0).values.into_f32().unwrap())
            .collect();
        let expected: Vec<f32> = sampling
            .order()
            .unwrap()
            .iter()
            .flat_map(|&i| from_parquet[i * 768..(i + 1) * 768].iter().copied())
            .collect();
        assert!(read == expected);
    }
    let message = Samples::open(&fixture("images/saved_dict"), &spec(&[-1, 3, 16, 16]), &imagenet_small())
        .err()
        .map(|e| swa::error::chain(&e))
        .unwrap_or_default();
    assert!(message.contains("of 2 splits (train, test): point at one"), "{message}");
}

/// A dataset's root holding `train/` and `test/` reads as two classes, as ImageFolder reads it,
/// but not silently: a warning names the split to point at (it gave top-1 33 % and exit 0).
#[test]
fn a_dataset_root_read_as_classes_named_like_splits_is_warned_about() {
    let dir = tmp();
    for split in ["train", "test"] {
        copy_dir(&fixture("images/val/dog"), &dir.path().join(split).join("dog"));
    }
    evaluate_folder(dir.path(), &["--labels", fixture("images/expected/val_labels.npy").to_str().unwrap()])
        .stderr(contains("its class folders are named test, train, like a dataset's splits"));
}

/// Damaged Arrow files found by the hostile pass: a record batch claiming 2^40 rows (a sampled
/// pass allocated an order of 2^40 indices and aborted) and a stream with a second schema (read
/// with the later schema, from the wrong column) are errors that say what is wrong.
#[test]
fn arrow_files_that_lie_about_their_rows_or_schema_are_refused() {
    for (file, says) in
        [("forged_rows.arrow", "claims 1099511627776 rows in"), ("two_schemas.arrow", "a second schema at byte")]
    {
        let path = fixture(&format!("images/damaged/{file}"));
        let message = Samples::open(&path, &spec(&[-1, 3, 16, 16]), &imagenet_small())
            .err()
            .map(|e| swa::error::chain(&e))
            .unwrap_or_default();
        assert!(message.contains("is not a valid Arrow file") && message.contains(says), "{message}");
    }
}
