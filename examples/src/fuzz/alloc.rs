//! Bounded memory for fuzzing: a global allocator that counts live bytes and, while a parser
//! runs, refuses any single allocation over a cap or any growth of the live total over a cap.
//!
//! A refusal makes Rust abort the process ("memory allocation of N bytes failed"). Just before,
//! the allocator prints the target and iteration registered with [`set_current_input`] to
//! stderr, without allocating (the harness keeps the input itself on disk while it runs). A
//! parser that sizes a buffer from a header value must return a typed error first.
//!
//! Binaries opt in with
//! `#[global_allocator] static ALLOC: glm_examples::fuzz::alloc::CappedAlloc = CappedAlloc;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

static ENFORCE: AtomicBool = AtomicBool::new(false);
static SINGLE_CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIVE_CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TARGET_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static TARGET_LEN: AtomicUsize = AtomicUsize::new(0);
static ITERATION: AtomicU64 = AtomicU64::new(0);

/// The capping, counting allocator (delegates to [`System`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CappedAlloc;

/// Sets the caps (bytes) enforced while [`enforce`] is on.
pub fn set_caps(single: usize, live: usize) {
    SINGLE_CAP.store(single, Ordering::SeqCst);
    LIVE_CAP.store(live, Ordering::SeqCst);
}

/// Turns enforcement on (while a parser runs) or off.
pub fn enforce(on: bool) {
    ENFORCE.store(on, Ordering::SeqCst);
}

/// Live bytes now.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Highest live byte count since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak measurement at the current live count.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Registers the target and iteration being run, for the abort report.
pub fn set_current_input(target: &'static str, iteration: u64) {
    TARGET_PTR.store(target.as_ptr().cast_mut(), Ordering::SeqCst);
    TARGET_LEN.store(target.len(), Ordering::SeqCst);
    ITERATION.store(iteration, Ordering::SeqCst);
}

/// Writes `n` in decimal into `buf`, returns the digits.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Reports a refused allocation without allocating.
fn report_refusal(size: usize) {
    // Only the first refusal reports (the abort follows).
    ENFORCE.store(false, Ordering::SeqCst);
    // SAFETY: fd 2 is stderr for the whole process; ManuallyDrop keeps it open.
    let mut err = ManuallyDrop::new(unsafe { File::from_raw_fd(2) });
    let target_ptr = TARGET_PTR.load(Ordering::SeqCst);
    let target: &[u8] = if target_ptr.is_null() {
        b"?"
    } else {
        // SAFETY: set from a `&'static str` in `set_current_input`.
        unsafe { std::slice::from_raw_parts(target_ptr, TARGET_LEN.load(Ordering::SeqCst)) }
    };
    let mut a = [0u8; 20];
    let mut b = [0u8; 20];
    let _ = err.write_all(b"\nfuzz: allocation of ");
    let _ = err.write_all(decimal(size as u64, &mut a));
    let _ = err.write_all(b" bytes over the memory cap in target ");
    let _ = err.write_all(target);
    let _ = err.write_all(b", iteration ");
    let _ = err.write_all(decimal(ITERATION.load(Ordering::SeqCst), &mut b));
    let _ = err.write_all(b" (the input is in current-<target>.bin of the crash folder)\n");
}

/// Whether a block of `size` bytes that grows the live total by `growth` may be allocated.
fn admit(size: usize, growth: usize) -> bool {
    if !ENFORCE.load(Ordering::Relaxed) {
        return true;
    }
    let live = LIVE.load(Ordering::Relaxed);
    if size > SINGLE_CAP.load(Ordering::Relaxed)
        || live.saturating_add(growth) > LIVE_CAP.load(Ordering::Relaxed)
    {
        report_refusal(size);
        return false;
    }
    true
}

fn added(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's layout; the bookkeeping only uses
// atomics and never allocates.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size(), layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size(), layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !admit(new_size, new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                added(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Peak resident set size of the process (`VmHWM` of `/proc/self/status`, KiB), if readable.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the kernel's peak RSS counter (`echo 5 > /proc/self/clear_refs`); false if refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
