//! [`AnyModel`]: a network of either family, chosen at run time from a [`ModelConfig`],
//! and what a configuration needs of its family's code to be built (its memory is
//! [`super::memory`]'s).

use super::config::ModelConfig;
use super::interface::{Family, Model};
use crate::densenet::{Architecture as DenseArch, DenseNet};
use crate::nn::ConfigError;
use crate::resnet::{Architecture as ResArch, PreActResNet};
use std::ops::{Deref, DerefMut};

/// A network of either family, chosen at run time: a boxed [`Model`], used through it.
pub struct AnyModel(Box<dyn Model>);

impl AnyModel {
    /// A freshly initialised network of `config`, after checking it against every rule
    /// of its family ([`ModelConfig::validate`]): what callers with a configuration from
    /// outside use.
    pub fn try_new(config: &ModelConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::new(config, seed))
    }

    /// A freshly initialised network of `config`, which must be valid (see
    /// [`try_new`](Self::try_new) and each family's `new`).
    pub fn new(config: &ModelConfig, seed: u64) -> Self {
        AnyModel(match config {
            ModelConfig::DenseNet(c) => Box::new(DenseNet::new(c, seed)),
            ModelConfig::PreActResNet(c) => Box::new(PreActResNet::new(c, seed)),
        })
    }

    /// The network, if it is a `M` (a [`DenseNet`], say).
    pub fn downcast_ref<M: Model + 'static>(&self) -> Option<&M> {
        self.0.as_any().downcast_ref()
    }
}

impl Deref for AnyModel {
    type Target = dyn Model;
    fn deref(&self) -> &(dyn Model + 'static) {
        &*self.0
    }
}

impl DerefMut for AnyModel {
    fn deref_mut(&mut self) -> &mut (dyn Model + 'static) {
        &mut *self.0
    }
}

impl ModelConfig {
    /// The family's architecture of this configuration (its layers and tensor layout),
    /// without buffers.
    pub fn architecture(&self) -> Box<dyn Family> {
        match self {
            ModelConfig::DenseNet(c) => Box::new(DenseArch::new(c)),
            ModelConfig::PreActResNet(c) => Box::new(ResArch::new(c)),
        }
    }
}
