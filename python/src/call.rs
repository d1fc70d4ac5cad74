//! One call of the Python API: keyword arguments turned into the command's own command line
//! (parsed by its clap definition, so every flag is a keyword and every rule between flags holds
//! as in the CLI), batches registered as sample sources, the command run with the GIL released
//! and Ctrl-C turned into `KeyboardInterrupt`, and errors raised as `swa.Error` subclasses whose
//! messages name keywords where the CLI's name flags.

use std::ffi::OsString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use clap::{ArgAction, CommandFactory};
use pyo3::exceptions::{PyKeyboardInterrupt, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::batches::{Iterable, Message, Pump};
use crate::cli;

/// The keyword of a clap argument: the long flag with `_` for `-` (`from_` for `--from`, a
/// Python keyword), or the id of a positional.
fn keyword(arg: &clap::Arg) -> String {
    match arg.get_long() {
        Some("from") => "from_".into(),
        Some(long) => long.replace('-', "_"),
        None => arg.get_id().as_str().to_string(),
    }
}

/// Whether an argument is a flag without a value.
fn is_switch(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count)
}

fn visible(arg: &clap::Arg) -> bool {
    !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version" | "json")
}

fn subcommand(name: &str) -> PyResult<clap::Command> {
    cli::Cli::command()
        .find_subcommand(name)
        .cloned()
        .ok_or_else(|| PyTypeError::new_err(format!("swa has no command `{name}`")))
}

/// The keyword that gives batches for an inputs argument (`--train-inputs` → `train_batches`).
fn batches_keyword(arg: &clap::Arg) -> Option<String> {
    let k = keyword(arg);
    match k.as_str() {
        "inputs" => Some("batches".into()),
        _ => k.strip_suffix("_inputs").map(|p| format!("{p}_batches")),
    }
}

/// Whether the samples of an inputs argument are scored (and so need labels).
fn labelled(arg: &clap::Arg, command: &str) -> bool {
    match keyword(arg).as_str() {
        "inputs" => matches!(command, "evaluate"),
        k => k.starts_with("eval") || k.starts_with("select") || k.starts_with("calibration"),
    }
}

/// Every command's keywords, for the stubs and the tests: (command, [(keyword, flag, kind, value
/// name, help, choices, required)]), kind one of `switch`, `value`, `values`, `optional`
/// (a switch that may take a value), `batches`.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn describe() -> Vec<(String, Vec<(String, String, String, String, String, Vec<String>, bool)>)> {
    let cmd = cli::Cli::command();
    let global: Vec<clap::Arg> = cmd.get_arguments().filter(|a| visible(a)).cloned().collect();
    cmd.get_subcommands()
        .map(|sub| {
            let mut args = Vec::new();
            for a in sub.get_arguments().chain(global.iter()).filter(|a| visible(a)) {
                let flag =
                    a.get_long().map(|l| format!("--{l}")).unwrap_or_else(|| a.get_id().to_string().to_uppercase());
                let multiple =
                    a.get_num_args().is_some_and(|n| n.max_values() > 1) || matches!(a.get_action(), ArgAction::Append);
                let kind = if is_switch(a) {
                    "switch"
                } else if a.get_num_args().is_some_and(|n| n.min_values() == 0) {
                    "optional"
                } else if multiple {
                    "values"
                } else {
                    "value"
                };
                let value_name = a
                    .get_value_names()
                    .map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let choices: Vec<String> = a.get_possible_values().iter().map(|p| p.get_name().to_string()).collect();
                args.push((
                    keyword(a),
                    flag.clone(),
                    kind.into(),
                    value_name.clone(),
                    help.clone(),
                    choices,
                    a.is_required_set(),
                ));
                if let Some(b) = batches_keyword(a) {
                    args.push((
                        b,
                        flag,
                        "batches".into(),
                        "Iterable".into(),
                        format!("Instead of {}: batches from Python (a DataLoader, a generator...).", keyword(a)),
                        Vec::new(),
                        false,
                    ));
                }
            }
            (sub.get_name().to_string(), args)
        })
        .collect()
}

/// A value as one command-line word.
fn word(value: &Bound<'_, PyAny>, key: &str) -> PyResult<OsString> {
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!("{key}= takes a value, not {value}")));
    }
    if let Ok(s) = value.extract::<String>() {
        return Ok(s.into());
    }
    if value.hasattr("__fspath__")? {
        return value.extract::<std::path::PathBuf>().map(Into::into);
    }
    if value.is_instance_of::<pyo3::types::PyInt>() || value.is_instance_of::<pyo3::types::PyFloat>() {
        return Ok(value.str()?.to_string().into());
    }
    // numpy and torch scalars (np.int64(32), a 0-d tensor) as the numbers they hold
    if let Ok(i) = value.call_method0("__index__") {
        return Ok(i.str()?.to_string().into());
    }
    if let Ok(f) = value.call_method0("__float__") {
        return Ok(f.str()?.to_string().into());
    }
    let kind = value.get_type().name()?.to_string();
    Err(PyTypeError::new_err(format!("{key}= takes a str, a path or a number, not an object of type {kind}")))
}

/// The values of a keyword: one word, or each item of a list or tuple.
fn words(value: &Bound<'_, PyAny>, key: &str) -> PyResult<Vec<OsString>> {
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        return value.try_iter()?.map(|v| word(&v?, key)).collect();
    }
    Ok(vec![word(value, key)?])
}

/// Runs `command` with `kwargs` (keywords as [`describe`] names them); returns the JSON the
/// command prints with `--json`, its exit code (1: a threshold failed), its warnings and why a
/// threshold failed. The
/// batches keywords in `in_place` are read without a copy (each batch is new memory).
#[pyfunction]
#[pyo3(signature = (command, kwargs, quiet=false, in_place=Vec::new()))]
pub fn call(
    py: Python<'_>,
    command: &str,
    kwargs: &Bound<'_, PyDict>,
    quiet: bool,
    in_place: Vec<String>,
) -> PyResult<(String, u8, Vec<String>, Option<String>)> {
    let sub = subcommand(command)?;
    let mut argv: Vec<OsString> = vec!["swa".into(), command.into()];
    let mut positional: Vec<OsString> = Vec::new();
    let mut provided = Vec::new();
    let mut names: Vec<std::path::PathBuf> = Vec::new();
    let mut pump = Pump::new();
    let (mailbox, inbox) = std::sync::mpsc::channel::<Message>();
    let function = format!("swa.{}()", command.replace('-', "_"));
    for (k, value) in kwargs.iter() {
        let key: String = k.extract()?;
        if value.is_none() {
            continue;
        }
        if let Some(arg) = sub.get_arguments().find(|a| batches_keyword(a).as_deref() == Some(key.as_str())) {
            let labelled = labelled(arg, command);
            // Its name may get a `#2` while another call holds `<batches>`: the pump learns it after.
            let index = pump.count();
            let iterable = Iterable { index, labelled, pump: mailbox.clone() };
            let registration = swa::inputs::samples::provide(&format!("<{key}>"), Arc::new(iterable));
            let name = registration.path().to_path_buf();
            pump.hold(value.clone().unbind(), name, labelled, in_place.contains(&key));
            argv.push(format!("--{}", arg.get_long().unwrap_or_default()).into());
            argv.push(registration.path().as_os_str().to_owned());
            names.push(registration.path().to_path_buf());
            provided.push(registration);
            continue;
        }
        let Some(arg) = sub.get_arguments().find(|a| visible(a) && keyword(a) == key) else {
            let known: Vec<String> = sub.get_arguments().filter(|a| visible(a)).map(keyword).collect();
            let close = known.iter().find(|k| k.contains(key.as_str()) || key.contains(k.as_str()));
            return Err(PyTypeError::new_err(format!(
                "{function} got an unexpected keyword argument '{key}'{}",
                close.map(|c| format!(" (did you mean '{c}'?)")).unwrap_or_default()
            )));
        };
        let flag = format!("--{}", arg.get_long().unwrap_or_default());
        if arg.is_positional() {
            positional.extend(words(&value, &key)?);
        } else if is_switch(arg) {
            let on: bool = value.extract().map_err(|_| PyTypeError::new_err(format!("{key}= takes True or False")))?;
            if on {
                argv.push(flag.into());
            }
        } else if arg.get_num_args().is_some_and(|n| n.min_values() == 0)
            && value.is_instance_of::<pyo3::types::PyBool>()
        {
            if value.extract::<bool>()? {
                argv.push(flag.into());
            }
        } else if matches!(arg.get_action(), ArgAction::Append) {
            for w in words(&value, &key)? {
                let mut a = OsString::from(format!("{flag}="));
                a.push(w);
                argv.push(a);
            }
        } else if arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
            argv.push(flag.into());
            argv.extend(words(&value, &key)?);
        } else {
            // One value; a list or tuple is the comma-separated list the flag takes
            // (`mean=[0.485, 0.456, 0.406]`, `resize=(224, 224)`).
            let mut a = OsString::from(format!("{flag}="));
            a.push(words(&value, &key)?.join(std::ffi::OsStr::new(",")));
            argv.push(a);
        }
    }
    if quiet {
        argv.push("--quiet".into());
    }
    if !positional.is_empty() {
        argv.push("--".into());
        argv.extend(positional);
    }
    let mut parsed = cli::Cli::try_parse_from_args(argv).map_err(|e| {
        use clap::error::{ContextKind, ContextValue};
        // The argument clap names (`--stats <STATS>`) as its keyword.
        let arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(a)) => Some(a.clone()),
            _ => None,
        };
        let text = e.render().to_string();
        let text: Vec<&str> = text
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut text = text.join(" ").trim_start_matches("error: ").to_string();
        let mut keyword = None;
        if let Some(a) = arg {
            let k = pythonize(a.split(' ').next().unwrap_or_default());
            let k = k.trim_end_matches("=True").trim_end_matches('=').to_string();
            text = text.replace(&format!("'{a}'"), &format!("{k}="));
            keyword = Some(k);
        }
        new_error(py, "UsageError", &pythonize(&text), &[("keyword", keyword)])
    })?;
    parsed.json_with_progress();
    let guard = SigintGuard::install();
    let result = run(py, &parsed, &mut pump, mailbox, inbox);
    drop(guard);
    let warnings: Vec<String> = swa::error::take_warnings().iter().map(|w| pythonize(w)).collect();
    drop(provided);
    if let Some(interrupt) = pump.interrupt.take() {
        return Err(interrupt);
    }
    match result {
        Ok(outcome) => Ok((outcome.stdout, outcome.code, warnings, outcome.failure.as_deref().map(pythonize))),
        Err(swa::Error::Interrupted) => {
            py.check_signals()?;
            Err(PyKeyboardInterrupt::new_err("swa: interrupted: nothing was written"))
        }
        Err(e) => {
            let err = from_error(py, &e, &names)?;
            if let Some(c) = pump.cause.take() {
                err.set_cause(py, Some(c));
            }
            Err(err)
        }
    }
}

/// Runs the command on a worker thread while this thread, the caller's, answers its requests for
/// Python batches (with the GIL released between them) and notices Ctrl-C; the iterators are
/// closed here at the end.
fn run(
    py: Python<'_>,
    parsed: &cli::Cli,
    pump: &mut Pump,
    mailbox: std::sync::mpsc::Sender<Message>,
    inbox: std::sync::mpsc::Receiver<Message>,
) -> swa::Result<cli::Outcome> {
    use std::sync::mpsc::RecvTimeoutError;
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let outcome = cli::execute(parsed);
            let _ = mailbox.send(Message::Finished);
            outcome
        });
        let mut inbox = inbox;
        loop {
            let (got, back) = py.detach(move || (inbox.recv_timeout(std::time::Duration::from_millis(50)), inbox));
            inbox = back;
            match got {
                Ok(Message::Finished) => break,
                Ok(message) => pump.handle(py, message),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    if worker.is_finished() {
                        // What the worker sent last (an iterator closed) is handled before leaving.
                        while let Ok(message) = inbox.try_recv() {
                            pump.handle(py, message);
                        }
                        break;
                    }
                    if let Err(e) = py.check_signals() {
                        pump.signal(py, e);
                    }
                }
            }
        }
        worker.join()
    });
    pump.close();
    result.unwrap_or_else(|_| Err(swa::Error::Runtime("swa panicked while running the command".into())))
}

/// `swa.<class_name>(message, **fields)`.
fn new_error(py: Python<'_>, class: &str, message: &str, fields: &[(&str, Option<String>)]) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let module = py.import("swa._errors")?;
        let kwargs = PyDict::new(py);
        for (k, v) in fields {
            kwargs.set_item(k, v)?;
        }
        let e = module.getattr(class)?.call((message,), Some(&kwargs))?;
        Ok(PyErr::from_value(e))
    })();
    made.unwrap_or_else(|e| e)
}

/// The Python exception for `e`: its class by what failed, its fields (path, tensor, node...),
/// its message with keywords for flags.
fn from_error(py: Python<'_>, e: &swa::Error, sources: &[std::path::PathBuf]) -> PyResult<PyErr> {
    use swa::Error as E;
    let message = pythonize(&cli::render::error(e));
    let mut inner = e;
    while let E::Hinted { error, .. } = inner {
        inner = error;
    }
    let path = |p: &std::path::Path| Some(p.display().to_string());
    let (class, fields): (&str, Vec<(&str, Option<String>)>) = match inner {
        E::Format { path: p, message: m } if sources.contains(p) => {
            ("BatchError", vec![("path", path(p)), ("batch", batch_index(m, "batch "))])
        }
        E::Io { path: p, .. } | E::Format { path: p, .. } => ("InputError", vec![("path", path(p))]),
        E::Tensor { path: p, tensor, .. } => ("TensorError", vec![("path", path(p)), ("tensor", Some(tensor.clone()))]),
        E::Node { node, op, message } => (
            "NodeError",
            vec![
                ("node", Some(node.clone())),
                ("op", Some(op.clone())),
                ("batch", message.find("batch ").and_then(|at| batch_index(&message[at..], "batch "))),
            ],
        ),
        E::Setting { setting, .. } => (
            "UsageError",
            vec![(
                "keyword",
                Some(
                    pythonize(cli::render::flag(*setting)).trim_end_matches("=True").trim_end_matches('=').to_string(),
                ),
            )],
        ),
        E::Mismatch(_) | E::Usage(_) => ("UsageError", vec![]),
        E::Session { path: p, .. } => ("OnnxRuntimeError", vec![("path", path(p))]),
        E::Runtime(_) | E::Ort(_) => ("OnnxRuntimeError", vec![]),
        _ => ("Error", vec![]),
    };
    Ok(new_error(py, class, &message, &fields))
}

/// The index (from 0) of the batch a message counts from 1 (`batch 3: ...`, `in batch 3`).
fn batch_index(message: &str, prefix: &str) -> Option<String> {
    let digits: String = message.strip_prefix(prefix)?.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<usize>().ok().and_then(|n| n.checked_sub(1)).map(|n| n.to_string())
}

/// The CLI's text with keywords for flags: `--batch-size 8` → `batch_size=8`, `--force` →
/// `force=True`, `-o` → `output=`.
pub fn pythonize(text: &str) -> String {
    let cmd = cli::Cli::command();
    let mut all: Vec<clap::Arg> = cmd.get_arguments().cloned().collect();
    for sub in cmd.get_subcommands() {
        all.extend(sub.get_arguments().cloned());
    }
    // The same flag may be declared by several commands: a switch, or a choice, in any of them.
    let find = |long: &str| all.iter().filter(|a| a.get_long() == Some(long)).collect::<Vec<_>>();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(after.len());
        let long = &after[..end];
        let args = find(long);
        let Some(&arg) = args.first().filter(|_| !long.is_empty()) else {
            out.push_str("--");
            rest = after;
            continue;
        };
        let k = keyword(arg);
        rest = &after[end..];
        if args.iter().all(|a| is_switch(a)) {
            out.push_str(&format!("{k}=True"));
            continue;
        }
        // `--flag VALUE`: a number, an upper-case placeholder or one of its choices.
        let value = rest.strip_prefix(' ').and_then(|r| {
            let v_end =
                r.find(|c: char| c.is_whitespace() || matches!(c, ')' | ';' | ':' | '`' | '\'')).unwrap_or(r.len());
            let v = r[..v_end].trim_end_matches([',', '.']);
            let choice = args.iter().any(|a| a.get_possible_values().iter().any(|p| p.get_name() == v));
            let number = !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == ',' || c == '.');
            let placeholder = !v.is_empty() && v.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c == ',');
            (choice || number || placeholder).then(|| (v.to_string(), choice, 1 + v.len()))
        });
        match value {
            Some((v, true, used)) => {
                out.push_str(&format!("{k}=\"{v}\""));
                rest = &rest[used..];
            }
            Some((v, false, used)) => {
                out.push_str(&format!("{k}={v}"));
                rest = &rest[used..];
            }
            None => {
                out.push_str(&format!("{k}="));
                // A placeholder after the flag (`--output <OUT.onnx>`) is the keyword's value.
                if let Some(end) = rest.strip_prefix(" <").and_then(|r| r.find('>')) {
                    rest = &rest[end + 3..];
                }
            }
        }
    }
    out.push_str(rest);
    out.replace("-o OUT.onnx", "output=\"OUT.onnx\"")
}

/// While a call runs with the GIL released, SIGINT (Ctrl-C) asks the work to stop
/// ([`swa::progress::request_stop`]) and then runs the handler it replaced (Python's, which
/// notes the signal so that `KeyboardInterrupt` is raised when the call returns). Calls from
/// several threads share one installation; the last to end restores the old handler.
struct SigintGuard;

static ACTIVE: Mutex<usize> = Mutex::new(0);
static PREVIOUS: AtomicUsize = AtomicUsize::new(0);
static mut OLD: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();

extern "C" fn on_sigint(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    swa::progress::request_stop();
    let previous = PREVIOUS.load(Ordering::SeqCst);
    if previous == 0 || previous == libc::SIG_DFL || previous == libc::SIG_IGN {
        return;
    }
    // SAFETY: `OLD` was written before this handler was installed and is not written while it is.
    let old = unsafe { (*std::ptr::addr_of!(OLD)).assume_init_ref() };
    if old.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed as a three-argument handler.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(previous) };
        f(signal, info, context);
    } else {
        // SAFETY: the previous handler was installed as a one-argument handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(previous) };
        f(signal);
    }
}

impl SigintGuard {
    fn install() -> SigintGuard {
        let mut active = ACTIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *active == 0 {
            // A stop asked of calls that have all ended is not this call's.
            swa::progress::clear_stop();
            // SAFETY: plain sigaction calls; `OLD` is written before the new handler can run.
            unsafe {
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_sigint as *const () as usize;
                new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut new.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) == 0 && old.sa_sigaction != libc::SIG_IGN {
                    (*std::ptr::addr_of_mut!(OLD)).write(old);
                    PREVIOUS.store(old.sa_sigaction, Ordering::SeqCst);
                    libc::sigaction(libc::SIGINT, &new, std::ptr::null_mut());
                } else {
                    PREVIOUS.store(libc::SIG_IGN, Ordering::SeqCst);
                }
            }
        }
        *active += 1;
        SigintGuard
    }
}

impl Drop for SigintGuard {
    fn drop(&mut self) {
        let mut active = ACTIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *active -= 1;
        if *active == 0 && PREVIOUS.load(Ordering::SeqCst) != libc::SIG_IGN {
            // SAFETY: restores the handler saved by `install`.
            unsafe {
                libc::sigaction(libc::SIGINT, (*std::ptr::addr_of!(OLD)).as_ptr(), std::ptr::null_mut());
            }
        }
    }
}
