//! Running a CPU forward pass on rayon's global pool.
//!
//! Every host kernel of a forward pass (the skinny GEMMs, attention, element-wise passes) splits
//! its work over rayon's global pool. Called from a thread outside the pool, each such call parks
//! the caller until the workers finish and wakes a sleeping worker: two context switches per
//! kernel, some 40–60 per decode step, which on a 2-vCPU VM cost about as much as a small model's
//! whole step. [`run_on_host_pool`] runs the whole pass on a worker instead: the kernels fork in
//! place and the calling thread works alongside. With `spin`, the other workers stay awake for
//! the duration of the pass (each polls for work instead of going to sleep between kernels):
//! meant for decode-sized passes, whose serial work between kernels is short; not for prefill,
//! where OpenBLAS's own threads need the cores.
//!
//! `GLM_HOST_POOL=off` turns the pool off for the process, `GLM_HOST_POOL=nospin` keeps it but
//! never spins (for comparisons).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// How forward passes use the pool in this process (`GLM_HOST_POOL`, read once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    NoSpin,
    On,
}

fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("GLM_HOST_POOL").as_deref() {
        Ok("off") => Mode::Off,
        Ok("nospin") => Mode::NoSpin,
        _ => Mode::On,
    })
}

/// Sets the flag when dropped (also when the pass panics), releasing the spinners.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `f` on a worker of rayon's global pool (directly when already on a pool thread or when
/// `GLM_HOST_POOL=off`). With `spin`, every other worker polls for pool work until `f` returns
/// instead of sleeping between the pass's kernels.
pub fn run_on_host_pool<R: Send>(spin: bool, f: impl FnOnce() -> R + Send) -> R {
    let mode = mode();
    if mode == Mode::Off || rayon::current_thread_index().is_some() {
        return f();
    }
    let spinners = if spin && mode == Mode::On {
        rayon::current_num_threads().saturating_sub(1)
    } else {
        0
    };
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        let body = rayon::current_thread_index();
        for _ in 0..spinners {
            let done = &done;
            scope.spawn(move |_| {
                // A spinner that the pass's own thread picks up (while it waits inside one of its
                // kernels) must not hold that thread: only other workers spin.
                if rayon::current_thread_index() == body {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let _release = Release(&done);
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn the_pass_runs_on_a_worker_and_its_parallel_work_completes() {
        for spin in [false, true] {
            let (on_worker, sum) = run_on_host_pool(spin, || {
                let sum: u64 = (0..10_000u64).into_par_iter().map(|i| i * i).sum();
                (rayon::current_thread_index().is_some(), sum)
            });
            assert!(on_worker || mode() == Mode::Off);
            assert_eq!(sum, (0..10_000u64).map(|i| i * i).sum::<u64>());
        }
    }

    #[test]
    fn many_callers_at_once_all_finish() {
        // More concurrent passes than workers: spinners of one pass run the others' work.
        let results: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6u64)
                .map(|k| {
                    s.spawn(move || {
                        run_on_host_pool(true, || {
                            (0..2_000u64).into_par_iter().map(|i| i + k).sum::<u64>()
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        assert_eq!(results.len(), 6);
        for (k, r) in results.iter().enumerate() {
            assert_eq!(*r, (0..2_000u64).map(|i| i + k as u64).sum::<u64>());
        }
    }

    #[test]
    fn a_panicking_pass_releases_the_spinners() {
        let caught = std::panic::catch_unwind(|| run_on_host_pool(true, || panic!("boom")));
        assert!(caught.is_err());
        // The pool still works afterwards (no spinner left behind).
        assert_eq!(run_on_host_pool(true, || 2 + 2), 4);
    }
}
