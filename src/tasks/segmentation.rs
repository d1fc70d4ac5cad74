//! Semantic segmentation: logits `[N, C, H, W]` against integer masks `[N, H, W]` — a confusion
//! matrix of target class against predicted class (the arg-max of the logits, the first class on
//! ties, as `torch.argmax`) over every pixel but those marked with the ignore index, and from it
//! mean IoU, per-class IoU and pixel accuracy, as torchmetrics' `MulticlassJaccardIndex` and
//! `MulticlassAccuracy(average="micro")` with `ignore_index` compute them. The default score is
//! mean IoU.
//!
//! The matrix is counts, so parts merge exactly. Each batch's pixels are counted on all cores. A
//! pixel whose logits are not all finite is left out of the matrix and counted; a sample with such
//! a pixel counts in `nonfinite`, which fails a gate whatever the figures.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Context, Figure};
use crate::batch::{Tensor, Values};
use crate::error::{Error, Result};
use crate::runtime::Fetched;

/// Marks a segmentation file's settings, state and figures (`"task": "segmentation"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Tag {
    /// The one value.
    #[default]
    #[serde(rename = "segmentation")]
    Segmentation,
}

/// The figures a segmentation score or gate can name; the first is the default score.
pub const FIGURES: [Figure; 2] = [
    Figure { name: "miou", label: "mIoU", higher_is_better: true, percent: true },
    Figure { name: "pixel_accuracy", label: "pixel accuracy", higher_is_better: true, percent: true },
];

/// The index masks mark pixels to leave out with, unless told otherwise (VOC's border).
pub const IGNORE_INDEX: i64 = 255;

/// Segmentation, with the mask value of pixels left out, scored by one of [`FIGURES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segmentation {
    /// Marks the task.
    pub task: Tag,
    /// Pixels whose mask holds it are not counted.
    pub ignore_index: i64,
    /// The figure that scores a model.
    pub score: String,
}

impl Default for Segmentation {
    fn default() -> Self {
        Segmentation { task: Tag::Segmentation, ignore_index: IGNORE_INDEX, score: FIGURES[0].name.to_string() }
    }
}

impl Segmentation {
    /// A fresh state.
    pub fn state(&self) -> State {
        State {
            task: self.clone(),
            classes: None,
            samples: 0,
            nonfinite: 0,
            nonfinite_pixels: 0,
            ignored: 0,
            pixels: 0,
            confusion: Vec::new(),
        }
    }

    /// Masks from a `.npy`: `[N, H, W]` of class indices (any integer type).
    pub fn read_targets(&self, path: &std::path::Path) -> Result<Tensor> {
        let array = crate::inputs::npy::open_npy(path)?;
        if array.shape.len() != 3 {
            return Err(Error::format(
                path,
                format!(
                    "holds an array of shape {:?}; masks are [N, H, W] of class indices{}",
                    array.shape,
                    super::which_targets_fit(&array.shape)
                ),
            ));
        }
        // Integers of any width, or floats that are whole numbers (masks saved as float arrays).
        let values = match array.i64_values() {
            Ok(v) => v,
            Err(_) => {
                let f = array.f32_rows(0, array.len());
                if let Some(x) = f.iter().find(|x| x.fract() != 0.0 || !x.is_finite()) {
                    return Err(Error::format(path, format!("holds the mask value {x}: masks are class indices")));
                }
                f.into_iter().map(|x| x as i64).collect()
            }
        };
        Ok(Tensor::i64(array.shape.clone(), values))
    }
}

/// A confusion matrix over an evaluation or part of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The settings.
    #[serde(flatten)]
    pub task: Segmentation,
    /// Classes (C), once a batch was seen.
    pub classes: Option<usize>,
    /// Samples counted.
    pub samples: usize,
    /// Samples with a pixel whose logits were not all finite.
    pub nonfinite: usize,
    /// Pixels whose logits were not all finite: left out of the matrix.
    pub nonfinite_pixels: u64,
    /// Pixels marked with the ignore index.
    pub ignored: u64,
    /// Every pixel of every sample: the matrix's, the ignored and the non-finite together.
    pub pixels: u64,
    /// Row-major C × C: pixels of target class i predicted as class j at `i * C + j`.
    pub confusion: Vec<u64>,
}

/// The top bit set when `v` is NaN or infinite (its exponent all ones: adding one to it carries
/// into the sign bit), else 0: an integer OR of these over a slice vectorises, as a float test
/// with an early exit does not.
#[inline(always)]
fn nonfinite_bit(v: f32) -> u32 {
    (v.to_bits() & 0x7f80_0000).wrapping_add(0x0080_0000) & 0x8000_0000
}

/// [`nonfinite_bit`] of every value, ORed.
fn nonfinite_bits(values: &[f32]) -> u32 {
    values.iter().fold(0, |acc, &v| acc | nonfinite_bit(v))
}

/// One plane of logits (class `k`) into the running maximum and arg-max of a tile of pixels: a
/// compare and two blends per pixel; returns the plane's [`nonfinite_bit`]s ORed.
fn argmax_plane_plain(best: &mut [f32], arg: &mut [u32], plane: &[f32], k: u32) -> u32 {
    let mut bad = 0;
    for ((b, a), &v) in best.iter_mut().zip(arg.iter_mut()).zip(plane) {
        bad |= nonfinite_bit(v);
        let above = v > *b;
        *b = if above { v } else { *b };
        *a = if above { k } else { *a };
    }
    bad
}

crate::simd::dispatch! {
    /// [`argmax_plane_plain`], eight lanes at a time where the CPU has AVX2.
    fn argmax_plane(best: &mut [f32], arg: &mut [u32], plane: &[f32], k: u32) -> u32 = argmax_plane_plain; levels: avx2
}

/// One sample's counts.
#[derive(Default)]
struct Counted {
    confusion: Vec<u64>,
    ignored: u64,
    nonfinite_pixels: u64,
}

/// Counts one sample: logits `[C, HW]` against its mask `[HW]`; `Err` is the first pixel whose
/// class is outside 0..C (and not the ignore index), with that value.
fn count(logits: &[f32], mask: &[i64], c: usize, ignore: i64) -> std::result::Result<Counted, (usize, i64)> {
    let hw = mask.len();
    let mut best: Vec<f32> = logits[..hw].to_vec();
    let mut arg = vec![0u32; hw];
    // A tile of pixels at a time through every plane, so that the running maximum and arg-max
    // stay in the L1 cache; non-finite logits are noted on the way (rare: then a pixel-by-pixel
    // look says which).
    const TILE: usize = 2048;
    let mut bad = nonfinite_bits(&logits[..hw]);
    for start in (0..hw).step_by(TILE) {
        let end = (start + TILE).min(hw);
        let (best, arg) = (&mut best[start..end], &mut arg[start..end]);
        for k in 1..c {
            bad |= argmax_plane(best, arg, &logits[k * hw + start..k * hw + end], k as u32);
        }
    }
    let finite: Option<Vec<bool>> =
        (bad != 0).then(|| (0..hw).map(|p| (0..c).all(|k| logits[k * hw + p].is_finite())).collect());
    let mut out = Counted { confusion: vec![0; c * c], ..Counted::default() };
    for p in 0..hw {
        let y = mask[p];
        if y == ignore {
            out.ignored += 1;
            continue;
        }
        if y < 0 || y as usize >= c {
            return Err((p, y));
        }
        if finite.as_ref().is_some_and(|f| !f[p]) {
            out.nonfinite_pixels += 1;
            continue;
        }
        out.confusion[y as usize * c + arg[p] as usize] += 1;
    }
    Ok(out)
}

impl State {
    /// Adds a batch: logits `[N, C, H, W]` and masks `[N, H, W]`.
    pub fn update(
        &mut self,
        output: &Fetched,
        targets: Option<&Tensor>,
        indices: &[usize],
        at: &Context,
    ) -> Result<()> {
        let n = indices.len();
        let shape: Vec<usize> = output.shape.iter().map(|&d| d as usize).collect();
        let (c, h, w) = match shape.as_slice() {
            [m, c, h, w] if *m == n && *c > 0 && *h > 0 && *w > 0 => (*c, *h, *w),
            _ => return Err(super::unfit_output(at, &shape, n, "segmentation needs logits [N, classes, H, W]")),
        };
        let Some(t) = targets else {
            return Err(Error::format(at.targets, "has no masks"));
        };
        if t.shape.len() != 3 || t.shape[0] != n || t.shape[1] != h || t.shape[2] != w {
            return Err(Error::format(
                at.targets,
                format!(
                    "holds masks of shape {:?} for a batch of {n}, but the model's logits are {h}×{w}: each mask must be \
                     the size of the model's output ([N, {h}, {w}])",
                    t.shape
                ),
            ));
        }
        if self.classes.is_some_and(|k| k != c) {
            return Err(Error::format(
                at.model,
                format!("gives {c} classes after giving {}", self.classes.unwrap_or(0)),
            ));
        }
        let masks: std::borrow::Cow<[i64]> = match &t.values {
            Values::I64(v) => v.into(),
            Values::Held(held) if held.i64().is_some() => held.i64().unwrap_or_default().into(),
            other => {
                let v = super::values_f64(other);
                if let Some(x) = v.iter().find(|x| x.fract() != 0.0) {
                    return Err(Error::format(at.targets, format!("holds a mask value {x}: masks are class indices")));
                }
                v.into_iter().map(|x| x as i64).collect::<Vec<_>>().into()
            }
        };
        let hw = h * w;
        let ignore = self.task.ignore_index;
        let counted: Vec<_> = (0..n)
            .into_par_iter()
            .map(|i| count(&output.data[i * c * hw..(i + 1) * c * hw], &masks[i * hw..(i + 1) * hw], c, ignore))
            .collect();
        self.classes = Some(c);
        self.confusion.resize(c * c, 0);
        for (i, one) in counted.into_iter().enumerate() {
            let one = one.map_err(|(p, y)| {
                let name = at.names.map_or(String::new(), |f| format!(" ({})", f(indices[i])));
                Error::format(
                    at.targets,
                    format!(
                        "mask of sample {}{name} holds class {y} at pixel ({}, {}) (after the resize and crop): the \
                         model has {c} classes (0..{}) and the ignore index is {ignore}",
                        indices[i],
                        p / w,
                        p % w,
                        c - 1
                    ),
                )
            })?;
            self.samples += 1;
            self.pixels += (h * w) as u64;
            self.ignored += one.ignored;
            self.nonfinite_pixels += one.nonfinite_pixels;
            self.nonfinite += (one.nonfinite_pixels > 0) as usize;
            for (a, b) in self.confusion.iter_mut().zip(&one.confusion) {
                *a += b;
            }
        }
        Ok(())
    }

    /// Why these counts cannot have been counted (a damaged or edited partial file), if they cannot.
    fn impossible(&self) -> Option<String> {
        let ok = match self.classes {
            None => self.confusion.is_empty() && self.samples == 0,
            Some(c) => c > 0 && c <= 1 << 16 && self.confusion.len() == c * c,
        };
        if !ok {
            let of = self.classes.map_or("no classes".to_string(), |c| format!("{c} classes"));
            return Some(format!("{} confusion counts for {of}", self.confusion.len()));
        }
        let counted = self
            .confusion
            .iter()
            .try_fold(0u64, |a, &b| a.checked_add(b))
            .and_then(|m| m.checked_add(self.ignored)?.checked_add(self.nonfinite_pixels));
        if counted != Some(self.pixels) {
            return Some(format!(
                "the matrix, {} ignored and {} non-finite pixels do not add up to the {} pixels counted",
                self.ignored, self.nonfinite_pixels, self.pixels
            ));
        }
        (self.nonfinite > self.samples).then(|| format!("{} non-finite of {} samples", self.nonfinite, self.samples))
    }

    /// Adds another part's matrix.
    pub fn merge(&mut self, other: &State) -> std::result::Result<(), String> {
        if let Some(why) = other.impossible() {
            return Err(format!("the counts cannot have been counted: {why}"));
        }
        if self.task != other.task {
            return Err("segmentation evaluations with different ignore indices or scores".into());
        }
        match (self.classes, other.classes) {
            (Some(a), Some(b)) if a != b => return Err(format!("logits of {a} and of {b} classes")),
            (None, b) => {
                self.classes = b;
                self.confusion = vec![0; other.confusion.len()];
            }
            _ => {}
        }
        let total = self.pixels.checked_add(other.pixels).ok_or("more pixels than can be counted")?;
        for (a, b) in self.confusion.iter_mut().zip(&other.confusion) {
            *a += b;
        }
        self.samples += other.samples;
        self.nonfinite += other.nonfinite;
        self.nonfinite_pixels += other.nonfinite_pixels;
        self.ignored += other.ignored;
        self.pixels = total;
        Ok(())
    }

    /// The figures so far.
    pub fn finish(&self) -> Metrics {
        let c = self.classes.unwrap_or(0);
        let m = &self.confusion;
        let mut per_class = Vec::with_capacity(c);
        for k in 0..c {
            let tp = m[k * c + k];
            let target: u64 = m[k * c..(k + 1) * c].iter().sum();
            let predicted: u64 = (0..c).map(|i| m[i * c + k]).sum();
            let union = target + predicted - tp;
            per_class.push(ClassFigures {
                class: k,
                name: None,
                pixels: target,
                iou: if union == 0 { f64::NAN } else { tp as f64 / union as f64 },
            });
        }
        let present: Vec<f64> = per_class.iter().map(|p| p.iou).filter(|v| !v.is_nan()).collect();
        let total: u64 = m.iter().sum();
        let correct: u64 = (0..c).map(|k| m[k * c + k]).sum();
        Metrics {
            task: self.task.clone(),
            samples: self.samples,
            nonfinite: self.nonfinite,
            nonfinite_pixels: self.nonfinite_pixels,
            classes: c,
            pixels: total,
            ignored: self.ignored,
            figures: Figures {
                miou: if present.is_empty() { f64::NAN } else { present.iter().sum::<f64>() / present.len() as f64 },
                pixel_accuracy: if total == 0 { f64::NAN } else { correct as f64 / total as f64 },
            },
            per_class,
            confusion: (0..c).map(|k| m[k * c..(k + 1) * c].to_vec()).collect(),
        }
    }
}

/// The two figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Mean IoU over the classes present in the masks or the predictions.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub miou: f64,
    /// Pixels predicted right, of those counted.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub pixel_accuracy: f64,
}

impl super::FigureSet for Figures {
    const FIGURES: &'static [Figure] = &FIGURES;

    fn describe(&self, samples: usize) -> String {
        format!(
            "mIoU {}, pixel accuracy {} ({samples} samples)",
            super::pct(self.miou),
            super::pct(self.pixel_accuracy)
        )
    }

    fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "miou" => self.miou,
            "pixel_accuracy" => self.pixel_accuracy,
            _ => return None,
        })
    }
}

/// One class's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassFigures {
    /// The class index.
    pub class: usize,
    /// Its name, where the data names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pixels of the class in the masks.
    pub pixels: u64,
    /// Its IoU (NaN, `null`, when neither the masks nor the predictions hold it).
    #[serde(deserialize_with = "super::null_is_nan")]
    pub iou: f64,
}

/// A segmentation's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The settings.
    #[serde(flatten)]
    pub task: Segmentation,
    /// Samples evaluated.
    pub samples: usize,
    /// Samples with a pixel whose logits were not all finite.
    pub nonfinite: usize,
    /// Pixels whose logits were not all finite (left out).
    pub nonfinite_pixels: u64,
    /// Classes.
    pub classes: usize,
    /// Pixels counted.
    pub pixels: u64,
    /// Pixels marked with the ignore index.
    pub ignored: u64,
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// Per class.
    pub per_class: Vec<ClassFigures>,
    /// The confusion matrix: row = target class, column = predicted class.
    pub confusion: Vec<Vec<u64>>,
}

/// A segmentation evaluation's compact figures (also the best checkpoint's in a report).
pub type Score = super::Compact<Segmentation, Figures>;

impl From<&Metrics> for Score {
    fn from(m: &Metrics) -> Self {
        Score { task: m.task.clone(), samples: m.samples, nonfinite: m.nonfinite, figures: m.figures }
    }
}
