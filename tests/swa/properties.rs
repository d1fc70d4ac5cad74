//! Properties of averaging on random checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use swa::average::{average, AverageOptions, Weighting};
use swa::checkpoint::{dtype, write_tensors, Checkpoint, Dtype, TensorSpec};

fn write(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<f64>)]) {
    let t: Vec<(TensorSpec, Vec<u8>)> = tensors
        .iter()
        .map(|(name, dt, shape, values)| {
            let mut bytes = vec![0u8; values.len() * dtype::width(*dt)];
            dtype::encode(*dt, values, &mut bytes);
            (TensorSpec { name: name.clone(), dtype: *dt, shape: shape.clone() }, bytes)
        })
        .collect();
    write_tensors(path, &t, &BTreeMap::new()).unwrap();
}

/// Name, dtype and shape of each tensor.
type Layout = Vec<(String, Dtype, Vec<usize>)>;
/// Per checkpoint, per tensor, its values.
type Values = Vec<Vec<Vec<f64>>>;

/// Random model layouts: a few tensors of f32 or bf16 with small shapes.
fn layout() -> impl Strategy<Value = Layout> {
    prop::collection::vec(
        (prop::sample::select(vec![Dtype::F32, Dtype::BF16, Dtype::F16]), prop::collection::vec(1usize..6, 1..4)),
        1..4,
    )
    .prop_map(|v| v.into_iter().enumerate().map(|(i, (d, s))| (format!("layer{i}.weight"), d, s)).collect())
}

fn checkpoints(n: usize) -> impl Strategy<Value = (Layout, Values)> {
    layout().prop_flat_map(move |l| {
        let per: Vec<_> =
            l.iter().map(|(_, _, s)| prop::collection::vec(-100.0f64..100.0, s.iter().product::<usize>())).collect();
        (Just(l), prop::collection::vec(per, n))
    })
}

fn save_all(dir: &Path, layout: &[(String, Dtype, Vec<usize>)], values: &[Vec<Vec<f64>>]) -> Vec<PathBuf> {
    values
        .iter()
        .enumerate()
        .map(|(k, vals)| {
            let p = dir.join(format!("epoch_{k:03}.safetensors"));
            let t: Vec<_> =
                layout.iter().zip(vals).map(|((n, d, s), v)| (n.clone(), *d, s.clone(), v.clone())).collect();
            write(&p, &t);
            p
        })
        .collect()
}

fn tensors_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let c = Checkpoint::open(path).unwrap();
    c.tensors().iter().map(|t| (t.name.clone(), c.bytes(t).to_vec())).collect()
}

fn avg(inputs: Vec<PathBuf>, out: &Path, weighting: Weighting, resume: Option<PathBuf>) {
    average(&AverageOptions {
        checkpoints: inputs,
        output: out.to_path_buf(),
        weighting,
        resume,
        quiet: true,
        ..Default::default()
    })
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn average_of_copies_is_the_checkpoint((layout, values) in checkpoints(1), copies in 1usize..5) {
        let dir = tempfile::tempdir().unwrap();
        let one = save_all(dir.path(), &layout, &values).remove(0);
        let inputs: Vec<PathBuf> = (0..copies).map(|i| {
            let p = dir.path().join(format!("copy_{i}.safetensors"));
            std::fs::copy(&one, &p).unwrap();
            p
        }).collect();
        let out = dir.path().join("out").with_extension("safetensors");
        avg(inputs, &out, Weighting::Uniform, None);
        prop_assert_eq!(tensors_of(&out), tensors_of(&one));
    }

    #[test]
    fn one_hot_weights_give_that_checkpoint_back((layout, values) in checkpoints(4), pick in 0usize..4) {
        let dir = tempfile::tempdir().unwrap();
        let paths = save_all(dir.path(), &layout, &values);
        let out = dir.path().join("out.safetensors");
        let w = (0..4).map(|i| if i == pick { 2.5 } else { 0.0 }).collect();
        avg(paths.clone(), &out, Weighting::Explicit(w), None);
        prop_assert_eq!(tensors_of(&out), tensors_of(&paths[pick]));
    }

    #[test]
    fn resume_equals_averaging_everything((layout, values) in checkpoints(5), split in 1usize..5) {
        let dir = tempfile::tempdir().unwrap();
        let paths = save_all(dir.path(), &layout, &values);
        let (first, rest) = paths.split_at(split);
        let a = dir.path().join("a.avg");
        let resumed = dir.path().join("resumed.avg");
        let all = dir.path().join("all.avg");
        avg(first.to_vec(), &a, Weighting::Uniform, None);
        avg(rest.to_vec(), &resumed, Weighting::Uniform, Some(a));
        avg(paths.clone(), &all, Weighting::Uniform, None);
        let (x, y) = (Checkpoint::open(&resumed).unwrap(), Checkpoint::open(&all).unwrap());
        for (ti, t) in y.tensors().iter().enumerate() {
            let u = x.get(&t.name).unwrap();
            let ti = layout.iter().position(|l| l.0 == t.name).unwrap_or(ti);
            let (p, q) = (dtype::to_f64(u.dtype, x.bytes(u)), dtype::to_f64(t.dtype, y.bytes(t)));
            // The earlier average is stored in the tensor's dtype: both results are one rounding
            // of a value no larger than the largest input apart.
            let ulp = match t.dtype { Dtype::F32 => 1.2e-7, Dtype::F16 => 9.8e-4, _ => 7.9e-3 };
            for (e, (a, b)) in p.iter().zip(&q).enumerate() {
                let scale = values.iter().map(|ck| ck[ti][e].abs()).fold(b.abs(), f64::max);
                prop_assert!((a - b).abs() <= 2.0 * ulp * scale + 1e-6, "{}[{e}] {a} vs {b}", t.name);
            }
        }
    }
}
