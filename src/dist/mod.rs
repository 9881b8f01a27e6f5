//! Data-parallel training over processes: one model, N processes, each with an equal share
//! of every batch. The communication is an existing engine's (MPI, behind the `mpi`
//! feature, see the `mpi` submodule); this module holds what a run needs of it ([`Collective`]) and
//! what the trainer builds on it:
//! - [`GradSync`]: the flat gradient buffer summed in buckets, each started as soon as the
//!   backward pass has finished its part of the buffer (the overlap PyTorch's DDP does);
//! - [`BnSync`]: synchronised batch norm, per-channel statistics summed over processes;
//! - [`checksum`]: the check that every process holds the same weights.

#[cfg(feature = "mpi")]
pub mod mpi;

use crate::ops::norm::StatsSync;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The result of a collective started with [`Collective::start_sum`], and how long the
/// collective itself took.
pub struct Pending<T>(Receiver<(T, Duration)>);

impl<T> Pending<T> {
    /// A pending result that a sender completes.
    pub fn new(rx: Receiver<(T, Duration)>) -> Self {
        Pending(rx)
    }
    /// Waits for the result. Panics if the communication stopped without one (MPI ends
    /// the process on a failed collective before that can happen).
    pub fn wait(self) -> (T, Duration) {
        self.0
            .recv()
            .expect("the communication thread stopped during a collective")
    }
}

/// Numbers summed over processes.
#[derive(Debug)]
pub enum Numbers {
    /// Single precision (gradients, running statistics).
    F32(Vec<f32>),
    /// Double precision (batch-norm sums, counts, metrics).
    F64(Vec<f64>),
}

/// The collectives a data-parallel run uses. Every process must start the same
/// collectives in the same order; they complete in that order.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Starts summing `v` element-wise over all processes; the result comes back with
    /// [`Pending::wait`] while the caller goes on.
    fn start_sum(&self, v: Numbers) -> Pending<Numbers>;
    /// Rank 0's `bytes`, on every process.
    fn broadcast(&self, bytes: Vec<u8>) -> Vec<u8>;
    /// Ends every process of the run at once, with `code` (after a failure on this one).
    fn abort(&self, code: i32) -> !;
}

impl dyn Collective + '_ {
    /// Sums `v` over all processes, in place, and waits for it.
    pub fn sum_f64(&self, v: &mut [f64]) {
        match self.start_sum(Numbers::F64(v.to_vec())).wait().0 {
            Numbers::F64(r) => v.copy_from_slice(&r),
            Numbers::F32(_) => unreachable!("a sum keeps its precision"),
        }
    }
    /// Sums `v` over all processes, in place, and waits for it.
    pub fn sum_f32(&self, v: &mut [f32]) {
        match self.start_sum(Numbers::F32(v.to_vec())).wait().0 {
            Numbers::F32(r) => v.copy_from_slice(&r),
            Numbers::F64(_) => unreachable!("a sum keeps its precision"),
        }
    }
}

/// One process alone: the collective of size one, so that a run on one process is the
/// same code as a run on many (its sums and broadcasts return what they were given).
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn start_sum(&self, v: Numbers) -> Pending<Numbers> {
        let (tx, rx) = std::sync::mpsc::channel();
        // the receiver is in hand: this send cannot fail
        let _ = tx.send((v, Duration::ZERO));
        Pending::new(rx)
    }
    fn broadcast(&self, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, Slurm's
/// `srun` with PMI) as one of several.
pub fn launched_as_many() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .filter_map(|v| std::env::var(v).ok())
    .any(|n| n.trim().parse::<usize>().is_ok_and(|n| n > 1))
}

/// Why a data-parallel run could not start.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// Started by an MPI launcher, but built without MPI.
    #[error(
        "started by an MPI launcher as one of several processes, but this densenet was \
         built without MPI: build it with `cargo build --release --features mpi` (each \
         process would otherwise train alone, all in the same run directory)"
    )]
    NoMpi,
    /// MPI did not start.
    #[cfg(feature = "mpi")]
    #[error(transparent)]
    Mpi(#[from] mpi::MpiError),
}

/// The processes of this run: all of an MPI launch when this process is one of several
/// (with the `mpi` feature), else `None` (one process alone).
pub fn connect() -> Result<Option<Arc<dyn Collective>>, DistError> {
    if !launched_as_many() {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Some(Arc::new(mpi::Mpi::start()?)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err(DistError::NoMpi)
    }
}

/// A 64-bit FNV-1a hash of the bits of `bufs`: equal on two processes exactly when
/// (barring a collision) they hold the same numbers.
pub fn checksum(bufs: &[&[f32]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bufs {
        for v in b.iter() {
            for byte in v.to_bits().to_le_bytes() {
                h ^= byte as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    h
}

/// The ranks whose `value` differs from rank 0's (empty on every process when all agree;
/// the same list on every process).
pub fn ranks_differing(comm: &dyn Collective, value: u64) -> Vec<usize> {
    let root = comm.broadcast(value.to_le_bytes().to_vec());
    let root = u64::from_le_bytes(root.try_into().unwrap_or([0; 8]));
    let mut flags = vec![0f64; comm.size()];
    flags[comm.rank()] = f64::from(u8::from(value != root));
    comm.sum_f64(&mut flags);
    (0..flags.len()).filter(|&r| flags[r] != 0.0).collect()
}

/// Synchronised batch norm over the processes of `comm` (see [`StatsSync`]); the trainer
/// tells it each step's share of the batch with [`BnSync::set_share`].
pub struct BnSync {
    comm: Arc<dyn Collective>,
    share: AtomicUsize,
    total: AtomicUsize,
}

impl BnSync {
    /// Synchronised batch norm over `comm`'s processes.
    pub fn new(comm: Arc<dyn Collective>) -> Self {
        BnSync {
            comm,
            share: AtomicUsize::new(1),
            total: AtomicUsize::new(1),
        }
    }
    /// This step: this process holds `share` of the batch's `total` images.
    pub fn set_share(&self, share: usize, total: usize) {
        self.share.store(share.max(1), Ordering::Relaxed);
        self.total.store(total.max(1), Ordering::Relaxed);
    }
}

impl StatsSync for BnSync {
    fn sum(&self, v: &mut [f64]) {
        self.comm.sum_f64(v);
    }
    fn total_len(&self, len: usize) -> usize {
        // len = share·h·w
        len / self.share.load(Ordering::Relaxed) * self.total.load(Ordering::Relaxed)
    }
}

/// Where a data-parallel step's time went (seconds), for `bench train`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct SyncTimes {
    /// Summing the gradients (all buckets, as long as the collectives ran).
    pub all_reduce: f64,
    /// The part of `all_reduce` the backward pass waited for at its end (the rest was
    /// hidden behind the backward pass).
    pub exposed: f64,
}

impl SyncTimes {
    /// The part of the all-reduce that ran while the backward pass was still computing.
    pub fn hidden(&self) -> f64 {
        (self.all_reduce - self.exposed).max(0.0)
    }
}

/// The gradient buffer summed over processes in buckets of at least `bucket` floats, each
/// started when the backward pass reports it final (through
/// [`crate::nn::TrainOptions::grads_ready`]), the last one when the pass ends.
pub struct GradSync<'c> {
    comm: &'c dyn Collective,
    bucket: usize,
    state: RefCell<Buckets>,
}

struct Buckets {
    /// `grads[sent..]` has been started.
    sent: usize,
    /// Started buckets: their offsets and results.
    in_flight: Vec<(usize, Pending<Numbers>)>,
}

impl<'c> GradSync<'c> {
    /// Default bucket: 256 Ki floats (1 MiB): DenseNet-BC-100-12's 0.8 M parameters make
    /// three buckets, densenet121's 8 M about thirty (DDP's default is 25 MiB, for GPUs
    /// whose backward passes are far shorter).
    pub const BUCKET: usize = 256 * 1024;

    /// A gradient sync for one step over a buffer of `len` floats.
    pub fn new(comm: &'c dyn Collective, len: usize, bucket: usize) -> Self {
        GradSync {
            comm,
            bucket: bucket.max(1),
            state: RefCell::new(Buckets {
                sent: len,
                in_flight: Vec::new(),
            }),
        }
    }

    /// `grads[offset..]` (given as `tail`) is final: starts summing the part not started
    /// yet when it has reached a bucket's size, or when it reaches the start.
    pub fn ready(&self, offset: usize, tail: &[f32]) {
        let mut st = self.state.borrow_mut();
        assert!(offset <= st.sent, "gradients reported final out of order");
        let fresh = st.sent - offset;
        if fresh > 0 && (fresh >= self.bucket || offset == 0) {
            let part = Numbers::F32(tail[..fresh].to_vec());
            let pending = self.comm.start_sum(part);
            st.in_flight.push((offset, pending));
            st.sent = offset;
        }
    }

    /// After the backward pass: sums what is left, waits for every bucket and writes the
    /// sums back into `grads`.
    pub fn finish(self, grads: &mut [f32]) -> SyncTimes {
        self.ready(0, grads);
        let waited = Instant::now();
        let mut times = SyncTimes::default();
        for (offset, pending) in self.state.into_inner().in_flight {
            let (sum, took) = pending.wait();
            let Numbers::F32(sum) = sum else {
                unreachable!("a sum keeps its precision")
            };
            grads[offset..offset + sum.len()].copy_from_slice(&sum);
            times.all_reduce += took.as_secs_f64();
        }
        times.exposed = waited.elapsed().as_secs_f64();
        times
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles every sum, as two processes with the same gradients would, and records the
    /// buckets' offsets.
    struct Twice(std::sync::Mutex<Vec<usize>>);
    impl Collective for Twice {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn start_sum(&self, v: Numbers) -> Pending<Numbers> {
            let v = match v {
                Numbers::F32(v) => {
                    self.0.lock().unwrap().push(v.len());
                    Numbers::F32(v.iter().map(|x| 2.0 * x).collect())
                }
                Numbers::F64(v) => Numbers::F64(v.iter().map(|x| 2.0 * x).collect()),
            };
            Solo.start_sum(v)
        }
        fn broadcast(&self, bytes: Vec<u8>) -> Vec<u8> {
            bytes
        }
        fn abort(&self, _: i32) -> ! {
            unreachable!()
        }
    }

    #[test]
    fn buckets_cover_the_buffer_once_from_the_end() {
        let comm = Twice(Default::default());
        let mut grads: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let sync = GradSync::new(&comm, grads.len(), 30);
        // layers finishing at offsets 90, 70, 50, 20 (backward order), then the stem
        for off in [90, 70, 50, 20] {
            sync.ready(off, &grads[off..]);
        }
        sync.finish(&mut grads);
        let sizes = comm.0.lock().unwrap().clone();
        assert_eq!(sizes, vec![30, 50, 20], "buckets [70,100), [20,70), [0,20)");
        let want: Vec<f32> = (0..100).map(|i| 2.0 * i as f32).collect();
        assert_eq!(grads, want);
    }

    #[test]
    fn checksums_see_one_bit() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [1.0f32, 2.0, f32::from_bits(3.0f32.to_bits() ^ 1)];
        assert_ne!(checksum(&[&a]), checksum(&[&b]));
        assert_eq!(checksum(&[&a]), checksum(&[&a[..1], &a[1..]]));
    }
}
