//! ONNX Runtime: finding the library at run time (no download), sessions on CPU or CUDA, and a
//! batched loop that prepares the next batch while the current one runs.

use std::borrow::Cow;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorRef};

use crate::batch::{Batch, Values};
use crate::error::{Error, Hint, Result, Setting};
use crate::onnx::bn::Reduction;
use crate::onnx::{InputSpec, Model};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// The CUDA provider on this GPU index.
    Cuda(i32),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

pub mod cuda;
pub mod locate;
pub mod moments;

const HOW_TO_GET: &str = "install it with `pip install onnxruntime` (or onnxruntime-gpu for CUDA), or set \
    ORT_DYLIB_PATH to a libonnxruntime.so (≥ 1.31), or put one beside the swa executable";

/// Finds the ONNX Runtime library: `ORT_DYLIB_PATH`, beside the executable, the Python
/// environment `swa` is installed in, `VIRTUAL_ENV`, `CONDA_PREFIX`, `python3`'s `onnxruntime`
/// package, then the system's library directories ([`locate`]).
pub fn find_library() -> Result<PathBuf> {
    let s = locate::search(&locate::Roots::from_env(), locate::python_package_dirs);
    match s.found {
        Some(found) => Ok(found.path),
        None => Err(Error::Runtime(match s.looked.first() {
            Some((locate::Rule::OrtDylibPath, p)) => {
                format!("ORT_DYLIB_PATH is {}, which is not a file; {HOW_TO_GET}", p.display())
            }
            _ => format!("no ONNX Runtime library found (looked in {}); {HOW_TO_GET}", s.looked_text()),
        })),
    }
}

/// The `site-packages` directories where pip's CUDA libraries are looked for: the one holding
/// the ONNX Runtime in use, then those of the environments [`locate`] searches.
pub fn cuda_site_packages(library: Option<&Path>) -> Vec<PathBuf> {
    let roots = locate::Roots::from_env();
    let mut dirs: Vec<PathBuf> = library.and_then(locate::site_packages_of).into_iter().collect();
    for (_, prefix) in roots.environments() {
        for sp in locate::site_packages(prefix) {
            if locate::is_library_location(&sp) && !dirs.iter().any(|d| locate::same_file(d, &sp)) {
                dirs.push(sp);
            }
        }
    }
    dirs
}

static CUDA_LIBRARIES: OnceLock<cuda::Search> = OnceLock::new();

/// Finds and loads pip's CUDA and cuDNN libraries for the ONNX Runtime at `library`, once per
/// process; returns what was found.
fn preload_cuda(library: &Path) -> &'static cuda::Search {
    CUDA_LIBRARIES.get_or_init(|| {
        let mut s = cuda::search(&cuda_site_packages(Some(library)), cuda::system_has);
        cuda::preload(&mut s);
        s
    })
}

type Loaded = std::result::Result<(PathBuf, ort::environment::Environment), String>;
static LIBRARY: OnceLock<Loaded> = OnceLock::new();

/// Loads ONNX Runtime once per process; returns the library's path and the environment.
pub fn init() -> Result<(PathBuf, ort::environment::Environment)> {
    LIBRARY
        .get_or_init(|| {
            let lib = find_library().map_err(|e| e.to_string())?;
            let builder =
                ort::init_from(&lib).map_err(|e| format!("cannot load {}: {e}; {HOW_TO_GET}", lib.display()))?;
            let env = builder.with_name("swa").build().map_err(|e| format!("cannot start {}: {e}", lib.display()))?;
            Ok((lib, env))
        })
        .clone()
        .map_err(|m| Error::Runtime(m.trim_start_matches("ONNX Runtime: ").to_string()))
}

/// What `swa doctor` reports: which ONNX Runtime was found and how, what it offers, and the
/// CUDA libraries `--device cuda` would load. Never an error: what was not found says where it was
/// looked for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diagnosis {
    /// The library search: what was found by which rule, and every place looked at.
    pub onnxruntime: locate::Search,
    /// The library's version (`OrtGetApiBase()->GetVersionString()`).
    pub version: Option<String>,
    /// Why it could not be loaded, if it could not.
    pub load_error: Option<String>,
    /// The execution providers it offers (`GetAvailableProviders`).
    pub providers: Vec<String>,
    /// `libonnxruntime_providers_cuda.so` beside it, if there is one.
    pub cuda_provider: Option<PathBuf>,
    /// The pip distributions of ONNX Runtime installed beside it (`onnxruntime 1.32.0`); more than
    /// one is a broken environment (they overwrite each other's files).
    pub python_packages: Vec<String>,
    /// The CUDA and cuDNN libraries, loaded as `--device cuda` loads them.
    pub cuda: cuda::Search,
}

/// Finds and loads ONNX Runtime and pip's CUDA libraries, and says what it found.
pub fn diagnose() -> Diagnosis {
    let onnxruntime = locate::search(&locate::Roots::from_env(), locate::python_package_dirs);
    let lib = onnxruntime.found.as_ref().map(|f| f.path.clone());
    let version = lib.as_deref().and_then(library_version);
    let (load_error, providers) = match (&lib, init()) {
        (None, _) => (None, Vec::new()),
        (Some(_), Ok(_)) => (None, available_providers()),
        (Some(_), Err(e)) => (Some(crate::error::chain(&e)), Vec::new()),
    };
    let cuda_provider =
        lib.as_deref().map(|l| l.with_file_name("libonnxruntime_providers_cuda.so")).filter(|p| p.is_file());
    let python_packages = lib
        .as_deref()
        .and_then(locate::site_packages_of)
        .map(|sp| locate::onnxruntime_distributions(&sp))
        .unwrap_or_default();
    let cuda = match &lib {
        Some(l) => preload_cuda(l).clone(),
        None => cuda::search(&cuda_site_packages(None), cuda::system_has),
    };
    Diagnosis { onnxruntime, version, load_error, providers, cuda_provider, python_packages, cuda }
}

/// The version string of the ONNX Runtime library at `path`, read without initialising it.
fn library_version(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: dlopen/dlsym with valid C strings; `OrtGetApiBase` has this signature in every
    // ONNX Runtime, and the version string is static in the library, which is never unloaded.
    unsafe {
        let handle = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            return None;
        }
        let sym = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        if sym.is_null() {
            return None;
        }
        let get: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase = std::mem::transmute(sym);
        let base = get();
        if base.is_null() {
            return None;
        }
        let v = ((*base).GetVersionString)();
        (!v.is_null()).then(|| std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

/// The execution providers of the loaded ONNX Runtime.
fn available_providers() -> Vec<String> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // SAFETY: the API's documented calling convention; the list is released with its own call.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Vec::new();
        }
        if list.is_null() {
            return Vec::new();
        }
        let names =
            (0..n as usize).map(|i| std::ffi::CStr::from_ptr(*list.add(i)).to_string_lossy().into_owned()).collect();
        let status = (api.ReleaseAvailableProviders)(list, n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
        }
        names
    }
}

/// Where and how ONNX Runtime runs a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Engine {
    /// CPU or a CUDA GPU.
    pub device: Device,
    /// Intra-op threads (default: ONNX Runtime's, all cores).
    pub threads: Option<NonZeroUsize>,
    /// Let CUDA use TF32 in convolutions and matrix products.
    pub tf32: bool,
    /// Batches in flight on CUDA, each in its own session (see [`concurrent_runs`]); `None` for
    /// the device's default.
    pub streams: Option<NonZeroUsize>,
    /// How the statistics graph reduces each activation; `None` for the device's faster layout
    /// ([`Reduction::for_device`]).
    pub reduction: Option<Reduction>,
    /// cuDNN's convolution algorithm search on CUDA.
    pub cudnn_search: CudnnSearch,
    /// Write an ONNX Runtime profile of each session, with this file-name prefix.
    pub profile: Option<PathBuf>,
}

impl Engine {
    /// The statistics layout this engine uses.
    pub fn reduction(&self) -> Reduction {
        self.reduction.unwrap_or(Reduction::for_device(self.device != Device::Cpu))
    }
}

/// cuDNN's convolution algorithm search (ONNX Runtime's `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CudnnSearch {
    /// cuDNN's heuristics, like PyTorch's `cudnn.benchmark = False`.
    #[default]
    Heuristic,
    /// Time every algorithm on the first run.
    Exhaustive,
    /// ONNX Runtime's default algorithm.
    Default,
}

impl FromStr for CudnnSearch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "heuristic" => Ok(CudnnSearch::Heuristic),
            "exhaustive" => Ok(CudnnSearch::Exhaustive),
            "default" => Ok(CudnnSearch::Default),
            _ => Err(format!("unknown cuDNN search `{s}`: use heuristic, exhaustive or default")),
        }
    }
}

/// Opens a session for serialised model bytes on `engine`'s device, with its intra-op threads.
/// `--device cuda` that cannot get CUDA is an error, never a silent fallback to CPU. CUDA runs in
/// full fp32 (PyTorch parity) unless `engine.tf32`: TF32 in convolutions and matrix products is
/// faster on Ampere and later GPUs but moves statistics by about 1e-3 relative.
pub fn session(model_bytes: &[u8], engine: &Engine) -> Result<Session> {
    Ok(builder(engine)?.commit_from_memory(model_bytes)?)
}

/// Opens a session for `model`: from memory, or — when the model does not fit in one protobuf
/// message (2 GiB), or when `external` is set — from a temporary directory holding the model and
/// its external data.
pub fn session_for(model: &Model, engine: &Engine, external: bool) -> Result<Session> {
    Ok(sessions_for(model, engine, external, 1)?.sessions.remove(0))
}

/// Sessions of one model that run batches at once (see [`concurrent_runs`] and [`run_batches`]).
pub struct Sessions {
    sessions: Vec<Session>,
    profiling: bool,
    /// The model's file, which ONNX Runtime's errors name.
    model: PathBuf,
}

impl Sessions {
    /// How many.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Opens `count` sessions of `model` (as [`session_for`]), created concurrently: each can run a
/// batch while the others run theirs (see [`concurrent_runs`]).
pub fn sessions_for(model: &Model, engine: &Engine, external: bool, count: usize) -> Result<Sessions> {
    let (bytes, data) = model.encode_with("model.onnx.data", external);
    let dir = match data {
        None => None,
        Some(data) => {
            let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
            let path = dir.path().join("model.onnx");
            std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
            let data_path = dir.path().join("model.onnx.data");
            std::fs::write(&data_path, &data).map_err(|e| Error::io(&data_path, e))?;
            Some(dir)
        }
    };
    let named = |source| Error::Session { path: model.path.clone(), source };
    let open = || match &dir {
        None => builder(engine)?.commit_from_memory(&bytes).map_err(named),
        Some(dir) => builder(engine)?.commit_from_file(dir.path().join("model.onnx")).map_err(named),
    };
    let sessions = if count <= 1 {
        vec![open()?]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..count).map(|_| scope.spawn(open)).collect();
            handles.into_iter().map(|h| h.join().expect("session creation panicked")).collect::<Result<_>>()
        })?
    };
    Ok(Sessions { sessions, profiling: engine.profile.is_some(), model: model.path.clone() })
}

/// How many of a pass's `batches` run at once on `engine`: one on the CPU (ONNX Runtime's threads
/// already use every core); on CUDA `engine.streams`, by default 2 — each batch in its own session
/// with its own stream and activation memory, so one batch's input copy, launches and final
/// synchronisation overlap another's kernels. Never more than there are batches.
pub fn concurrent_runs(engine: &Engine, batches: usize) -> Result<usize> {
    let n = match (engine.device, engine.streams) {
        (Device::Cpu, Some(n)) if n.get() > 1 => {
            return Err(Error::setting(
                Setting::Streams,
                "applies to CUDA devices; on the CPU one batch runs at a time on all threads",
            ))
        }
        (Device::Cpu, _) => 1,
        (Device::Cuda(_), n) => n.map_or(2, NonZeroUsize::get),
    };
    Ok(n.min(batches.max(1)))
}

fn builder(engine: &Engine) -> Result<ort::session::builder::SessionBuilder> {
    let Engine { device, threads, tf32, .. } = *engine;
    if tf32 && device == Device::Cpu {
        return Err(Error::setting(Setting::Tf32, "applies to CUDA devices; on the CPU everything runs in fp32"));
    }
    let (lib, env) = init()?;
    let mut builder = Session::builder(&env)?;
    if let Some(n) = threads {
        builder = builder.with_intra_threads(n.get()).map_err(ort::Error::from)?;
    }
    // swa's statistics operator (a CPU kernel; CUDA sessions use the reductions by default).
    builder = builder.with_operators(moments::domain()?).map_err(ort::Error::from)?;
    if let Some(prefix) = &engine.profile {
        builder = builder.with_profiling(prefix).map_err(ort::Error::from)?;
    }
    if let Device::Cuda(id) = device {
        let provider = lib.with_file_name("libonnxruntime_providers_cuda.so");
        if !provider.exists() {
            return Err(Error::setting(
                Setting::Device,
                format!(
                    "{device}: the ONNX Runtime at {} has no CUDA provider ({} is missing); replace onnxruntime \
                     with onnxruntime-gpu (pip uninstall -y onnxruntime && pip install \"onnxruntime-gpu[cuda,cudnn]\"; \
                     for pip's swa: pip uninstall -y swa-tool onnxruntime && pip install swa-tool-gpu), or point \
                     ORT_DYLIB_PATH at onnxruntime-gpu's capi/libonnxruntime.so.*",
                    lib.display(),
                    provider.display()
                ),
            ));
        }
        let libraries = preload_cuda(&lib);
        let cuda = ort::ep::CUDA::default()
            .with_device_id(id)
            .with_conv_algorithm_search(match engine.cudnn_search {
                CudnnSearch::Exhaustive => ort::ep::cuda::ConvAlgorithmSearch::Exhaustive,
                CudnnSearch::Default => ort::ep::cuda::ConvAlgorithmSearch::Default,
                CudnnSearch::Heuristic => ort::ep::cuda::ConvAlgorithmSearch::Heuristic,
            })
            .with_tf32(tf32)
            .build()
            .error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(|e| {
            Error::setting(Setting::Device, {
                let why = libraries.explain();
                let why = if why.is_empty() {
                    format!(
                        "every CUDA {} / cuDNN {} library was found (swa doctor lists them); is the driver installed \
                             and the GPU visible?",
                        cuda::CUDA_MAJOR,
                        cuda::CUDNN_MAJOR
                    )
                } else {
                    why
                };
                format!("{device}: the CUDA provider failed to load ({e}); {why}")
            })
        })?;
    }
    Ok(builder)
}

/// Checks that batches of `batch` rows (the last one partial, up to `samples` where known) fit
/// inputs whose first dimension is fixed: ONNX Runtime refuses any other batch size. `evaluation`
/// says which batch size the hint names.
pub fn check_batch(specs: &[InputSpec], batch: usize, samples: Option<usize>, evaluation: bool) -> Result<()> {
    for spec in specs {
        let Some(&first) = spec.dims.first().filter(|&&d| d > 0) else { continue };
        let fixed = first as usize;
        let shape: Vec<String> = spec.dims.iter().map(|&d| if d < 0 { "?".into() } else { d.to_string() }).collect();
        let what =
            format!("model input `{}` has a fixed batch dimension of {fixed} ([{}])", spec.name, shape.join(", "));
        if batch != fixed {
            return Err(Error::usage(format!("{what}, but batches of {batch} samples were asked for"))
                .hint(Hint::FixedBatch { size: fixed, evaluation }));
        }
        if let Some(samples) = samples.filter(|s| !s.is_multiple_of(fixed)) {
            return Err(Error::usage(format!(
                "{what}, and {samples} samples leave a last batch of {}: use a multiple of {fixed} samples, or \
                 export the model with a dynamic batch dimension",
                samples % fixed
            )));
        }
    }
    Ok(())
}

/// One model output of one batch, copied out of ONNX Runtime.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The output's shape.
    pub shape: Vec<i64>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

/// What [`run_batches`] ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ran {
    /// How long the first batch took, which includes ONNX Runtime's and cuDNN's set-up work done
    /// on the first run.
    pub first_batch: std::time::Duration,
    /// Batches read (those whose samples were all skipped included).
    pub batches: usize,
    /// Samples the batches stood for (skipped ones included).
    pub samples: usize,
}

type Job = (usize, Result<Batch>);
type Done = (usize, Batch, Result<Vec<Fetched>>);

/// Runs `batches` (each with one tensor per input of `specs`, in order) through `sessions` and
/// calls `each` with every batch (its inputs taken) and its `outputs`, in order; a batch whose
/// samples were all skipped is not run. The batches are read (images decoded on all cores) on
/// another thread while the current ones run; with several sessions (CUDA, [`concurrent_runs`])
/// one batch runs on each at once. `progress` advances by each batch's span.
pub fn run_batches<'a>(
    sessions: &mut Sessions,
    specs: &[InputSpec],
    batches: impl Iterator<Item = Result<Batch>> + Send + 'a,
    outputs: &[&str],
    progress: &indicatif::ProgressBar,
    mut each: impl FnMut(Batch, Vec<Fetched>) -> Result<()>,
) -> Result<Ran> {
    use std::sync::{mpsc, Arc, Mutex};
    let started = std::time::Instant::now();
    let streams = sessions.len();
    let model = sessions.model.clone();
    let model = model.as_path();
    let result = std::thread::scope(|scope| {
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(sessions.len() + 1);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        scope.spawn(move || {
            for (k, read) in batches.enumerate() {
                let failed = read.is_err();
                if job_tx.send((k, read)).is_err() || failed {
                    return;
                }
            }
        });
        for session in sessions.sessions.iter_mut() {
            let (job_rx, done_tx) = (Arc::clone(&job_rx), done_tx.clone());
            scope.spawn(move || loop {
                let job = job_rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ()));
                let Ok((k, read)) = job else { return };
                let done = match read {
                    Ok(b) if b.indices.is_empty() => (k, b, Ok(Vec::new())),
                    Ok(mut b) => {
                        let out =
                            run_one(session, specs, outputs, std::mem::take(&mut b.inputs)).map_err(|e| match e {
                                Error::Ort(source) => Error::Session { path: model.to_path_buf(), source },
                                other => other,
                            });
                        (k, b, out)
                    }
                    Err(e) => (k, Batch { span: 0..0, indices: Vec::new(), inputs: Vec::new(), targets: None }, Err(e)),
                };
                if done_tx.send(done).is_err() {
                    return;
                }
            });
        }
        drop((job_rx, done_tx));
        let mut first = None;
        let mut pending = std::collections::BTreeMap::new();
        let (mut next, mut samples) = (0, 0);
        for (k, batch, out) in done_rx {
            crate::progress::check_stop()?;
            pending.insert(k, (batch, out.map_err(|e| with_memory_hint(e, streams))?));
            while let Some((batch, out)) = pending.remove(&next) {
                let span = batch.span.len();
                if !batch.indices.is_empty() {
                    each(batch, out)?;
                }
                first.get_or_insert_with(|| started.elapsed());
                progress.inc(span as u64);
                samples += span;
                next += 1;
            }
        }
        Ok(Ran { first_batch: first.unwrap_or_default(), batches: next, samples })
    });
    if sessions.profiling {
        for session in sessions.sessions.iter_mut() {
            let profile = session.end_profiling()?;
            // A broken stderr is no reason to fail (or panic).
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "ONNX Runtime profile: {profile}");
        }
    }
    result
}

/// Adds what to do to ONNX Runtime's out-of-memory errors.
fn with_memory_hint(e: Error, streams: usize) -> Error {
    let text = crate::error::chain(&e);
    if text.contains("Failed to allocate") || text.to_lowercase().contains("out of memory") {
        e.hint(Hint::LessMemory { streams })
    } else {
        e
    }
}

fn run_one(
    session: &mut Session,
    specs: &[InputSpec],
    outputs: &[&str],
    inputs: Vec<crate::batch::Tensor>,
) -> Result<Vec<Fetched>> {
    let mut inputs = inputs;
    let mut values: Vec<(Cow<str>, SessionInputValue)> = Vec::with_capacity(specs.len());
    for (spec, t) in specs.iter().zip(inputs.iter_mut()) {
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        // Owned values move into ONNX Runtime's tensor; held ones are read where they are.
        let value: SessionInputValue = match &mut t.values {
            Values::F32(v) => Tensor::from_array((shape, std::mem::take(v)))?.into(),
            Values::I64(v) => Tensor::from_array((shape, std::mem::take(v)))?.into(),
            Values::Held(h) => match (h.f32(), h.i64()) {
                (Some(v), _) => TensorRef::from_array_view((shape, v))?.into(),
                (_, Some(v)) => TensorRef::from_array_view((shape, v))?.into(),
                _ => unreachable!("one element type"),
            },
        };
        values.push((Cow::Owned(spec.name.clone()), value));
    }
    let out = session.run(values)?;
    outputs
        .iter()
        .map(|&name| {
            let (shape, data) = out[name].try_extract_tensor::<f32>().map_err(|e| {
                Error::Runtime(format!("output `{name}`: {e} (swa reads float32 outputs: logits, statistics)"))
            })?;
            Ok(Fetched { shape: shape.to_vec(), data: data.to_vec() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_batch_dimension_needs_that_batch_size() {
        let specs = [InputSpec::float("x", vec![1, 3, 8, 8])];
        let err = check_batch(&specs, 256, Some(1000), true).unwrap_err();
        assert!(matches!(err, Error::Hinted { hint: Hint::FixedBatch { size: 1, evaluation: true }, .. }), "{err}");
        assert!(err.to_string().contains("fixed batch dimension of 1 ([1, 3, 8, 8])"), "{err}");
        check_batch(&specs, 1, Some(1000), false).unwrap();
        let eight = [InputSpec::float("x", vec![8, 3])];
        assert!(check_batch(&eight, 8, Some(1001), false).unwrap_err().to_string().contains("last batch of 1"));
        check_batch(&[InputSpec::float("x", vec![-1, 3])], 256, Some(1001), true).unwrap();
    }

    #[test]
    fn streams_default_to_two_on_cuda_and_never_exceed_the_batches() {
        let cuda = Engine { device: Device::Cuda(0), ..Default::default() };
        let streams = |n| NonZeroUsize::new(n);
        assert_eq!(concurrent_runs(&cuda, 10).unwrap(), 2);
        assert_eq!(concurrent_runs(&cuda, 1).unwrap(), 1);
        assert_eq!(concurrent_runs(&Engine { streams: streams(3), ..cuda.clone() }, 10).unwrap(), 3);
        assert_eq!(concurrent_runs(&Engine::default(), 10).unwrap(), 1);
        assert!(concurrent_runs(&Engine { streams: streams(2), ..Default::default() }, 10).is_err());
    }
}
