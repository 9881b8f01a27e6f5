//! No build step: this script exists for its build-dependency, `syn` with `visit-mut`.
//!
//! `--features mpi` builds `mpi-sys`, whose bindgen turns that feature on in the host's
//! `syn`; every proc-macro crate, and through them serde, clap, thiserror, prost and
//! tract, then had to be compiled a second time for the MPI tests (`cargo tree -e
//! features` with and without the feature differ in that one feature). Asking for it
//! here too makes the default build's host `syn` the same, so the second stage of
//! `.ci/run` reuses the first stage's artifacts: CI took 23 minutes with the rebuild.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
}
