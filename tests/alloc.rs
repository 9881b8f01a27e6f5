//! A training step allocates nothing once it has run: every buffer of the memory plan is
//! allocated with the workspace, and the engine's per-thread scratch (packed weights, tiles)
//! on first use. Counted by a global allocator in this test binary, over whole steps
//! (forward, backward, SGD update) of the CIFAR DenseNets, with and without bottleneck.
//!
//! The main thread is a rayon worker here, as in the `densenet` binary (`cli::run`):
//! otherwise every parallel operation it starts is pushed onto the pool's injector queue,
//! which allocates a block every few dozen pushes.

mod common;

use densenet::model::Model;
use densenet::nn::TrainOptions;
use densenet::optim::{Sgd, SgdConfig};
use densenet::MemoryMode;
use densenet::{DenseNet, DenseNetConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations (count, bytes) of the third of three training steps.
fn steps_after_the_first(name: &str, batch: usize, drop_rate: f32) -> Vec<(usize, usize)> {
    let mut cfg = DenseNetConfig::from_name(name).unwrap();
    cfg.drop_rate = drop_rate;
    let mut net = DenseNet::new(&cfg, 1);
    let s = cfg.input_size;
    let x: Vec<f32> = (0..batch * 3 * s * s)
        .map(|i| (i % 17) as f32 / 17.0)
        .collect();
    let y: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let mut ws = net.workspace(batch, MemoryMode::Efficient, true);
    let mut opt = Sgd::new(SgdConfig::default());
    let opts = TrainOptions {
        dropout_seed: 1,
        input_grad: false,
        ..Default::default()
    };
    let mut counts = vec![];
    for step in 0..6 {
        COUNTING.store(step >= 2, Ordering::SeqCst);
        let (a0, b0) = (
            ALLOCATIONS.load(Ordering::SeqCst),
            BYTES.load(Ordering::SeqCst),
        );
        net.forward_train(&mut ws, &x, &y, &opts);
        net.zero_grad();
        net.backward(&mut ws, &opts);
        opt.step(&mut net.params, &net.grads);
        COUNTING.store(false, Ordering::SeqCst);
        if step >= 2 {
            counts.push((
                ALLOCATIONS.load(Ordering::SeqCst) - a0,
                BYTES.load(Ordering::SeqCst) - b0,
            ));
        }
    }
    counts
}

#[test]
fn a_training_step_allocates_nothing_after_the_first() {
    // without direct kernels (the portable table) the products go through the `gemm`
    // crate, which allocates
    if densenet::kernels::active().direct.is_none() {
        common::say(&format!(
            "SKIPPED: the allocation-free kernels need direct kernels; the {} table has none",
            densenet::kernels::active().name
        ));
        return;
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .use_current_thread()
        .build_global()
        .expect("the global pool is built once, here");
    for (name, batch, drop) in [
        ("densenet-bc-100-12", 16, 0.0),
        ("densenet-bc-40-12", 8, 0.2),
        ("densenet-40-12", 8, 0.2),
    ] {
        // Per-thread scratch is allocated the first time a thread runs a kind of task, and
        // a thread that steals a task while it waits inside another of the same kind finds
        // its slot taken and allocates one of its own. How often depends on the scheduling
        // (a loaded machine: more stealing), so the test asks for steps that allocate
        // nothing (the plan is allocation-free) and at most a few stolen scratches in
        // any step; an allocation inside the step's own work (the `gemm` crate's packing
        // buffers were 3,230 a step) fails both.
        let counts = steps_after_the_first(name, batch, drop);
        let quiet = counts.iter().filter(|c| c.0 == 0).count();
        let worst = counts.iter().map(|c| c.0).max().unwrap_or(0);
        assert!(
            quiet >= 1 && worst <= 8,
            "{name} b{batch}: allocations (count, bytes) in steps 3-6: {counts:?}"
        );
    }
}
