//! The fuzz targets' bodies: each takes arbitrary bytes through the library's parser for one
//! format, then through what the commands do with what it accepts. Errors are fine; a panic, a
//! hang or an unbounded allocation is a bug.
//!
//! The stable test `tests/swa/fuzz_corpus.rs` includes this file (`#[path]`) to replay
//! `fuzz/corpus/*` and `fuzz/regressions/*` through the same functions, without nightly.

use std::path::Path;

use swa::checkpoint::{dtype, sharded, Checkpoint};
use swa::inputs::npy::{self, Array};
use swa::onnx::bind::Binder;
use swa::onnx::{bn, Model};

/// A `.safetensors` file: header validation, then every tensor's bytes and values.
pub fn safetensors_header(data: &[u8]) {
    let Ok(ck) = Checkpoint::from_safetensors_bytes(Path::new("fuzz.safetensors"), data.to_vec()) else { return };
    assert!(!ck.tensors().is_empty());
    for t in ck.tensors() {
        let bytes = ck.bytes(t);
        assert_eq!(bytes.len(), t.nbytes());
        assert_eq!(dtype::nbytes(t.dtype, &t.shape), Ok(bytes.len()));
        if dtype::is_float(t.dtype) {
            let values = ck.f32_values(&t.name).expect("a float tensor converts");
            assert_eq!(values.len(), t.numel());
            let _ = dtype::first_nonfinite(t.dtype, bytes);
        }
    }
    let _ = ck.metadata();
}

/// A `*.safetensors.index.json`: every shard it plans must lie in the index's directory.
pub fn shard_index(data: &[u8]) {
    let dir = Path::new("fuzz-dir");
    let Ok(index) = sharded::parse_index(&dir.join("model.safetensors.index.json"), data) else { return };
    for shard in index.shards() {
        let rest = shard.strip_prefix(dir).expect("a shard lies in the index's directory");
        assert!(
            rest.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)),
            "shard {} leaves the index's directory",
            shard.display()
        );
    }
}

fn use_array(a: &Array) {
    let n = a.len();
    let rows = a.f32_rows(0, n);
    assert_eq!(rows.len(), n * a.sample_numel());
    if n > 0 {
        let _ = a.f32_rows(n - 1, n);
    }
    let _ = a.i64_values();
    let _ = a.label();
}

/// A `.npy` array.
pub fn npy(data: &[u8]) {
    if let Ok(a) = npy::parse_npy(Path::new("fuzz.npy"), data.to_vec()) {
        use_array(&a);
    }
}

/// A segmentation mask file (a palette or grey PNG of 1 to 16 bits, or another grey image), read
/// for the size its header claims: values one per pixel.
pub fn mask(data: &[u8]) {
    let Some(file) = TempInput::new(data, ".png") else { return };
    // The size the file claims (a PNG's IHDR), which is what a matching image would have.
    let (w, h) = if data.len() >= 24 && data.starts_with(b"\x89PNG") {
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        (be(&data[16..20]), be(&data[20..24]))
    } else {
        (4, 4)
    };
    if w.saturating_mul(h) > 1 << 22 {
        return;
    }
    if let Ok(m) = swa::inputs::samples::masks::decode(&file.0, w, h) {
        assert_eq!(m.data.len(), m.w * m.h);
    }
}

/// A CSV table of targets by file name, mapped onto three image names.
pub fn table(data: &[u8]) {
    let Some(file) = TempInput::new(data, ".csv") else { return };
    let files: Vec<std::path::PathBuf> =
        ["a.png", "sub/b.jpg", "c.png"].iter().map(|f| Path::new("/d").join(f)).collect();
    if let Ok(t) = swa::inputs::table::targets_for(&file.0, Path::new("/d"), &files) {
        assert_eq!(t.shape[0], 3);
        assert_eq!(t.values.len(), 3 * t.row_len());
    }
}

/// A `.npz` archive (stored and deflated members).
pub fn npz(data: &[u8]) {
    if let Ok(arrays) = npy::parse_npz(Path::new("fuzz.npz"), data.to_vec()) {
        arrays.iter().for_each(use_array);
    }
}

/// An ONNX model: decoding, binding its own initializers as a checkpoint, the BatchNorm search,
/// the statistics graph and writing statistics back.
pub fn onnx(data: &[u8]) {
    // External data is looked for in a directory that does not exist.
    let Ok(model) = Model::from_bytes(Path::new("/nonexistent-swa-fuzz/model.onnx"), data) else { return };
    let _ = model.inputs();
    let _ = model.opset();
    let binder = Binder::new(model.clone());
    if let Ok(ck) = binder.model().checkpoint() {
        let _ = binder.report(&ck);
        let _ = binder.bind(Some(ck), true);
    }
    let _ = binder.bind(None, false);
    let Ok(layers) = bn::find(binder.model()) else { return };
    for reduction in [bn::Reduction::Flat, bn::Reduction::Split, bn::Reduction::Square] {
        let _ = bn::stats_model(binder.model(), &layers, reduction);
    }
    let stats: Vec<(Vec<f64>, Vec<f64>)> =
        layers.iter().map(|l| (vec![0.0; l.channels], vec![1.0; l.channels])).collect();
    let _ = bn::apply(&mut binder.model().clone(), &layers, &stats);
    let _ = binder.model().encode_with("model.onnx.data", true);
}

/// A `torch.save` file: the zip reader, the restricted unpickler (which must never run code) and
/// the state dict's tensors, with the default key and the EMA key.
pub fn torch(data: &[u8]) {
    let path = Path::new("fuzz.pt");
    for key in [None, Some("state_dict_ema")] {
        if let Ok(n) = swa::checkpoint::torch::open_bytes(path, data, key) {
            assert!(n > 0, "an opened state dict holds tensors");
        }
    }
}

/// An image file's bytes (JPEG, PNG, BMP, PNM, WebP): decoded as RGB and as L, then resized,
/// cropped and normalized as `--preset imagenet` would at a small size.
pub fn image(data: &[u8]) {
    use swa::inputs::images::{self, Layout, Resize};
    for channels in [3, 1] {
        // The fuzzer's memory is capped: images of up to 4 M pixels (the limit is a setting).
        let how = images::Decode { channels, max_pixels: 1 << 22, exif: channels == 1 };
        let Ok(img) = images::decode(data, &how) else { continue };
        if img.w == 0 || img.h == 0 {
            continue;
        }
        let out = images::resize_and_crop(&img, Some(Resize::Shorter(9)), Some((7, 8)));
        let mut tensor = vec![0f32; out.h * out.w * out.c];
        images::to_tensor(&out, &[0.5; 3], &[0.25; 3], Layout::Nchw, &mut tensor);
    }
}

/// A Parquet file in the Hugging Face layout (an `image` column of encoded bytes, a struct
/// `{bytes, path}` or binary, and an optional integer `label` column), opened as the samples of
/// a 3x8x8 model input and read batch by batch: once at the model's size (crop 8x8), stopping at
/// the first bad image, and once at the first image's size after resizing (shorter side 9),
/// skipping bad images. Only the first rows and the last ones are read (a tiny file can declare
/// billions of run-length rows); the last two rows are read from a reader started there, past
/// the rows before them.
pub fn parquet(data: &[u8]) {
    use swa::inputs::images::{Preprocess, Resize};
    use swa::inputs::{DataOptions, Samples};
    use swa::onnx::InputSpec;

    let Some(file) = TempInput::new(data, ".parquet") else { return };
    let path = &file.0;
    let normalize =
        |resize, center_crop| Preprocess { resize, center_crop, mean: Some(vec![0.5; 3]), std: Some(vec![0.25; 3]) };
    let runs = [
        (vec![-1, 3, 8, 8], normalize(Some(Resize::Shorter(9)), Some((8, 8))), false),
        (vec![-1, 3, -1, -1], normalize(Some(Resize::Shorter(9)), None), true),
    ];
    for (dims, preprocess, skip_bad_images) in runs {
        let spec = [InputSpec::float("input", dims)];
        // The fuzzer's memory is capped: images of up to 4 M pixels (the limit is a setting).
        let options = DataOptions { preprocess, skip_bad_images, max_image_pixels: 1 << 22, ..Default::default() };
        let Ok(samples) = Samples::open(path, &spec, &options) else { continue };
        let n = samples.len().expect("Parquet knows its length");
        if let Some(labels) = samples.labels() {
            assert_eq!(labels.len(), n, "one label per row");
        }
        let numel: usize = samples.sample_shapes()[0].iter().product();
        for (start, end, batch) in [(0, n.min(40), 3), (n - n.min(2), n, 2)] {
            let Ok(batches) = samples.batches(start..end, batch) else { break };
            for b in batches {
                let Ok(b) = b else { break };
                assert!(b.indices.len() <= batch);
                assert!(b.indices.iter().all(|&i| (start..end).contains(&i)));
                assert_eq!(b.inputs.len(), 1);
                assert_eq!(b.inputs[0].values.len(), b.indices.len() * numel);
                if !skip_bad_images {
                    let from = *b.indices.first().expect("a batch without skipping is never empty");
                    assert_eq!(b.indices, (from..(from + batch).min(end)).collect::<Vec<_>>());
                }
            }
        }
        let _ = samples.skipped();
        let _ = samples.preprocessing();
    }
}

/// A file under a fresh temporary name with `suffix` holding `data` (the library opens paths),
/// removed when dropped.
struct TempInput(std::path::PathBuf);

impl TempInput {
    fn new(data: &[u8], suffix: &str) -> Option<Self> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("swa-fuzz-{}-{n}{suffix}", std::process::id()));
        std::fs::write(&path, data).ok()?;
        Some(TempInput(path))
    }
}

impl Drop for TempInput {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A partial evaluation (the JSON `swa evaluate --partial-out` writes): read as `swa merge-eval`
/// reads it, then merged alone and as both parts of a two-part split. What a merge accepts
/// must give figures an evaluation can give: accuracies within 0..=1, top-1 ≤ top-k, hits ≤
/// samples, a loss ≥ 0 (or none).
pub fn partial_eval(data: &[u8]) {
    use swa::parts::eval;
    use swa::tasks::Metrics;
    let Some(file) = TempInput::new(data, ".json") else { return };
    let Ok(p) = eval::read(&file.0) else { return };
    let check = |merged: swa::Result<(swa::parts::Identity, swa::evaluate::Evaluation)>| {
        let Ok((_, e)) = merged else { return };
        match &e.metrics {
            Metrics::Classification(m) => {
                assert!(m.samples > 0, "a merge counts samples");
                assert!(m.correct <= m.samples, "{} hits of {} samples", m.correct, m.samples);
                assert!((0.0..=1.0).contains(&m.top1) && (m.top1..=1.0).contains(&m.topk), "{m:?}");
                assert!(m.loss.is_nan() || m.loss >= 0.0, "{m:?}");
                assert!(m.nonfinite <= m.samples);
                // Checked bins: an ECE within 0..=1, a Brier score within 0..=2.
                assert!(m.calibration.ece.is_none_or(|e| (0.0..=1.0 + 1e-9).contains(&e)), "{m:?}");
                assert!(m.calibration.brier.is_none_or(|b| (0.0..=2.0 + 1e-9).contains(&b)), "{m:?}");
            }
            Metrics::Segmentation(m) => {
                assert!(m.nonfinite <= m.samples);
                assert!(m.figures.miou.is_nan() || (0.0..=1.0).contains(&m.figures.miou), "{m:?}");
                assert!(m.figures.pixel_accuracy.is_nan() || (0.0..=1.0).contains(&m.figures.pixel_accuracy));
            }
            Metrics::Multilabel(m) => {
                let f = &m.figures;
                for v in [f.ap_macro, f.ap_micro, f.f1_macro, f.f1_micro, f.exact_match] {
                    assert!(v.is_nan() || (0.0..=1.0).contains(&v), "{m:?}");
                }
            }
            Metrics::Regression(m) => {
                assert!(m.nonfinite <= m.samples);
                let f = &m.figures;
                assert!(f.mse.is_nan() || f.mse >= 0.0, "{m:?}");
            }
            // Never reached: a metric command is not run from a file.
            Metrics::Command(_) => panic!("a merge ran a metric command a file named"),
        }
    };
    check(eval::merge(std::slice::from_ref(&file.0), std::slice::from_ref(&p)));
    let halves: Vec<eval::PartialEval> = (0..2)
        .map(|i| eval::PartialEval { shard: swa::part::Part::new(i, 2).expect("0 and 1 of 2"), ..p.clone() })
        .collect();
    check(eval::merge(&[file.0.clone(), file.0.clone()], &halves));
}

/// A part of a SWAG model average (the `.npz` of `swa swag --part I/N --partial-out`): read as
/// `swa merge-eval` reads it, and merged alone (a part of one) and with itself (refused: its
/// samples twice). What a merge accepts scores finite figures.
pub fn swag_part(data: &[u8]) {
    let Some(file) = TempInput::new(data, ".npz") else { return };
    if swa::swag::read_part(&file.0).is_err() {
        return;
    }
    if let Ok((_, e)) = swa::swag::merge_parts(std::slice::from_ref(&file.0)) {
        assert!(e.score().samples() > 0 || e.score().value().is_nan(), "{e:?}");
    }
    assert!(swa::swag::merge_parts(&[file.0.clone(), file.0.clone()]).is_err(), "a part merged with itself");
}

/// Partial statistics (the safetensors `swa recalibrate --partial-out` writes): read as `swa
/// merge-stats` reads them, merged alone and with themselves as both parts of a two-part split,
/// and finished into running statistics. What a merge accepts has counts and finite statistics:
/// the running variance is never negative.
pub fn partial_stats(data: &[u8]) {
    use swa::parts::stats;
    let Some(file) = TempInput::new(data, ".safetensors") else { return };
    let Ok(p) = stats::read(&file.0) else { return };
    let finish = |merged: swa::Result<stats::Merged>| {
        let Ok(m) = merged else { return };
        for layer in &m.layers {
            let (_, var) = layer.finish();
            assert!(var.iter().all(|v| v.is_nan() || *v >= 0.0), "a negative running variance: {var:?}");
        }
    };
    finish(stats::merge(vec![p.clone()]));
    let halves: Vec<stats::PartialStats> = (0..2)
        .map(|i| stats::PartialStats { part: swa::part::Part::new(i, 2).expect("0 and 1 of 2"), ..p.clone() })
        .collect();
    finish(stats::merge(halves));
}

/// A TensorFlow bundle's `.index` (an SSTable of `BundleEntryProto`s): every entry's type, shape
/// and byte range checked; and the same bytes as an object graph entry.
pub fn tf_bundle(data: &[u8]) {
    use swa::checkpoint::tf_bundle;
    if let Ok(entries) = tf_bundle::index_entries(Path::new("fuzz.index"), data) {
        for (_, dt, shape, _, range) in entries {
            if let Some(dt) = dt {
                assert_eq!(dtype::nbytes(dt, &shape), Ok(range.len()));
            }
        }
    }
    let _ = tf_bundle::object_graph_names(data);
}

/// A Keras HDF5 file (`.weights.h5`, Keras 2 `.h5`): the HDF5 subset parsed, then the weights
/// named, checked against the file and given their BatchNorm roles.
pub fn keras_h5(data: &[u8]) {
    let Ok(weights) = swa::checkpoint::keras::weights_of(Path::new("fuzz.weights.h5"), data) else { return };
    for (_, dt, shape, range, _) in weights {
        assert!(range.end <= data.len());
        assert_eq!(dtype::nbytes(dt, &shape), Ok(range.len()));
    }
}
