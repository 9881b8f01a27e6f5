//! Small helpers for the parallel loops of the kernels and operations.

use super::team;
use rayon::iter::plumbing::{Producer, ProducerCallback};
use rayon::iter::{IndexedParallelIterator, ParallelIterator};

/// Work below this many floats runs on the calling thread: rayon's fork-join costs a few
/// microseconds, more than a small channel loop.
pub const PAR_MIN: usize = 1 << 14;

/// Sets every element of `buf` to `v`, split over the threads from [`PAR_MIN`] elements
/// on: the per-step zeroing of densenet121's block gradients (93 MB at batch 16) and of
/// its parameter gradients (32 MB) took ~7 ms of a training step on one core (`perf`),
/// the other idle.
pub fn fill<T: Copy + Send + Sync>(buf: &mut [T], v: T) {
    use rayon::slice::ParallelSliceMut;
    if buf.len() >= PAR_MIN {
        buf.par_chunks_mut(PAR_MIN).for_each(|c| c.fill(v));
    } else {
        buf.fill(v);
    }
}

/// Runs `work` on every channel (row) of `it`: on the team ([`for_each`]) from
/// [`PAR_MIN`] floats of work on, else on the calling thread.
pub fn per_channel<I: IndexedParallelIterator>(
    it: I,
    floats: usize,
    work: impl Fn(I::Item) + Sync + Send,
) {
    if floats >= PAR_MIN {
        for_each(it, work);
    } else {
        on_caller(it, work);
    }
}

/// The most parts [`for_each`] splits into; more threads than this run on rayon.
const MAX_PARTS: usize = 64;

/// Runs `work` on every item of `it` on the team of [`team::run`], in `T` contiguous
/// runs of equal count (`T` = [`team::threads`]), one part each. The hot path's regions
/// go through here rather than rayon's `for_each`, which costs more per region
/// (`util::team`).
pub fn for_each<I: IndexedParallelIterator>(it: I, work: impl Fn(I::Item) + Sync + Send) {
    let len = it.len();
    let parts = team::threads().min(len);
    if parts <= 1 {
        return on_caller(it, work);
    }
    if parts > MAX_PARTS {
        return it.for_each(work);
    }
    it.with_producer(Runs { parts, len, work });
}

/// Runs `work` on every item of `it`, in order, on the calling thread.
pub fn on_caller<I: IndexedParallelIterator>(it: I, work: impl Fn(I::Item) + Sync + Send) {
    it.with_producer(Runs {
        parts: 1,
        len: 0,
        work,
    });
}

/// [`for_each`]'s split of a rayon producer into `parts` contiguous runs.
struct Runs<F> {
    parts: usize,
    len: usize,
    work: F,
}

impl<T, F: Fn(T) + Sync> ProducerCallback<T> for Runs<F> {
    type Output = ();
    fn callback<P: Producer<Item = T>>(self, producer: P) {
        if self.parts <= 1 {
            return producer.into_iter().for_each(self.work);
        }
        // the runs, on the stack (a region allocates nothing: `tests/alloc.rs`)
        let runs: [std::sync::Mutex<Option<P>>; MAX_PARTS] =
            std::array::from_fn(|_| std::sync::Mutex::new(None));
        let (mut rest, mut at) = (Some(producer), 0);
        for (m, run) in runs.iter().enumerate().take(self.parts) {
            let end = (m + 1) * self.len / self.parts;
            let p = rest.take().expect("the rest of the items");
            let (mine, after) = if m + 1 == self.parts {
                (p, None)
            } else {
                let (a, b) = p.split_at(end - at);
                (a, Some(b))
            };
            *run.lock().unwrap_or_else(|e| e.into_inner()) = Some(mine);
            rest = after;
            at = end;
        }
        team::run(self.parts, |m| {
            let mine = runs[m].lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(p) = mine {
                p.into_iter().for_each(&self.work);
            }
        });
    }
}

/// Runs `f` with a per-thread scratch vector of `len` elements, borrowed from `slot` and
/// given back afterwards, so buffers that every step needs again are allocated on first
/// use only (the training step allocates nothing after its first run: `tests/alloc.rs`).
/// The contents are whatever the previous user left. A nested use of the same slot on
/// one thread finds it empty and allocates its own.
pub fn with_scratch<T: Clone + Default, R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut v = slot.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if v.len() < len {
        v.resize(len, T::default());
    }
    let r = f(&mut v[..len]);
    slot.with(|c| {
        let mut c = c.borrow_mut();
        if c.capacity() < v.capacity() {
            *c = v;
        }
    });
    r
}

/// A pointer that may cross threads, for tasks that each write their own disjoint part of
/// one buffer (columns of a matrix, positions of every row).
#[derive(Clone, Copy)]
pub struct SyncPtr(pub *mut f32);
// SAFETY: only used for writes to disjoint ranges; each user states which.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// [`for_each`] as a method, so a rayon chain moves to the team by its last call:
/// `rows.par_chunks_mut(len).enumerate().team_for_each(|(c, row)| …)`.
pub trait OnTeam: IndexedParallelIterator {
    /// Runs `work` on every item on the team ([`for_each`]).
    fn team_for_each(self, work: impl Fn(Self::Item) + Sync + Send) {
        for_each(self, work)
    }
}

impl<I: IndexedParallelIterator> OnTeam for I {}
