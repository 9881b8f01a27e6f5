//! # densenet
//!
//! DenseNets (Huang, Liu, van der Maaten, Weinberger, *Densely Connected Convolutional
//! Networks*, CVPR 2017) on the CPU: a specialised engine with explicit forward and backward
//! passes, parity with PyTorch, and the memory-efficient design of Pleiss et al. (shared
//! storage for concatenations, recomputation of BN-ReLU and bottleneck outputs). The same
//! engine runs the pre-activation ResNets the paper compares against (He et al., 2016).
//!
//! The crate is layered; each module imports only from the ones listed before it:
//! - [`util`]: tensors, random numbers, atomic writes, the profiler;
//! - [`kernels`]: the CPU's inner loops, one [`kernels::Kernels`] table chosen at start-up;
//! - [`ops`]: the operations' forward and backward passes on shapes;
//! - [`nn`]: what both families share: parameter table, BN and convolution handles,
//!   batch statistics, the memory mode;
//! - [`densenet`] and [`resnet`]: each model family in its own folder (configuration,
//!   architecture, memory plan, layers);
//! - [`weights`]: safetensors and PyTorch `.pth` files, torchvision key names;
//! - [`model`]: both families behind one [`Model`] trait and one [`ModelConfig`];
//!   [`summary`], [`optim`], [`plot`];
//! - [`checkpoint`]: the read side of a checkpoint (its model, preprocessing, class
//!   names), for everything that only runs a model;
//! - [`dist`]: data-parallel training's collectives (MPI under the `mpi` feature),
//!   gradient buckets, synchronised batch norm;
//! - [`data`], [`evaluate`]: data sets, and a model's figures on one;
//! - [`train`]: the training loop, the run directory, checkpoints' write side;
//! - [`prepare`], [`features`]: image files to inputs as in training, and per-image
//!   features (pooled, or a dense block's maps);
//! - [`onnx`]: export of a model's evaluation graph as ONNX;
//! - [`cli`]: the command line.

// Module docs link private items where that is where the reader should look next; they
// resolve in `cargo doc --document-private-items`, the documentation for developers.
#![allow(rustdoc::private_intra_doc_links)]

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod densenet;
pub mod dist;
pub mod evaluate;
pub mod features;
pub mod kernels;
pub mod model;
pub mod nn;
pub mod onnx;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod prepare;
pub mod resnet;
pub mod summary;
pub mod train;
pub mod util;
pub mod weights;

pub use densenet::{DenseNet, DenseNetConfig, Stem};
pub use model::{AnyModel, Model, ModelConfig};
pub use nn::{ConfigError, MemoryMode};
pub use resnet::{PreActResNet, PreActResNetConfig};
