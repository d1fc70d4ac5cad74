//! Targets from elsewhere (a labels file) attached to samples that carry none.

use std::ops::Range;

use super::{Batches, SampleSource};
use crate::batch::{Batch, Tensor};
use crate::error::Result;

/// A source whose batches carry the rows of `targets` (one per sample) for their samples.
pub struct WithTargets {
    inner: Box<dyn SampleSource>,
    targets: Tensor,
}

impl WithTargets {
    /// `inner`'s samples with `targets`, row `i` for sample `i`; the caller checks the counts agree.
    pub fn new(inner: Box<dyn SampleSource>, targets: Tensor) -> Self {
        WithTargets { inner, targets }
    }
}

impl SampleSource for WithTargets {
    fn len(&self) -> Option<usize> {
        self.inner.len()
    }

    fn reads_by_range(&self) -> bool {
        self.inner.reads_by_range()
    }

    fn sample_shapes(&self) -> Vec<Vec<usize>> {
        self.inner.sample_shapes()
    }

    fn batches(&self, range: Range<usize>, batch: usize) -> Result<Batches<'_>> {
        let inner = self.inner.batches(range, batch)?;
        Ok(Box::new(inner.map(move |b| {
            let mut b = b?;
            b.targets = Some(self.targets.rows(&b.indices));
            Ok(b)
        })))
    }

    fn batch_at(&self, indices: &[usize]) -> Result<Batch> {
        let mut b = self.inner.batch_at(indices)?;
        b.targets = Some(self.targets.rows(&b.indices));
        Ok(b)
    }

    fn targets(&self) -> Option<&Tensor> {
        Some(&self.targets)
    }

    fn classes(&self) -> Option<&[String]> {
        self.inner.classes()
    }

    fn preprocessing(&self) -> Option<String> {
        self.inner.preprocessing()
    }

    fn skipped(&self) -> Vec<String> {
        self.inner.skipped()
    }

    fn own_batches(&self) -> bool {
        self.inner.own_batches()
    }

    fn sample_name(&self, i: usize) -> Option<String> {
        self.inner.sample_name(i)
    }

    fn image_file(&self, i: usize) -> Option<std::path::PathBuf> {
        self.inner.image_file(i)
    }

    fn image_transform(&self) -> Option<super::ImageTransform> {
        self.inner.image_transform()
    }
}
