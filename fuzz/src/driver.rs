//! Runs a target: one seeded input after another, each under `catch_unwind`; a panic or a failed
//! check is a crash, printed (target, seed, input in hex) and saved for `--replay`.

use std::cell::Cell;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::rng::{input_seed, Rng};
use crate::targets::Target;

/// Crashes printed and saved per target; the rest are only counted.
const MAX_REPORTED: usize = 10;
/// Bytes of an input printed in hex (the file has all of it).
const MAX_HEX: usize = 512;

pub struct Options {
    pub inputs: u64,
    pub seed: u64,
    /// Stop a target after this long even if it has inputs left (slow targets).
    pub time_limit: Option<Duration>,
    pub crash_dir: PathBuf,
    /// Print a progress line this often (long runs).
    pub progress: Option<Duration>,
    /// Count failed checks marked as [`KNOWN`] (reported bugs not fixed yet) apart from crashes,
    /// instead of failing the run (the short passes in `make test` do, `make fuzz` does not).
    pub allow_known: bool,
}

/// The start of a failed check's message for a bug already reported and not fixed yet where it
/// lives; the check stays, so the fuzzer sees when the fix lands.
pub const KNOWN: &str = "known finding";

pub struct Report {
    pub target: &'static str,
    pub inputs: u64,
    pub elapsed: Duration,
    pub crashes: u64,
    /// Failed checks of known findings (with `allow_known`).
    pub known: u64,
    pub coverage: String,
    /// Stopped by the time limit before running every input.
    pub timed_out: bool,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

static PANICS: AtomicU64 = AtomicU64::new(0);
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// Set while a target runs an input: its panics are reported by the driver, with the input.
    static IN_TARGET: Cell<bool> = const { Cell::new(false) };
}

/// Panics anywhere in the process (the HTTP server's thread too) are counted and their message
/// kept; those of a target running an input are not printed here: the driver reports them with
/// the input that caused them.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_TARGET.with(Cell::get) {
                default(info);
            }
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-string panic payload)".into());
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("?");
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("panicked at {at} (thread {name}): {msg}"));
            PANICS.fetch_add(1, Ordering::SeqCst);
        }));
    });
}

/// Panics so far in the whole process.
pub fn panic_count() -> u64 {
    PANICS.load(Ordering::SeqCst)
}

pub fn last_panic() -> String {
    LAST_PANIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| "panicked".into())
}

/// Runs one input; `Err` describes the crash.
pub fn run_one(target: &mut dyn Target, input: &[u8]) -> Result<(), String> {
    IN_TARGET.with(|t| t.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| target.run(input)));
    IN_TARGET.with(|t| t.set(false));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(check)) => Err(format!("check failed: {check}")),
        Err(_) => {
            // The target's state is unknown after a panic part-way through.
            target.reset();
            Err(last_panic())
        }
    }
}

pub fn run(name: &'static str, target: &mut dyn Target, opts: &Options) -> Report {
    install_panic_hook();
    let start = Instant::now();
    let mut last_progress = start;
    let mut input = Vec::with_capacity(1 << 16);
    let mut crashes = 0u64;
    let mut known = 0u64;
    let mut done = 0u64;
    let mut timed_out = false;
    while done < opts.inputs {
        if done % 64 == 0 {
            let now = Instant::now();
            if opts.time_limit.is_some_and(|t| now - start >= t) {
                timed_out = true;
                break;
            }
            if opts.progress.is_some_and(|p| now - last_progress >= p) {
                last_progress = now;
                let secs = (now - start).as_secs_f64();
                println!(
                    "  {name}: {} inputs, {}/s, {crashes} crashes",
                    thousands(done),
                    thousands((done as f64 / secs) as u64)
                );
            }
        }
        let seed = input_seed(opts.seed, done);
        input.clear();
        target.generate(&mut Rng::new(seed), &mut input);
        if let Err(why) = run_one(target, &input) {
            if opts.allow_known && why.contains(KNOWN) {
                known += 1;
                if known == 1 {
                    report_crash(name, seed, &input, &why, &opts.crash_dir);
                }
            } else {
                crashes += 1;
                if crashes as usize <= MAX_REPORTED {
                    report_crash(name, seed, &input, &why, &opts.crash_dir);
                }
            }
        }
        done += 1;
    }
    Report {
        target: name,
        inputs: done,
        elapsed: start.elapsed(),
        crashes,
        known,
        coverage: target.coverage(),
        timed_out,
    }
}

fn report_crash(target: &str, seed: u64, input: &[u8], why: &str, dir: &Path) {
    let file = dir.join(format!("{target}-{seed:016x}.bin"));
    let saved = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&file, input));
    let mut out = std::io::stdout().lock();
    let what = if why.contains(KNOWN) {
        "KNOWN"
    } else {
        "CRASH"
    };
    let _ = writeln!(out, "{what} in {target}, seed {seed:#018x}: {why}");
    let _ = writeln!(
        out,
        "  input ({} bytes{}):",
        input.len(),
        if input.len() > MAX_HEX {
            format!(", first {MAX_HEX} shown")
        } else {
            String::new()
        }
    );
    for line in input[..input.len().min(MAX_HEX)].chunks(32) {
        let _ = writeln!(out, "    {}", hex(line));
    }
    match saved {
        Ok(()) => {
            let _ = writeln!(
                out,
                "  saved to {}; rerun: liqonet-fuzz --replay {} {target}",
                file.display(),
                file.display()
            );
        }
        Err(e) => {
            let _ = writeln!(out, "  could not save it to {}: {e}", file.display());
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// 1234567 as "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A share of a total, as a percentage with one decimal.
pub fn pct(part: u64, total: u64) -> String {
    format!("{:.1}%", part as f64 * 100.0 / total.max(1) as f64)
}
