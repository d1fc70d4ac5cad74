//! The samples a pass runs over, wherever the user keeps them: arrays (`.npy` / `.npz`), a
//! directory of images (torchvision's `ImageFolder` layout, or flat), or Parquet files with an
//! image column. Images are decoded and preprocessed batch by batch on all cores (rayon), so
//! memory holds a few batches whatever the size of the set.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use super::images::{self, Layout, Preprocess};
use super::npy::{self, Array, NpyType};
use super::parquet::{ParquetSet, Row};
use crate::batch::{Batch, Tensor};
use crate::error::{CropAlternative, Error, Hint, Result};
use crate::onnx::InputSpec;

/// How samples are read: the preprocessing of images (and of `uint8` image arrays), the Parquet
/// columns, and what to do with an image that cannot be decoded.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Resize, crop and normalization.
    pub preprocess: Preprocess,
    /// The Parquet column holding the encoded images (bytes, or a struct with a `bytes` field).
    pub image_column: String,
    /// The Parquet column holding integer labels (optional in the file).
    pub label_column: String,
    /// Skip (and count) images that cannot be decoded instead of stopping.
    pub skip_bad_images: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            preprocess: Preprocess::default(),
            image_column: "image".into(),
            label_column: "label".into(),
            skip_bad_images: false,
        }
    }
}

/// File name extensions of images, as torchvision's `IMG_EXTENSIONS` (lower-cased) lists those
/// swa decodes.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "ppm", "pgm", "webp"];

fn is_image_name(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMAGE_EXTENSIONS.iter().any(|e| lower.ends_with(&format!(".{e}")))
}

/// Where the images of an image source come from.
enum Items {
    /// Image files.
    Files(Vec<PathBuf>),
    /// The image column of Parquet files.
    Parquet(ParquetSet),
    /// A `uint8` array of images `(N, H, W, C)`.
    U8(Array),
}

/// How images become a model input.
struct Pipe {
    pre: Preprocess,
    mean: Vec<f32>,
    std: Vec<f32>,
    channels: usize,
    layout: Layout,
    /// The size every preprocessed image must have (height, width).
    size: (usize, usize),
}

enum Source {
    Arrays(Vec<Array>),
    Images { items: Items, pipe: Box<Pipe> },
}

/// The samples of a pass: their count, shape per model input, labels where the source has them
/// (class folders, a Parquet label column), and a description of how they are read.
pub struct Samples {
    /// What the user pointed at.
    pub path: PathBuf,
    source: Source,
    /// The shape of one sample per model input (without the batch dimension).
    pub shapes: Vec<Vec<usize>>,
    labels: Option<Vec<i64>>,
    /// Class names of an image folder, by index.
    pub classes: Option<Vec<String>>,
    skipped: Mutex<Vec<String>>,
    skip_bad_images: bool,
}

/// What an image source is: a directory of images with class folders, a flat one, or Parquet.
/// Hidden entries (`.DS_Store`, `.ipynb_checkpoints`) are not samples or classes.
fn describe_dir(path: &Path) -> Result<DirKind> {
    let mut subdirs = Vec::new();
    let mut images = 0usize;
    let mut parquet = Vec::new();
    let mut other = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follows links, as torchvision's `entry.is_dir()` does.
        let p = entry.path();
        if p.is_dir() {
            subdirs.push(entry.file_name());
        } else if name.to_lowercase().ends_with(".parquet") {
            parquet.push(p);
        } else if is_image_name(&name) {
            images += 1;
        } else {
            other.push(name);
        }
    }
    // Byte order of the names: Python's order of `str` for UTF-8 names.
    subdirs.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    parquet.sort();
    other.sort();
    match (parquet.is_empty(), subdirs.is_empty(), images) {
        (false, true, 0) if other.is_empty() => Ok(DirKind::Parquet(one_split(path, parquet)?)),
        (false, _, 0) => Err(Error::format(
            path,
            format!(
                "holds Parquet files and {}: point at a folder of Parquet files only, or at one file",
                if other.is_empty() { "folders".to_string() } else { list(&other) }
            ),
        )),
        (true, false, 0) => Ok(DirKind::Classes(subdirs, other)),
        (true, true, n) if n > 0 => Ok(DirKind::Flat(other)),
        (true, true, 0) => Err(Error::format(
            path,
            if other.is_empty() {
                "is empty: expected images (JPEG, PNG, ...), class folders of images, or Parquet files".to_string()
            } else {
                format!("holds no images, class folders or Parquet files (it holds {})", list(&other))
            },
        )),
        _ => Err(Error::format(
            path,
            "mixes images, class folders and Parquet files: point at one kind (class folders hold the images of \
             one class each, as torchvision's ImageFolder reads them)",
        )),
    }
}

/// The split a Parquet file's name says it holds, in the Hugging Face layout
/// (`train-00000-of-00004.parquet` → `train`).
fn split_of(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_string_lossy().into_owned();
    let (split, rest) = name.split_once('-')?;
    rest.split('-').next().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(|_| split.to_string())
}

/// `files`, unless their names say they hold more than one split (`train-*` and `test-*` side by
/// side, as the Hub stores them): mixing a training and a held-out split is never what is meant.
fn one_split(dir: &Path, files: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    let mut splits: Vec<String> = files.iter().filter_map(|f| split_of(f)).collect();
    splits.sort();
    splits.dedup();
    if splits.len() > 1 {
        return Err(Error::format(
            dir,
            format!(
                "holds the Parquet files of {} splits ({}): point at one, e.g. {}",
                splits.len(),
                splits.join(", "),
                dir.join(&splits[0]).display()
            ),
        ));
    }
    Ok(files)
}

/// The Parquet files of one split named by a path prefix: `data/train` for
/// `data/train-00000-of-00004.parquet`, … (`None` when `path` names no such files).
fn split_files(path: &Path) -> Option<Vec<PathBuf>> {
    let (dir, split) = (path.parent()?, path.file_name()?.to_str()?);
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet") && split_of(p).as_deref() == Some(split))
        .collect();
    files.sort();
    (!files.is_empty()).then_some(files)
}

enum DirKind {
    Parquet(Vec<PathBuf>),
    /// Class folder names, sorted; files beside them that are not images.
    Classes(Vec<std::ffi::OsString>, Vec<String>),
    /// Files that are not images.
    Flat(Vec<String>),
}

fn list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
    let more = if names.len() > 3 { format!(" and {} more", names.len() - 3) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

fn not_images(dir: &Path, names: &[String]) -> Error {
    Error::format(
        dir,
        format!(
            "holds files that are not images: {} (swa reads .{}); move them out, so that the samples are exactly \
             the images",
            list(names),
            IMAGE_EXTENSIONS.join(" .")
        ),
    )
}

/// The folders below `dir` (itself first, links followed as torchvision follows them). A link
/// back to a folder it is inside is an error (torchvision would walk it forever); a folder reached
/// twice by links is walked twice, as torchvision walks it.
fn folders_below(dir: &Path, ancestors: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if ancestors.contains(&real) {
        return Err(Error::format(dir, "is a link to a folder it is inside (a loop): remove the link"));
    }
    out.push(dir.to_path_buf());
    ancestors.push(real);
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let p = entry.path();
        if p.is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
            folders_below(&p, ancestors, out)?;
        }
    }
    ancestors.pop();
    Ok(())
}

/// The images of one class folder, as torchvision's `make_dataset` walks it: every folder below
/// it (links followed), folders in order of their path, files sorted by name.
fn class_images(dir: &Path, class: &str) -> Result<Vec<PathBuf>> {
    let mut folders = Vec::new();
    folders_below(dir, &mut Vec::new(), &mut folders)?;
    folders.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
    let mut files = Vec::new();
    for folder in &folders {
        let mut names = Vec::new();
        let mut other = Vec::new();
        for entry in std::fs::read_dir(folder).map_err(|e| Error::io(folder, e))? {
            let entry = entry.map_err(|e| Error::io(folder, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() || name.starts_with('.') {
                continue;
            }
            if is_image_name(&name) {
                names.push(entry.file_name());
            } else {
                other.push(name);
            }
        }
        if !other.is_empty() {
            other.sort();
            return Err(not_images(folder, &other));
        }
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        files.extend(names.into_iter().map(|n| folder.join(n)));
    }
    if files.is_empty() {
        return Err(Error::format(
            dir,
            format!(
                "class folder `{class}` holds no images: remove it, or add its images (torchvision refuses it too)"
            ),
        ));
    }
    Ok(files)
}

/// The class folder names of `path` when it is a directory of class folders (`None` for any
/// other source); used to check that the train, select and eval sets name the same classes.
pub fn class_names(path: &Path) -> Option<Vec<String>> {
    match path.is_dir().then(|| describe_dir(path)) {
        Some(Ok(DirKind::Classes(classes, _))) => {
            Some(classes.iter().map(|c| c.to_string_lossy().into_owned()).collect())
        }
        _ => None,
    }
}

/// Fails unless image folders `a` and `b` (when both are class folders) name the same classes:
/// their label indices would mean different things.
pub fn check_same_classes(a: &Path, b: &Path) -> Result<()> {
    let (Some(ca), Some(cb)) = (class_names(a), class_names(b)) else { return Ok(()) };
    if ca == cb {
        return Ok(());
    }
    let only = |x: &[String], y: &[String]| x.iter().filter(|c| !y.contains(c)).cloned().collect::<Vec<_>>();
    let (only_a, only_b) = (only(&ca, &cb), only(&cb, &ca));
    let detail = if only_a.is_empty() && only_b.is_empty() {
        "the same names".to_string()
    } else {
        format!(
            "only in {}: {}; only in {}: {}",
            a.display(),
            if only_a.is_empty() { "none".into() } else { list(&only_a) },
            b.display(),
            if only_b.is_empty() { "none".into() } else { list(&only_b) }
        )
    };
    Err(Error::usage(format!(
        "the class folders of {} ({} classes) and {} ({} classes) differ ({detail}): class indices come from the \
         sorted folder names, so both sets must have the same class folders",
        a.display(),
        ca.len(),
        b.display(),
        cb.len()
    )))
}

/// The channel count and layout of an image input of shape `dims`: `[N, C, H, W]` with C of 1 or
/// 3, else `[N, H, W, C]`; 3 channels, channels first, when the model does not say.
/// Channels, layout, and the height and width when the model fixes them.
type ImageInput = (usize, Layout, Option<(usize, usize)>);

fn image_input(dims: &[i64], path: &Path, name: &str) -> Result<ImageInput> {
    let fixed = |d: i64| (d > 0).then_some(d as usize);
    if !(dims.is_empty() || dims.len() == 4) {
        return Err(Error::format(
            path,
            format!("holds images, but model input `{name}` has {} dimensions, not 4 (N, C, H, W)", dims.len()),
        ));
    }
    if dims.is_empty() {
        return Ok((3, Layout::Nchw, None));
    }
    let hw = |h: i64, w: i64| fixed(h).zip(fixed(w));
    Ok(match (dims[1], dims[3]) {
        (1 | 3, _) => (dims[1] as usize, Layout::Nchw, hw(dims[2], dims[3])),
        (_, 1 | 3) => (dims[3] as usize, Layout::Nhwc, hw(dims[1], dims[2])),
        (-1, -1) => (3, Layout::Nchw, None),
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

impl Samples {
    /// Opens the samples at `path` for a model with inputs `specs`: an `.npy` / `.npz`, an image
    /// folder, a flat folder of images, a Parquet file or a folder of them. Image sources feed a
    /// model with one input of 4 dimensions.
    pub fn open(path: &Path, specs: &[InputSpec], data: &DataOptions) -> Result<Samples> {
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let lower = path.to_string_lossy().to_lowercase();
        let arrays = lower.ends_with(".npy") || lower.ends_with(".npz");
        let (items, labels, classes) = if path.is_dir() && !arrays {
            match describe_dir(path)? {
                DirKind::Parquet(files) => {
                    let set = ParquetSet::open(files, &data.image_column, &data.label_column)?;
                    let labels = set.labels.clone();
                    (Items::Parquet(set), labels, None)
                }
                DirKind::Classes(classes, other) => {
                    if !other.is_empty() {
                        return Err(not_images(path, &other));
                    }
                    let mut files = Vec::new();
                    let mut labels = Vec::new();
                    for (k, class) in classes.iter().enumerate() {
                        let found = class_images(&path.join(class), &class.to_string_lossy())?;
                        labels.extend(std::iter::repeat_n(k as i64, found.len()));
                        files.extend(found);
                    }
                    let names = classes.iter().map(|c| c.to_string_lossy().into_owned()).collect();
                    (Items::Files(files), Some(labels), Some(names))
                }
                DirKind::Flat(other) => {
                    if !other.is_empty() {
                        return Err(not_images(path, &other));
                    }
                    (Items::Files(class_images(path, "")?), None, None)
                }
            }
        } else if is_image_name(&lower) && !path.is_dir() {
            return Err(Error::format(
                path,
                "is a single image: point at the folder that holds the images (class folders for labels)",
            ));
        } else if let Some(files) = (!path.exists()).then(|| split_files(path)).flatten() {
            let set = ParquetSet::open(files, &data.image_column, &data.label_column)?;
            let labels = set.labels.clone();
            (Items::Parquet(set), labels, None)
        } else if lower.ends_with(".parquet") {
            let set = ParquetSet::open(vec![path.to_path_buf()], &data.image_column, &data.label_column)?;
            let labels = set.labels.clone();
            (Items::Parquet(set), labels, None)
        } else {
            let arrays = npy::open_inputs(path, &names)?;
            let is_images = arrays.len() == 1 && arrays[0].dtype == NpyType::U8 && !data.preprocess.is_none();
            if !is_images {
                if !data.preprocess.is_none() {
                    return Err(Error::format(
                        path,
                        format!(
                            "holds {:?} samples, already preprocessed: resizing, cropping and normalization apply \
                             to images and to uint8 image arrays (N, H, W, C)",
                            arrays[0].dtype
                        ),
                    ));
                }
                let shapes = arrays.iter().map(|a| a.shape[1..].to_vec()).collect();
                let samples = Samples {
                    path: path.to_path_buf(),
                    source: Source::Arrays(arrays),
                    shapes,
                    labels: None,
                    classes: None,
                    skipped: Mutex::new(Vec::new()),
                    skip_bad_images: false,
                };
                samples.check_shapes(specs)?;
                return Ok(samples);
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
            (Items::U8(a), None, None)
        };
        if specs.len() != 1 {
            return Err(Error::format(
                path,
                format!("holds images, but the model has {} inputs; images feed a model with one input", specs.len()),
            ));
        }
        let (channels, layout, model_size) = image_input(&specs[0].dims, path, &specs[0].name)?;
        let (mean, std) = data.preprocess.normalization(channels).map_err(Error::usage)?;
        let mut samples = Samples {
            path: path.to_path_buf(),
            source: Source::Images {
                items,
                pipe: Box::new(Pipe { pre: data.preprocess.clone(), mean, std, channels, layout, size: (0, 0) }),
            },
            shapes: Vec::new(),
            labels,
            classes,
            skipped: Mutex::new(Vec::new()),
            skip_bad_images: data.skip_bad_images,
        };
        if let Items::U8(a) = samples.items() {
            if a.shape[3] != channels {
                return Err(Error::format(
                    path,
                    format!("holds {}-channel images, but the model takes {channels} channels", a.shape[3]),
                ));
            }
        }
        // The preprocessed size: the crop's, an exact resize's, or else the first image's.
        let pre = &data.preprocess;
        let size = match (pre.center_crop, pre.resize, model_size) {
            (Some(crop), _, _) => crop,
            (None, Some(images::Resize::Exact(h, w)), _) => (h, w),
            (_, _, Some(model)) => model,
            _ => samples.first_size()?,
        };
        if let Some((mh, mw)) = model_size.filter(|&m| m != size) {
            return Err(Error::format(
                path,
                format!(
                    "gives {}x{} images after preprocessing, but model input `{}` takes {mh}x{mw}",
                    size.0, size.1, specs[0].name,
                ),
            )
            .hint(Hint::CenterCrop { height: mh, width: mw, or: CropAlternative::Preset }));
        }
        if let Source::Images { pipe, .. } = &mut samples.source {
            pipe.size = size;
        }
        samples.shapes = vec![match layout {
            Layout::Nchw => vec![channels, size.0, size.1],
            Layout::Nhwc => vec![size.0, size.1, channels],
        }];
        samples.check_shapes(specs)?;
        Ok(samples)
    }

    fn items(&self) -> &Items {
        match &self.source {
            Source::Images { items, .. } => items,
            Source::Arrays(_) => unreachable!("only image sources have items"),
        }
    }

    /// Checks that each input's sample shape fits its declared shape.
    fn check_shapes(&self, specs: &[InputSpec]) -> Result<()> {
        for (k, (spec, shape)) in specs.iter().zip(&self.shapes).enumerate() {
            let fits = spec.dims.is_empty()
                || (spec.dims.len() == shape.len() + 1
                    && spec.dims.iter().skip(1).zip(shape).all(|(&d, &s)| d < 0 || d as usize == s));
            if !fits {
                let want: Vec<String> =
                    spec.dims.iter().map(|&d| if d < 0 { "?".into() } else { d.to_string() }).collect();
                let (what, images) = match &self.source {
                    Source::Arrays(a) => {
                        let images =
                            a[k].dtype == NpyType::U8 && a[k].shape.len() == 4 && matches!(a[k].shape[3], 1 | 3);
                        (a[k].label(), images)
                    }
                    Source::Images { .. } => (self.path.display().to_string(), false),
                };
                let mut have = vec![self.len()];
                have.extend(shape);
                let e = Error::format(
                    &self.path,
                    format!("{what} has shape {have:?}, but model input `{}` expects [{}]", spec.name, want.join(", ")),
                );
                return Err(if images { e.hint(Hint::ImageArray) } else { e });
            }
        }
        Ok(())
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Arrays(a) => a[0].len(),
            Source::Images { items: Items::Files(f), .. } => f.len(),
            Source::Images { items: Items::Parquet(p), .. } => p.rows,
            Source::Images { items: Items::U8(a), .. } => a.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The labels the source carries (class folders, a Parquet label column), one per sample.
    pub fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }

    /// How the samples are read, for the summary and the report: e.g. `image folder, 10 classes,
    /// 3-channel RGB NCHW: resize ..., center crop 224x224, ...`; `None` for float arrays.
    pub fn preprocessing(&self) -> Option<String> {
        let Source::Images { items, pipe } = &self.source else { return None };
        let what = match (items, &self.classes) {
            (Items::Files(_), Some(c)) => format!("image folder ({} classes)", c.len()),
            (Items::Files(_), None) => "images".to_string(),
            (Items::Parquet(p), _) => format!("Parquet column `{}`", p.image_column),
            (Items::U8(_), _) => "uint8 images".to_string(),
        };
        let colour = if pipe.channels == 1 { "grayscale (L)" } else { "RGB" };
        let layout = if pipe.layout == Layout::Nchw { "NCHW" } else { "NHWC" };
        Some(format!("{what} as {colour} {layout}: {}", pipe.pre.describe()))
    }

    /// The images skipped so far (with `skip_bad_images`), each with why.
    pub fn skipped(&self) -> Vec<String> {
        self.skipped.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn name_of(&self, i: usize) -> String {
        match self.items() {
            Items::Files(f) => f[i].display().to_string(),
            Items::Parquet(p) => p.name_of(i),
            Items::U8(a) => format!("{} sample {i}", a.path.display()),
        }
    }

    /// The size of the first image that decodes (every image must come out that size); with
    /// `skip_bad_images`, images before it that do not decode are skipped here too, and a set where
    /// none decodes is an error (its batches would hold images of 0 pixels). Parquet rows are read
    /// in order through one cursor, not each with a reader of its own, and a file that cannot be
    /// read stops the search: only an image can be skipped, not the file it lies in.
    fn first_size(&self) -> Result<(usize, usize)> {
        let Source::Images { items, pipe } = &self.source else { unreachable!("only image sources") };
        let mut cursor = match items {
            Items::Parquet(p) => Some(p.reader(0, 64)?),
            _ => None,
        };
        let mut first_error = None;
        for i in 0..self.len() {
            let row = match (items, cursor.take()) {
                (Items::Parquet(p), Some(c)) => {
                    let (mut rows, c) = p.next_rows(c, 1)?;
                    cursor = Some(c);
                    rows.pop()
                }
                _ => None,
            };
            match self.load(i, pipe, row.as_ref()) {
                Ok(img) => return Ok((img.h, img.w)),
                Err(e) if self.skip_bad_images => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e.hint(crate::error::Hint::SkipBadImages)),
            }
        }
        match first_error {
            None => Ok((0, 0)),
            Some(e) => Err(Error::format(
                &self.path,
                format!(
                    "has no image that decodes ({} skipped), so no image size to batch at; the first: {}",
                    self.len(),
                    crate::error::chain(&e).trim_end()
                ),
            )),
        }
    }

    /// Sample `i` read and preprocessed into 8 bits: its file, its Parquet `row` (as the caller
    /// read it, in order), or its row of a uint8 array. Errors name it.
    fn load(&self, i: usize, pipe: &Pipe, row: Option<&Row>) -> Result<images::Image8> {
        use std::borrow::Cow;
        let bytes = match (row, self.items()) {
            (Some(Ok(b)), _) => Cow::Borrowed(b.as_slice()),
            (Some(Err(why)), _) => return Err(Error::format(self.name_of(i), why.clone())),
            (None, Items::Files(f)) => Cow::Owned(crate::fs::read_regular(&f[i])?),
            (None, _) => Cow::Borrowed(&[][..]),
        };
        self.prepare(&bytes, i, pipe).map_err(|m| Error::format(self.name_of(i), m))
    }

    fn prepare(&self, bytes: &[u8], i: usize, pipe: &Pipe) -> std::result::Result<images::Image8, String> {
        let img = match self.items() {
            Items::U8(a) => {
                let (h, w, c) = (a.shape[1], a.shape[2], a.shape[3]);
                images::Image8 { w, h, c, data: a.u8_row(i).to_vec() }
            }
            _ => images::decode(bytes, pipe.channels)?,
        };
        if img.w == 0 || img.h == 0 {
            return Err("is an empty image (0 pixels)".into());
        }
        Ok(images::resize_and_crop(&img, pipe.pre.resize, pipe.pre.center_crop))
    }

    /// The batches of samples `start..end`, `batch` at a time, read and preprocessed in order.
    pub fn batches(&self, start: usize, end: usize, batch: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        let mut parquet = None;
        (start..end).step_by(batch.max(1)).map(move |from| {
            let to = (from + batch).min(end);
            match &self.source {
                Source::Arrays(arrays) => Ok(Batch {
                    span: from..to,
                    indices: (from..to).collect(),
                    inputs: arrays
                        .iter()
                        .map(|a| {
                            let mut shape = vec![to - from];
                            shape.extend(&a.shape[1..]);
                            Tensor::f32(shape, a.f32_rows(from, to))
                        })
                        .collect(),
                    targets: None,
                }),
                Source::Images { items, pipe } => {
                    let bytes = match items {
                        Items::Parquet(p) => {
                            let reader = match parquet.take() {
                                Some(r) => r,
                                None => p.reader(from, batch)?,
                            };
                            let (rows, reader) = p.next_rows(reader, to - from)?;
                            parquet = Some(reader);
                            Some(rows)
                        }
                        _ => None,
                    };
                    self.image_batch(from, to, pipe, bytes)
                }
            }
        })
    }

    fn image_batch(&self, from: usize, to: usize, pipe: &Pipe, rows: Option<Vec<Row>>) -> Result<Batch> {
        let numel = pipe.channels * pipe.size.0 * pipe.size.1;
        let mut data = vec![0f32; (to - from) * numel];
        // Err((error, true)) for an image that cannot be read or decoded, which may be skipped.
        let results: Vec<std::result::Result<(), (Error, bool)>> = data
            .par_chunks_mut(numel)
            .enumerate()
            .map(|(k, out)| {
                let i = from + k;
                let img = self.load(i, pipe, rows.as_ref().map(|r| &r[k])).map_err(|e| (e, true))?;
                if (img.h, img.w) != pipe.size {
                    let (height, width) = pipe.size;
                    let e = Error::format(
                        self.name_of(i),
                        format!(
                            "is {}x{} after preprocessing, but the batches are {height}x{width} (the model's size, or \
                             the first image's)",
                            img.h, img.w
                        ),
                    );
                    return Err((e.hint(Hint::CenterCrop { height, width, or: CropAlternative::ExactResize }), false));
                }
                images::to_tensor(&img, &pipe.mean, &pipe.std, pipe.layout, out);
                Ok(())
            })
            .collect();
        let mut indices = Vec::with_capacity(to - from);
        let mut kept = 0;
        for (k, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => {
                    if kept != k {
                        data.copy_within(k * numel..(k + 1) * numel, kept * numel);
                    }
                    kept += 1;
                    indices.push(from + k);
                }
                // A size mismatch is not a bad image: it is a setting to fix.
                Err((e, true)) if self.skip_bad_images => {
                    if let Ok(mut s) = self.skipped.lock() {
                        s.push(crate::error::chain(&e).trim_end().to_string());
                    }
                }
                Err((e, true)) => return Err(e.hint(crate::error::Hint::SkipBadImages)),
                Err((e, false)) => return Err(e),
            }
        }
        data.truncate(kept * numel);
        let mut shape = vec![kept];
        shape.extend(&self.shapes[0]);
        Ok(Batch { span: from..to, indices, inputs: vec![Tensor::f32(shape, data)], targets: None })
    }
}
