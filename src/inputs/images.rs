//! Images decoded and preprocessed the way torchvision's usual evaluation transform does it:
//! `Image.open(f).convert("RGB")` (or `"L"`), `transforms.Resize` (PIL bilinear, antialiased),
//! `transforms.CenterCrop`, `transforms.ToTensor`, `transforms.Normalize`.
//!
//! The resampler is Pillow's (`Resample.c`, bilinear filter, 8-bit fixed point with 22 fractional
//! bits, in Pillow's order of passes) written out again, so that a decoded image is resized to the
//! same bytes PIL gives; the colour conversions are Pillow's too. The float steps are done in f32
//! in the order PyTorch does them: `v / 255`, then `- mean`, then `/ std`. JPEG decoding
//! (zune-jpeg) is the one step that is not bit-identical to PIL's libjpeg-turbo: see
//! `docs/formats.md` for the measured difference.

use image::DynamicImage;

use crate::error::{Error, Hint};

/// What `--resize` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side to this many pixels, the other in proportion (`transforms.Resize(N)`).
    Shorter(usize),
    /// Exactly this height and width (`transforms.Resize((H, W))`).
    Exact(usize, usize),
}

impl std::str::FromStr for Resize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let px = |t: &str| match t.trim().parse::<usize>() {
            Ok(n) if (1..=65_536).contains(&n) => Ok(n),
            _ => Err(format!("`{t}` is not a size in pixels (1..=65536)")),
        };
        match s.split_once([',', 'x']) {
            Some((h, w)) => Ok(Resize::Exact(px(h)?, px(w)?)),
            None => Ok(Resize::Shorter(px(s)?)),
        }
    }
}

impl std::fmt::Display for Resize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resize::Shorter(n) => write!(f, "shorter side {n}"),
            Resize::Exact(h, w) => write!(f, "{h}x{w}"),
        }
    }
}

/// The preprocessing of images (and of `uint8` image arrays): torchvision's evaluation transform.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preprocess {
    /// `transforms.Resize`, bilinear with antialiasing (PIL's).
    pub resize: Option<Resize>,
    /// `transforms.CenterCrop((H, W))`.
    pub center_crop: Option<(usize, usize)>,
    /// `transforms.Normalize` mean, after scaling to [0, 1]: one value, or one per channel.
    pub mean: Option<Vec<f32>>,
    /// `transforms.Normalize` std.
    pub std: Option<Vec<f32>>,
}

/// ImageNet's mean and std, as torchvision's pretrained models use them.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Preprocess {
    /// `--preset imagenet`: `Resize(256)`, `CenterCrop(224)`, ImageNet mean and std.
    pub fn imagenet() -> Self {
        Preprocess {
            resize: Some(Resize::Shorter(256)),
            center_crop: Some((224, 224)),
            mean: Some(IMAGENET_MEAN.to_vec()),
            std: Some(IMAGENET_STD.to_vec()),
        }
    }

    /// True when nothing is asked for (a `uint8` array is then cast, not scaled, as before).
    pub fn is_none(&self) -> bool {
        *self == Preprocess::default()
    }

    /// The mean and std per channel (0 and 1 when not given); an error when one has a count
    /// other than 1 or `channels`, or a std is not positive.
    pub fn normalization(&self, channels: usize) -> Result<(Vec<f32>, Vec<f32>), String> {
        let expand = |v: &Option<Vec<f32>>, default: f32, what: &str| -> Result<Vec<f32>, String> {
            match v.as_deref() {
                None => Ok(vec![default; channels]),
                Some([one]) => Ok(vec![*one; channels]),
                Some(v) if v.len() == channels => Ok(v.to_vec()),
                Some(v) => Err(format!(
                    "{what} has {} values, but the model takes {channels}-channel images: give 1 or {channels}",
                    v.len()
                )),
            }
        };
        let mean = expand(&self.mean, 0.0, "the mean")?;
        let std = expand(&self.std, 1.0, "the std")?;
        // A std so small that 1 / std overflows would make every value infinite.
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0 && (1.0 / **s).is_finite())) {
            return Err(format!("a std of {s} is not a positive number"));
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("a mean of {m} is not a number"));
        }
        Ok((mean, std))
    }

    /// What ran, for the summary and the report: e.g. `resize shorter side 256 (bilinear,
    /// antialias), center crop 224x224, /255, normalize mean [0.485, 0.456, 0.406] std [..]`.
    pub fn describe(&self) -> String {
        let mut steps = Vec::new();
        if let Some(r) = self.resize {
            steps.push(format!("resize {r} (bilinear, antialias)"));
        }
        if let Some((h, w)) = self.center_crop {
            steps.push(format!("center crop {h}x{w}"));
        }
        steps.push("scale to [0, 1]".to_string());
        if self.mean.is_some() || self.std.is_some() {
            let list = |v: &Option<Vec<f32>>, d: f32| {
                let v = v.clone().unwrap_or(vec![d]);
                format!("[{}]", v.iter().map(f32::to_string).collect::<Vec<_>>().join(", "))
            };
            steps.push(format!("normalize mean {} std {}", list(&self.mean, 0.0), list(&self.std, 1.0)));
        }
        steps.join(", ")
    }
}

/// Memory layout of a batch of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Channels first, as PyTorch models take them.
    Nchw,
    /// Channels last.
    Nhwc,
}

/// An 8-bit image: `h` rows of `w` pixels of `c` interleaved channels (1 or 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image8 {
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Channels: 1 (`L`) or 3 (`RGB`).
    pub c: usize,
    /// Row-major pixels.
    pub data: Vec<u8>,
}

/// Pillow's `L` from `R, G, B` (ITU-R 601-2 luma in 16-bit fixed point, `Convert.c`).
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Pillow's `Image.MAX_IMAGE_PIXELS`: above it Pillow warns of a decompression bomb, above twice
/// it refuses the image.
pub const PIL_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// The default limit on an image's pixels, decoded or resized: where Pillow refuses one (twice
/// [`PIL_MAX_IMAGE_PIXELS`]), so that every image torchvision reads is read.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * PIL_MAX_IMAGE_PIXELS;

/// The longest side a resize may give (its filter taps take memory per output pixel of a side).
pub const MAX_SIDE: usize = 1 << 20;

/// How images are decoded: into how many channels, and the most pixels one may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decode {
    /// 3 (`convert("RGB")`) or 1 (`convert("L")`).
    pub channels: usize,
    /// Images with more pixels (decoded, or after the resize) are bad images.
    pub max_pixels: u64,
    /// Turn the image as its EXIF orientation says (`ImageOps.exif_transpose`), as Hugging Face
    /// `datasets` does when it decodes an `Image` feature; torchvision's `ImageFolder` does not.
    pub exif: bool,
}

/// Why an image is a bad image (one `skip_bad_images` may skip), without its name.
#[derive(Debug, Clone, PartialEq)]
pub struct BadImage {
    /// What is wrong.
    pub message: String,
    /// Whether it is too large (a higher pixel limit would read it).
    pub too_large: bool,
}

impl BadImage {
    fn invalid(message: impl Into<String>) -> Self {
        BadImage { message: message.into(), too_large: false }
    }

    /// The error for image `name`.
    pub fn named(self, name: impl AsRef<std::path::Path>) -> Error {
        let e = Error::format(name, self.message);
        if self.too_large {
            e.hint(Hint::MaxImagePixels)
        } else {
            e
        }
    }
}

/// Fails when an image of `h`×`w` (decoded, or `what` says which size) has more than `max` pixels.
pub fn check_pixels(h: u64, w: u64, max: u64, what: &str) -> Result<(), BadImage> {
    let pixels = u128::from(h) * u128::from(w);
    if pixels > u128::from(max) {
        return Err(BadImage {
            message: format!(
                "is {w}x{h}{what} = {pixels} pixels, more than the limit of {max} (a decompression bomb, as PIL calls \
                 such images)"
            ),
            too_large: true,
        });
    }
    Ok(())
}

/// Whether a JPEG's bytes hold its end-of-image marker after its first scan: without it the file
/// was cut short (Pillow says "image file is truncated"), where the decoder would fill the rest
/// with grey. Entropy-coded data escapes every 0xFF, so the marker cannot occur inside it.
fn jpeg_is_whole(bytes: &[u8]) -> bool {
    let Some(scan) = bytes.windows(2).position(|m| m == [0xFF, 0xDA]) else { return false };
    bytes[scan..].windows(2).any(|m| m == [0xFF, 0xD9])
}

/// Why the decoder gave up: a feature it does not read (a palette TIFF), or a broken file.
fn undecodable(e: image::ImageError) -> BadImage {
    match e {
        image::ImageError::Unsupported(u) => {
            BadImage::invalid(format!("uses a feature swa's image decoder does not read ({u}); convert it to PNG"))
        }
        e => BadImage::invalid(format!("is not a valid image: {e}")),
    }
}

/// Decodes an image file's bytes (JPEG, PNG, BMP, PNM, WebP, TIFF, told apart by their content) into
/// `how.channels` (3: `convert("RGB")`, 1: `convert("L")`) as Pillow converts them: alpha
/// dropped, grey replicated, 16-bit samples as Pillow reads them. The EXIF orientation is
/// ignored, as `Image.open` ignores it. An image of more than `how.max_pixels` pixels is refused
/// from its header, before anything is decoded; a truncated one is refused as Pillow refuses it.
/// The error says what is wrong, without the file name.
pub fn decode(bytes: &[u8], how: &Decode) -> Result<Image8, BadImage> {
    // Pillow reads a PNG whose image data is whole without its closing IEND chunk; so does swa.
    const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
    let closed: Vec<u8>;
    let bytes = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && !bytes.ends_with(&IEND) {
        closed = [bytes, &IEND].concat();
        &closed[..]
    } else {
        bytes
    };
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| BadImage::invalid(format!("cannot be read: {e}")))
    };
    let format = reader()?.format();
    if format.is_none() {
        return Err(BadImage::invalid("is not an image swa can decode (JPEG, PNG, BMP, PNM, WebP or TIFF)"));
    }
    let (w, h) = reader()?.into_dimensions().map_err(undecodable)?;
    check_pixels(u64::from(h), u64::from(w), how.max_pixels, "")?;
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_is_whole(bytes) {
        return Err(BadImage::invalid("is truncated (its JPEG data ends before the end-of-image marker)"));
    }
    let mut decoder = reader()?;
    let mut limits = image::Limits::default();
    // Room for the largest image allowed at 16 bits and 4 samples per pixel, and its conversion.
    limits.max_alloc = Some(how.max_pixels.saturating_mul(16).max(1 << 29));
    decoder.limits(limits);
    let channels = how.channels;
    let invalid = undecodable;
    let img = if how.exif {
        let mut decoder = decoder.into_decoder().map_err(invalid)?;
        let orientation =
            image::ImageDecoder::orientation(&mut decoder).unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut img = DynamicImage::from_decoder(decoder).map_err(invalid)?;
        img.apply_orientation(orientation);
        img
    } else {
        decoder.decode().map_err(invalid)?
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    // Every supported layout as (samples per pixel, grey?, 8-bit view of sample i).
    let data: Vec<u8> = match (img, channels) {
        (DynamicImage::ImageLuma8(i), 1) => i.into_raw(),
        (DynamicImage::ImageLuma8(i), _) => i.as_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        (DynamicImage::ImageLumaA8(i), 1) => i.as_raw().chunks_exact(2).map(|p| p[0]).collect(),
        (DynamicImage::ImageLumaA8(i), _) => i.as_raw().chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        (DynamicImage::ImageRgb8(i), 1) => i.as_raw().chunks_exact(3).map(|p| luma(p[0], p[1], p[2])).collect(),
        (DynamicImage::ImageRgb8(i), _) => i.into_raw(),
        (DynamicImage::ImageRgba8(i), 1) => i.as_raw().chunks_exact(4).map(|p| luma(p[0], p[1], p[2])).collect(),
        (DynamicImage::ImageRgba8(i), _) => i.as_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        // Pillow reads 16-bit grey as `I;16`, whose conversion to `L` or `RGB` clips at 255.
        (DynamicImage::ImageLuma16(i), 1) => i.as_raw().iter().map(|&v| v.min(255) as u8).collect(),
        (DynamicImage::ImageLuma16(i), _) => i.as_raw().iter().flat_map(|&v| [v.min(255) as u8; 3]).collect(),
        // 16-bit colour (and grey with alpha) it reads as 8-bit, keeping the high byte.
        (DynamicImage::ImageLumaA16(i), 1) => i.as_raw().chunks_exact(2).map(|p| (p[0] >> 8) as u8).collect(),
        (DynamicImage::ImageLumaA16(i), _) => i.as_raw().chunks_exact(2).flat_map(|p| [(p[0] >> 8) as u8; 3]).collect(),
        (DynamicImage::ImageRgb16(i), 1) => {
            i.as_raw().chunks_exact(3).map(|p| luma((p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8)).collect()
        }
        (DynamicImage::ImageRgb16(i), _) => i.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        (DynamicImage::ImageRgba16(i), 1) => {
            i.as_raw().chunks_exact(4).map(|p| luma((p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8)).collect()
        }
        (DynamicImage::ImageRgba16(i), _) => {
            i.as_raw().chunks_exact(4).flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]).collect()
        }
        (other, _) => {
            return Err(BadImage::invalid(format!("has a pixel format swa does not read ({:?})", other.color())))
        }
    };
    Ok(Image8 { w, h, c: channels, data })
}

/// The size `transforms.Resize` gives an image of `h`×`w`: for the shorter side `n`, the longer
/// side is `int(n * long / short)` (truncated, as torchvision computes it).
pub fn resized_size(resize: Resize, h: usize, w: usize) -> (usize, usize) {
    match resize {
        Resize::Exact(h, w) => (h, w),
        Resize::Shorter(n) => {
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            let long = ((n as f64 * long as f64) / short as f64) as usize;
            if w <= h {
                (long, n)
            } else {
                (n, long)
            }
        }
    }
}

/// Where `transforms.CenterCrop` starts: `int(round((size - crop) / 2.0))`, Python's round (half
/// to even). Only for `crop <= size`.
pub(crate) fn crop_start(size: usize, crop: usize) -> usize {
    let twice = size - crop;
    let half = twice / 2;
    // (size - crop) / 2 is either whole or ends in .5: round half to even.
    if twice % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The bilinear filter's taps for resampling `in_size` pixels to `out_size` (Pillow's
/// `precompute_coeffs` and `normalize_coeffs_8bpc`): per output pixel, the first input pixel
/// and the fixed-point weights (`ksize` per output pixel).
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

impl Taps {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f32 as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero; negative values are then clamped to 0 anyway.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(xmax) {
                let t = (((x + xmin) as f64 - center + 0.5) * ss).abs();
                let w = if t < 1.0 { 1.0 - t } else { 0.0 };
                *kx = w;
                ww += w;
            }
            for (x, kx) in k.iter().enumerate().take(xmax) {
                let v = if ww != 0.0 { kx / ww } else { *kx };
                let fixed = v * (1u32 << PRECISION_BITS) as f64;
                weights[xx * ksize + x] = if v < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
            }
            bounds.push((xmin, xmax));
        }
        Taps { ksize, bounds, weights }
    }

    fn of(&self, xx: usize) -> (usize, &[i32]) {
        let (xmin, n) = self.bounds[xx];
        (xmin, &self.weights[xx * self.ksize..xx * self.ksize + n])
    }
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// One row of Pillow's horizontal pass over `C` interleaved channels, for output columns `cols`;
/// `row` starts at input column `offset`.
fn horizontal<const C: usize>(row: &[u8], offset: usize, out: &mut [u8], taps: &Taps, cols: &std::ops::Range<usize>) {
    for (xx, o) in cols.clone().zip(out.chunks_exact_mut(C)) {
        let (xmin, k) = taps.of(xx);
        let mut ss = [1i32 << (PRECISION_BITS - 1); C];
        for (px, &kx) in row[(xmin - offset) * C..(xmin - offset + k.len()) * C].chunks_exact(C).zip(k) {
            for ch in 0..C {
                ss[ch] += px[ch] as i32 * kx;
            }
        }
        for ch in 0..C {
            o[ch] = clip8(ss[ch]);
        }
    }
}

#[inline(always)]
fn multiply_add_plain(acc: &mut [i32], row: &[u8], k: i32) {
    for (s, &v) in acc.iter_mut().zip(row) {
        *s += v as i32 * k;
    }
}

crate::simd::dispatch! {
    /// `acc[i] += row[i] * k`: the vertical pass's inner loop, in AVX2 where the CPU has it (the
    /// same integer arithmetic, eight lanes at a time).
    fn multiply_add(acc: &mut [i32], row: &[u8], k: i32) = multiply_add_plain; levels: avx2
}

/// Rows of `c`-channel pixels, `w` wide, the first of which is row `first` of the image they
/// come from (a pass reads a window of its input and writes a window of its output).
struct Window<'a> {
    data: &'a [u8],
    w: usize,
    c: usize,
    first: usize,
}

impl Window<'_> {
    fn row(&self, y: usize) -> &[u8] {
        let stride = self.w * self.c;
        &self.data[(y - self.first) * stride..(y - self.first + 1) * stride]
    }
}

/// The input pixels (first, end) that output pixels `out` read through `taps`.
fn span(taps: &Taps, out: &std::ops::Range<usize>) -> (usize, usize) {
    if out.is_empty() {
        return (0, 0);
    }
    let (a, _) = taps.bounds[out.start];
    let (b, n) = taps.bounds[out.end - 1];
    (a, b + n)
}

/// Pillow's horizontal pass: output columns `cols` of every row of `src` (whose rows start at
/// input column `offset`).
fn horizontal_pass(src: &Window, offset: usize, taps: &Taps, cols: &std::ops::Range<usize>) -> Vec<u8> {
    let (c, n) = (src.c, cols.len());
    let mut data = vec![0u8; src.data.len() / (src.w * c).max(1) * n * c];
    let rows = src.data.chunks_exact((src.w * c).max(1)).zip(data.chunks_exact_mut((n * c).max(1)));
    match c {
        3 => rows.for_each(|(row, out)| horizontal::<3>(row, offset, out, taps, cols)),
        1 => rows.for_each(|(row, out)| horizontal::<1>(row, offset, out, taps, cols)),
        _ => unreachable!("images have 1 or 3 channels"),
    }
    data
}

/// Pillow's vertical pass: output rows `rows`, over columns `cols` of `src`.
fn vertical_pass(src: &Window, taps: &Taps, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Vec<u8> {
    let c = src.c;
    let stride = cols.len() * c;
    let mut data = vec![0u8; rows.len() * stride];
    let mut ss = vec![0i32; stride];
    for (yy, out_row) in rows.zip(data.chunks_exact_mut(stride.max(1))) {
        let (ymin, k) = taps.of(yy);
        ss.fill(1 << (PRECISION_BITS - 1));
        for (y, &ky) in k.iter().enumerate() {
            multiply_add(&mut ss, &src.row(ymin + y)[cols.start * c..cols.end * c], ky);
        }
        for (o, &s) in out_row.iter_mut().zip(&ss) {
            *o = clip8(s);
        }
    }
    data
}

/// `img` resized to `out_h`×`out_w` by Pillow's bilinear resampler, computing only the window of
/// rows `rows` and columns `cols` of the result (a centre crop needs no more; every pixel is
/// computed as Pillow computes it).
///
/// Pillow skips a pass whose size does not change, and (Pillow 13, which the fixtures were made
/// with) makes the vertical pass
/// first where the height shrinks by more than twice what the width does
/// (`max(ih - oh, 0) > 2 * max(iw - ow, 0)`, checked against Pillow 13 on 1,176 random sizes at
/// the boundary); the order changes the result by the rounding of the intermediate image.
fn resample(
    img: &Image8,
    out_h: usize,
    out_w: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Image8 {
    let c = img.c;
    let (ww, wh) = (cols.len(), rows.len());
    let whole = Window { data: &img.data, w: img.w, c, first: 0 };
    let horizontal = (out_w != img.w).then(|| Taps::new(img.w, out_w));
    let vertical = (out_h != img.h).then(|| Taps::new(img.h, out_h));
    let data = match (horizontal, vertical) {
        (None, None) => {
            let mut data = Vec::with_capacity(wh * ww * c);
            for y in rows {
                data.extend_from_slice(&whole.row(y)[cols.start * c..cols.end * c]);
            }
            data
        }
        (Some(h), None) => {
            let src = Window { data: &img.data[rows.start * img.w * c..rows.end * img.w * c], ..whole };
            horizontal_pass(&src, 0, &h, &cols)
        }
        (None, Some(v)) => vertical_pass(&whole, &v, rows, cols),
        (Some(h), Some(v)) if img.h.saturating_sub(out_h) > 2 * img.w.saturating_sub(out_w) => {
            let (first, end) = span(&h, &cols);
            let temp = vertical_pass(&whole, &v, rows, first..end);
            horizontal_pass(&Window { data: &temp, w: end - first, c, first: 0 }, first, &h, &cols)
        }
        (Some(h), Some(v)) => {
            let (first, end) = span(&v, &rows);
            let src = Window { data: &img.data[first * img.w * c..end * img.w * c], ..whole };
            let temp = horizontal_pass(&src, 0, &h, &cols);
            vertical_pass(&Window { data: &temp, w: ww, c, first }, &v, rows, 0..ww)
        }
    };
    Image8 { w: ww, h: wh, c, data }
}

/// `img` after `Resize` and `CenterCrop` (padding with black where the crop is larger than the
/// image, as torchvision pads).
pub fn resize_and_crop(img: &Image8, resize: Option<Resize>, crop: Option<(usize, usize)>) -> Image8 {
    let (rh, rw) = resize.map_or((img.h, img.w), |r| resized_size(r, img.h, img.w));
    let (ch, cw) = crop.unwrap_or((rh, rw));
    // torchvision pads (crop - size) // 2 before and the rest after, then crops from 0.
    let (pad_top, pad_left) = ((ch.saturating_sub(rh)) / 2, (cw.saturating_sub(rw)) / 2);
    let (top, left) = (if ch <= rh { crop_start(rh, ch) } else { 0 }, if cw <= rw { crop_start(rw, cw) } else { 0 });
    let rows = top..top + ch.min(rh);
    let cols = left..left + cw.min(rw);
    let inner = if (rh, rw) == (img.h, img.w) && rows == (0..img.h) && cols == (0..img.w) {
        img.clone()
    } else {
        resample(img, rh, rw, rows, cols)
    };
    if (pad_top, pad_left) == (0, 0) && (inner.h, inner.w) == (ch, cw) {
        return inner;
    }
    let c = img.c;
    let mut data = vec![0u8; ch * cw * c];
    for y in 0..inner.h {
        let at = ((y + pad_top) * cw + pad_left) * c;
        data[at..at + inner.w * c].copy_from_slice(&inner.data[y * inner.w * c..(y + 1) * inner.w * c]);
    }
    Image8 { w: cw, h: ch, c, data }
}

/// Writes `img` into `out` (`h * w * c` floats) as `ToTensor` then `Normalize` make it:
/// `(v / 255 - mean) / std` in f32, in `layout`.
pub fn to_tensor(img: &Image8, mean: &[f32], std: &[f32], layout: Layout, out: &mut [f32]) {
    let (hw, c) = (img.h * img.w, img.c);
    debug_assert_eq!(out.len(), hw * c);
    let table: Vec<[f32; 256]> =
        (0..c).map(|ch| std::array::from_fn(|v| ((v as f32 / 255.0) - mean[ch]) / std[ch])).collect();
    match layout {
        Layout::Nchw => {
            for (ch, plane) in out.chunks_exact_mut(hw).enumerate() {
                let t = &table[ch];
                for (o, px) in plane.iter_mut().zip(img.data.chunks_exact(c)) {
                    *o = t[px[ch] as usize];
                }
            }
        }
        Layout::Nhwc => {
            for (i, (o, &v)) in out.iter_mut().zip(&img.data).enumerate() {
                *o = table[i % c][v as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_crops_follow_torchvision() {
        assert_eq!(resized_size(Resize::Shorter(256), 375, 500), (256, 341));
        assert_eq!(resized_size(Resize::Shorter(256), 500, 375), (341, 256));
        assert_eq!(resized_size(Resize::Shorter(256), 256, 256), (256, 256));
        assert_eq!(resized_size(Resize::Exact(10, 20), 375, 500), (10, 20));
        // int(round(16.5)) == 16, int(round(17.5)) == 18, int(round(2.5)) == 2.
        assert_eq!(crop_start(257, 224), 16);
        assert_eq!(crop_start(259, 224), 18);
        assert_eq!(crop_start(229, 224), 2);
        assert_eq!(crop_start(224, 224), 0);
        assert_eq!("256".parse::<Resize>(), Ok(Resize::Shorter(256)));
        assert_eq!("32,48".parse::<Resize>(), Ok(Resize::Exact(32, 48)));
        assert!("0".parse::<Resize>().is_err());
    }

    #[test]
    fn resampling_to_the_same_size_is_the_identity_and_a_flat_image_stays_flat() {
        let img = Image8 { w: 7, h: 5, c: 3, data: (0..105).map(|v| (v * 2) as u8).collect() };
        assert_eq!(resample(&img, 5, 7, 0..5, 0..7), img);
        let flat = Image8 { w: 13, h: 9, c: 1, data: vec![77; 117] };
        let small = resize_and_crop(&flat, Some(Resize::Shorter(4)), Some((3, 3)));
        assert_eq!((small.h, small.w), (3, 3));
        assert!(small.data.iter().all(|&v| v == 77));
    }

    #[test]
    fn a_crop_larger_than_the_image_pads_with_black() {
        let img = Image8 { w: 2, h: 2, c: 1, data: vec![9; 4] };
        let out = resize_and_crop(&img, None, Some((4, 5)));
        assert_eq!((out.h, out.w), (4, 5));
        #[rustfmt::skip]
        assert_eq!(out.data, [0, 0, 0, 0, 0,  0, 9, 9, 0, 0,  0, 9, 9, 0, 0,  0, 0, 0, 0, 0]);
    }

    #[test]
    fn tensors_are_scaled_then_normalized_in_f32() {
        let img = Image8 { w: 1, h: 2, c: 3, data: vec![0, 128, 255, 10, 20, 30] };
        let mut out = vec![0.0; 6];
        to_tensor(&img, &IMAGENET_MEAN, &IMAGENET_STD, Layout::Nchw, &mut out);
        assert_eq!(out[1], ((10.0f32 / 255.0) - 0.485) / 0.229);
        assert_eq!(out[2], ((128.0f32 / 255.0) - 0.456) / 0.224);
        to_tensor(&img, &[0.0; 3], &[1.0; 3], Layout::Nhwc, &mut out);
        assert_eq!(out[..3], [0.0, 128.0 / 255.0, 1.0]);
    }
}
