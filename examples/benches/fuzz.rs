//! The full fuzz run: every parser of a user file, `--iters` inputs each (default 100 000).
//!
//! ```text
//! cargo bench -p glm-examples --bench fuzz -- --iters 100000 --seed 1 --out target/fuzz
//!     [--targets safetensors,config_json] [--mem-cap-mb 2048] [--replay TARGET ITERATION]
//! ```
//!
//! Prints a per-target table (inputs, accepted, typed errors, panics, seeds accepted, peak live
//! heap, peak RSS, seconds) and the panic sites; exits non-zero on any panic or refused seed.
//! Panicking inputs are saved under `OUT/panics/`. An input that kills the process (an allocation
//! past the cap, a stack overflow) is left in `WORK/current-<target>.bin`, WORK being the scratch
//! folder printed at the start. `--replay` writes one input
//! (rebuilt from the seed) to `OUT/replay-<target>-<iteration>.bin`.

use std::path::PathBuf;
use std::process::ExitCode;

use glm_examples::fuzz::{self, alloc::CappedAlloc, Paths, RunConfig};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

struct Args {
    iterations: u64,
    seed: u64,
    out: PathBuf,
    targets: Option<Vec<String>>,
    mem_cap_mb: usize,
    replay: Option<(String, u64)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        iterations: 100_000,
        seed: 1,
        out: PathBuf::from("target/fuzz"),
        targets: None,
        mem_cap_mb: 2048,
        replay: None,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> Result<u64, String> {
        v.ok_or(format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iters" => args.iterations = number(it.next(), "--iters")?,
            "--seed" => args.seed = number(it.next(), "--seed")?,
            "--mem-cap-mb" => args.mem_cap_mb = number(it.next(), "--mem-cap-mb")? as usize,
            "--out" => args.out = it.next().ok_or("--out needs a value")?.into(),
            "--targets" => {
                let list = it.next().ok_or("--targets needs a value")?;
                args.targets = Some(list.split(',').map(str::to_string).collect());
            }
            "--replay" => {
                let name = it.next().ok_or("--replay needs TARGET ITERATION")?;
                args.replay = Some((name, number(it.next(), "--replay")?));
            }
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let work = fuzz::default_work_dir();
    let paths = match Paths::from_env(&work) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some((name, iteration)) = &args.replay {
        let result = fuzz::replay(&paths, name, args.seed, *iteration, &args.out);
        let _ = std::fs::remove_dir_all(&work);
        return match result {
            Ok(p) => {
                println!("{}", p.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fuzz: {e}");
                ExitCode::from(2)
            }
        };
    }
    let mut targets = match fuzz::all_targets(&paths) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fuzz: setting up the targets failed: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(names) = &args.targets {
        targets.retain(|t| names.iter().any(|n| n == t.name()));
        if targets.is_empty() {
            eprintln!("fuzz: no target matches {names:?}");
            return ExitCode::from(2);
        }
    }
    let mut config = RunConfig::new(args.iterations, args.seed, &args.out);
    config.crash_dir = work.clone();
    config.live_heap_cap = args.mem_cap_mb << 20;
    println!(
        "fuzz: {} inputs per target, seed {}, heap cap {} MiB (single allocation {} MiB), output {}, scratch {}",
        args.iterations,
        args.seed,
        args.mem_cap_mb,
        config.single_alloc_cap >> 20,
        args.out.display(),
        work.display()
    );
    let mut reports = Vec::new();
    for t in targets.iter_mut() {
        match fuzz::run_target(&mut **t, &config) {
            Ok(r) => {
                println!(
                    "  {:<18} {} inputs, {} ok, {} errors, {} panics ({:.1} s)",
                    r.name, r.inputs, r.ok, r.errors, r.panics, r.seconds
                );
                reports.push(r);
            }
            Err(e) => {
                eprintln!("fuzz: {}: {e}", t.name());
                return ExitCode::from(2);
            }
        }
    }
    drop(targets);
    let _ = std::fs::remove_dir_all(&work);
    println!("\n{}", fuzz::format_table(&reports));
    println!(
        "most frequent typed errors:\n{}",
        fuzz::format_errors(&reports, 6)
    );
    let panics: u64 = reports.iter().map(|r| r.panics).sum();
    let bad_seeds = reports.iter().any(|r| r.seeds_ok != r.seeds);
    if panics > 0 || bad_seeds {
        eprintln!("fuzz: FAILED ({panics} panics; seeds refused: {bad_seeds})");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
