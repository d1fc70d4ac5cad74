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
//!
//! Except for `ORT_DYLIB_PATH`, a directory is skipped (and said so) when someone other than
//! root and the user running `swa` could have put a library there ([`untrusted`]): the working
//! directory, a directory writable by everyone (a copy of `swa` in `/tmp`) or by a group that is
//! not its owner's own, or one owned by another user. Of the `libonnxruntime.so[.N[.N[.N]]]` in a
//! directory, the highest version wins, and a version below 1.31 is not a candidate.

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
    /// The working directory: never a place to load a library from.
    pub cwd: Option<PathBuf>,
}

/// The environment swa is installed in, where the executable does not say it: in the Python
/// module the executable is the interpreter, whose real path (a venv's `bin/python` links to the
/// system's) is outside the environment.
static OWN_PREFIX: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Tells the search the prefix of the environment swa is installed in (first call wins).
pub fn set_own_prefix(prefix: PathBuf) {
    let _ = OWN_PREFIX.set(prefix);
}

impl Roots {
    /// This process's environment.
    pub fn from_env() -> Roots {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Roots {
            ort_dylib_path: var("ORT_DYLIB_PATH"),
            // In the Python module the executable is the interpreter: nothing to look beside.
            exe: if OWN_PREFIX.get().is_some() { None } else { std::env::current_exe().ok() },
            virtual_env: var("VIRTUAL_ENV"),
            conda_prefix: var("CONDA_PREFIX"),
            system: ["/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            cwd: std::env::current_dir().ok(),
        }
    }

    /// The prefix of the environment swa is installed in: the one the process was told
    /// ([`set_own_prefix`]: the Python module's `sys.prefix`), else the parent of the
    /// executable's `bin`.
    pub fn own_prefix(&self) -> Option<&Path> {
        match OWN_PREFIX.get() {
            Some(prefix) => Some(prefix),
            None => self.exe.as_deref()?.parent()?.parent(),
        }
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

/// The oldest ONNX Runtime `swa` works with.
pub const MIN_VERSION: (u32, u32) = (1, 31);

/// The version a library's file name carries: `Some(vec![])` for `libonnxruntime.so`,
/// `Some(vec![1, 32, 0])` for `libonnxruntime.so.1.32.0`; `None` for any other name (`.so.bak`,
/// `.so.1.32.0~`), which is not a candidate.
pub fn version_of_name(name: &str) -> Option<Vec<u32>> {
    let rest = name.strip_prefix("libonnxruntime.so")?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let parts: Vec<&str> = rest.strip_prefix('.')?.split('.').collect();
    // Digits only, without leading zeros (`.so.01.32` is no name ONNX Runtime gives its library).
    let number = |p: &&str| {
        !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()) && (p.len() == 1 || !p.starts_with('0'))
    };
    if parts.len() > 3 || !parts.iter().all(number) {
        return None;
    }
    Some(parts.iter().map(|p| p.parse().expect("digits")).collect())
}

/// Whether a library named with `version` may be loaded: no version (`libonnxruntime.so`) or a
/// major alone (the soname `libonnxruntime.so.1`) say nothing against it; a full version below
/// [`MIN_VERSION`] is too old.
fn recent_enough(version: &[u32]) -> bool {
    match version {
        [] => true,
        [major] => *major >= MIN_VERSION.0,
        [major, minor, ..] => (*major, *minor) >= MIN_VERSION,
    }
}

/// The `libonnxruntime.so[.N[.N[.N]]]` in `dir` with the highest version (≥ 1.31; a name that
/// says less, `libonnxruntime.so` or `.so.1`, ranks below every full version).
pub fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| Some((version_of_name(p.file_name()?.to_str()?)?, p)))
        .filter(|(v, p)| recent_enough(v) && p.is_file())
        .collect();
    // Fewer parts rank lower: [] < [1] < [1, 31] < [1, 32, 0].
    found.sort_by(|a, b| (a.0.len() >= 2, &a.0).cmp(&(b.0.len() >= 2, &b.0)));
    found.pop().map(|(_, p)| p)
}

/// Why a library in `dir` must not be loaded, or `None` when only root and the user running
/// `swa` could have put it there: `dir` is absolute, is not the working directory `cwd` (which
/// is wherever the user happens to be), is owned by root or that user, and is writable by neither
/// everyone nor a group other than its owner's own.
pub fn untrusted(dir: &Path, cwd: Option<&Path>) -> Option<String> {
    if !dir.is_absolute() {
        return Some("a relative path is looked up in the working directory".into());
    }
    if cwd.is_some_and(|cwd| same_file(dir, cwd)) {
        return Some("it is the working directory".into());
    }
    let meta = std::fs::metadata(dir).ok()?;
    others_could_write(&meta).map(|what| format!("it is {what}"))
}

/// What makes a file or directory writable by someone other than root and the user running
/// `swa` ("writable by everyone", ...), or `None`.
fn others_could_write(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let (uid, gid, mode) = (meta.uid(), meta.gid(), meta.mode());
    if mode & 0o002 != 0 {
        Some("writable by everyone".into())
    } else if uid != 0 && uid != me {
        Some(format!("owned by user {uid}, neither root nor you"))
    } else if mode & 0o020 != 0 && primary_group(uid) != Some(gid) {
        Some(format!("writable by group {gid}, which is not its owner's own group"))
    } else {
        None
    }
}

/// The primary group of user `uid`, from the user database.
fn primary_group(uid: u32) -> Option<u32> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwuid_r writes into it and `buf` only.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is its size.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then_some(pw.pw_gid)
}

/// Why the library `file` (found in a trusted directory) must not be loaded: the file itself is
/// writable by others, or a symbolic link into a directory that is [`untrusted`].
fn untrusted_file(file: &Path, cwd: Option<&Path>) -> Option<String> {
    let real = file.canonicalize().ok()?;
    if let Some(what) = others_could_write(&std::fs::metadata(&real).ok()?) {
        return Some(format!("{} is {what}", real.display()));
    }
    let parent = real.parent()?;
    untrusted(parent, cwd).map(|why| format!("it links into {}, where {why}", parent.display()))
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

/// True for a directory libraries may be loaded from ([`untrusted`] has nothing against it, the
/// working directory being this process's).
pub fn is_library_location(dir: &Path) -> bool {
    untrusted(dir, std::env::current_dir().ok().as_deref()).is_none()
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
    /// Libraries passed over because of where they are: each with its rule and why
    /// ([`untrusted`]).
    pub skipped: Vec<Skipped>,
}

/// A library that was not loaded because someone else could have put it there.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The library file.
    pub path: PathBuf,
    /// The rule that offered it.
    pub rule: Rule,
    /// Why it was passed over.
    pub why: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped {} ({}): {}", self.path.display(), self.rule, self.why)
    }
}

impl Search {
    /// The places looked at and the libraries skipped, for a message.
    pub fn looked_text(&self) -> String {
        let mut parts: Vec<String> = self.looked.iter().map(|(rule, p)| format!("{} ({rule})", p.display())).collect();
        parts.extend(self.skipped.iter().map(|s| s.to_string()));
        parts.join(", ")
    }
}

/// Searches `roots` in the order of the module's documentation; `python` is asked only when
/// nothing before it had a library.
pub fn search(roots: &Roots, python: impl FnOnce() -> Vec<PathBuf>) -> Search {
    let mut s = Search { found: None, looked: Vec::new(), skipped: Vec::new() };
    if let Some(p) = &roots.ort_dylib_path {
        // A bare file name would be looked up by the loader on the library path, not where it was
        // checked: an explicit choice is the file at that path, made absolute.
        let p = &std::path::absolute(p).unwrap_or_else(|_| p.clone());
        s.looked.push((Rule::OrtDylibPath, p.clone()));
        s.found = p.is_file().then(|| Found { path: p.clone(), rule: Rule::OrtDylibPath });
        return s;
    }
    let mut dirs: Vec<(Rule, PathBuf)> = Vec::new();
    dirs.extend(roots.exe.as_deref().and_then(Path::parent).map(|d| (Rule::BesideExecutable, d.to_path_buf())));
    for (rule, prefix) in roots.environments() {
        dirs.extend(site_packages(prefix).into_iter().map(|sp| (rule, sp.join("onnxruntime/capi"))));
    }
    s.found = s.first(roots, &dirs);
    if s.found.is_none() {
        let python: Vec<(Rule, PathBuf)> = python().into_iter().map(|d| (Rule::Python, d)).collect();
        let system: Vec<(Rule, PathBuf)> = roots.system.iter().map(|d| (Rule::System, d.clone())).collect();
        s.found = s.first(roots, &python).or_else(|| s.first(roots, &system));
    }
    s
}

impl Search {
    /// The library of the first of `dirs` that has one where only root and this user could have
    /// put it; the others that have one are noted as skipped.
    fn first(&mut self, roots: &Roots, dirs: &[(Rule, PathBuf)]) -> Option<Found> {
        for (rule, dir) in dirs {
            if self.looked.iter().any(|(_, d)| d == dir) {
                continue;
            }
            // A relative path is never looked at: it would be looked up in the working directory.
            if !dir.is_absolute() {
                continue;
            }
            self.looked.push((*rule, dir.clone()));
            let Some(path) = library_in(dir) else { continue };
            let cwd = roots.cwd.as_deref();
            match untrusted(dir, cwd).or_else(|| untrusted_file(&path, cwd)) {
                // The file checked is the one loaded: its canonical path, never a link that its
                // owner could point elsewhere between the check and the load.
                None => return Some(Found { path: path.canonicalize().unwrap_or(path), rule: *rule }),
                Some(why) => self.skipped.push(Skipped { path, rule: *rule, why }),
            }
        }
        None
    }
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
        // A bare file name is the file in the working directory, made absolute (the loader would
        // look it up on the library path instead).
        roots.ort_dylib_path = Some(PathBuf::from("libonnxruntime.so.1.99"));
        let s = search(&roots, || panic!("not asked"));
        assert_eq!(s.looked[0].1, std::env::current_dir().unwrap().join("libonnxruntime.so.1.99"));
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
    fn the_highest_version_of_a_library_name_wins_and_other_names_are_not_candidates() {
        let t = tempfile::tempdir().unwrap();
        let pick = |names: &[&str]| {
            for e in std::fs::read_dir(t.path()).unwrap() {
                std::fs::remove_file(e.unwrap().path()).unwrap();
            }
            for n in names {
                touch(&t.path().join(n));
            }
            library_in(t.path()).map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        };
        let so = "libonnxruntime.so";
        assert_eq!(
            pick(&["libonnxruntime.so.1.9.0", "libonnxruntime.so.1.32.0"]).as_deref(),
            Some("libonnxruntime.so.1.32.0")
        );
        assert_eq!(
            pick(&["libonnxruntime.so.bak", "libonnxruntime.so.1.32.0"]).as_deref(),
            Some("libonnxruntime.so.1.32.0")
        );
        assert_eq!(
            pick(&["libonnxruntime.so.1.32.0", "libonnxruntime.so.1.100.1"]).as_deref(),
            Some("libonnxruntime.so.1.100.1")
        );
        assert_eq!(
            pick(&[so, "libonnxruntime.so.1", "libonnxruntime.so.1.31"]).as_deref(),
            Some("libonnxruntime.so.1.31")
        );
        assert_eq!(pick(&[so, "libonnxruntime.so.1"]).as_deref(), Some("libonnxruntime.so.1"));
        assert_eq!(pick(&[so]).as_deref(), Some(so));
        assert_eq!(pick(&["libonnxruntime.so.1.9.0", "libonnxruntime.so.bak", "libonnxruntime.so.1.32.0.old"]), None);
        assert_eq!(pick(&["libonnxruntime.so.1.2.3.4", "libonnxruntime.so..1", "libonnxruntime.so.0"]), None);
        assert_eq!(pick(&["libonnxruntime.so.01.32", "libonnxruntime.so.1.032.0"]), None);
        assert_eq!(version_of_name("libonnxruntime.so.1.40.0"), Some(vec![1, 40, 0]));
    }

    #[test]
    fn a_directory_others_can_write_or_the_working_directory_is_skipped_and_said() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        let beside = bin.join("libonnxruntime.so.1.32.0");
        touch(&beside);
        let system = t.path().join("usr/lib/libonnxruntime.so.1.31.0");
        touch(&system);
        let mut roots =
            Roots { exe: Some(bin.join("swa")), system: vec![t.path().join("usr/lib")], ..Roots::default() };
        let found = |roots: &Roots| {
            let s = search(roots, Vec::new);
            (s.found.unwrap().path, s.skipped.iter().map(|k| k.why.clone()).collect::<Vec<_>>())
        };
        assert_eq!(found(&roots), (beside.clone(), vec![]));
        for (mode, why) in [(0o777, "it is writable by everyone"), (0o1777, "it is writable by everyone")] {
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(found(&roots), (system.clone(), vec![why.to_string()]));
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        roots.cwd = Some(bin.clone());
        assert_eq!(found(&roots), (system.clone(), vec!["it is the working directory".to_string()]));
        // A library that links into a folder everyone can write.
        roots.cwd = None;
        let open = t.path().join("open");
        touch(&open.join("libonnxruntime.so.1.32.0"));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::remove_file(&beside).unwrap();
        std::os::unix::fs::symlink(open.join("libonnxruntime.so.1.32.0"), &beside).unwrap();
        let (path, why) = found(&roots);
        assert_eq!(path, system);
        assert!(why[0].contains("where it is writable by everyone"), "{why:?}");
        // A link to a library where only root and the user can write is loaded by its real path.
        std::fs::remove_file(&beside).unwrap();
        let real = t.path().join("real/libonnxruntime.so.1.32.0");
        touch(&real);
        std::os::unix::fs::symlink(&real, &beside).unwrap();
        let (path, why) = found(&roots);
        assert_eq!((path, why), (real.canonicalize().unwrap(), vec![]));
        // A library file everyone can write.
        std::fs::remove_file(&beside).unwrap();
        touch(&beside);
        std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (path, why) = found(&roots);
        assert_eq!(path, system);
        assert!(why[0].ends_with("libonnxruntime.so.1.32.0 is writable by everyone"), "{why:?}");
    }

    #[test]
    fn the_working_directory_and_relative_paths_are_never_library_locations() {
        assert!(!is_library_location(Path::new("onnxruntime/capi")));
        assert!(!is_library_location(Path::new(".")));
        assert!(!is_library_location(&std::env::current_dir().unwrap()));
        assert!(is_library_location(Path::new("/usr/lib")));
    }
}
