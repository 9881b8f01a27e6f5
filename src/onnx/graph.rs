//! The graph builder the families describe their evaluation pass with
//! (`Family::onnx_graph`: `densenet/onnx.rs`, `resnet/onnx.rs`): nodes in order, named
//! after their layers, and the attributes they take.

use super::proto::{attribute_type, AttributeProto, NodeProto};
use crate::nn::{BatchNorm, Conv};
use crate::ops::norm::BN_EPS;

/// Name of the graph input.
pub const INPUT: &str = "input";
/// Name of the graph output.
pub const OUTPUT: &str = "logits";

/// The graph's nodes, in order.
#[derive(Default)]
pub struct Builder {
    /// The nodes.
    pub nodes: Vec<NodeProto>,
}

impl Builder {
    /// Appends a node with one output, named `output`; returns that name.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: String,
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: Some(output.clone()),
            op_type: Some(op.into()),
            attribute,
        });
        output
    }

    /// A convolution without bias, its output named as the layer (`….conv1`).
    pub fn conv(&mut self, x: &str, c: &Conv) -> String {
        let (k, s) = (c.k as i64, c.stride as i64);
        self.node(
            "Conv",
            &[x, &format!("{}.weight", c.name)],
            c.name.clone(),
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                pads(c.pad as i64),
            ],
        )
    }

    /// Batch norm with the running statistics, then ReLU; returns the ReLU's output.
    pub fn bn_relu(&mut self, x: &str, bn: &BatchNorm) -> String {
        let p = &bn.name;
        let tensors = ["weight", "bias", "running_mean", "running_var"].map(|t| format!("{p}.{t}"));
        let mut inputs = vec![x];
        inputs.extend(tensors.iter().map(String::as_str));
        let y = self.node(
            "BatchNormalization",
            &inputs,
            p.clone(),
            vec![float("epsilon", BN_EPS)],
        );
        self.node("Relu", &[&y], format!("{p}.relu"), vec![])
    }

    /// Final BN-ReLU, global average pool, flatten, and the linear classifier `linear`
    /// (`classifier` or `fc`: weight `[classes, C]`, bias) as Gemm with Bᵀ.
    pub fn head(&mut self, x: &str, norm: &BatchNorm, linear: &str) -> String {
        let h = self.bn_relu(x, norm);
        let pooled = self.node("GlobalAveragePool", &[&h], "pool".into(), vec![]);
        let flat = self.node(
            "Flatten",
            &[&pooled],
            "flatten".into(),
            vec![int("axis", 1)],
        );
        let (w, b) = (format!("{linear}.weight"), format!("{linear}.bias"));
        self.node(
            "Gemm",
            &[&flat, &w, &b],
            OUTPUT.into(),
            vec![int("transB", 1)],
        )
    }
}

/// An attribute named `name` of type `kind` (`attribute_type`), its value yet to set.
fn attribute(name: &str, kind: i32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(kind),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: Some(v),
        ..attribute(name, attribute_type::INT)
    }
}

/// A float attribute.
pub fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: Some(v),
        ..attribute(name, attribute_type::FLOAT)
    }
}

/// A list-of-integers attribute.
pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: v.to_vec(),
        ..attribute(name, attribute_type::INTS)
    }
}

/// `pads` of a 2-D window: `p` on every side (begin H, begin W, end H, end W).
pub fn pads(p: i64) -> AttributeProto {
    ints("pads", &[p, p, p, p])
}
