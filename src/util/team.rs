//! A persistent team of threads for the hot path's parallel regions: the OpenMP model of
//! ONNX Runtime and oneDNN, beside rayon's fork-join.
//!
//! Why by hand: a region on rayon's pool costs 1.4–2.0 µs more than its halves, on the
//! team 0.2–0.5 µs (2 threads, Zen 4, `cargo bench --bench fork_join`), and densenet121
//! at batch 1 runs a few hundred regions of 10–100 µs per pass. No crate we found offers
//! a spinning team whose members keep their thread-local scratch.
//!
//! [`run`] opens a region of numbered parts; the caller and the members claim parts in
//! turn from a counter (OpenMP's dynamic schedule), so a member the OS has descheduled
//! delays nobody, and what each part computes is fixed by its number: results depend on
//! how the caller splits the work, never on who runs a part. Members spin for a while
//! after a region, then yield, then sleep on a condition variable until the next one. A
//! region started while the team is busy (another thread's region: tests run side by
//! side) runs on rayon instead, and one started inside a region runs on the calling
//! thread.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock};

/// A job as the members see it: `part → ()`, its lifetime erased (see [`run`]).
type Job = dyn Fn(usize) + Sync;

/// How long an idle member spins before it sleeps: enough for the gaps between the
/// regions of one pass, short enough that a member does not take a core from work that
/// runs on rayon's pool (the `gemm` crate's threads) for long. 16K `pause`s (~0.4 ms on
/// Zen 4) and then 1K yields made a densenet121 training step at batch 16 on 2 threads
/// 25% slower.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);
/// Spins between two looks at the clock.
const SPINS: u32 = 64;

struct Team {
    /// The open region's number, 0 while none is open: members join a region they have
    /// not seen yet.
    open: AtomicUsize,
    /// The number of the last region opened.
    regions: AtomicUsize,
    /// Members wanted in the open region: those numbered up to this join it.
    wanted: AtomicUsize,
    /// The open region's part count, its next unclaimed part, and its parts done.
    parts: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Members between joining the open region and leaving it.
    inside: AtomicUsize,
    /// The open region's job: written by the caller before it opens the region, read by
    /// members inside it (no allocation per region).
    job: std::cell::UnsafeCell<Option<&'static Job>>,
    /// Held by the one thread that runs a region at a time.
    busy: AtomicBool,
    /// Members spawned so far (the caller not counted).
    spawned: Mutex<usize>,
    /// Members asleep, and the lock and signal they sleep on.
    sleepers: AtomicUsize,
    wake: (Mutex<()>, Condvar),
    /// The first panic of a part, resumed on the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

// SAFETY: `job`, the one field that is not Sync, is written only by the thread holding
// `busy` while no member is inside a region, and read by members only inside one (see
// `run` and `Team::member`).
unsafe impl Sync for Team {}

static TEAM: OnceLock<Team> = OnceLock::new();

thread_local! {
    /// Whether this thread is inside a region (a member, or the caller running parts).
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn team() -> &'static Team {
    TEAM.get_or_init(|| Team {
        open: AtomicUsize::new(0),
        regions: AtomicUsize::new(0),
        wanted: AtomicUsize::new(0),
        parts: AtomicUsize::new(0),
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        inside: AtomicUsize::new(0),
        job: std::cell::UnsafeCell::new(None),
        busy: AtomicBool::new(false),
        spawned: Mutex::new(0),
        sleepers: AtomicUsize::new(0),
        wake: (Mutex::new(()), Condvar::new()),
        panic: Mutex::new(None),
    })
}

/// The number of threads a region started here splits over: rayon's (the `--threads`
/// setting, or a test's pool).
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Spins for [`SPIN`] while `busy` holds, then calls `after_spin` (yield, sleep) between
/// its looks.
fn spin_while(busy: impl Fn() -> bool, mut after_spin: impl FnMut()) {
    let start = std::time::Instant::now();
    let mut spins = 0u32;
    while busy() {
        spins += 1;
        if !spins.is_multiple_of(SPINS) || start.elapsed() < SPIN {
            std::hint::spin_loop();
        } else {
            after_spin();
        }
    }
}

/// Spins for [`SPIN`], then yields, while `busy` holds (the caller waiting for parts
/// that members run).
fn wait_while(busy: impl Fn() -> bool) {
    spin_while(busy, std::thread::yield_now)
}

/// Runs `f(p)` for every part `p` in `0..parts` on the team and returns when all are
/// done. The caller and up to [`threads`]` − 1` members claim parts in turn, so a member
/// that the OS has not scheduled yet delays nobody; what a part computes must not depend
/// on which thread runs it (each part's work is fixed by `p` and `parts`, so results
/// depend on how the caller splits the work only).
pub fn run(parts: usize, f: impl Fn(usize) + Sync) {
    if parts <= 1 || threads() <= 1 || INSIDE.with(|i| i.get()) {
        (0..parts).for_each(f);
        return;
    }
    let t = team();
    if t.busy.swap(true, Acquire) {
        // another thread's region: rayon runs this one, with the same parts
        use rayon::iter::{IntoParallelIterator, ParallelIterator};
        (0..parts).into_par_iter().for_each(&f);
        return;
    }
    let helpers = (threads() - 1).min(parts - 1);
    t.grow(helpers);
    let job: &(dyn Fn(usize) + Sync + '_) = &f;
    // SAFETY: members call `job` only inside the region, and this function returns only
    // once the region is closed and no member is inside it, so the erased lifetime never
    // outlives `f`.
    let job: &'static Job =
        unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
    // SAFETY: only the thread holding `busy` writes the slot, and no member is inside a
    // region here
    unsafe { *t.job.get() = Some(job) };
    t.parts.store(parts, Relaxed);
    t.next.store(0, Relaxed);
    t.done.store(0, Relaxed);
    t.wanted.store(helpers, Relaxed);
    let region = t.regions.fetch_add(1, Relaxed) + 1;
    t.open.store(region, SeqCst);
    if t.sleepers.load(SeqCst) > 0 {
        let _g = t.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        t.wake.1.notify_all();
    }
    INSIDE.with(|i| i.set(true));
    t.claim(job);
    INSIDE.with(|i| i.set(false));
    wait_while(|| t.done.load(Acquire) < parts);
    t.open.store(0, SeqCst);
    wait_while(|| t.inside.load(SeqCst) > 0);
    // SAFETY: as above: the region is closed and no member is inside it
    unsafe { *t.job.get() = None };
    let panic = t.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    t.busy.store(false, Release);
    if let Some(p) = panic {
        std::panic::resume_unwind(p);
    }
}

impl Team {
    /// Spawns members until there are at least `n` (the caller not counted).
    fn grow(&'static self, n: usize) {
        let mut spawned = self.spawned.lock().unwrap_or_else(|e| e.into_inner());
        while *spawned < n {
            *spawned += 1;
            let id = *spawned;
            std::thread::Builder::new()
                .name(format!("densenet-team-{id}"))
                .spawn(move || self.member(id))
                .expect("a thread for the team");
        }
    }

    /// Claims and runs parts of the open region until none is left; a part's panic is
    /// kept for the caller (the first one) and the other parts still run.
    fn claim(&self, job: &Job) {
        let parts = self.parts.load(Relaxed);
        loop {
            let p = self.next.fetch_add(1, AcqRel);
            if p >= parts {
                return;
            }
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(p))) {
                let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert(e);
            }
            self.done.fetch_add(1, Release);
        }
    }

    /// Member `id`'s loop: wait for a region it has not seen, join it if wanted.
    fn member(&self, id: usize) {
        INSIDE.with(|i| i.set(true));
        let mut seen = 0;
        loop {
            let idle = |open: usize, seen: usize| open == 0 || open == seen;
            spin_while(|| idle(self.open.load(Acquire), seen), || self.sleep(seen));
            let region = self.open.load(Acquire);
            if idle(region, seen) {
                continue;
            }
            seen = region;
            if id > self.wanted.load(Relaxed) {
                continue;
            }
            // join, then check the region is still open: the caller closes it before it
            // waits for `inside` to drop to 0, so either it waits for this member or this
            // member sees it closed (both orders are SeqCst)
            self.inside.fetch_add(1, SeqCst);
            if self.open.load(SeqCst) == region {
                // SAFETY: set before the region opened and kept until no member is
                // inside it (`run`)
                let job = unsafe { (*self.job.get()).expect("an open region's job") };
                self.claim(job);
            }
            self.inside.fetch_sub(1, SeqCst);
        }
    }

    /// Sleeps until a region other than `seen` opens.
    fn sleep(&self, seen: usize) {
        self.sleepers.fetch_add(1, SeqCst);
        let mut g = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let open = self.open.load(SeqCst);
            if open != 0 && open != seen {
                break;
            }
            g = self.wake.1.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        drop(g);
        self.sleepers.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once() {
        crate::kernels::testutil::on_threads(3, || {
            for round in 0..300 {
                let parts = 2 + round % 7;
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                run(parts, |p| {
                    hits[p].fetch_add(p + 1, Relaxed);
                });
                let got: Vec<usize> = hits.iter().map(|h| h.load(Relaxed)).collect();
                let want: Vec<usize> = (1..=parts).collect();
                assert_eq!(got, want, "round {round}");
            }
        });
    }

    #[test]
    fn nested_regions_run_on_the_caller_and_panics_reach_it() {
        crate::kernels::testutil::on_threads(2, || {
            let sum = AtomicUsize::new(0);
            run(2, |m| {
                run(2, |k| {
                    sum.fetch_add(10 * m + k + 1, Relaxed);
                })
            });
            assert_eq!(sum.load(Relaxed), 1 + 2 + 11 + 12);
            let caught = std::panic::catch_unwind(|| run(2, |m| assert!(m == 0, "part {m}")));
            assert!(caught.is_err(), "a member's panic was lost");
            // the team still works after a panic
            let after = AtomicUsize::new(0);
            run(2, |m| {
                after.fetch_add(m + 1, Relaxed);
            });
            assert_eq!(after.load(Relaxed), 3);
        });
    }
}
