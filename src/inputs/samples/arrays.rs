//! Arrays: an `.npy` for a one-input model, or an `.npz` with one array per model input (by name),
//! samples first, memory-mapped; a uint8 array of images `(N, H, W, C)` goes through the image
//! pipeline when preprocessing is asked for.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::pipeline::{ImageItems, ImageSource, Row};
use super::{check_shapes, Batches, DataOptions, SampleSource, SourceKind};
use crate::batch::{Batch, Tensor};
use crate::error::{Error, Hint, Result};
use crate::inputs::images::Image8;
use crate::inputs::npy::{self, Array, NpyType};
use crate::onnx::{InputSpec, InputType};

/// `.npy` / `.npz` arrays.
pub struct Arrays;

impl SourceKind for Arrays {
    fn name(&self) -> &'static str {
        "arrays"
    }

    fn claims(&self, path: &Path) -> bool {
        let lower = path.to_string_lossy().to_lowercase();
        (lower.ends_with(".npy") || lower.ends_with(".npz")) && !path.is_dir()
    }

    fn may_carry_labels(&self) -> bool {
        false
    }

    fn open(&self, path: &Path, specs: &[InputSpec], data: &DataOptions) -> Result<Box<dyn SampleSource>> {
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let arrays = npy::open_inputs(path, &names)?;
        let is_images = arrays.len() == 1 && arrays[0].dtype == NpyType::U8 && !data.preprocess.is_none();
        if !is_images {
            if !data.preprocess.is_none() {
                return Err(Error::format(
                    path,
                    format!(
                        "holds {:?} samples, already preprocessed: resizing, cropping and normalization apply to \
                         images and to uint8 image arrays (N, H, W, C)",
                        arrays[0].dtype
                    ),
                ));
            }
            return Ok(Box::new(ArraySource::fit(path, arrays, specs)?));
        }
        let a = arrays.into_iter().next().expect("one array");
        if a.shape.len() != 4 || !matches!(a.shape[3], 1 | 3) {
            return Err(Error::format(
                path,
                format!(
                    "is a uint8 array of shape {:?}; preprocessing takes uint8 images as (N, H, W, C) with 1 or 3 \
                     channels",
                    a.shape
                ),
            ));
        }
        Ok(Box::new(ImageSource::fit(path, Uint8Images(a), specs, data, None, None)?))
    }
}

/// Arrays fed to the model as they are: one per input, in the model's element type (float32, or
/// int64 for integer arrays feeding token ids).
pub struct ArraySource {
    path: PathBuf,
    arrays: Vec<Array>,
    types: Vec<InputType>,
}

impl ArraySource {
    /// `arrays` (one per input of `specs`, in order), checked against the model's inputs: integer
    /// arrays for int64 inputs, and each sample's shape.
    pub fn fit(path: &Path, arrays: Vec<Array>, specs: &[InputSpec]) -> Result<Self> {
        let mut types = Vec::new();
        for (a, spec) in arrays.iter().zip(specs) {
            if spec.elem == InputType::Int64 && !matches!(a.dtype, NpyType::I64 | NpyType::I32 | NpyType::U8) {
                let what = if a.name.is_empty() { String::new() } else { format!("array `{}` ", a.name) };
                return Err(Error::format(
                    path,
                    format!("{what}holds {:?} values, but model input `{}` takes int64 values", a.dtype, spec.name),
                ));
            }
            types.push(spec.elem);
        }
        let shapes: Vec<Vec<usize>> = arrays.iter().map(|a| a.shape[1..].to_vec()).collect();
        let len = arrays[0].len();
        check_shapes(path, len, specs, &shapes, |k| {
            let a = &arrays[k];
            let images = a.dtype == NpyType::U8 && a.shape.len() == 4 && matches!(a.shape[3], 1 | 3);
            (a.label(), images.then_some(Hint::ImageArray))
        })?;
        Ok(ArraySource { path: path.to_path_buf(), arrays, types })
    }

    /// The rows `indices` (in that order), `span` being what the batch stands for.
    fn batch(&self, indices: Vec<usize>, span: Range<usize>) -> Batch {
        // Runs of consecutive rows are read at once (all of a batch in order).
        let mut runs: Vec<Range<usize>> = Vec::new();
        for &i in &indices {
            match runs.last_mut() {
                Some(r) if r.end == i => r.end += 1,
                _ => runs.push(i..i + 1),
            }
        }
        let inputs = self
            .arrays
            .iter()
            .zip(&self.types)
            .map(|(a, t)| {
                let mut shape = vec![indices.len()];
                shape.extend(&a.shape[1..]);
                match t {
                    InputType::Int64 => {
                        Tensor::i64(shape, runs.iter().flat_map(|r| a.i64_rows(r.start, r.end)).collect())
                    }
                    InputType::Float => {
                        Tensor::f32(shape, runs.iter().flat_map(|r| a.f32_rows(r.start, r.end)).collect())
                    }
                }
            })
            .collect();
        Batch { span, indices, inputs, targets: None }
    }
}

impl SampleSource for ArraySource {
    fn len(&self) -> Option<usize> {
        Some(self.arrays[0].len())
    }

    fn sample_shapes(&self) -> Vec<Vec<usize>> {
        self.arrays.iter().map(|a| a.shape[1..].to_vec()).collect()
    }

    fn batches(&self, range: Range<usize>, batch: usize) -> Result<Batches<'_>> {
        let end = range.end.min(self.arrays[0].len());
        Ok(Box::new((range.start..end).step_by(batch.max(1)).map(move |from| {
            let to = (from + batch).min(end);
            Ok(self.batch((from..to).collect(), from..to))
        })))
    }

    fn batch_at(&self, indices: &[usize]) -> Result<Batch> {
        let n = self.arrays[0].len();
        if let Some(&i) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::format(&self.path, format!("has {n} samples; sample {i} was asked for")));
        }
        let first = indices.first().copied().unwrap_or(0);
        Ok(self.batch(indices.to_vec(), first..first + indices.len()))
    }

    fn has_targets(&self) -> bool {
        false
    }
}

impl std::fmt::Debug for ArraySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArraySource").field("path", &self.path).field("arrays", &self.arrays).finish()
    }
}

/// A uint8 array of images `(N, H, W, C)`.
struct Uint8Images(Array);

impl ImageItems for Uint8Images {
    type Cursor = ();

    fn len(&self) -> usize {
        self.0.len()
    }

    fn name_of(&self, i: usize) -> String {
        format!("{} sample {i}", self.0.path.display())
    }

    fn describe(&self) -> String {
        "uint8 images".to_string()
    }

    fn check_channels(&self, path: &Path, channels: usize) -> Result<()> {
        if self.0.shape[3] != channels {
            return Err(Error::format(
                path,
                format!("holds {}-channel images, but the model takes {channels} channels", self.0.shape[3]),
            ));
        }
        Ok(())
    }

    fn read(&self, from: usize, to: usize, _batch: usize, _cursor: &mut Option<()>) -> Result<Vec<Option<Row>>> {
        Ok(vec![None; to - from])
    }

    fn image(&self, i: usize, _read: Option<&Row>, _how: &crate::inputs::images::Decode) -> Result<Image8> {
        let (h, w, c) = (self.0.shape[1], self.0.shape[2], self.0.shape[3]);
        Ok(Image8 { w, h, c, data: self.0.u8_row(i).to_vec() })
    }
}
