//! The samples a pass runs over, wherever the user keeps them, behind one trait.
//!
//! A [`SampleSource`] hands out batches of the model's inputs (typed tensors, one per named
//! input), with their targets where it carries them. It knows its length where it can (files do;
//! a Python iterator does not), and reads its batches in order, by range where it can (files, for
//! a part of a pass split over machines) or once from the start (an iterator).
//!
//! Path-based sources register a [`SourceKind`] in [`SOURCES`]: which paths are theirs (the
//! first kind that claims a path opens it), whether they may carry labels, and how they open.
//! Opening is detect ([`SourceKind::claims`]) → open (the kind reads what it needs up front: file
//! lists, Parquet footers, array headers) → fit (the source fits the model's inputs: an image
//! source works out its [`ImageGeometry`]). Adding a source is one module implementing these two
//! traits (image sources implement [`ImageItems`] and reuse the image pipeline) and one line in
//! [`SOURCES`].
//!
//! Today's kinds: arrays (`.npy` / `.npz`, [`arrays`]), image folders (torchvision's
//! `ImageFolder` layout, or flat: [`folders`]), Parquet files with an image column (the Hugging
//! Face layout: [`parquet`]), `datasets`' `save_to_disk` folders and Arrow files ([`saved`]);
//! uint8 image arrays go through the same image pipeline. Images are
//! decoded and preprocessed batch by batch on all cores (rayon), so memory holds a few batches
//! whatever the size of the set.

pub mod arrays;
pub mod folders;
pub mod masks;
pub mod parquet;
mod pipeline;
pub mod saved;
pub mod subset;
mod targets;

use std::ops::Range;
use std::path::{Path, PathBuf};

pub use folders::{is_image_name, IMAGE_EXTENSIONS};
pub use pipeline::{ImageGeometry, ImageItems, ImageSource, Row};
pub use subset::{Sampling, Subset};
pub use targets::WithTargets;

use super::images::Preprocess;
use crate::batch::{Batch, Tensor};
use crate::error::{Error, Result};
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
    /// The most pixels an image may have, decoded or resized ([`images::DEFAULT_MAX_PIXELS`]:
    /// where Pillow refuses an image as a decompression bomb).
    pub max_image_pixels: u64,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            preprocess: Preprocess::default(),
            image_column: "image".into(),
            label_column: "label".into(),
            skip_bad_images: false,
            max_image_pixels: super::images::DEFAULT_MAX_PIXELS,
        }
    }
}

/// Batches read from a source, in order.
pub type Batches<'a> = Box<dyn Iterator<Item = Result<Batch>> + Send + 'a>;

/// Samples to run a model over.
pub trait SampleSource: Send + Sync {
    /// Samples in the set, where the source knows it up front.
    fn len(&self) -> Option<usize>;

    /// True when the source knows it holds no samples.
    fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Whether batches can start at any sample ([`SampleSource::batches`] with a range that
    /// does not start at 0): true for files; a source read once from the start (a Python
    /// iterator) refuses such ranges.
    fn reads_by_range(&self) -> bool {
        true
    }

    /// The shape of one sample per model input, without the batch dimension, where the source
    /// knows it up front (messages, and the check against the model's declared shapes).
    fn sample_shapes(&self) -> Vec<Vec<usize>>;

    /// The batches of samples `range`, `batch` at a time, in order (the last one partial; a
    /// source of unknown length ends where its samples end). Each holds one tensor per model input
    /// (in the model's order) and, where the source carries them, the samples' targets.
    fn batches(&self, range: Range<usize>, batch: usize) -> Result<Batches<'_>>;

    /// One batch of the samples at `indices`, in that order (a random subset, a shuffled order):
    /// files read any sample. The default reads a run of consecutive indices through
    /// [`SampleSource::batches`] and refuses any other order, as a source read once from the
    /// start must.
    fn batch_at(&self, indices: &[usize]) -> Result<Batch> {
        let first = indices.first().copied().unwrap_or(0);
        if !indices.iter().enumerate().all(|(k, &i)| i == first + k) || !(first == 0 || self.reads_by_range()) {
            return Err(Error::usage(
                "these samples are read only in order: a random subset or a shuffled order needs samples from files",
            ));
        }
        let end = first + indices.len();
        self.batches(first..end, indices.len().max(1))?
            .next()
            .unwrap_or_else(|| Ok(Batch { span: first..first, indices: Vec::new(), inputs: Vec::new(), targets: None }))
    }

    /// Every sample's target, one row per sample, where the source has them up front (class
    /// folders, a Parquet label column, a labels file); a source that reads its targets with its
    /// samples (a Python iterator) has none here but [`SampleSource::has_targets`].
    fn targets(&self) -> Option<&Tensor> {
        None
    }

    /// Whether the batches carry targets.
    fn has_targets(&self) -> bool {
        self.targets().is_some()
    }

    /// The source's own names of its classes (class folders), by index.
    fn classes(&self) -> Option<&[String]> {
        None
    }

    /// Why a source of a kind that may carry targets has none (a Parquet file without the label
    /// column, with the columns it has), for the message of an evaluation that needs them.
    fn why_no_targets(&self) -> Option<String> {
        None
    }

    /// How the samples are read and preprocessed, for summaries and reports (`None` for arrays
    /// fed as they are).
    fn preprocessing(&self) -> Option<String> {
        None
    }

    /// The samples skipped so far because they could not be read (images that do not decode,
    /// with `skip_bad_images`), each with why.
    fn skipped(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether the source makes its batches itself (a Python `DataLoader`'s, as they come):
    /// [`SampleSource::batches`] then ignores the batch size asked for, and a pass checks each
    /// batch it gets rather than the batch size against the number of samples.
    fn own_batches(&self) -> bool {
        false
    }

    /// What outputs and messages call sample `i` (its file, its Parquet file and row), where the
    /// source names its samples; `None` numbers them.
    fn sample_name(&self, _i: usize) -> Option<String> {
        None
    }

    /// What messages call sample `i`'s target where it has a file of its own (a mask).
    fn target_name(&self, _i: usize) -> Option<String> {
        None
    }

    /// Sample `i`'s image file, for images read from files (masks pair with it by name).
    fn image_file(&self, _i: usize) -> Option<PathBuf> {
        None
    }

    /// How images are resized and cropped, and the size they then have, for images (a mask is
    /// transformed as its image is).
    fn image_transform(&self) -> Option<ImageTransform> {
        None
    }
}

/// An image's `Resize` and `CenterCrop`, and the height and width they give.
pub type ImageTransform = (Option<crate::inputs::images::Resize>, Option<(usize, usize)>, (usize, usize));

/// Samples a caller makes itself (the Python module's iterables of arrays), registered under a
/// name with [`provide`] for as long as it holds the returned [`Provided`]: a pass or an
/// evaluation given that name as its inputs opens them instead of a file, so every stage that
/// takes samples takes them with no option of its own.
pub trait Provider: Send + Sync {
    /// Opens the samples for a model with inputs `specs` (called once per pass over them).
    fn open(&self, specs: &[InputSpec], data: &DataOptions) -> Result<Box<dyn SampleSource>>;
}

type Registered = Vec<(std::path::PathBuf, std::sync::Arc<dyn Provider>)>;

static PROVIDED: std::sync::Mutex<Registered> = std::sync::Mutex::new(Vec::new());

fn registered() -> std::sync::MutexGuard<'static, Registered> {
    PROVIDED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A registration of [`provide`]: its name, which opens the samples until it is dropped.
#[derive(Debug)]
pub struct Provided {
    name: std::path::PathBuf,
}

impl Provided {
    /// The name to give as the inputs' path (it also names the samples in messages).
    pub fn path(&self) -> &Path {
        &self.name
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        registered().retain(|(name, _)| name != &self.name);
    }
}

/// Registers `provider` under `name` (`<batches>`), or under `name` with `#2`, `#3`... inside the
/// brackets while another registration holds it (two calls at once in one process).
pub fn provide(name: &str, provider: std::sync::Arc<dyn Provider>) -> Provided {
    let mut all = registered();
    let base = name.trim_end_matches('>');
    let taken = |n: &Path| all.iter().any(|(m, _)| m == n);
    let mut path = std::path::PathBuf::from(name);
    for k in 2.. {
        if !taken(&path) {
            break;
        }
        path = format!("{base}#{k}{}", if base.len() < name.len() { ">" } else { "" }).into();
    }
    all.push((path.clone(), provider));
    Provided { name: path }
}

/// The samples registered under `path`, if any.
fn provided(path: &Path) -> Option<std::sync::Arc<dyn Provider>> {
    registered().iter().find(|(name, _)| name == path).map(|(_, p)| p.clone())
}

/// A kind of source that lives at a path.
pub trait SourceKind: Sync {
    /// What messages call it.
    fn name(&self) -> &'static str;
    /// Whether `path` is a source of this kind (the first kind of [`SOURCES`] that claims it
    /// opens it; the last claims everything).
    fn claims(&self, path: &Path) -> bool;
    /// Whether sources of this kind may carry labels of their own.
    fn may_carry_labels(&self) -> bool;
    /// Opens the source at `path` for a model with inputs `specs`.
    fn open(&self, path: &Path, specs: &[InputSpec], data: &DataOptions) -> Result<Box<dyn SampleSource>>;
}

/// The kinds of source a path can be, in the order they are asked (arrays also read what no kind
/// claims). Image folders claim every directory they might be (to say what is wrong with one that
/// holds no images), so a kind that lives in directories (Parquet, shards of another format)
/// comes before them.
pub static SOURCES: &[&dyn SourceKind] = &[&saved::Saved, &parquet::Parquet, &folders::ImageFolders, &arrays::Arrays];

/// The kind of source that claims `path`, if one does.
pub fn kind_of(path: &Path) -> Option<&'static dyn SourceKind> {
    SOURCES.iter().copied().find(|k| k.claims(path))
}

/// Whether the samples at `path` may carry labels of their own (class folders, a Parquet label
/// column); arrays (`.npy` / `.npz`) never do, so an evaluation of them needs a labels file. A
/// path no kind claims (a missing file) may: opening it says what is wrong.
pub fn carries_labels(path: &Path) -> bool {
    provided(path).is_some() || kind_of(path).is_none_or(|k| k.may_carry_labels())
}

/// The samples of a pass, opened: a [`SampleSource`] and what the user pointed at.
pub struct Samples {
    /// The path they were opened from (for messages).
    pub path: std::path::PathBuf,
    source: Box<dyn SampleSource>,
}

impl std::ops::Deref for Samples {
    type Target = dyn SampleSource;
    fn deref(&self) -> &Self::Target {
        self.source.as_ref()
    }
}

impl Samples {
    /// Opens the samples at `path` for a model with inputs `specs` (see [`SOURCES`]), and checks
    /// that each input's sample shape fits the model's declared shape.
    pub fn open(path: &Path, specs: &[InputSpec], data: &DataOptions) -> Result<Samples> {
        if let Some(provider) = provided(path) {
            return Ok(Samples { path: path.to_path_buf(), source: provider.open(specs, data)? });
        }
        if let Some(what) = not_read(path) {
            return Err(Error::format(path, what));
        }
        // A path no kind claims is read as arrays, whose reader says what is wrong with it.
        let source = kind_of(path).unwrap_or(&arrays::Arrays).open(path, specs, data)?;
        Ok(Samples { path: path.to_path_buf(), source })
    }

    /// The source, for a wrapper that adds to it.
    pub fn into_source(self) -> Box<dyn SampleSource> {
        self.source
    }

    /// Samples from a source made elsewhere (a caller's own), named `path` in messages.
    pub fn from_source(path: impl Into<std::path::PathBuf>, source: Box<dyn SampleSource>) -> Samples {
        Samples { path: path.into(), source }
    }

    /// These samples with the targets of `targets` (one row per sample): a labels file for
    /// samples that carry none.
    pub fn with_targets(self, targets: Tensor) -> Samples {
        Samples { path: self.path, source: Box::new(WithTargets::new(self.source, targets)) }
    }

    /// These samples as `sampling` draws and orders them.
    pub fn sampled(self, sampling: Sampling) -> Result<Samples> {
        let source = Box::new(Subset::new(self.source, sampling)?);
        Ok(Samples { path: self.path, source })
    }

    /// Every sample's class index, where the source has its targets up front as class indices.
    pub fn labels(&self) -> Option<&[i64]> {
        match &self.source.targets()?.values {
            crate::batch::Values::I64(v) => Some(v),
            crate::batch::Values::Held(h) => h.i64(),
            crate::batch::Values::F32(_) => None,
        }
    }
}

/// What a path holds that users have but swa does not read, said as such rather than found out
/// as "not a .npy array": webdataset shards.
fn not_read(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    let convert = "convert it to Parquet (datasets: `ds.to_parquet(\"train.parquet\")`), an image folder or .npy";
    (name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz"))
        .then(|| format!("is a tar archive (a webdataset shard?): swa does not read those; {convert}"))
}

/// Fails unless each of the model's inputs `specs` takes samples of the `shapes` (one per input,
/// without the batch dimension); `what(k)` names the data of input `k` and the hint to attach.
pub(crate) fn check_shapes(
    path: &Path,
    len: usize,
    specs: &[InputSpec],
    shapes: &[Vec<usize>],
    what: impl Fn(usize) -> (String, Option<crate::error::Hint>),
) -> Result<()> {
    for (k, (spec, shape)) in specs.iter().zip(shapes).enumerate() {
        let fits = spec.dims.is_empty()
            || (spec.dims.len() == shape.len() + 1
                && spec.dims.iter().skip(1).zip(shape).all(|(&d, &s)| d < 0 || d as usize == s));
        if !fits {
            let want: Vec<String> = spec.dims.iter().map(|&d| if d < 0 { "?".into() } else { d.to_string() }).collect();
            let (name, hint) = what(k);
            let mut have = vec![len];
            have.extend(shape);
            let e = Error::format(
                path,
                format!("{name} has shape {have:?}, but model input `{}` expects [{}]", spec.name, want.join(", ")),
            );
            return Err(match hint {
                Some(h) => e.hint(h),
                None => e,
            });
        }
    }
    Ok(())
}

/// The class folder names of `path` when it is a directory of class folders (`None` for any
/// other source); used to check that the train, select and eval sets name the same classes.
pub fn class_names(path: &Path) -> Option<Vec<String>> {
    folders::class_names(path)
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
            if only_a.is_empty() { "none".into() } else { folders::list(&only_a) },
            b.display(),
            if only_b.is_empty() { "none".into() } else { folders::list(&only_b) }
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Provider for Nothing {
        fn open(&self, _: &[InputSpec], _: &DataOptions) -> Result<Box<dyn SampleSource>> {
            Err(Error::usage("opened"))
        }
    }

    #[test]
    fn provided_samples_open_by_their_name_while_held_and_names_stay_unique() {
        let a = provide("<batches>", std::sync::Arc::new(Nothing));
        let b = provide("<batches>", std::sync::Arc::new(Nothing));
        assert_eq!((a.path(), b.path()), (Path::new("<batches>"), Path::new("<batches#2>")));
        let opened = Samples::open(b.path(), &[], &DataOptions::default()).err().map(|e| e.to_string());
        assert_eq!(opened.as_deref(), Some("opened"));
        assert!(carries_labels(a.path()));
        drop(b);
        assert!(provided(Path::new("<batches#2>")).is_none());
        assert!(!carries_labels(Path::new("<batches#2>.npy")));
        drop(a);
        assert!(provided(Path::new("<batches>")).is_none());
    }
}
