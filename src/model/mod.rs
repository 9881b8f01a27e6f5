//! The model families the engine trains, behind one interface.
//!
//! - [`Model`] ([`interface`]): what training, evaluation, checkpoints and the command
//!   line need from a network: a workspace, the passes, the flat buffers and their named
//!   tables. Each family implements it itself ([`DenseNet`](crate::densenet::DenseNet),
//!   [`PreActResNet`](crate::resnet::PreActResNet)); what the families share (checking
//!   the input, the loss, the state dict) is written once, as provided methods.
//! - [`ModelWorkspace`]: a family's activation memory, behind one boxed type
//!   ([`Workspace`]) so that [`Model`] is a trait object; each family takes its own back
//!   with [`own_workspace`].
//! - [`AnyModel`] ([`any`]): a network of either family chosen at run time, a boxed
//!   [`Model`].
//! - [`ModelConfig`] ([`config`]): which network to build, from a preset name, JSON or a
//!   checkpoint.
//! - [`Frozen`] ([`frozen`]): a model borrowed for inference, its kernels' packed
//!   weights kept from one pass to the next.
//! - [`memory`]: what a model's weights and workspaces take, checked against what the
//!   process may still use before anything is allocated.

pub mod any;
pub mod config;
pub mod frozen;
pub mod interface;
pub mod memory;
#[cfg(test)]
mod tests;

pub use any::AnyModel;
pub use config::{ModelConfig, PREACT_RESNET};
pub use frozen::Frozen;
pub use interface::{
    own_workspace, Buffers, Family, Fan, Model, ModelWorkspace, Net, Pass, Workspace,
};
