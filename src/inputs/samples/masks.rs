//! Segmentation masks paired with an image folder: each image's mask found by its file stem in a
//! mask folder (or by a dataset's own naming: VOC's `JPEGImages/` + `SegmentationClass/`,
//! Cityscapes' `leftImg8bit/` + `gtFine/…_labelTrainIds.png`, ADE20K's `images/` + `annotations/`),
//! decoded as class indices (palette or grey PNGs keep their indices), remapped where asked, and
//! resized and cropped as the image is — with nearest-neighbour, as torchvision's v2 transforms
//! resize a `Mask` (`torch.nn.functional.interpolate(mode="nearest")`: output pixel `i` takes input
//! pixel `floor(i · in/out)`, in float32) and pad it with 0.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::SampleSource;
use crate::batch::Tensor;
use crate::error::{Error, Result};
use crate::inputs::images::Resize;

/// A remapping of mask values (`0:255,1:0`); values not named stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MaskMap {
    /// Pairs `from → to`.
    pub pairs: Vec<(i64, i64)>,
    /// ADE20K's `reduce_zero_label`: 0 becomes the ignore index and every other value one less.
    pub reduce_zero: Option<i64>,
}

impl std::str::FromStr for MaskMap {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<MaskMap, String> {
        if matches!(s.trim(), "reduce-zero" | "reduce_zero_label") {
            // The ignore index is the task's: set when the masks are paired.
            return Ok(MaskMap { pairs: Vec::new(), reduce_zero: Some(i64::MIN) });
        }
        let mut pairs: Vec<(i64, i64)> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (a, b) = item.split_once(':').ok_or_else(|| format!("`{item}` is not FROM:TO (such as 0:255)"))?;
            let num = |t: &str| t.trim().parse::<i64>().map_err(|_| format!("`{t}` in `{item}` is not a whole number"));
            let (from, to) = (num(a)?, num(b)?);
            if pairs.iter().any(|p| p.0 == from) {
                return Err(format!("{from} is mapped twice"));
            }
            pairs.push((from, to));
        }
        if pairs.is_empty() {
            return Err("a mask map needs at least one FROM:TO pair (or reduce-zero)".into());
        }
        Ok(MaskMap { pairs, reduce_zero: None })
    }
}

impl MaskMap {
    fn apply(&self, v: i64) -> i64 {
        if let Some(ignore) = self.reduce_zero {
            // As mmsegmentation's reduce_zero_label: 0 and 255 (unlabelled, a border) are ignored.
            return if v == 0 || v == 255 || v == ignore { ignore } else { v - 1 };
        }
        self.pairs.iter().find(|p| p.0 == v).map_or(v, |p| p.1)
    }
}

/// A dataset layout whose masks lie beside its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Masks by file stem in a folder given.
    Folder,
    /// Pascal VOC: `JPEGImages/x.jpg` → `SegmentationClass/x.png`.
    Voc,
    /// Cityscapes: `leftImg8bit/S/C/x_leftImg8bit.png` → `gtFine/S/C/x_gtFine_labelTrainIds.png`.
    Cityscapes,
    /// ADE20K (`ADEChallengeData2016/images/S/x.jpg` → `…/annotations/S/x.png`), 0 (unlabelled)
    /// ignored and every other class one lower.
    Ade20k,
}

impl Layout {
    /// What notices call it.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Folder => "masks named as the images",
            Layout::Voc => "Pascal VOC's SegmentationClass",
            Layout::Cityscapes => "Cityscapes' gtFine labelTrainIds",
            Layout::Ade20k => "ADE20K's annotations, 0 (unlabelled) ignored and every other class one lower",
        }
    }
}

/// Where the masks of the images in `inputs` lie when the folder is one of the layouts swa knows.
pub fn detect(inputs: &Path) -> Option<(PathBuf, Layout)> {
    let parts: Vec<&std::ffi::OsStr> = inputs.iter().collect();
    if inputs.file_name().is_some_and(|n| n == "JPEGImages") {
        let masks = inputs.with_file_name("SegmentationClass");
        return masks.is_dir().then_some((masks, Layout::Voc));
    }
    for (k, name) in parts.iter().enumerate().rev() {
        let swap = |with: &str| -> PathBuf {
            let mut p = PathBuf::new();
            for (j, part) in parts.iter().enumerate() {
                p.push(if j == k { std::ffi::OsStr::new(with) } else { part });
            }
            p
        };
        if *name == "leftImg8bit" && swap("gtFine").is_dir() {
            return Some((swap("gtFine"), Layout::Cityscapes));
        }
        // ADE20K's own folder (`ADEChallengeData2016/images/…`): any other `images/` beside an
        // `annotations/` is a layout of its own, whose masks are not remapped.
        if *name == "images" && swap("annotations").is_dir() {
            let ade = parts[..k].iter().any(|p| p.to_string_lossy().to_lowercase().starts_with("adechallenge"));
            return Some((swap("annotations"), if ade { Layout::Ade20k } else { Layout::Folder }));
        }
    }
    None
}

/// How the mask of an image is found.
fn mask_path(image: &Path, inputs: &Path, masks: &Path, layout: Layout) -> Vec<PathBuf> {
    let rel = image.strip_prefix(inputs).unwrap_or(image);
    let dir = masks.join(rel.parent().unwrap_or(Path::new("")));
    let stem = image.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    match layout {
        Layout::Cityscapes => {
            let base = stem.strip_suffix("_leftImg8bit").unwrap_or(&stem);
            vec![dir.join(format!("{base}_gtFine_labelTrainIds.png"))]
        }
        Layout::Voc | Layout::Ade20k => vec![dir.join(format!("{stem}.png"))],
        Layout::Folder => {
            ["png", "PNG", "tif", "tiff", "bmp", "pgm"].iter().map(|e| dir.join(format!("{stem}.{e}"))).collect()
        }
    }
}

/// A mask decoded: class indices, row-major.
pub struct Mask {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// `h * w` class indices.
    pub data: Vec<i64>,
}

/// Decodes a mask file that must be `w`×`h` (its image's size, checked before anything is
/// decoded): a PNG's own values (palette indices, grey levels of 1 to 16 bits), or a grey image of
/// another format (8 or 16 bits); colours are refused.
pub fn decode(path: &Path, w: usize, h: usize) -> Result<Mask> {
    let bytes = crate::fs::read_regular(path)?;
    let bad = |why: String| Error::format(path, why);
    let size_differs = |mw: usize, mh: usize| {
        bad(format!(
            "is {mw}×{mh} but its image is {w}×{h}: a mask must be the size of its image (pixel for pixel; it is \
             resized and cropped as the image is)"
        ))
    };
    if bytes.starts_with(b"\x89PNG") {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(&bytes[..]));
        decoder.set_transformations(png::Transformations::IDENTITY);
        let mut reader = decoder.read_info().map_err(|e| bad(format!("is not a readable PNG: {e}")))?;
        let (mw, mh) = (reader.info().width as usize, reader.info().height as usize);
        if (mw, mh) != (w, h) {
            return Err(size_differs(mw, mh));
        }
        let (color, depth) = reader.output_color_type();
        if !matches!(color, png::ColorType::Indexed | png::ColorType::Grayscale) {
            return Err(bad(format!(
                "is a {color:?} PNG: a mask holds one class index per pixel (a palette or grey PNG, as VOC and \
                 Cityscapes write them), not colours"
            )));
        }
        let mut buf = vec![0u8; reader.output_buffer_size().ok_or_else(|| bad("is too large".into()))?];
        let info = reader.next_frame(&mut buf).map_err(|e| bad(format!("could not be decoded: {e}")))?;
        let line = info.line_size;
        let bits = depth as usize;
        let mut data = Vec::with_capacity(h * w);
        for y in 0..h {
            let row = &buf[y * line..(y + 1) * line];
            for x in 0..w {
                data.push(match bits {
                    16 => u16::from_be_bytes([row[2 * x], row[2 * x + 1]]) as i64,
                    8 => row[x] as i64,
                    b => {
                        let per = 8 / b;
                        let byte = row[x / per];
                        let shift = 8 - b * (x % per + 1);
                        ((byte >> shift) & ((1u8 << b) - 1)) as i64
                    }
                });
            }
        }
        return Ok(Mask { h, w, data });
    }
    let reader = ::image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| bad(format!("could not be read: {e}")))?;
    let (mw, mh) = reader.into_dimensions().map_err(|e| bad(format!("is not an image swa can decode: {e}")))?;
    if (mw as usize, mh as usize) != (w, h) {
        return Err(size_differs(mw as usize, mh as usize));
    }
    let img = ::image::load_from_memory(&bytes).map_err(|e| bad(format!("could not be decoded: {e}")))?;
    let data: Vec<i64> = match img {
        ::image::DynamicImage::ImageLuma8(g) => g.into_raw().into_iter().map(i64::from).collect(),
        ::image::DynamicImage::ImageLuma16(g) => g.into_raw().into_iter().map(i64::from).collect(),
        other => {
            return Err(bad(format!(
                "is a {:?} image: a mask holds one class index per pixel (a palette or grey PNG, or a grey image)",
                other.color()
            )))
        }
    };
    Ok(Mask { h, w, data })
}

/// torch's `nearest` source index of output `i` of `out` from `len` (float32, as ATen computes it).
fn nearest(i: usize, len: usize, out: usize) -> usize {
    if len == out {
        return i;
    }
    let scale = len as f32 / out as f32;
    ((i as f32 * scale).floor() as usize).min(len - 1)
}

/// `mask` after the image's `Resize` (nearest) and `CenterCrop` (padding with 0).
fn transform(mask: &Mask, resize: Option<Resize>, crop: Option<(usize, usize)>) -> Mask {
    let (rh, rw) = resize.map_or((mask.h, mask.w), |r| crate::inputs::images::resized_size(r, mask.h, mask.w));
    let (ch, cw) = crop.unwrap_or((rh, rw));
    let (pad_top, pad_left) = (ch.saturating_sub(rh) / 2, cw.saturating_sub(rw) / 2);
    let top = if ch <= rh { crate::inputs::images::crop_start(rh, ch) } else { 0 };
    let left = if cw <= rw { crate::inputs::images::crop_start(rw, cw) } else { 0 };
    let mut data = vec![0i64; ch * cw];
    for y in 0..ch.min(rh) {
        let sy = nearest(top + y, mask.h, rh);
        for x in 0..cw.min(rw) {
            let sx = nearest(left + x, mask.w, rw);
            data[(y + pad_top) * cw + x + pad_left] = mask.data[sy * mask.w + sx];
        }
    }
    Mask { h: ch, w: cw, data }
}

/// The masks of an image source's images, read per batch: the targets of a
/// [`super::WithTargets`].
pub struct Masks {
    files: Vec<PathBuf>,
    images: Vec<PathBuf>,
    map: Option<MaskMap>,
    resize: Option<Resize>,
    crop: Option<(usize, usize)>,
    size: (usize, usize),
}

impl Masks {
    /// The masks in `masks` (found as `layout` says) of `inner`'s images (an image folder at
    /// `inputs`), remapped by `map` (ADE20K's by default, its unlabelled 0 to `ignore`); every
    /// image must have its mask.
    pub fn new(
        inner: &dyn SampleSource,
        inputs: &Path,
        masks: &Path,
        layout: Layout,
        map: Option<MaskMap>,
        ignore: i64,
    ) -> Result<Masks> {
        if !masks.is_dir() {
            return Err(Error::format(masks, "is not a folder of masks"));
        }
        let n = inner.len().unwrap_or(0);
        let (images, transform) =
            match (0..n).map(|i| inner.image_file(i)).collect::<Option<Vec<_>>>().zip(inner.image_transform()) {
                Some(found) => found,
                None => {
                    return Err(Error::format(
                        inputs,
                        "is not a folder of image files: masks from a folder pair with image files by name",
                    ))
                }
            };
        let mut files = Vec::with_capacity(n);
        let mut missing = Vec::new();
        for image in &images {
            let candidates = mask_path(image, inputs, masks, layout);
            match candidates.iter().find(|p| p.is_file()) {
                Some(p) => files.push(p.clone()),
                None => {
                    missing.push(candidates[0].clone());
                    files.push(candidates[0].clone());
                }
            }
        }
        if let Some(first) = missing.first() {
            let voc = if layout == Layout::Voc {
                "; VOC's JPEGImages holds the images of every split: point at a folder of the split's images (links \
                 to those ImageSets/Segmentation/val.txt names)"
            } else {
                ""
            };
            return Err(Error::format(
                masks,
                format!(
                    "has no mask for {} of the {n} images in {} (the first: {} for {}): every image needs its mask, \
                     named by the image's file name{voc}",
                    missing.len(),
                    inputs.display(),
                    first.display(),
                    images[files.iter().position(|f| f == first).unwrap_or(0)].display()
                ),
            ));
        }
        let map = match (layout, map) {
            (_, Some(m)) if m.reduce_zero.is_some() => Some(MaskMap { reduce_zero: Some(ignore), ..m }),
            (_, Some(m)) => Some(m),
            (Layout::Ade20k, None) => Some(MaskMap { pairs: Vec::new(), reduce_zero: Some(ignore) }),
            _ => None,
        };
        let (resize, crop, size) = transform;
        Ok(Masks { files, images, map, resize, crop, size })
    }
}

impl super::targets::Targets for Masks {
    fn rows(&self, indices: &[usize]) -> Result<Tensor> {
        let (h, w) = self.size;
        let masks: Vec<Vec<i64>> = indices
            .par_iter()
            .map(|&i| {
                let path = &self.files[i];
                let image = &self.images[i];
                // The image's size from its header (a resize and crop to a fixed size would hide a
                // mask of another size), checked before the mask is decoded.
                let (iw, ih) = ::image::image_dimensions(image).map_err(|e| Error::format(image, e.to_string()))?;
                let mask = decode(path, iw as usize, ih as usize)?;
                let mut out = transform(&mask, self.resize, self.crop);
                if (out.h, out.w) != (h, w) {
                    return Err(Error::format(
                        path,
                        format!("becomes {}×{} after the resize and crop, its image {h}×{w}", out.w, out.h),
                    ));
                }
                if let Some(map) = &self.map {
                    out.data.iter_mut().for_each(|v| *v = map.apply(*v));
                }
                Ok(out.data)
            })
            .collect::<Result<_>>()?;
        Ok(Tensor::i64(vec![indices.len(), h, w], masks.concat()))
    }

    fn name(&self, i: usize) -> Option<String> {
        self.files.get(i).map(|p| p.display().to_string())
    }

    fn keeps_classes(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_takes_floor_of_the_scaled_index() {
        // 5 → 3: scale 5/3, indices 0, 1.666→1, 3.333→3.
        assert_eq!((0..3).map(|i| nearest(i, 5, 3)).collect::<Vec<_>>(), [0, 1, 3]);
        // 2 → 5: scale 0.4: 0, 0, 0, 1, 1.
        assert_eq!((0..5).map(|i| nearest(i, 2, 5)).collect::<Vec<_>>(), [0, 0, 0, 1, 1]);
    }

    #[test]
    fn mask_maps_parse_and_apply() {
        assert!("0:255,0:1".parse::<MaskMap>().is_err());
        assert!("reduce-zero".parse::<MaskMap>().unwrap().reduce_zero.is_some());
        let m: MaskMap = "0:255, 3:1".parse().unwrap();
        assert_eq!((m.apply(0), m.apply(3), m.apply(2)), (255, 1, 2));
        assert!("3".parse::<MaskMap>().is_err() && "".parse::<MaskMap>().is_err());
        let ade = MaskMap { pairs: Vec::new(), reduce_zero: Some(255) };
        assert_eq!((ade.apply(0), ade.apply(1), ade.apply(150), ade.apply(255)), (255, 0, 149, 255));
    }
}
