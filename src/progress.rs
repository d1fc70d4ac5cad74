//! Progress bars on a terminal; hidden when stderr is not one or when asked to be quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn bar(len: Option<u64>, template: &str, message: &str, quiet: bool) -> ProgressBar {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(len, target);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.set_message(message.to_string());
    bar
}

/// A bar counting bytes.
pub fn bytes_bar(len: u64, message: &str, quiet: bool) -> ProgressBar {
    bar(Some(len), "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}", message, quiet)
}

/// A bar counting samples, of `len` where the number is known.
pub fn samples_bar(len: Option<u64>, message: &str, quiet: bool) -> ProgressBar {
    match len {
        Some(_) => bar(len, "{msg:>12} [{bar:30}] {pos}/{len} samples {per_sec} ETA {eta}", message, quiet),
        None => bar(None, "{msg:>12} {spinner} {pos} samples {per_sec}", message, quiet),
    }
}

/// Set when the caller asked the work in progress to stop (the Python module, on Ctrl-C): every
/// pass checks it between batches and an average between chunks, and returns
/// [`crate::Error::Interrupted`], so the staged outputs are discarded as for any failure. The
/// `swa` binary does not use it: a signal ends the process after removing what was staged.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks the work in progress to stop. Async-signal-safe (one atomic store).
pub fn request_stop() {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Clears a stop request before new work starts; returns whether one was pending.
pub fn clear_stop() -> bool {
    STOP.swap(false, std::sync::atomic::Ordering::SeqCst)
}

/// Fails with [`crate::Error::Interrupted`] when a stop was requested.
pub fn check_stop() -> crate::Result<()> {
    match STOP.load(std::sync::atomic::Ordering::SeqCst) {
        true => Err(crate::Error::Interrupted),
        false => Ok(()),
    }
}
