//! A fuzz harness for every parser that reads user files, on stable Rust.
//!
//! Each [`Target`] builds inputs from the valid fixtures with a seeded [`mutate::Mutator`], runs
//! its parser on them inside [`std::panic::catch_unwind`] and says whether the input was accepted
//! or refused with a typed error. [`run_target`] counts inputs, acceptances, typed errors and
//! panics, saves every panicking input (first few per panic site) under `OUT/panics/`, and
//! measures memory. Memory is bounded by [`alloc::CappedAlloc`]: a parser that sizes an
//! allocation from a header value aborts the run; the input being parsed is always on disk
//! (`current-<target>.bin` in [`RunConfig::crash_dir`]), so it survives an abort or a stack overflow.
//!
//! The first inputs of every target are its unmodified seeds, which must all be accepted, so a
//! run that only ever exercises error paths is caught.
//!
//! Entry points: `cargo bench -p glm-examples --bench fuzz -- --iters 100000 --seed S --out DIR`
//! (the full run) and `examples/tests/fuzz.rs` (a short pass in CI).
//!
//! (Over 400 lines: the fuzz driver: seeds, iteration budget, panic capture and the report the bench and the test share.)

pub mod alloc;
pub mod mutate;
pub mod targets;
pub mod zip;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Instant;

pub use mutate::{input_seed, Format, Mutator, Rng};
pub use targets::{all_targets, Paths};

/// A parser under test.
pub trait Target {
    /// Short name (file names, report rows).
    fn name(&self) -> &'static str;
    /// The valid inputs, unmodified (run first; each must be accepted).
    fn seed_inputs(&self) -> Vec<Vec<u8>>;
    /// One mutated or random input, a pure function of `rng`.
    fn generate(&self, rng: &mut Rng) -> Vec<u8>;
    /// Runs the parser (and what uses its result) on `input`: `Ok` = accepted, `Err(message)` =
    /// refused with a typed error.
    fn run(&mut self, input: &[u8]) -> Result<(), String>;
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Inputs per target (the seeds included).
    pub iterations: u64,
    /// Run seed: with the target name and the iteration it determines every input.
    pub seed: u64,
    /// Output folder (`panics/`, `heap-<target>.bin`).
    pub out: PathBuf,
    /// Where the input being parsed is kept (`current-<target>.bin`, removed when the target
    /// finishes): if the process dies (allocation over the cap, stack overflow), it is left there.
    pub crash_dir: PathBuf,
    /// Largest single allocation allowed while a parser runs (bytes).
    pub single_alloc_cap: usize,
    /// Largest live heap of the whole process allowed while a parser runs (bytes).
    pub live_heap_cap: usize,
    /// Panicking inputs saved per panic site.
    pub saved_per_site: u64,
}

impl RunConfig {
    /// `iterations` inputs per target with default caps (256 MiB per allocation, 2 GiB live).
    pub fn new(iterations: u64, seed: u64, out: impl Into<PathBuf>) -> Self {
        let out = out.into();
        Self {
            iterations,
            seed,
            crash_dir: out.clone(),
            out,
            single_alloc_cap: 256 << 20,
            live_heap_cap: 2 << 30,
            saved_per_site: 3,
        }
    }
}

/// One place where parsers panicked.
#[derive(Debug, Clone)]
pub struct PanicSite {
    /// Panics at this site.
    pub count: u64,
    /// The panic message of the first one.
    pub message: String,
    /// Backtrace of the first one.
    pub backtrace: String,
    /// Iteration of the first one.
    pub first_iteration: u64,
    /// Saved inputs.
    pub saved: Vec<PathBuf>,
}

/// What a run of one target found.
#[derive(Debug, Clone)]
pub struct TargetReport {
    /// Target name.
    pub name: &'static str,
    /// Inputs run.
    pub inputs: u64,
    /// Accepted inputs.
    pub ok: u64,
    /// Inputs refused with a typed error.
    pub errors: u64,
    /// Inputs that panicked.
    pub panics: u64,
    /// Unmodified seeds run.
    pub seeds: usize,
    /// Unmodified seeds accepted.
    pub seeds_ok: usize,
    /// Error message of the first refused seed, if any.
    pub seed_error: Option<String>,
    /// Highest live heap during the target (bytes, whole process).
    pub peak_heap: usize,
    /// Largest heap growth while one input was parsed (bytes) and that input's iteration.
    pub max_input_heap: (usize, u64),
    /// Peak RSS (`VmHWM`, KiB) during the target.
    pub peak_rss_kib: Option<u64>,
    /// The peak RSS counter could not be reset: `peak_rss_kib` is the process peak so far.
    pub rss_is_process_peak: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Panics grouped by location (`file:line:col`).
    pub sites: BTreeMap<String, PanicSite>,
    /// Typed errors grouped by message shape (digits folded, cut to 100 characters).
    pub error_kinds: BTreeMap<String, u64>,
}

/// The shape of an error message: digit runs folded to `#`, cut to 100 characters.
fn error_kind(message: &str) -> String {
    let mut out = String::new();
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
        if out.len() >= 100 {
            break;
        }
    }
    out
}

struct Captured {
    location: String,
    message: String,
    /// Captured unresolved; symbolized after the input's memory was measured (resolving loads
    /// the debug info, which is not the parser's memory).
    backtrace: Option<std::backtrace::Backtrace>,
}

/// Heap growth for one input that is reported (and the input saved as `OUT/heap-<target>.bin`).
pub const LARGE_INPUT_HEAP: usize = 64 << 20;

static CAPTURING: AtomicBool = AtomicBool::new(false);
static LAST_PANIC: Mutex<Option<Captured>> = Mutex::new(None);
static SEEN_SITES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Installs (once) a panic hook that, while a target runs, records the first panic's location,
/// message and (first time per location) backtrace instead of printing them. Outside runs it
/// defers to the previous hook.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CAPTURING.load(Ordering::SeqCst) {
                previous(info);
                return;
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "(unknown location)".to_string());
            let mut last = LAST_PANIC.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some() {
                return;
            }
            let mut seen = SEEN_SITES.lock().unwrap_or_else(PoisonError::into_inner);
            let backtrace = if seen.contains(&location) {
                None
            } else {
                seen.push(location.clone());
                Some(std::backtrace::Backtrace::force_capture())
            };
            *last = Some(Captured {
                location,
                message: payload_message(info.payload()),
                backtrace,
            });
        }));
    });
}

/// A fresh scratch folder for the targets' files: under `/dev/shm` when it exists (every input
/// is written to disk, and a busy disk would dominate the run time), else the system temp folder.
pub fn default_work_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("glm-fuzz-{}", std::process::id()))
}

/// Rebuilds input `iteration` of `target` for run seed `seed` (seeds first, then mutations).
pub fn input_for(target: &dyn Target, seeds: &[Vec<u8>], seed: u64, iteration: u64) -> Vec<u8> {
    match usize::try_from(iteration).ok().and_then(|i| seeds.get(i)) {
        Some(s) => s.clone(),
        None => target.generate(&mut Rng::new(input_seed(seed, target.name(), iteration))),
    }
}

/// Runs `config.iterations` inputs through `target`.
pub fn run_target(target: &mut dyn Target, config: &RunConfig) -> std::io::Result<TargetReport> {
    install_hook();
    let name = target.name();
    let panic_dir = config.out.join("panics");
    std::fs::create_dir_all(&panic_dir)?;
    std::fs::create_dir_all(&config.crash_dir)?;
    let current_path = config.crash_dir.join(format!("current-{name}.bin"));
    let current = std::fs::File::create(&current_path)?;
    alloc::set_caps(config.single_alloc_cap, config.live_heap_cap);
    let rss_reset = alloc::reset_peak_rss();
    let seeds = target.seed_inputs();
    let mut peak_heap = alloc::live_bytes();
    let start = Instant::now();
    let mut report = TargetReport {
        name,
        inputs: 0,
        ok: 0,
        errors: 0,
        panics: 0,
        seeds: seeds.len(),
        seeds_ok: 0,
        seed_error: None,
        peak_heap: 0,
        max_input_heap: (0, 0),
        peak_rss_kib: None,
        rss_is_process_peak: !rss_reset,
        seconds: 0.0,
        sites: BTreeMap::new(),
        error_kinds: BTreeMap::new(),
    };
    for iteration in 0..config.iterations {
        let input = input_for(&*target, &seeds, config.seed, iteration);
        let is_seed = (iteration as usize) < seeds.len();
        {
            use std::os::unix::fs::FileExt;
            current.write_all_at(&input, 0)?;
            current.set_len(input.len() as u64)?;
        }
        alloc::set_current_input(name, iteration);
        alloc::reset_peak();
        let live_before = alloc::live_bytes();
        *LAST_PANIC.lock().unwrap_or_else(PoisonError::into_inner) = None;
        CAPTURING.store(true, Ordering::SeqCst);
        alloc::enforce(true);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target.run(&input)));
        alloc::enforce(false);
        CAPTURING.store(false, Ordering::SeqCst);
        let peak = alloc::peak_bytes();
        peak_heap = peak_heap.max(peak);
        let growth = peak.saturating_sub(live_before);
        if growth > report.max_input_heap.0 {
            report.max_input_heap = (growth, iteration);
            if growth >= LARGE_INPUT_HEAP {
                std::fs::write(config.out.join(format!("heap-{name}.bin")), &input)?;
            }
        }
        report.inputs += 1;
        match outcome {
            Ok(Ok(())) => {
                report.ok += 1;
                if is_seed {
                    report.seeds_ok += 1;
                }
            }
            Ok(Err(message)) => {
                report.errors += 1;
                let kind = error_kind(&message);
                if let Some(n) = report.error_kinds.get_mut(&kind) {
                    *n += 1;
                } else if report.error_kinds.len() < 1000 {
                    report.error_kinds.insert(kind, 1);
                }
                if is_seed && report.seed_error.is_none() {
                    report.seed_error = Some(message);
                }
            }
            Err(payload) => {
                report.panics += 1;
                let captured = LAST_PANIC
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                let (location, message, backtrace) = match captured {
                    Some(c) => (c.location, c.message, c.backtrace.map(|b| b.to_string())),
                    None => (
                        "(panic on another thread)".to_string(),
                        payload_message(&*payload),
                        None,
                    ),
                };
                let site = report
                    .sites
                    .entry(location.clone())
                    .or_insert_with(|| PanicSite {
                        count: 0,
                        message: message.clone(),
                        backtrace: backtrace.clone().unwrap_or_default(),
                        first_iteration: iteration,
                        saved: Vec::new(),
                    });
                site.count += 1;
                if site.saved.len() < config.saved_per_site as usize {
                    let stem = format!("{name}-{iteration}");
                    let bin = panic_dir.join(format!("{stem}.bin"));
                    std::fs::write(&bin, &input)?;
                    std::fs::write(
                        panic_dir.join(format!("{stem}.txt")),
                        format!(
                            "target: {name}\nrun seed: {}\niteration: {iteration}\n\
                             location: {location}\nmessage: {message}\n\n{}",
                            config.seed,
                            backtrace
                                .as_deref()
                                .unwrap_or("(backtrace: see the first input of this site)")
                        ),
                    )?;
                    site.saved.push(bin);
                }
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.peak_heap = peak_heap;
    report.peak_rss_kib = alloc::peak_rss_kib();
    drop(current);
    let _ = std::fs::remove_file(&current_path);
    Ok(report)
}

/// The per-target table: inputs, accepted, typed errors, panics, peak heap, peak RSS, time.
pub fn format_table(reports: &[TargetReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:>9} {:>9} {:>7} {:>7} {:>11} {:>11} {:>11} {:>8}",
        "target",
        "inputs",
        "ok",
        "errors",
        "panics",
        "seeds",
        "input heap",
        "peak heap",
        "peak RSS",
        "seconds"
    );
    for r in reports {
        let rss = match (r.peak_rss_kib, r.rss_is_process_peak) {
            (Some(k), false) => format!("{} MiB", k / 1024),
            (Some(k), true) => format!("<={} MiB", k / 1024),
            (None, _) => "?".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<18} {:>9} {:>9} {:>9} {:>7} {:>7} {:>11} {:>11} {:>11} {:>8.1}",
            r.name,
            r.inputs,
            r.ok,
            r.errors,
            r.panics,
            format!("{}/{}", r.seeds_ok, r.seeds),
            format!("{:.1} MiB", r.max_input_heap.0 as f64 / (1 << 20) as f64),
            format!("{} MiB", r.peak_heap >> 20),
            rss,
            r.seconds
        );
    }
    for r in reports {
        for (location, site) in &r.sites {
            let _ = writeln!(
                out,
                "panic in {}: {} × at {location}: {} (first: iteration {}, saved {:?})",
                r.name, site.count, site.message, site.first_iteration, site.saved
            );
        }
        if r.max_input_heap.0 >= LARGE_INPUT_HEAP {
            let _ = writeln!(
                out,
                "large allocation in {}: {} MiB for iteration {} (input saved as heap-{}.bin)",
                r.name,
                r.max_input_heap.0 >> 20,
                r.max_input_heap.1,
                r.name
            );
        }
        if let Some(e) = &r.seed_error {
            let _ = writeln!(out, "seed refused in {}: {e}", r.name);
        }
    }
    out
}

/// The `top` most frequent error shapes of every target.
pub fn format_errors(reports: &[TargetReport], top: usize) -> String {
    let mut out = String::new();
    for r in reports {
        let mut kinds: Vec<(&String, &u64)> = r.error_kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(out, "{} ({} error shapes):", r.name, kinds.len());
        for (kind, n) in kinds.into_iter().take(top) {
            let _ = writeln!(out, "  {n:>8}  {kind}");
        }
    }
    out
}

/// Writes input `iteration` of target `name` to `out/replay-<name>-<iteration>.bin`.
pub fn replay(
    paths: &Paths,
    name: &str,
    seed: u64,
    iteration: u64,
    out: &Path,
) -> Result<PathBuf, String> {
    let targets = all_targets(paths)?;
    let target = targets
        .iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| format!("no target named {name}"))?;
    let seeds = target.seed_inputs();
    let input = input_for(&**target, &seeds, seed, iteration);
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let path = out.join(format!("replay-{name}-{iteration}.bin"));
    std::fs::write(&path, input).map_err(|e| e.to_string())?;
    Ok(path)
}
