//! Named views into one contiguous buffer (llm.c's `ParameterTensors`).
//!
//! All parameters of a network live in one `Vec<f32>`; so do their gradients, the
//! optimizer's momentum and the BN running statistics (a second table). A [`TensorTable`]
//! maps each PyTorch state-dict name to its shape and offset, in state-dict order, so one
//! loop updates everything and one checksum covers everything.

use std::collections::HashMap;

/// One named tensor inside a flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    /// PyTorch state-dict key, e.g. `features.denseblock1.denselayer1.conv1.weight`.
    pub name: String,
    /// Shape in PyTorch's order (OIHW for convolutions).
    pub shape: Vec<usize>,
    /// Offset of the first element in the flat buffer.
    pub offset: usize,
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The element range in the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// An ordered table of named tensors laid out back to back.
#[derive(Clone, Debug, Default)]
pub struct TensorTable {
    entries: Vec<TensorEntry>,
    index: HashMap<String, usize>,
    total: usize,
}

impl TensorTable {
    /// Appends a tensor and returns its offset.
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize]) -> usize {
        let name = name.into();
        let offset = self.total;
        self.total += shape.iter().product::<usize>();
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push(TensorEntry {
            name,
            shape: shape.to_vec(),
            offset,
        });
        offset
    }
    /// All entries in insertion (state-dict) order.
    pub fn entries(&self) -> &[TensorEntry] {
        &self.entries
    }
    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }
    /// Elements of the tensors whose names start with `prefix` (a module's parameters).
    pub fn numel_with_prefix(&self, prefix: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.name.starts_with(prefix))
            .map(|e| e.numel())
            .sum()
    }
    /// Total number of elements.
    pub fn total(&self) -> usize {
        self.total
    }
}
