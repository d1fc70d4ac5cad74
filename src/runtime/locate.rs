//! Finding the ONNX Runtime library, in this order:
//!
//! 1. `ORT_DYLIB_PATH` (an explicit choice wins, and is never second-guessed);
//! 2. beside the executable (a library shipped with the binary);
//! 3. the Python environment the executable belongs to: `pip install swa-tool` puts `swa` in
//!    `<env>/bin` and onnxruntime in `<env>/lib/python3.X/site-packages`, so `<exe>/../lib` is
//!    searched before any other environment that happens to be active;
//! 4. `VIRTUAL_ENV`, then `CONDA_PREFIX`;
//! 5. where `python3 -I` would import `onnxruntime` from;
//! 6. the system library directories.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Which rule found (or would have found) a library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The `ORT_DYLIB_PATH` environment variable.
    OrtDylibPath,
    /// The executable's own directory.
    BesideExecutable,
    /// The Python environment the executable is installed in (`<exe>/../lib/python3.*`).
    OwnEnvironment,
    /// The environment named by `VIRTUAL_ENV`.
    VirtualEnv,
    /// The environment named by `CONDA_PREFIX`.
    CondaPrefix,
    /// Where `python3 -I` imports `onnxruntime` from.
    Python,
    /// A system library directory.
    System,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rule::OrtDylibPath => "ORT_DYLIB_PATH",
            Rule::BesideExecutable => "beside the swa executable",
            Rule::OwnEnvironment => "the Python environment swa is installed in",
            Rule::VirtualEnv => "VIRTUAL_ENV",
            Rule::CondaPrefix => "CONDA_PREFIX",
            Rule::Python => "python3's onnxruntime package",
            Rule::System => "a system library directory",
        })
    }
}

/// Where each rule looks: the inputs of the search, so that tests can plant their own trees.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    /// `ORT_DYLIB_PATH`, when set and not empty.
    pub ort_dylib_path: Option<PathBuf>,
    /// The running executable.
    pub exe: Option<PathBuf>,
    /// `VIRTUAL_ENV`.
    pub virtual_env: Option<PathBuf>,
    /// `CONDA_PREFIX`.
    pub conda_prefix: Option<PathBuf>,
    /// System library directories.
    pub system: Vec<PathBuf>,
}

impl Roots {
    /// This process's environment.
    pub fn from_env() -> Roots {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Roots {
            ort_dylib_path: var("ORT_DYLIB_PATH"),
            exe: std::env::current_exe().ok(),
            virtual_env: var("VIRTUAL_ENV"),
            conda_prefix: var("CONDA_PREFIX"),
            system: ["/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        }
    }

    /// The prefix of the environment the executable is installed in: the parent of its `bin`.
    pub fn own_prefix(&self) -> Option<&Path> {
        self.exe.as_deref()?.parent()?.parent()
    }

    /// Python environments (prefixes) in the order they are searched, with their rules.
    pub fn environments(&self) -> Vec<(Rule, &Path)> {
        let mut envs = Vec::new();
        envs.extend(self.own_prefix().map(|p| (Rule::OwnEnvironment, p)));
        envs.extend(self.virtual_env.as_deref().map(|p| (Rule::VirtualEnv, p)));
        envs.extend(self.conda_prefix.as_deref().map(|p| (Rule::CondaPrefix, p)));
        envs
    }
}

/// The `site-packages` (and Debian's `dist-packages`) directories of a Python environment:
/// `<prefix>/lib{,64}/python3*/{site,dist}-packages`, newest Python first.
pub fn site_packages(prefix: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("python3")))
            .map(|e| e.path())
            .collect();
        pythons.sort_by_key(|p| std::cmp::Reverse(python_minor(p)));
        for python in pythons {
            for name in ["site-packages", "dist-packages"] {
                let dir = python.join(name);
                if dir.is_dir() && !dirs.iter().any(|d| same_file(d, &dir)) {
                    dirs.push(dir);
                }
            }
        }
    }
    dirs
}

fn python_minor(dir: &Path) -> u32 {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("python3."))
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// True when both paths exist and are the same file or directory.
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// The newest `libonnxruntime.so*` in `dir`.
pub fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Directories where a Python installation keeps `onnxruntime/capi` according to `python3 -I`
/// (isolated mode: no `PYTHONPATH`, no user site, no current directory on `sys.path`), run from
/// `/`, so a package planted in the working directory is never what it finds.
pub fn python_package_dirs() -> Vec<PathBuf> {
    let script = "import importlib.util as u, os\ns = u.find_spec('onnxruntime')\nif s and s.origin: print(os.path.join(os.path.dirname(s.origin), 'capi'))";
    for python in ["python3", "python"] {
        if let Ok(out) = std::process::Command::new(python)
            .args(["-I", "-c", script])
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
        {
            return String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect();
        }
    }
    Vec::new()
}

/// True for a directory that environment or Python discovery may offer: an absolute path that is
/// not the working directory (a relative path would be looked up in it). The executable's own
/// directory is always allowed: whoever can write there controls `swa` itself.
pub fn is_library_location(dir: &Path) -> bool {
    if !dir.is_absolute() {
        return false;
    }
    !std::env::current_dir().is_ok_and(|cwd| same_file(dir, &cwd))
}

/// The library found, and how.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The library file.
    pub path: PathBuf,
    /// The rule that found it.
    pub rule: Rule,
}

/// What a search looked at and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    /// The library, if any.
    pub found: Option<Found>,
    /// Every place looked at, in order, up to the one that had it.
    pub looked: Vec<(Rule, PathBuf)>,
}

impl Search {
    /// The places looked at, for a message.
    pub fn looked_text(&self) -> String {
        self.looked.iter().map(|(rule, p)| format!("{} ({rule})", p.display())).collect::<Vec<_>>().join(", ")
    }
}

/// Searches `roots` in the order of the module's documentation; `python` is asked only when
/// nothing before it had a library.
pub fn search(roots: &Roots, python: impl FnOnce() -> Vec<PathBuf>) -> Search {
    let mut looked = Vec::new();
    if let Some(p) = &roots.ort_dylib_path {
        looked.push((Rule::OrtDylibPath, p.clone()));
        let found = p.is_file().then(|| Found { path: p.clone(), rule: Rule::OrtDylibPath });
        return Search { found, looked };
    }
    let mut dirs: Vec<(Rule, PathBuf)> = Vec::new();
    dirs.extend(roots.exe.as_deref().and_then(Path::parent).map(|d| (Rule::BesideExecutable, d.to_path_buf())));
    for (rule, prefix) in roots.environments() {
        dirs.extend(
            site_packages(prefix)
                .into_iter()
                .map(|sp| (rule, sp.join("onnxruntime/capi")))
                .filter(|(_, d)| is_library_location(d)),
        );
    }
    if let Some(found) = first(&dirs, &mut looked) {
        return Search { found: Some(found), looked };
    }
    let python: Vec<(Rule, PathBuf)> =
        python().into_iter().filter(|d| is_library_location(d)).map(|d| (Rule::Python, d)).collect();
    let system: Vec<(Rule, PathBuf)> = roots.system.iter().map(|d| (Rule::System, d.clone())).collect();
    let found = first(&python, &mut looked).or_else(|| first(&system, &mut looked));
    Search { found, looked }
}

fn first(dirs: &[(Rule, PathBuf)], looked: &mut Vec<(Rule, PathBuf)>) -> Option<Found> {
    for (rule, dir) in dirs {
        if looked.iter().any(|(_, d)| d == dir) {
            continue;
        }
        looked.push((*rule, dir.clone()));
        if let Some(path) = library_in(dir) {
            return Some(Found { path, rule: *rule });
        }
    }
    None
}

/// The `site-packages` directory that holds the library, when it is a Python package's
/// (`<site-packages>/onnxruntime/capi/libonnxruntime.so*`).
pub fn site_packages_of(library: &Path) -> Option<PathBuf> {
    let capi = library.parent()?;
    let package = capi.parent()?;
    (capi.file_name()? == "capi" && package.file_name()? == "onnxruntime")
        .then(|| package.parent().map(Path::to_path_buf))?
}

/// The ONNX Runtime distributions pip installed in `site_packages` (`onnxruntime 1.32.0`,
/// `onnxruntime_gpu 1.31.1`), from their `.dist-info` directories.
pub fn onnxruntime_distributions(site_packages: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(site_packages) else { return Vec::new() };
    let mut found: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".dist-info")?.to_string();
            let (dist, version) = name.split_once('-')?;
            (dist == "onnxruntime" || dist.starts_with("onnxruntime_")).then(|| format!("{dist} {version}"))
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    /// A fake environment at `prefix` with onnxruntime installed for Python 3.11.
    fn env_with_ort(prefix: &Path) -> PathBuf {
        let lib = prefix.join("lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0");
        touch(&lib);
        lib
    }

    #[test]
    fn the_environment_swa_is_installed_in_comes_before_any_active_one() {
        let t = tempfile::tempdir().unwrap();
        let own = env_with_ort(&t.path().join("own"));
        let active = env_with_ort(&t.path().join("active"));
        let conda = env_with_ort(&t.path().join("conda"));
        touch(&t.path().join("own/bin/swa"));
        let roots = Roots {
            exe: Some(t.path().join("own/bin/swa")),
            virtual_env: Some(t.path().join("active")),
            conda_prefix: Some(t.path().join("conda")),
            ..Roots::default()
        };
        let s = search(&roots, || panic!("python is not asked when an environment has it"));
        let found = s.found.unwrap();
        assert_eq!((found.path, found.rule), (own.clone(), Rule::OwnEnvironment));

        // Without it, VIRTUAL_ENV, then CONDA_PREFIX.
        std::fs::remove_file(&own).unwrap();
        let found = search(&roots, Vec::new).found.unwrap();
        assert_eq!((found.path, found.rule), (active.clone(), Rule::VirtualEnv));
        std::fs::remove_file(&active).unwrap();
        let s = search(&roots, Vec::new);
        assert_eq!(s.found.as_ref().map(|f| (&f.path, f.rule)), Some((&conda, Rule::CondaPrefix)));
        let rules: Vec<Rule> = s.looked.iter().map(|(r, _)| *r).collect();
        assert_eq!(rules, [Rule::BesideExecutable, Rule::OwnEnvironment, Rule::VirtualEnv, Rule::CondaPrefix]);
    }

    #[test]
    fn ort_dylib_path_wins_and_beside_the_executable_comes_next() {
        let t = tempfile::tempdir().unwrap();
        env_with_ort(&t.path().join("own"));
        let beside = t.path().join("own/bin/libonnxruntime.so.1.31.0");
        touch(&beside);
        let explicit = t.path().join("elsewhere/libonnxruntime.so");
        touch(&explicit);
        let mut roots = Roots { exe: Some(t.path().join("own/bin/swa")), ..Roots::default() };
        let found = search(&roots, Vec::new).found.unwrap();
        assert_eq!((found.path, found.rule), (beside, Rule::BesideExecutable));
        roots.ort_dylib_path = Some(explicit.clone());
        let found = search(&roots, Vec::new).found.unwrap();
        assert_eq!((found.path, found.rule), (explicit, Rule::OrtDylibPath));
        // A wrong ORT_DYLIB_PATH is an error, not a reason to look elsewhere.
        roots.ort_dylib_path = Some(t.path().join("missing.so"));
        let s = search(&roots, || panic!("not asked"));
        assert!(s.found.is_none());
        assert_eq!(s.looked.len(), 1);
    }

    #[test]
    fn python_and_then_the_system_when_no_environment_has_it() {
        let t = tempfile::tempdir().unwrap();
        let system = t.path().join("usr/lib/libonnxruntime.so.1.31.0");
        touch(&system);
        let capi = t.path().join("py/onnxruntime/capi");
        let roots = Roots {
            exe: Some(t.path().join("bin/swa")),
            system: vec![t.path().join("usr/local/lib"), t.path().join("usr/lib")],
            ..Roots::default()
        };
        let s = search(&roots, || vec![capi.clone(), PathBuf::from("relative/capi")]);
        let found = s.found.unwrap();
        assert_eq!((found.path, found.rule), (system, Rule::System));
        assert!(s.looked.contains(&(Rule::Python, capi.clone())), "{:?}", s.looked);
        assert!(!s.looked.iter().any(|(_, d)| d.is_relative()), "relative paths are never looked at");
        let python = capi.join("libonnxruntime.so.1.32.0");
        touch(&python);
        let found = search(&roots, || vec![capi.clone()]).found.unwrap();
        assert_eq!((found.path, found.rule), (python, Rule::Python));
    }

    #[test]
    fn site_packages_are_found_for_every_python_and_debian_layout() {
        let t = tempfile::tempdir().unwrap();
        for d in ["lib/python3.9/site-packages", "lib/python3.12/site-packages", "lib/python3.12/dist-packages"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let got = site_packages(t.path());
        let want: Vec<PathBuf> =
            ["lib/python3.12/site-packages", "lib/python3.12/dist-packages", "lib/python3.9/site-packages"]
                .iter()
                .map(|d| t.path().join(d))
                .collect();
        assert_eq!(got, want);
        assert_eq!(
            site_packages_of(&t.path().join("sp/onnxruntime/capi/libonnxruntime.so.1.32.0")),
            Some(t.path().join("sp"))
        );
        assert_eq!(site_packages_of(Path::new("/usr/lib/libonnxruntime.so")), None);
    }

    #[test]
    fn the_working_directory_and_relative_paths_are_never_library_locations() {
        assert!(!is_library_location(Path::new("onnxruntime/capi")));
        assert!(!is_library_location(Path::new(".")));
        assert!(!is_library_location(&std::env::current_dir().unwrap()));
        assert!(is_library_location(Path::new("/usr/lib")));
    }
}
