//! A plain host tensor for the engine's edges (files, command line): f32, row-major, with
//! PyTorch's shape order. Inside the engine activations are flat channel-major slices.

/// An owned f32 tensor in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Elements, `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and data; panics if they disagree (a programming error).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?}"
        );
        Tensor { shape, data }
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}
