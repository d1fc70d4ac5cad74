//! Any metric, by the user's own program: the model's outputs and the targets are written as `.npy`
//! files in sample order, the user's command runs on them (its `{outputs}` and `{labels}` replaced
//! by their paths) and prints one JSON object of figures with a `score`, higher is better — for
//! detection mAP with pycocotools, BLEU, anything. Gates name any number of that object.
//!
//! The state keeps every sample's outputs and targets with its index, so parts merge exactly (by
//! putting their samples together, in sample order).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Context, Figure};
use crate::batch::{Tensor, Values};
use crate::error::{Error, Result};
use crate::runtime::Fetched;

/// Marks a metric command's settings, state and figures (`"task": "command"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Tag {
    /// The one value.
    #[default]
    #[serde(rename = "command")]
    Command,
}

/// The figure a metric command must print.
pub const SCORE: Figure = Figure { name: "score", label: "score", higher_is_better: true, percent: false };

/// A metric computed by a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Marks the task.
    pub task: Tag,
    /// The command line, run by `sh -c`, with `{outputs}` and `{labels}`.
    pub command: String,
}

impl Command {
    /// A metric command; fails when it names neither file.
    pub fn new(command: &str) -> std::result::Result<Command, String> {
        if command.trim().is_empty() {
            return Err("the metric command is empty".into());
        }
        if !command.contains("{outputs}") {
            return Err(format!(
                "the metric command `{command}` does not name {{outputs}}: it is replaced by the .npy file of the \
                 model's outputs (and {{labels}} by the targets')"
            ));
        }
        Ok(Command { task: Tag::Command, command: command.to_string() })
    }

    /// A fresh state.
    pub fn state(&self) -> State {
        State {
            task: self.clone(),
            samples: 0,
            nonfinite: 0,
            sample_shape: None,
            indices: Vec::new(),
            outputs: Vec::new(),
            target_shape: None,
            targets_i64: Vec::new(),
            targets_f32: Vec::new(),
        }
    }

    /// Targets from a `.npy` as they are (integers as int64, floats as float32), one row per sample.
    pub fn read_targets(&self, path: &Path) -> Result<Tensor> {
        let array = crate::inputs::npy::open_npy(path)?;
        if array.shape.is_empty() {
            return Err(Error::format(path, "holds a scalar; targets have one row per sample"));
        }
        match array.i64_values() {
            Ok(v) => Ok(Tensor::i64(array.shape.clone(), v)),
            Err(_) => Ok(Tensor::f32(array.shape.clone(), array.f32_rows(0, array.len()))),
        }
    }
}

/// Every sample's outputs and targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The settings.
    #[serde(flatten)]
    pub task: Command,
    /// Samples counted.
    pub samples: usize,
    /// Samples whose outputs were not all finite (handed to the command as they are; any fails a
    /// gate).
    #[serde(default)]
    pub nonfinite: usize,
    /// One sample's output shape.
    pub sample_shape: Option<Vec<usize>>,
    /// Each sample's index in the set.
    pub indices: Vec<usize>,
    /// The outputs, sample after sample.
    pub outputs: Vec<f32>,
    /// One sample's target shape, where there are targets.
    pub target_shape: Option<Vec<usize>>,
    /// Integer targets, sample after sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets_i64: Vec<i64>,
    /// Float targets, sample after sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets_f32: Vec<f32>,
}

impl State {
    /// Adds a batch: the outputs and targets as they are.
    pub fn update(
        &mut self,
        output: &Fetched,
        targets: Option<&Tensor>,
        indices: &[usize],
        at: &Context,
    ) -> Result<()> {
        let n = indices.len();
        let shape: Vec<usize> = output.shape.iter().map(|&d| d as usize).collect();
        if shape.first() != Some(&n) {
            return Err(Error::format(
                at.model,
                format!("output `{}` has shape {shape:?} for a batch of {n}: the batch must come first", at.output),
            ));
        }
        let sample = shape[1..].to_vec();
        if self.sample_shape.as_ref().is_some_and(|s| *s != sample) {
            return Err(Error::format(
                at.model,
                format!(
                    "output `{}` has shape {sample:?} per sample after {:?}: the metric command's outputs are one array, \
                     so every sample's must have one shape",
                    at.output,
                    self.sample_shape.clone().unwrap_or_default()
                ),
            ));
        }
        self.sample_shape = Some(sample);
        if let Some(t) = targets {
            let tshape = t.shape[1..].to_vec();
            if self.target_shape.as_ref().is_some_and(|s| *s != tshape) {
                return Err(Error::format(at.targets, "holds targets of different shapes"));
            }
            self.target_shape = Some(tshape);
            match &t.values {
                Values::I64(v) => self.targets_i64.extend_from_slice(v),
                Values::F32(v) => self.targets_f32.extend_from_slice(v),
                Values::Held(h) => match (h.i64(), h.f32()) {
                    (Some(v), _) => self.targets_i64.extend_from_slice(v),
                    (_, Some(v)) => self.targets_f32.extend_from_slice(v),
                    _ => {}
                },
            }
        }
        let per = output.data.len() / n.max(1);
        if per > 0 {
            self.nonfinite += output.data.chunks_exact(per).filter(|r| !r.iter().all(|v| v.is_finite())).count();
        }
        self.outputs.extend_from_slice(&output.data);
        self.indices.extend_from_slice(indices);
        self.samples += n;
        Ok(())
    }

    /// Why these outputs cannot have been kept (a damaged or edited partial file), if they cannot.
    fn impossible(&self) -> Option<String> {
        let per = |shape: &Option<Vec<usize>>| {
            shape.as_ref().map_or(Some(0), |s| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)))
        };
        let outputs = per(&self.sample_shape).and_then(|p| p.checked_mul(self.samples));
        let targets = per(&self.target_shape).and_then(|p| p.checked_mul(self.samples));
        let n_targets = self.targets_i64.len() + self.targets_f32.len();
        let ok = self.indices.len() == self.samples
            && self.nonfinite <= self.samples
            && outputs == Some(self.outputs.len())
            && (self.target_shape.is_none() && n_targets == 0 || targets == Some(n_targets))
            && (self.targets_i64.is_empty() || self.targets_f32.is_empty());
        (!ok).then(|| {
            format!(
                "{} outputs, {} targets and {} indices for {} samples",
                self.outputs.len(),
                n_targets,
                self.indices.len(),
                self.samples
            )
        })
    }

    /// Adds another part's samples.
    pub fn merge(&mut self, other: &State) -> std::result::Result<(), String> {
        if let Some(why) = other.impossible() {
            return Err(format!("the outputs cannot have been kept: {why}"));
        }
        if self.task != other.task {
            return Err(format!("metric commands `{}` and `{}`", self.task.command, other.task.command));
        }
        if self.sample_shape.is_some() && other.sample_shape.is_some() && self.sample_shape != other.sample_shape {
            return Err("outputs of different shapes".into());
        }
        if self.target_shape.is_some() && other.target_shape.is_some() && self.target_shape != other.target_shape {
            return Err("targets of different shapes".into());
        }
        self.sample_shape = self.sample_shape.take().or_else(|| other.sample_shape.clone());
        self.target_shape = self.target_shape.take().or_else(|| other.target_shape.clone());
        self.samples += other.samples;
        self.nonfinite += other.nonfinite;
        self.indices.extend_from_slice(&other.indices);
        self.outputs.extend_from_slice(&other.outputs);
        self.targets_i64.extend_from_slice(&other.targets_i64);
        self.targets_f32.extend_from_slice(&other.targets_f32);
        Ok(())
    }

    /// Writes the outputs and targets in sample order, runs the command on them and reads its figures.
    pub fn finish(&self) -> Result<Metrics> {
        let tmp = std::env::temp_dir();
        let dir = tempfile::Builder::new().prefix("swa-metric-").tempdir().map_err(|e| {
            Error::io(&tmp, std::io::Error::new(e.kind(), format!("cannot make a folder for the metric command: {e}")))
        })?;
        // Removed if the process is interrupted meanwhile (it holds a copy of every output).
        let _staged = Registered::new(dir.path());
        let mut order: Vec<usize> = (0..self.indices.len()).collect();
        order.sort_by_key(|&i| self.indices[i]);
        let shape = self.sample_shape.clone().unwrap_or_default();
        let per: usize = shape.iter().product();
        let outputs: Vec<f32> =
            order.iter().flat_map(|&i| self.outputs[i * per..(i + 1) * per].iter().copied()).collect();
        let outputs_path = dir.path().join("outputs.npy");
        let n = order.len();
        crate::inputs::npy::write_npy(
            &outputs_path,
            &[&[n][..], &shape].concat(),
            crate::inputs::npy::Data::F32(&outputs),
        )?;
        let labels_path = dir.path().join("labels.npy");
        if let Some(tshape) = &self.target_shape {
            let per: usize = tshape.iter().product();
            let full = [&[n][..], tshape].concat();
            if !self.targets_i64.is_empty() || self.targets_f32.is_empty() {
                let v: Vec<i64> =
                    order.iter().flat_map(|&i| self.targets_i64[i * per..(i + 1) * per].iter().copied()).collect();
                crate::inputs::npy::write_npy(&labels_path, &full, crate::inputs::npy::Data::I64(&v))?;
            } else {
                let v: Vec<f32> =
                    order.iter().flat_map(|&i| self.targets_f32[i * per..(i + 1) * per].iter().copied()).collect();
                crate::inputs::npy::write_npy(&labels_path, &full, crate::inputs::npy::Data::F32(&v))?;
            }
        }
        let figures = run(&self.task.command, dir.path(), &outputs_path, &labels_path)?;
        let score = figures.get("score").copied().unwrap_or(f64::NAN);
        Ok(Metrics { task: self.task.clone(), samples: self.samples, nonfinite: self.nonfinite, score, figures })
    }
}

/// A path in the registry of what an interrupted process removes, for as long as this lives.
struct Registered(std::path::PathBuf);

impl Registered {
    fn new(path: &Path) -> Registered {
        crate::fs::registry::staged().push(path.to_path_buf());
        Registered(path.to_path_buf())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        crate::fs::registry::forget(&mut crate::fs::registry::staged(), &self.0);
    }
}

/// A path as a shell word: as it is when it needs no quoting (so `"{outputs}"` works too), else
/// in single quotes.
fn quoted(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// JSON with Python's `NaN`, `Infinity` and `-Infinity` (what `json.dumps` writes for them) read as
/// `null`, outside strings.
fn python_json(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = c != '"' || escaped;
            escaped = c == '\\' && !escaped;
        } else if c == '"' {
            in_string = true;
        } else {
            let word = ["-Infinity", "Infinity", "NaN"].into_iter().find(|w| rest.starts_with(w));
            if let Some(w) = word {
                out.push_str("null");
                rest = &rest[w.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The most of a command's output kept: the figures are in its last lines.
const KEPT_OUTPUT: u64 = 1 << 20;

/// Runs `command` on the two files in `dir` and reads the last JSON object it prints.
fn run(command: &str, dir: &Path, outputs: &Path, labels: &Path) -> Result<BTreeMap<String, f64>> {
    use std::io::{Read, Seek};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let line = command.replace("{outputs}", &quoted(outputs)).replace("{labels}", &quoted(labels));
    let fail = |why: String| Error::Usage(format!("the metric command `{command}` {why}"));
    let stdout_path = dir.join("stdout");
    let mut stdout = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&stdout_path)
        .map_err(|e| Error::io(&stdout_path, e))?;
    // In a process group of its own, which an interrupted swa ends (with what it started).
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(&line)
        .stdin(std::process::Stdio::null())
        .stdout(stdout.try_clone().map_err(|e| Error::io(&stdout_path, e))?)
        .stderr(std::process::Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("could not be started: {e}")))?;
    let group = child.id() as i32;
    crate::fs::registry::children().push(group);
    let status = child.wait();
    crate::fs::registry::children().retain(|&g| g != group);
    let status = status.map_err(|e| fail(format!("could not be waited for: {e}")))?;
    if !status.success() {
        return Err(fail(match (status.code(), status.signal()) {
            (Some(code), _) => format!("failed (exit status {code}); what it wrote to stderr is above"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "failed".to_string(),
        }));
    }
    let len = stdout.metadata().map_err(|e| Error::io(&stdout_path, e))?.len();
    stdout.seek(std::io::SeekFrom::Start(len.saturating_sub(KEPT_OUTPUT))).map_err(|e| Error::io(&stdout_path, e))?;
    let mut bytes = Vec::new();
    stdout.read_to_end(&mut bytes).map_err(|e| Error::io(&stdout_path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    let object = text.lines().rev().map(str::trim).filter(|l| l.starts_with('{')).find_map(|l| {
        match serde_json::from_str::<serde_json::Value>(&python_json(l)) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        }
    });
    let object = object.or_else(|| match serde_json::from_str(&python_json(text.trim())) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    });
    let Some(map) = object else {
        let shown: String = text.trim().chars().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(fail(format!(
            "printed no JSON object (it printed {}): it must print one, such as {{\"map\": 0.41, \"score\": 0.41}}",
            if shown.is_empty() { "nothing".to_string() } else { format!("`{shown}`") }
        )));
    };
    let mut figures = BTreeMap::new();
    for (k, v) in &map {
        if let Some(x) = v.as_f64() {
            figures.insert(k.clone(), x);
        } else if v.is_null() {
            figures.insert(k.clone(), f64::NAN);
        }
    }
    match figures.get("score") {
        None => Err(fail(format!(
            "printed no number `score` (keys: {}): the score, higher is better, ranks soups and reports",
            map.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
        Some(s) if !s.is_finite() => Err(fail(format!("printed a score of {s}: the score must be a finite number"))),
        Some(_) => Ok(figures),
    }
}

/// A metric command's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The settings.
    #[serde(flatten)]
    pub task: Command,
    /// Samples evaluated.
    pub samples: usize,
    /// Samples whose outputs were not all finite.
    #[serde(default)]
    pub nonfinite: usize,
    /// Its score.
    pub score: f64,
    /// Every number it printed (the score too).
    pub figures: BTreeMap<String, f64>,
}

/// A metric command's compact figures: the same.
pub type Score = Metrics;

impl Metrics {
    /// The figure named `name`.
    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures.get(name).copied()
    }

    /// Cells under the task's one column.
    pub fn cells(&self) -> Vec<Option<String>> {
        vec![Some(format!("{:.4}", self.score))]
    }

    /// `score 0.4123 (200 samples; map 0.4123, map50 0.61)`.
    pub fn describe(&self) -> String {
        let number = |v: f64| if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.4}") };
        let others: Vec<String> =
            self.figures.iter().filter(|(k, _)| *k != "score").map(|(k, v)| format!("{k} {}", number(*v))).collect();
        let others = if others.is_empty() { String::new() } else { format!("; {}", others.join(", ")) };
        format!("score {:.4} ({} samples{others})", self.score, self.samples)
    }
}
