//! A persistent team of threads for the hot path's parallel regions: the OpenMP model of
//! ONNX Runtime and oneDNN, beside rayon's fork-join.
//!
//! Why by hand: a region on rayon's pool (2 threads, Zen 4, `cargo bench --bench
//! fork_join`) costs 7.5–9.7 µs more than its halves for halves of 10 µs and 17–23 µs
//! for halves of 50 µs, because the idle worker has to notice the job and steal it; a
//! team whose members wait spinning on an epoch costs 0.4–0.8 µs and 1.3–5.9 µs.
//! densenet121 at batch 1 runs a few hundred regions of 10–100 µs per pass. No crate
//! we found offers a spinning team whose members keep their thread-local scratch.
//!
//! [`run`] hands part `m` of a region to member `m` (the caller is member 0), so which
//! thread computes what depends on the thread count only. Members spin for a while after
//! a region, then yield, then sleep on a condition variable until the next one. A region
//! started while the team is busy (another thread's region: tests run side by side) runs
//! on rayon instead, and one started inside a region runs on the calling thread: neither
//! changes the result, which never depends on who computes a part.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock};

/// A job as the members see it: `part → ()`, its lifetime erased (see [`run`]).
type Job = dyn Fn(usize) + Sync;

/// Spins of the member's wait loop before it yields its core, then yields before it
/// sleeps: ~50 µs of spinning covers the gaps between the regions of one pass.
const SPINS: u32 = 1 << 14;
const YIELDS: u32 = 1 << 10;

/// The most parts of one region (the epoch word's low part holds the count).
const PARTS: usize = 1 << 16;

struct Team {
    /// Bumped by the caller to start a region: the region's number times [`PARTS`] plus
    /// its part count, one word, so a member never pairs one region's number with
    /// another's part count.
    epoch: AtomicUsize,
    /// Members (the caller not counted) still working on the current region.
    pending: AtomicUsize,
    /// The current region's job: written by the caller before it bumps the epoch, read by
    /// the members after they see the bump (no allocation per region).
    job: std::cell::UnsafeCell<Option<&'static Job>>,
    /// Held by the one thread that runs a region at a time.
    busy: AtomicBool,
    /// Members spawned so far (the caller not counted).
    spawned: Mutex<usize>,
    /// Members asleep, and the lock and signal they sleep on.
    sleepers: AtomicUsize,
    wake: (Mutex<()>, Condvar),
    /// A panic of a member's part, resumed on the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

// SAFETY: `job`, the one field that is not Sync, is written only by the thread holding
// `busy` while no member reads it, and read by members only inside a region (see `run`).
unsafe impl Sync for Team {}

static TEAM: OnceLock<Team> = OnceLock::new();

thread_local! {
    /// Whether this thread is inside a region (a member, or the caller running its part).
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn team() -> &'static Team {
    TEAM.get_or_init(|| Team {
        epoch: AtomicUsize::new(0),
        pending: AtomicUsize::new(0),
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

/// Runs `f(m)` for every `m` in `0..parts` and returns when all are done: part `m` on the
/// team's member `m` (the calling thread is member 0). `parts` is at most [`threads`];
/// the parts of one region must not depend on which thread runs them.
pub fn run(parts: usize, f: impl Fn(usize) + Sync) {
    assert!(
        parts <= threads().max(1),
        "{parts} parts for {} threads",
        threads()
    );
    assert!(parts < PARTS);
    if parts <= 1 || INSIDE.with(|i| i.get()) {
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
    t.grow(parts - 1);
    let job: &(dyn Fn(usize) + Sync + '_) = &f;
    // SAFETY: the members call `job` only between the epoch bump below and their
    // decrement of `pending`, and this function returns only once `pending` is 0, so the
    // erased lifetime never outlives `f`.
    let job: &'static Job =
        unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
    // SAFETY: only the thread holding `busy` writes the slot, and no member reads it
    // outside a region (`pending` is 0 here)
    unsafe { *t.job.get() = Some(job) };
    t.pending.store(parts - 1, Relaxed);
    let now = t.epoch.load(Relaxed);
    t.epoch.store((now / PARTS + 1) * PARTS + parts, SeqCst);
    if t.sleepers.load(SeqCst) > 0 {
        let _g = t.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        t.wake.1.notify_all();
    }
    INSIDE.with(|i| i.set(true));
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
    INSIDE.with(|i| i.set(false));
    let mut spins = 0u32;
    while t.pending.load(Acquire) > 0 {
        spins += 1;
        if spins < SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    // SAFETY: as above: every member is done with the region
    unsafe { *t.job.get() = None };
    let theirs = t.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    t.busy.store(false, Release);
    if let Err(p) = mine {
        std::panic::resume_unwind(p);
    }
    if let Some(p) = theirs {
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
            let seen = self.epoch.load(SeqCst);
            std::thread::Builder::new()
                .name(format!("densenet-team-{id}"))
                .spawn(move || self.member(id, seen))
                .expect("a thread for the team");
        }
    }

    /// Member `id`'s loop: wait for a new epoch, run its part if it has one.
    fn member(&self, id: usize, mut seen: usize) {
        INSIDE.with(|i| i.set(true));
        loop {
            let mut spins = 0u32;
            while self.epoch.load(Acquire) == seen {
                spins += 1;
                if spins < SPINS {
                    std::hint::spin_loop();
                } else if spins < SPINS + YIELDS {
                    std::thread::yield_now();
                } else {
                    self.sleep(seen);
                }
            }
            seen = self.epoch.load(Acquire);
            if id >= seen % PARTS {
                continue;
            }
            // SAFETY: set before the epoch bump (which the Acquire load above saw) and
            // kept until `pending` reaches 0, which this member's decrement precedes
            let job: &Job = unsafe { (*self.job.get()).expect("a region's job") };
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(id))) {
                *self.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            }
            self.pending.fetch_sub(1, Release);
        }
    }

    /// Sleeps until the epoch moves past `seen`.
    fn sleep(&self, seen: usize) {
        self.sleepers.fetch_add(1, SeqCst);
        let mut g = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        while self.epoch.load(SeqCst) == seen {
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
    fn every_part_runs_once_on_its_member() {
        crate::kernels::testutil::on_threads(3, || {
            for round in 0..200 {
                let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
                run(3, |m| {
                    hits[m].fetch_add(m + 1, Relaxed);
                });
                let got: Vec<usize> = hits.iter().map(|h| h.load(Relaxed)).collect();
                assert_eq!(got, [1, 2, 3], "round {round}");
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
