//! Targets from elsewhere attached to samples that carry none: the rows of a labels file, or
//! targets read per batch from files of their own (segmentation masks, [`super::masks`]).

use std::ops::Range;

use super::{Batches, SampleSource};
use crate::batch::{Batch, Tensor};
use crate::error::Result;

/// Where a [`WithTargets`] takes each batch's targets from.
pub trait Targets: Send + Sync {
    /// The targets of samples `indices`, one row each, in that order.
    fn rows(&self, indices: &[usize]) -> Result<Tensor>;

    /// Every sample's target, where they are all in memory (a labels file's).
    fn all(&self) -> Option<&Tensor> {
        None
    }

    /// What messages call sample `i`'s target, where it is a file of its own.
    fn name(&self, _i: usize) -> Option<String> {
        None
    }

    /// Whether the samples' own class names are names of these targets' classes (a labels file's
    /// indices, as the class folders'); masks' classes are not the folders'.
    fn keeps_classes(&self) -> bool {
        true
    }
}

/// A labels file's rows, one per sample.
impl Targets for Tensor {
    fn rows(&self, indices: &[usize]) -> Result<Tensor> {
        Ok(Tensor::rows(self, indices))
    }

    fn all(&self) -> Option<&Tensor> {
        Some(self)
    }
}

/// A source whose batches carry `targets`' rows for their samples.
pub struct WithTargets<T: Targets> {
    inner: Box<dyn SampleSource>,
    targets: T,
}

impl<T: Targets> WithTargets<T> {
    /// `inner`'s samples with `targets`, row `i` for sample `i`; the caller checks the counts agree.
    pub fn new(inner: Box<dyn SampleSource>, targets: T) -> Self {
        WithTargets { inner, targets }
    }
}

impl<T: Targets> SampleSource for WithTargets<T> {
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
            b.targets = Some(self.targets.rows(&b.indices)?);
            Ok(b)
        })))
    }

    fn batch_at(&self, indices: &[usize]) -> Result<Batch> {
        let mut b = self.inner.batch_at(indices)?;
        b.targets = Some(self.targets.rows(&b.indices)?);
        Ok(b)
    }

    fn targets(&self) -> Option<&Tensor> {
        self.targets.all()
    }

    fn has_targets(&self) -> bool {
        true
    }

    fn classes(&self) -> Option<&[String]> {
        self.inner.classes().filter(|_| self.targets.keeps_classes())
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

    fn target_name(&self, i: usize) -> Option<String> {
        self.targets.name(i)
    }

    fn image_file(&self, i: usize) -> Option<std::path::PathBuf> {
        self.inner.image_file(i)
    }

    fn image_transform(&self) -> Option<super::ImageTransform> {
        self.inner.image_transform()
    }
}
