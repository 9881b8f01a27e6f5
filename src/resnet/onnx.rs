//! The pre-activation ResNet's evaluation pass as an ONNX graph (`densenet export`).

use super::Architecture;
use crate::onnx::graph::{Builder, INPUT};

/// The pre-activation ResNet: stem, residual units, head. Returns the output name.
pub(super) fn graph(g: &mut Builder, arch: &Architecture) -> String {
    let mut x = g.conv(INPUT, &arch.conv1);
    for unit in arch.units() {
        let (bn1, conv1) = &unit.layers[0];
        let h0 = g.bn_relu(&x, bn1);
        let mut u = g.conv(&h0, conv1);
        for (bn, conv) in &unit.layers[1..] {
            let h = g.bn_relu(&u, bn);
            u = g.conv(&h, conv);
        }
        // the projection reads the pre-activated input h0 (see resnet::block)
        let shortcut = match &unit.shortcut {
            Some(sc) => g.conv(&h0, sc),
            None => x.clone(),
        };
        x = g.node(
            "Add",
            &[&u, &shortcut],
            format!("{}.add", unit.name),
            vec![],
        );
    }
    g.head(&x, &arch.norm, "fc")
}
