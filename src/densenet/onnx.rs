//! The DenseNet's evaluation pass as an ONNX graph (`densenet export`): the same layers
//! the engine computes, in torchvision's order and names.

use super::{Architecture, Stem};
use crate::onnx::graph::{int, ints, pads, Builder, INPUT};

/// The DenseNet: stem, dense blocks with their transitions, head. Returns the output name.
pub(super) fn graph(g: &mut Builder, arch: &Architecture) -> String {
    let mut x = g.conv(INPUT, &arch.conv0);
    if arch.config.stem == Stem::ImageNet {
        let norm0 = arch.norm0.as_ref().expect("ImageNet stem has norm0");
        let r = g.bn_relu(&x, norm0);
        // torchvision's pool0: MaxPool2d(3, stride 2, padding 1)
        x = g.node(
            "MaxPool",
            &[&r],
            "features.pool0".into(),
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                pads(1),
            ],
        );
    }
    for block in &arch.blocks {
        for layer in &block.layers {
            let name = layer.norm1.name.trim_end_matches(".norm1");
            let h = g.bn_relu(&x, &layer.norm1);
            let mut new = g.conv(&h, &layer.conv1);
            if let Some((norm2, conv2)) = &layer.bottleneck {
                let h = g.bn_relu(&new, norm2);
                new = g.conv(&h, conv2);
            }
            // the block's features so far, then the new ones (torchvision's cat order)
            x = g.node(
                "Concat",
                &[&x, &new],
                format!("{name}.concat"),
                vec![int("axis", 1)],
            );
        }
        if let Some(t) = &block.transition {
            let name = t.norm.name.trim_end_matches(".norm");
            let h = g.bn_relu(&x, &t.norm);
            let c = g.conv(&h, &t.conv);
            x = g.node(
                "AveragePool",
                &[&c],
                format!("{name}.pool"),
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            );
        }
    }
    g.head(&x, &arch.norm_final, "classifier")
}
