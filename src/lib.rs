//! # densenet
//!
//! DenseNets (Huang, Liu, van der Maaten, Weinberger, *Densely Connected Convolutional
//! Networks*, CVPR 2017) on the CPU: a specialised engine with explicit forward and backward
//! passes, parity with PyTorch, and the memory-efficient design of Pleiss et al. (shared
//! storage for concatenations, recomputation of BN-ReLU and bottleneck outputs). The same
//! engine runs the pre-activation ResNets the paper compares against (He et al., 2016).
//!
//! The crate is laid out by concern:
//! - [`config`]: what a DenseNet is (presets, validation);
//! - [`ops`]: the engine's operations, forward and backward;
//! - [`net`]: the network: parameter table, dense layer, transition, forward/backward;
//! - [`resnet`]: the pre-activation ResNet: residual unit, forward/backward, memory plan;
//! - [`model`]: both families behind one [`Model`] trait and one [`ModelConfig`];
//! - [`memory`]: the memory plan that decides where every activation lives;
//! - [`optim`]: SGD with Nesterov momentum;
//! - [`weights`]: safetensors and PyTorch `.pth` checkpoints with torchvision key names;
//! - [`summary`]: per-stage shapes, parameters and multiply-accumulates.

pub mod analysis;
pub mod atomic;
pub mod cli;
pub mod config;
pub mod data;
pub mod memory;
pub mod model;
pub mod net;
pub mod ops;
pub mod optim;
pub mod params;
pub mod plot;
pub mod profile;
pub mod resnet;
pub mod rng;
pub mod summary;
pub mod tensor;
pub mod train;
pub mod weights;

pub use config::{ConfigError, DenseNetConfig, Stem};
pub use memory::{MemoryMode, MemoryPlan};
pub use model::{AnyModel, Model, ModelConfig};
pub use net::Network;
pub use resnet::{PreActResNet, PreActResNetConfig};
