//! Image folders: torchvision's `ImageFolder` layout (one folder of images per class, labels from
//! the sorted folder names) or a flat folder of images, walked as torchvision walks them.

use std::path::{Path, PathBuf};

use super::pipeline::{ImageItems, ImageSource, Row};
use super::{DataOptions, SampleSource, SourceKind};
use crate::batch::Tensor;
use crate::error::{Error, Result};
use crate::inputs::images::{self, Image8};
use crate::onnx::InputSpec;

/// File name extensions of images, as torchvision's `IMG_EXTENSIONS` (lower-cased) lists those
/// swa decodes.
pub const IMAGE_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "bmp", "ppm", "pgm", "tif", "tiff", "webp"];

/// True for a file name with an image extension.
pub fn is_image_name(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMAGE_EXTENSIONS.iter().any(|e| lower.ends_with(&format!(".{e}")))
}

/// A folder of class folders of images, or a flat folder of images (and a single image, which is
/// explained).
pub struct ImageFolders;

impl SourceKind for ImageFolders {
    fn name(&self) -> &'static str {
        "image folder"
    }

    /// Directories (but those named like arrays, and Parquet folders), and image files.
    fn claims(&self, path: &Path) -> bool {
        let lower = path.to_string_lossy().to_lowercase();
        let arrays = lower.ends_with(".npy") || lower.ends_with(".npz");
        if path.is_dir() {
            !arrays
        } else {
            // A missing one is no source: its reader says it is not there.
            is_image_name(&lower) && path.exists()
        }
    }

    fn may_carry_labels(&self) -> bool {
        true
    }

    fn open(&self, path: &Path, specs: &[InputSpec], data: &DataOptions) -> Result<Box<dyn SampleSource>> {
        if !path.is_dir() {
            return Err(Error::format(
                path,
                "is a single image: point at the folder that holds the images (class folders for labels)",
            ));
        }
        let (files, labels, classes) = match describe_dir(path)? {
            DirKind::Parquet(_) => return super::parquet::Parquet.open(path, specs, data),
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
                let names: Vec<String> = classes.iter().map(|c| c.to_string_lossy().into_owned()).collect();
                // `data/` holding `train/` and `test/` reads as two classes, as ImageFolder reads
                // it: almost never what is meant.
                const SPLITS: [&str; 7] = ["train", "test", "val", "valid", "validation", "eval", "dev"];
                if names.len() > 1 && names.iter().all(|n| SPLITS.contains(&n.to_lowercase().as_str())) {
                    crate::error::warn(format!(
                        "{}: its class folders are named {}, like a dataset's splits: it is read as {} classes; to \
                         read one split, point at it (e.g. {})",
                        path.display(),
                        names.join(", "),
                        names.len(),
                        path.join(&names[0]).display()
                    ));
                }
                (files, Some(labels), Some(names))
            }
            DirKind::Flat(other) => {
                if !other.is_empty() {
                    return Err(not_images(path, &other));
                }
                (class_images(path, "")?, None, None)
            }
        };
        let classes: Option<Vec<String>> = classes;
        let items = ImageFiles { files, classes: classes.as_ref().map(Vec::len) };
        let targets = labels.map(|l| Tensor::i64(vec![l.len()], l));
        Ok(Box::new(ImageSource::fit(path, items, specs, data, targets, classes)?))
    }
}

/// Image files, read and decoded on all cores.
struct ImageFiles {
    files: Vec<PathBuf>,
    /// Classes, for the description.
    classes: Option<usize>,
}

impl ImageItems for ImageFiles {
    type Cursor = ();

    fn len(&self) -> usize {
        self.files.len()
    }

    fn name_of(&self, i: usize) -> String {
        self.files[i].display().to_string()
    }

    fn describe(&self) -> String {
        match self.classes {
            Some(c) => format!("image folder ({c} classes)"),
            None => "images".to_string(),
        }
    }

    fn read(&self, from: usize, to: usize, _batch: usize, _cursor: &mut Option<()>) -> Result<Vec<Option<Row>>> {
        Ok(vec![None; to - from])
    }

    fn file(&self, i: usize) -> Option<PathBuf> {
        self.files.get(i).cloned()
    }

    fn image(&self, i: usize, _read: Option<&Row>, how: &images::Decode) -> Result<Image8> {
        let bytes = crate::fs::read_regular(&self.files[i])?;
        images::decode(&bytes, how).map_err(|bad| bad.named(self.name_of(i)))
    }
}

/// What an image source is: a directory of images with class folders, a flat one, or Parquet.
/// Hidden entries (`.DS_Store`, `.ipynb_checkpoints`) are not samples or classes.
pub(super) fn describe_dir(path: &Path) -> Result<DirKind> {
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
    // A Hugging Face Hub dataset repository as downloaded (`README.md` and the splits' Parquet
    // files in `data/`): its `data/` folder.
    let data = path.join("data");
    if images == 0 && parquet.is_empty() && other.iter().any(|o| o == "README.md") && data.is_dir() {
        if let DirKind::Parquet(files) = describe_dir(&data)? {
            return Ok(DirKind::Parquet(files));
        }
    }
    match (parquet.is_empty(), subdirs.is_empty(), images) {
        (false, true, 0) if other.is_empty() => Ok(DirKind::Parquet(super::parquet::one_split(path, parquet)?)),
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

pub(super) enum DirKind {
    Parquet(Vec<PathBuf>),
    /// Class folder names, sorted; files beside them that are not images.
    Classes(Vec<std::ffi::OsString>, Vec<String>),
    /// Files that are not images.
    Flat(Vec<String>),
}

pub(super) fn list(names: &[String]) -> String {
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
