//! What every layer may use and nothing in it knows about models: tensors, the random
//! number generator, atomic file writes, path identity, the profiler and parallel-loop helpers.

pub mod atomic;
pub mod par;
pub mod paths;
pub mod profile;
pub mod rng;
pub mod tensor;
