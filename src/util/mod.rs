//! What every layer may use and nothing in it knows about models: tensors, the random
//! number generator, atomic file writes, path identity, the memory a process may still
//! take, the profiler, parallel-loop helpers, the persistent thread team they run on, and
//! the switch of in-process A/B measurements.

pub mod atomic;
pub mod memory;
pub mod par;
pub mod paths;
pub mod profile;
pub mod rng;
pub mod team;
pub mod tensor;
pub mod trial;
