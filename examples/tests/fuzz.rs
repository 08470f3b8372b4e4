//! Short fuzz pass over every parser of a user file (CI): a few thousand seeded inputs per
//! parser, no panic allowed, every unmodified seed accepted, memory capped.
//!
//! `GLM_FUZZ_ITERS` sets the inputs per parser (default 2000), `GLM_FUZZ_SEED` the run seed
//! (default 1), `GLM_FUZZ_TARGETS` a comma-separated subset, `GLM_FUZZ_HEAP_CAP_MB` the live-heap cap, `GLM_FUZZ_WORK` the scratch folder (default: [`fuzz::default_work_dir`]). Panicking inputs are saved under `CARGO_TARGET_TMPDIR/fuzz/panics/`.

use glm_examples::fuzz::{self, alloc::CappedAlloc, Paths, RunConfig};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

fn env_u64(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("{var}={v}: {e}")),
        Err(_) => default,
    }
}

#[test]
fn short_fuzz_pass_has_no_panics() {
    let iterations = env_u64("GLM_FUZZ_ITERS", 2000);
    let seed = env_u64("GLM_FUZZ_SEED", 1);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz");
    let work = std::env::var_os("GLM_FUZZ_WORK")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(fuzz::default_work_dir);
    let paths = Paths::from_env(&work).expect("fixture folders");
    let mut targets = fuzz::all_targets(&paths).expect("targets set up from the fixtures");
    assert_eq!(targets.len(), 8, "one target per parser of a user file");
    if let Ok(names) = std::env::var("GLM_FUZZ_TARGETS") {
        targets.retain(|t| names.split(',').any(|n| n == t.name()));
        assert!(
            !targets.is_empty(),
            "GLM_FUZZ_TARGETS={names} matches no target"
        );
    }
    let mut config = RunConfig::new(iterations, seed, &out);
    config.crash_dir = work.clone();
    if let Ok(mb) = std::env::var("GLM_FUZZ_HEAP_CAP_MB") {
        config.live_heap_cap = mb.parse::<usize>().expect("GLM_FUZZ_HEAP_CAP_MB") << 20;
    }
    eprintln!(
        "fuzz: scratch folder {} (the input being parsed: current-<target>.bin)",
        work.display()
    );
    let mut reports = Vec::new();
    for t in targets.iter_mut() {
        let r = fuzz::run_target(&mut **t, &config).expect("run");
        eprintln!(
            "{:<18} {} inputs, {} ok, {} errors, {} panics ({:.1} s)",
            r.name, r.inputs, r.ok, r.errors, r.panics, r.seconds
        );
        reports.push(r);
    }
    drop(targets);
    let _ = std::fs::remove_dir_all(&work);
    let table = fuzz::format_table(&reports);
    eprintln!("{table}\n{}", fuzz::format_errors(&reports, 8));
    for r in &reports {
        assert_eq!(r.inputs, iterations, "{}", r.name);
        assert!(r.seeds > 0, "{}: no seed", r.name);
        assert_eq!(
            r.seeds_ok, r.seeds,
            "{}: a valid seed was refused\n{table}",
            r.name
        );
        assert_eq!(r.ok + r.errors + r.panics, r.inputs, "{}", r.name);
        // Mutations must reach the error paths, not only re-run the seeds.
        assert!(r.errors > 0, "{}: no input was refused\n{table}", r.name);
    }
    let panics: u64 = reports.iter().map(|r| r.panics).sum();
    assert_eq!(panics, 0, "parsers panicked:\n{table}");
}
