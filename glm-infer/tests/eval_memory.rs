//! Memory of `lm` evaluation is bounded by one micro-batch of windows, whatever the document
//! length (issue 10, defect 3). A counting global allocator records the peak of live heap bytes
//! while `evaluate_tasks` runs on a generated document, once short and once much longer: the peak
//! may grow with the document only by a few bytes per token (its text, its ids, one small result
//! per window), never by the windows' `[n, n]` masks, which a whole-file window list costs
//! (`L²` bytes per window).
//!
//! This file holds a single test so that no other test allocates while it measures.
#![cfg(feature = "eval")]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use glm_infer::eval::{self, CollectLines, EvalOptions};
use glm_infer::IdCodec;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::SeqCst) + size;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Writes an `lm` task over one generated document of `n` ids and returns the peak of live heap
/// bytes above the level before the run, and the number of windows evaluated.
fn peak_of_run(
    model: &glm_core::GlmModel<Cpu>,
    dir: &Path,
    n: usize,
    max_seq_length: usize,
    micro_batch: usize,
) -> (usize, usize) {
    let cfg = model.config();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("data/big")).unwrap();
    // Ids spread over the whole vocabulary (a simple LCG: deterministic, no fixture values).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let text: Vec<String> = (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % cfg.vocab_size as u64).to_string()
        })
        .collect();
    std::fs::write(dir.join("data/big/doc.txt"), text.join(" ")).unwrap();
    drop(text);
    let task = dir.join("big.yaml");
    std::fs::write(
        &task,
        format!(
            "name: Big\ntype: lm\npath: big\nfile-pattern:\n  test: \"*.txt\"\n\
             max-seq-length: {max_seq_length}\ngeneration-length: 1\nuse_task_mask: true\n\
             micro-batch-size: {micro_batch}\n"
        ),
    )
    .unwrap();
    let mut lines = CollectLines::default();
    let tasks = eval::load_tasks(&[task], &mut lines).unwrap();
    let options = EvalOptions {
        data_root: dir.join("data"),
        token_losses: false,
        ..Default::default()
    };
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let report = eval::evaluate_tasks(model, &IdCodec, &tasks, &options, &mut lines)
        .expect("evaluation of the generated document");
    let peak = PEAK.load(Ordering::SeqCst).saturating_sub(base);
    let windows = report.tasks[0].groups[0].files[0].num_samples;
    drop(report);
    (peak, windows)
}

#[test]
fn lm_evaluation_memory_is_bounded_by_one_batch() {
    let model = model();
    let l = model.config().max_sequence_length;
    let micro_batch = 2;
    let dir = std::env::temp_dir().join(format!("glm-eval-memory-{}", std::process::id()));
    // Warm-up: backend caches, lazily built tables, thread pools.
    peak_of_run(&model, &dir, l, l, micro_batch);
    let small_n = 2 * l;
    let big_n = 12 * l;
    let (small, small_windows) = peak_of_run(&model, &dir, small_n, l, micro_batch);
    let (big, big_windows) = peak_of_run(&model, &dir, big_n, l, micro_batch);
    let _ = std::fs::remove_dir_all(&dir);
    // Stride 1: every token after the first window opens one more window.
    assert_eq!(small_windows, small_n - (l - 1) + 1);
    assert_eq!(big_windows, big_n - (l - 1) + 1);
    let extra_windows = big_windows - small_windows;
    // What holding every window at once costs beyond the short run: its mask alone.
    let whole_file = extra_windows * l * l;
    // Allowed growth: 256 bytes per extra token (text, ids, a per-window result, vector doubling)
    // plus 256 KiB of allocator noise.
    let allowed = (big_n - small_n) * 256 + (256 << 10);
    eprintln!(
        "peak above baseline: {small} B ({small_windows} windows), {big} B ({big_windows} windows); \
         allowed growth {allowed} B, whole-file masks would add {whole_file} B"
    );
    assert!(
        allowed * 4 < whole_file,
        "the test must be able to tell the two apart"
    );
    assert!(
        big <= small + allowed,
        "peak memory grew from {small} B to {big} B with {extra_windows} more windows: windows are \
         held beyond one micro-batch (whole-file masks: {whole_file} B)"
    );
}
