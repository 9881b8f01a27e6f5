//! [`Collective`] over MPI (the `mpi` crate on the system's MPI, Open MPI from Debian).
//!
//! All MPI calls are made by one thread of its own, which also starts and finalises MPI
//! (`MPI_THREAD_FUNNELED`: the thread that initialised MPI is the only caller). The
//! trainer hands it collectives through a channel and goes on computing, so a gradient
//! bucket is summed while the backward pass continues; the collectives run in the order
//! they were started, which is the same on every process.

use super::{Collective, Numbers, Pending};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Threading;
use mpi::topology::{Communicator, SimpleCommunicator};
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

enum Job {
    Sum(Numbers, Sender<(Numbers, Duration)>),
    Broadcast(Vec<u8>, Sender<(Vec<u8>, Duration)>),
}

/// The processes of an MPI run (`MPI_COMM_WORLD`).
pub struct Mpi {
    rank: usize,
    size: usize,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Option<JoinHandle<()>>,
}

/// MPI could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start MPI: {0}")]
pub struct MpiError(String);

impl Mpi {
    /// Starts MPI on a thread of its own and joins `MPI_COMM_WORLD`.
    pub fn start() -> Result<Self, MpiError> {
        let (jobs, rx) = channel::<Job>();
        let (hello, welcome) = channel::<Result<(usize, usize), String>>();
        let thread = std::thread::Builder::new()
            .name("mpi".into())
            .spawn(move || {
                let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled)
                else {
                    let _ = hello.send(Err("MPI was already initialised".into()));
                    return;
                };
                let world = universe.world();
                let _ = hello.send(Ok((world.rank() as usize, world.size() as usize)));
                for job in rx {
                    run(&world, job);
                }
                // `universe` is dropped here: MPI_Finalize, after the last collective
            })
            .map_err(|e| MpiError(format!("cannot start its thread: {e}")))?;
        let (rank, size) = welcome
            .recv()
            .map_err(|_| MpiError("its thread stopped while starting".into()))?
            .map_err(MpiError)?;
        Ok(Mpi {
            rank,
            size,
            jobs: Mutex::new(Some(jobs)),
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.as_ref()
            .expect("MPI is running until dropped")
            .send(job)
            .expect("the MPI thread is running until dropped");
    }
}

fn run(world: &SimpleCommunicator, job: Job) {
    let t = Instant::now();
    match job {
        Job::Sum(Numbers::F32(v), reply) => {
            let mut sum = vec![0f32; v.len()];
            world.all_reduce_into(&v[..], &mut sum[..], SystemOperation::sum());
            let _ = reply.send((Numbers::F32(sum), t.elapsed()));
        }
        Job::Sum(Numbers::F64(v), reply) => {
            let mut sum = vec![0f64; v.len()];
            world.all_reduce_into(&v[..], &mut sum[..], SystemOperation::sum());
            let _ = reply.send((Numbers::F64(sum), t.elapsed()));
        }
        Job::Broadcast(mut bytes, reply) => {
            // the length first, so that other ranks can size their buffers
            let root = world.process_at_rank(0);
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            bytes.resize(len as usize, 0);
            root.broadcast_into(&mut bytes[..]);
            let _ = reply.send((bytes, t.elapsed()));
        }
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn start_sum(&self, v: Numbers) -> Pending<Numbers> {
        let (tx, rx) = channel();
        self.send(Job::Sum(v, tx));
        Pending::new(rx)
    }
    fn broadcast(&self, bytes: Vec<u8>) -> Vec<u8> {
        let (tx, rx) = channel();
        self.send(Job::Broadcast(bytes, tx));
        Pending::new(rx).wait().0
    }
    fn abort(&self, code: i32) -> ! {
        // From this thread, not through the queue: the MPI thread may be waiting in a
        // collective that the other processes will never join.
        SimpleCommunicator::world().abort(code)
    }
}

impl Drop for Mpi {
    /// Finalises MPI after the collectives already started.
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
