//! [`Frozen`]: a model held still for inference.

use super::interface::{Model, Workspace};
use crate::kernels::prepack::Packs;
use crate::nn::Probe;

/// A model held still for inference: the 3×3 kernels' packed weights are made on the
/// first pass and kept for the next ones, as ONNX Runtime packs a model's weights once
/// per session (see [`crate::kernels::prepack`]: a densenet121 pass at batch 1 takes
/// 0.952 of the time it takes packing per call, on a 2-core Zen 4).
///
/// It holds the model's exclusive borrow, so nothing can change the weights the packs
/// were made from while they live; drop it to train or load weights again.
///
/// ```
/// use densenet::model::{AnyModel, Frozen, ModelConfig};
/// use densenet::nn::MemoryMode;
///
/// let mut net = AnyModel::new(&ModelConfig::from_name("densenet-bc-100-12")?, 0);
/// let mut ws = net.workspace(2, MemoryMode::Efficient, false);
/// let images = vec![0.5; 2 * 3 * 32 * 32];
/// let plain = net.forward_eval(&mut ws, &images, 2, None);
/// let mut frozen = Frozen::new(&mut *net);
/// for _ in 0..2 {
///     assert_eq!(frozen.forward_eval(&mut ws, &images, 2, None), plain);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Frozen<'a> {
    model: &'a mut dyn Model,
    packs: Packs,
}

impl<'a> Frozen<'a> {
    /// Holds `model` still; nothing is packed before the first pass.
    pub fn new(model: &'a mut dyn Model) -> Self {
        Frozen {
            model,
            packs: Packs::new(),
        }
    }

    /// [`Model::forward_eval`], with the packs in scope.
    pub fn forward_eval(
        &mut self,
        ws: &mut Workspace,
        input: &[f32],
        n: usize,
        probe: Option<Probe>,
    ) -> Vec<f32> {
        let model = &mut *self.model;
        self.packs.scope(|| model.forward_eval(ws, input, n, probe))
    }

    /// The model, to read.
    pub fn model(&self) -> &dyn Model {
        &*self.model
    }

    /// The packed weights kept so far.
    pub fn packs(&self) -> &Packs {
        &self.packs
    }
}
