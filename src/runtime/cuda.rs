//! The CUDA and cuDNN libraries that ONNX Runtime's CUDA provider needs, found where pip installs
//! them — as PyTorch and `onnxruntime.preload_dlls()` find them — and loaded before the provider,
//! so that a Python environment with `onnxruntime-gpu[cuda,cudnn]` (or a CUDA 13 PyTorch) needs no
//! `LD_LIBRARY_PATH`.
//!
//! Two layouts under `site-packages/nvidia/`: since CUDA 13 NVIDIA's wheels (`nvidia-cuda-runtime`,
//! `nvidia-cublas`, … 13.x) share one `cu13/lib`; earlier ones had a directory per component
//! (`cuda_runtime/lib`, `cublas/lib`, …). cuDNN keeps `cudnn/lib` (`nvidia-cudnn-cu13`).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The CUDA major version the CUDA provider of onnxruntime-gpu ≥ 1.31 on PyPI is built for.
pub const CUDA_MAJOR: u32 = 13;
/// The cuDNN major version it needs.
pub const CUDNN_MAJOR: u32 = 9;

/// One library the CUDA provider needs (or may use).
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// File-name stem, without the version: `libcudart.so`.
    pub stem: &'static str,
    /// The major version (the soname's suffix).
    pub major: u32,
    /// Directories under `site-packages` where pip's wheels put it, newest layout first.
    pub dirs: &'static [&'static str],
    /// The pip requirement that installs it.
    pub package: &'static str,
    /// Needed by the provider; the others are loaded when present.
    pub required: bool,
}

const CU13: &str = "nvidia/cu13/lib";

/// In load order: each after what it links to.
pub const WANTED: &[Wanted] = &[
    Wanted {
        stem: "libcudart.so",
        major: CUDA_MAJOR,
        dirs: &[CU13, "nvidia/cuda_runtime/lib"],
        package: "nvidia-cuda-runtime==13.*",
        required: true,
    },
    Wanted {
        stem: "libnvJitLink.so",
        major: CUDA_MAJOR,
        dirs: &[CU13, "nvidia/nvjitlink/lib"],
        package: "nvidia-nvjitlink==13.*",
        required: false,
    },
    Wanted {
        stem: "libcublasLt.so",
        major: CUDA_MAJOR,
        dirs: &[CU13, "nvidia/cublas/lib"],
        package: "nvidia-cublas==13.*",
        required: true,
    },
    Wanted {
        stem: "libcublas.so",
        major: CUDA_MAJOR,
        dirs: &[CU13, "nvidia/cublas/lib"],
        package: "nvidia-cublas==13.*",
        required: true,
    },
    Wanted {
        stem: "libnvrtc.so",
        major: CUDA_MAJOR,
        dirs: &[CU13, "nvidia/cuda_nvrtc/lib"],
        package: "nvidia-cuda-nvrtc==13.*",
        required: false,
    },
    Wanted {
        stem: "libcurand.so",
        major: 10,
        dirs: &[CU13, "nvidia/curand/lib"],
        package: "nvidia-curand==10.*",
        required: true,
    },
    Wanted {
        stem: "libcufft.so",
        major: 12,
        dirs: &[CU13, "nvidia/cufft/lib"],
        package: "nvidia-cufft==12.*",
        required: true,
    },
    Wanted {
        stem: "libcudnn.so",
        major: CUDNN_MAJOR,
        dirs: &["nvidia/cudnn/lib"],
        package: "nvidia-cudnn-cu13==9.*",
        required: true,
    },
];

/// What pip installs all of them with.
pub const ALL_PACKAGES: &str = "pip install \"onnxruntime-gpu[cuda,cudnn]\" (swa-tool-gpu depends on it)";

/// Where a library was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Location {
    /// In a pip package's directory.
    Pip(PathBuf),
    /// By the system's loader (`LD_LIBRARY_PATH`, `ldconfig`'s cache).
    System,
    /// Nowhere.
    Missing,
}

/// One library's search.
#[derive(Debug, Clone, Serialize)]
pub struct Library {
    /// Its soname: `libcudart.so.13`.
    pub soname: String,
    /// Where it was found.
    pub location: Location,
    /// Every directory looked in.
    pub looked: Vec<PathBuf>,
    /// Files of the same library with another major version (`libcudart.so.12`): CUDA 12 wheels.
    pub other_versions: Vec<PathBuf>,
    /// The pip requirement that installs it.
    pub package: &'static str,
    /// Whether the provider needs it.
    pub required: bool,
    /// Why loading it failed, when [`preload`] tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
}

impl Library {
    /// The major version of a file named `<stem>.<major>[.minor…]`.
    fn major_of(stem: &str, file: &Path) -> Option<u32> {
        let rest = file.file_name()?.to_str()?.strip_prefix(stem)?.strip_prefix('.')?;
        rest.split('.').next()?.parse().ok()
    }
}

/// The search for every library in [`WANTED`].
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    /// The `site-packages` directories searched, in order.
    pub site_packages: Vec<PathBuf>,
    /// One entry per wanted library, in load order.
    pub libraries: Vec<Library>,
}

/// Searches `site_packages` (in order; the first that has a library wins) for every library;
/// `system(soname)` says whether the system's loader has one that pip's directories lack.
pub fn search(site_packages: &[PathBuf], system: impl Fn(&str) -> bool) -> Search {
    let libraries = WANTED
        .iter()
        .map(|w| {
            let soname = format!("{}.{}", w.stem, w.major);
            let mut looked = Vec::new();
            let mut found = None;
            let mut other_versions = Vec::new();
            for sp in site_packages {
                for dir in w.dirs.iter().map(|d| sp.join(d)) {
                    if looked.contains(&dir) {
                        continue;
                    }
                    let file = dir.join(&soname);
                    // Only where no one but root and this user could have put it (as for ONNX Runtime).
                    if found.is_none() && file.is_file() && super::locate::is_library_location(&dir) {
                        found = Some(file);
                    }
                    if let Ok(entries) = std::fs::read_dir(&dir) {
                        let mut others: Vec<PathBuf> = entries
                            .flatten()
                            .map(|e| e.path())
                            .filter(|p| Library::major_of(w.stem, p).is_some_and(|m| m != w.major))
                            .collect();
                        others.sort();
                        other_versions.extend(others);
                    }
                    looked.push(dir);
                }
            }
            let location = match found {
                Some(p) => Location::Pip(p),
                None if system(&soname) => Location::System,
                None => Location::Missing,
            };
            Library {
                soname,
                location,
                looked,
                other_versions,
                package: w.package,
                required: w.required,
                load_error: None,
            }
        })
        .collect();
    Search { site_packages: site_packages.to_vec(), libraries }
}

impl Search {
    /// The required libraries that are missing, or that failed to load.
    pub fn problems(&self) -> impl Iterator<Item = &Library> {
        self.libraries.iter().filter(|l| l.required && (l.location == Location::Missing || l.load_error.is_some()))
    }

    /// What is wrong and what to install, one clause per library; empty when nothing is.
    pub fn explain(&self) -> String {
        let mut parts = Vec::new();
        for l in self.problems() {
            let mut s = match &l.load_error {
                Some(e) => format!("{} failed to load ({e})", l.soname),
                None => {
                    let mut places: Vec<String> = l.looked.iter().map(|d| d.display().to_string()).collect();
                    places.push("the system's library path".into());
                    format!("{} is missing (looked in {})", l.soname, places.join(", "))
                }
            };
            if !l.other_versions.is_empty() {
                let others: Vec<String> = l.other_versions.iter().map(|p| p.display().to_string()).collect();
                s.push_str(&format!("; found only other major versions: {}", others.join(", ")));
            }
            s.push_str(&format!(": pip install \"{}\"", l.package));
            parts.push(s);
        }
        if parts.is_empty() {
            return String::new();
        }
        format!(
            "the CUDA provider needs CUDA {CUDA_MAJOR} and cuDNN {CUDNN_MAJOR}: {}; or all of them at once: {ALL_PACKAGES}",
            parts.join("; ")
        )
    }
}

/// Loads every library found in pip's directories, in order, with `RTLD_GLOBAL`, so that the
/// CUDA provider's own `dlopen` finds them already loaded; failures are recorded in the search.
/// The handles are never closed: the libraries stay for the life of the process.
pub fn preload(search: &mut Search) {
    for l in &mut search.libraries {
        if let Location::Pip(path) = &l.location {
            if let Err(e) = dlopen(path.as_os_str(), libc::RTLD_NOW | libc::RTLD_GLOBAL) {
                l.load_error = Some(e);
            }
        }
    }
}

/// True when the system's loader finds `soname` (it stays loaded, as the provider would load it).
pub fn system_has(soname: &str) -> bool {
    dlopen(std::ffi::OsStr::new(soname), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_ok()
}

fn dlopen(name: &std::ffi::OsStr, flags: i32) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(name.as_bytes()).map_err(|_| "a NUL in the path".to_string())?;
    // SAFETY: `c` is a valid C string; loading a library runs its initialisers, which is what
    // loading the CUDA provider would do anyway.
    let handle = unsafe { libc::dlopen(c.as_ptr(), flags) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns null or a C string valid until the next dl* call on this thread.
    let err = unsafe { libc::dlerror() };
    Err(if err.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: not null, so a C string that stays valid until the next dl* call on this thread.
        unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    const CU13_FILES: &[&str] = &[
        "nvidia/cu13/lib/libcudart.so.13",
        "nvidia/cu13/lib/libcublasLt.so.13",
        "nvidia/cu13/lib/libcublas.so.13",
        "nvidia/cu13/lib/libcurand.so.10",
        "nvidia/cu13/lib/libcufft.so.12",
        "nvidia/cudnn/lib/libcudnn.so.9",
    ];

    #[test]
    fn the_cuda_13_layout_of_pip_and_pytorch_is_found() {
        let t = tempfile::tempdir().unwrap();
        for f in CU13_FILES {
            touch(&t.path().join(f));
        }
        let s = search(&[t.path().to_path_buf()], |_| false);
        for f in CU13_FILES {
            let name = Path::new(f).file_name().unwrap().to_str().unwrap();
            let l = s.libraries.iter().find(|l| l.soname == name).unwrap();
            assert_eq!(l.location, Location::Pip(t.path().join(f)));
        }
        assert_eq!(s.problems().count(), 0);
        assert_eq!(s.explain(), "");
        // The optional ones are looked for but not required.
        let nvrtc = s.libraries.iter().find(|l| l.soname == "libnvrtc.so.13").unwrap();
        assert_eq!(nvrtc.location, Location::Missing);
    }

    #[test]
    fn the_per_component_layout_is_found_and_the_first_site_packages_wins() {
        let t = tempfile::tempdir().unwrap();
        let (first, second) = (t.path().join("a"), t.path().join("b"));
        for f in [
            "nvidia/cuda_runtime/lib/libcudart.so.13",
            "nvidia/cublas/lib/libcublasLt.so.13",
            "nvidia/cublas/lib/libcublas.so.13",
            "nvidia/curand/lib/libcurand.so.10",
            "nvidia/cufft/lib/libcufft.so.12",
        ] {
            touch(&second.join(f));
        }
        touch(&first.join("nvidia/cu13/lib/libcudart.so.13"));
        touch(&second.join("nvidia/cudnn/lib/libcudnn.so.9"));
        let s = search(&[first.clone(), second.clone()], |_| false);
        let at = |name: &str| s.libraries.iter().find(|l| l.soname == name).unwrap().location.clone();
        assert_eq!(at("libcudart.so.13"), Location::Pip(first.join("nvidia/cu13/lib/libcudart.so.13")));
        assert_eq!(at("libcublas.so.13"), Location::Pip(second.join("nvidia/cublas/lib/libcublas.so.13")));
        assert_eq!(at("libcudnn.so.9"), Location::Pip(second.join("nvidia/cudnn/lib/libcudnn.so.9")));
        assert_eq!(s.problems().count(), 0);
    }

    #[test]
    fn a_wrong_major_version_names_what_was_looked_for_and_the_package() {
        let t = tempfile::tempdir().unwrap();
        for f in CU13_FILES.iter().filter(|f| !f.contains("cudart")) {
            touch(&t.path().join(f));
        }
        let cuda12 = t.path().join("nvidia/cuda_runtime/lib/libcudart.so.12");
        touch(&cuda12);
        let s = search(&[t.path().to_path_buf()], |_| false);
        let problems: Vec<&str> = s.problems().map(|l| l.soname.as_str()).collect();
        assert_eq!(problems, ["libcudart.so.13"]);
        let text = s.explain();
        for want in [
            "CUDA 13 and cuDNN 9",
            "libcudart.so.13 is missing",
            &t.path().join("nvidia/cu13/lib").display().to_string(),
            &t.path().join("nvidia/cuda_runtime/lib").display().to_string(),
            &format!("found only other major versions: {}", cuda12.display()),
            "pip install \"nvidia-cuda-runtime==13.*\"",
            "onnxruntime-gpu[cuda,cudnn]",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        // The system's loader having it is enough.
        let s = search(&[t.path().to_path_buf()], |soname| soname == "libcudart.so.13");
        assert_eq!(s.problems().count(), 0, "{}", s.explain());
    }

    #[test]
    fn nothing_installed_lists_every_required_library_and_its_package() {
        let t = tempfile::tempdir().unwrap();
        let s = search(&[t.path().to_path_buf()], |_| false);
        let text = s.explain();
        for w in WANTED.iter().filter(|w| w.required) {
            assert!(text.contains(&format!("{}.{} is missing", w.stem, w.major)), "{text}");
            assert!(text.contains(w.package), "{text}");
        }
        assert!(!text.contains("libnvrtc"), "optional libraries are not demanded: {text}");
        assert!(search(&[], |_| false).explain().contains("is missing (looked in the system's library path)"));
    }

    #[test]
    fn a_file_that_is_not_a_library_is_a_load_error() {
        let t = tempfile::tempdir().unwrap();
        for f in CU13_FILES {
            touch(&t.path().join(f));
        }
        let mut s = search(&[t.path().to_path_buf()], |_| false);
        preload(&mut s);
        let cudart = &s.libraries[0];
        assert!(cudart.load_error.is_some(), "an empty file cannot be loaded");
        assert!(s.explain().contains("libcudart.so.13 failed to load"), "{}", s.explain());
    }
}
