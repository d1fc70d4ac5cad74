//! The image pipeline every image source shares: images (files, Parquet rows, a uint8 array's
//! rows) decoded, resized, cropped and normalized as torchvision does, batch by batch on all
//! cores, at one size ([`ImageGeometry`]) fitted to the model's image input.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use super::{check_shapes, Batches, DataOptions, SampleSource};
use crate::batch::{Batch, Tensor};
use crate::error::{CropAlternative, Error, Hint, Result};
use crate::inputs::images::{self, Image8, Layout, Preprocess, Resize};
use crate::onnx::InputSpec;

/// One image as read in order before it is decoded: its encoded bytes, or why it has none (a
/// Parquet row without an image).
pub type Row = std::result::Result<Vec<u8>, String>;

/// Where the images of an image source come from: image files, the image column of Parquet files,
/// a uint8 array. The pipeline reads them in order, batch by batch, and decodes them on all cores.
pub trait ImageItems: Send + Sync {
    /// What reading in order keeps from one batch to the next (a Parquet reader's position).
    type Cursor: Send;

    /// Number of images.
    fn len(&self) -> usize;

    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What messages call image `i` (its file, its file and row).
    fn name_of(&self, i: usize) -> String;

    /// What summaries call these images (`image folder (10 classes)`, `Parquet column `image``).
    fn describe(&self) -> String;

    /// Checks the images have the `channels` the model takes, where that is known before decoding
    /// (a uint8 array's last dimension).
    fn check_channels(&self, _path: &Path, _channels: usize) -> Result<()> {
        Ok(())
    }

    /// Reads images `from..to` in order, `batch` at a time where the reader reads ahead (`cursor`
    /// keeps the reader between calls): each image's [`Row`], or `None` for an image that
    /// [`ImageItems::image`] reads itself (files are read on all cores as they are decoded).
    fn read(&self, from: usize, to: usize, batch: usize, cursor: &mut Option<Self::Cursor>)
        -> Result<Vec<Option<Row>>>;

    /// Reads images `indices` (in any order, each once): as [`ImageItems::read`] gives them. The
    /// default reads each one on its own, as files are read; a reader that reads ahead overrides it.
    fn read_at(&self, indices: &[usize]) -> Result<Vec<Option<Row>>> {
        let mut rows = Vec::with_capacity(indices.len());
        for &i in indices {
            rows.push(self.read(i, i + 1, 1, &mut None)?.pop().flatten());
        }
        Ok(rows)
    }

    /// Image `i` in 8 bits, decoded `how` says, from what [`ImageItems::read`] gave for it;
    /// errors name it.
    fn image(&self, i: usize, read: Option<&Row>, how: &images::Decode) -> Result<Image8>;

    /// Image `i`'s file, where images are files.
    fn file(&self, _i: usize) -> Option<PathBuf> {
        None
    }
}

/// How images become the model's one image input: its channels (1, grayscale, or 3, RGB), its
/// layout, and the size every preprocessed image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGeometry {
    /// Channels.
    pub channels: usize,
    /// NCHW or NHWC.
    pub layout: Layout,
    /// Height after preprocessing.
    pub height: usize,
    /// Width after preprocessing.
    pub width: usize,
}

impl ImageGeometry {
    /// One sample's shape, without the batch dimension.
    pub fn sample_shape(&self) -> Vec<usize> {
        match self.layout {
            Layout::Nchw => vec![self.channels, self.height, self.width],
            Layout::Nhwc => vec![self.height, self.width, self.channels],
        }
    }
}

/// What a model's image input of shape `dims` takes: `[N, C, H, W]` with C of 1 or 3, else
/// `[N, H, W, C]`; 3 channels, channels first, when the model does not say.
struct ImageInput {
    channels: usize,
    layout: Layout,
    /// The height and width when the model fixes them.
    size: Option<(usize, usize)>,
}

fn image_input(dims: &[i64], path: &Path, name: &str) -> Result<ImageInput> {
    let fixed = |d: i64| (d > 0).then_some(d as usize);
    if !(dims.is_empty() || dims.len() == 4) {
        return Err(Error::format(
            path,
            format!("holds images, but model input `{name}` has {} dimensions, not 4 (N, C, H, W)", dims.len()),
        ));
    }
    if dims.is_empty() {
        return Ok(ImageInput { channels: 3, layout: Layout::Nchw, size: None });
    }
    let hw = |h: i64, w: i64| fixed(h).zip(fixed(w));
    Ok(match (dims[1], dims[3]) {
        (1 | 3, _) => ImageInput { channels: dims[1] as usize, layout: Layout::Nchw, size: hw(dims[2], dims[3]) },
        (_, 1 | 3) => ImageInput { channels: dims[3] as usize, layout: Layout::Nhwc, size: hw(dims[1], dims[2]) },
        (-1, -1) => ImageInput { channels: 3, layout: Layout::Nchw, size: None },
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "holds images, but model input `{name}` ({dims:?}) takes neither 1 nor 3 channels in (N, C, H, W) \
                     or (N, H, W, C)"
                ),
            ))
        }
    })
}

/// Images fed to a model: an [`ImageItems`] and the pipeline that makes them the model's input.
pub struct ImageSource<I: ImageItems> {
    path: PathBuf,
    items: I,
    pre: Preprocess,
    mean: Vec<f32>,
    std: Vec<f32>,
    geometry: ImageGeometry,
    targets: Option<Tensor>,
    classes: Option<Vec<String>>,
    skipped: Mutex<Vec<String>>,
    skip_bad_images: bool,
    max_pixels: u64,
    why_no_targets: Option<String>,
}

impl<I: ImageItems> ImageSource<I> {
    /// Fits `items` (read from `path`) to the model's inputs `specs`, which must be one image
    /// input: the channels and layout its shape says, and the size the preprocessing gives (the
    /// crop's, an exact resize's, the model's fixed size, or else the first image's). `targets`
    /// (one row per image) and `classes` are the items' own, where they have them.
    pub fn fit(
        path: &Path,
        items: I,
        specs: &[InputSpec],
        data: &DataOptions,
        targets: Option<Tensor>,
        classes: Option<Vec<String>>,
    ) -> Result<Self> {
        if specs.len() != 1 {
            return Err(Error::format(
                path,
                format!("holds images, but the model has {} inputs; images feed a model with one input", specs.len()),
            ));
        }
        let input = image_input(&specs[0].dims, path, &specs[0].name)?;
        specs[0].check_float(path)?;
        let (mean, std) = data.preprocess.normalization(input.channels).map_err(Error::usage)?;
        items.check_channels(path, input.channels)?;
        let mut source = ImageSource {
            path: path.to_path_buf(),
            items,
            pre: data.preprocess.clone(),
            mean,
            std,
            geometry: ImageGeometry { channels: input.channels, layout: input.layout, height: 0, width: 0 },
            targets,
            classes,
            skipped: Mutex::new(Vec::new()),
            skip_bad_images: data.skip_bad_images,
            max_pixels: data.max_image_pixels,
            why_no_targets: None,
        };
        let pre = &data.preprocess;
        let size = match (pre.center_crop, pre.resize, input.size) {
            (Some(crop), _, _) => crop,
            (None, Some(Resize::Exact(h, w)), _) => (h, w),
            (_, _, Some(model)) => model,
            _ => source.first_size()?,
        };
        if let Some((mh, mw)) = input.size.filter(|&m| m != size) {
            return Err(Error::format(
                path,
                format!(
                    "gives {}x{} images after preprocessing, but model input `{}` takes {mh}x{mw}",
                    size.0, size.1, specs[0].name,
                ),
            )
            .hint(Hint::CenterCrop { height: mh, width: mw, or: CropAlternative::Preset }));
        }
        // A crop or exact resize larger than any image may be: an error, not an allocation that
        // aborts the process (each batch holds that many pixels per image).
        let pixels = (size.0 as u128) * (size.1 as u128);
        if pixels > u128::from(data.max_image_pixels) || size.0.max(size.1) > images::MAX_SIDE {
            return Err(Error::format(
                path,
                format!(
                    "gives images of {}x{} after preprocessing = {pixels} pixels, more than an image may have ({} \
                     pixels, a side of at most {}): crop or resize to a smaller size",
                    size.1,
                    size.0,
                    data.max_image_pixels,
                    images::MAX_SIDE
                ),
            )
            .hint(Hint::MaxImagePixels));
        }
        (source.geometry.height, source.geometry.width) = size;
        let len = source.items.len();
        check_shapes(path, len, specs, &[source.geometry.sample_shape()], |_| (path.display().to_string(), None))?;
        Ok(source)
    }

    /// This source, saying `why` it has no targets where it has none.
    pub fn without_targets_because(mut self, why: Option<String>) -> Self {
        if self.targets.is_none() {
            self.why_no_targets = why;
        }
        self
    }

    /// The geometry the images were fitted to.
    pub fn geometry(&self) -> ImageGeometry {
        self.geometry
    }

    /// Image `i` read and preprocessed into 8 bits. Errors name it.
    fn load(&self, i: usize, read: Option<&Row>) -> Result<Image8> {
        let how = images::Decode { channels: self.geometry.channels, max_pixels: self.max_pixels, exif: false };
        let img = self.items.image(i, read, &how)?;
        if img.w == 0 || img.h == 0 {
            return Err(Error::format(self.items.name_of(i), "is an empty image (0 pixels)"));
        }
        // The resized size is checked before anything is resampled (a 60000x1 image resized to
        // 256 on its shorter side would be 256x15360000).
        if let Some(resize) = self.pre.resize {
            let (rh, rw) = images::resized_size(resize, img.h, img.w);
            let check = images::check_pixels(rh as u64, rw as u64, self.max_pixels, " once resized");
            let side = if rh.max(rw) > images::MAX_SIDE {
                Err(images::BadImage {
                    message: format!("would be {rw}x{rh} once resized, a side longer than {}", images::MAX_SIDE),
                    too_large: false,
                })
            } else {
                Ok(())
            };
            check.and(side).map_err(|bad| bad.named(self.items.name_of(i)))?;
        }
        Ok(images::resize_and_crop(&img, self.pre.resize, self.pre.center_crop))
    }

    /// The size of the first image that decodes (every image must come out that size); with
    /// `skip_bad_images`, images before it that do not decode are skipped here too, and a set where
    /// none decodes is an error (its batches would hold images of 0 pixels). Images are read in
    /// order through one cursor, and a file that cannot be read stops the search: only an image
    /// can be skipped, not the file it lies in.
    fn first_size(&self) -> Result<(usize, usize)> {
        let mut cursor = None;
        let mut first_error = None;
        let n = self.items.len();
        for i in 0..n {
            let row = self.items.read(i, i + 1, 64, &mut cursor)?.pop().flatten();
            match self.load(i, row.as_ref()) {
                Ok(img) => return Ok((img.h, img.w)),
                Err(e) if self.skip_bad_images => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e.hint(Hint::SkipBadImages)),
            }
        }
        match first_error {
            None => Ok((0, 0)),
            Some(e) => Err(Error::format(
                &self.path,
                format!(
                    "has no image that decodes ({n} skipped), so no image size to batch at; the first: {}",
                    crate::error::chain(&e).trim_end()
                ),
            )),
        }
    }

    /// The batch of images `indices` (whose [`Row`]s are `rows`), standing for samples `span`.
    fn batch(&self, indices: &[usize], span: Range<usize>, rows: Vec<Option<Row>>) -> Result<Batch> {
        let g = self.geometry;
        let numel = g.channels * g.height * g.width;
        let len = indices.len().saturating_mul(numel);
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| {
            Error::format(
                &self.path,
                format!(
                    "a batch of {} images of {}x{} needs {} GiB: lower the batch size or the image size",
                    indices.len(),
                    g.height,
                    g.width,
                    len.saturating_mul(4) >> 30
                ),
            )
        })?;
        data.resize(len, 0f32);
        // Err((error, true)) for an image that cannot be read or decoded, which may be skipped.
        let results: Vec<std::result::Result<(), (Error, bool)>> = data
            .par_chunks_mut(numel)
            .enumerate()
            .map(|(k, out)| {
                let i = indices[k];
                let img = self.load(i, rows[k].as_ref()).map_err(|e| (e, true))?;
                if (img.h, img.w) != (g.height, g.width) {
                    let e = Error::format(
                        self.items.name_of(i),
                        format!(
                            "is {}x{} after preprocessing, but the batches are {}x{} (the model's size, or the first \
                             image's)",
                            img.h, img.w, g.height, g.width
                        ),
                    );
                    let hint = Hint::CenterCrop { height: g.height, width: g.width, or: CropAlternative::ExactResize };
                    return Err((e.hint(hint), false));
                }
                images::to_tensor(&img, &self.mean, &self.std, g.layout, out);
                Ok(())
            })
            .collect();
        let mut kept_indices = Vec::with_capacity(indices.len());
        let mut kept = 0;
        for (k, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => {
                    if kept != k {
                        data.copy_within(k * numel..(k + 1) * numel, kept * numel);
                    }
                    kept += 1;
                    kept_indices.push(indices[k]);
                }
                // A size mismatch is not a bad image: it is a setting to fix.
                Err((e, true)) if self.skip_bad_images => {
                    if let Ok(mut s) = self.skipped.lock() {
                        s.push(crate::error::chain(&e).trim_end().to_string());
                    }
                }
                Err((e, true)) => return Err(e.hint(Hint::SkipBadImages)),
                Err((e, false)) => return Err(e),
            }
        }
        data.truncate(kept * numel);
        let mut shape = vec![kept];
        shape.extend(g.sample_shape());
        let targets = self.targets.as_ref().map(|t| t.rows(&kept_indices));
        Ok(Batch { span, indices: kept_indices, inputs: vec![Tensor::f32(shape, data)], targets })
    }
}

impl<I: ImageItems> SampleSource for ImageSource<I> {
    fn len(&self) -> Option<usize> {
        Some(self.items.len())
    }

    fn why_no_targets(&self) -> Option<String> {
        self.why_no_targets.clone()
    }

    fn sample_shapes(&self) -> Vec<Vec<usize>> {
        vec![self.geometry.sample_shape()]
    }

    fn sample_name(&self, i: usize) -> Option<String> {
        (i < self.items.len()).then(|| self.items.name_of(i))
    }

    fn image_file(&self, i: usize) -> Option<PathBuf> {
        self.items.file(i)
    }

    fn image_transform(&self) -> Option<super::ImageTransform> {
        Some((self.pre.resize, self.pre.center_crop, (self.geometry.height, self.geometry.width)))
    }

    fn batches(&self, range: Range<usize>, batch: usize) -> Result<Batches<'_>> {
        let end = range.end.min(self.items.len());
        let mut cursor = None;
        Ok(Box::new((range.start..end).step_by(batch.max(1)).map(move |from| {
            let to = (from + batch).min(end);
            let rows = self.items.read(from, to, batch, &mut cursor)?;
            self.batch(&(from..to).collect::<Vec<_>>(), from..to, rows)
        })))
    }

    fn batch_at(&self, indices: &[usize]) -> Result<Batch> {
        let n = self.items.len();
        if let Some(&i) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::format(&self.path, format!("has {n} images; image {i} was asked for")));
        }
        let rows = self.items.read_at(indices)?;
        let first = indices.first().copied().unwrap_or(0);
        self.batch(indices, first..first + indices.len(), rows)
    }

    fn has_targets(&self) -> bool {
        self.targets.is_some()
    }

    fn targets(&self) -> Option<&Tensor> {
        self.targets.as_ref()
    }

    fn classes(&self) -> Option<&[String]> {
        self.classes.as_deref()
    }

    fn preprocessing(&self) -> Option<String> {
        let g = self.geometry;
        let colour = if g.channels == 1 { "grayscale (L)" } else { "RGB" };
        let layout = if g.layout == Layout::Nchw { "NCHW" } else { "NHWC" };
        Some(format!("{} as {colour} {layout}: {}", self.items.describe(), self.pre.describe()))
    }

    fn skipped(&self) -> Vec<String> {
        self.skipped.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
