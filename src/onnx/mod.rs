//! ONNX export: a DenseNet or a pre-activation ResNet as an ONNX model of its evaluation
//! forward pass, for other runtimes (ONNX Runtime, tract, TensorRT, …).
//!
//! The graph is built by walking the same architecture structs the engine computes with
//! ([`crate::densenet::Architecture`], [`crate::resnet::Architecture`]), so it is exactly
//! our `forward_eval`, in the standard operators only (Conv, BatchNormalization, Relu,
//! Concat, AveragePool, MaxPool, Add, GlobalAveragePool, Flatten, Gemm):
//!
//! ```text
//! DenseNet  stem      conv0                       (CIFAR)
//!                     conv0 norm0 relu MaxPool3/2 (ImageNet)
//!           layer ℓ   x ← Concat(x, [BN-ReLU-Conv1×1 BN-ReLU-]Conv3×3(x))   oldest first
//!           transition BN-ReLU-Conv1×1-AveragePool2×2
//! ResNet    stem      conv1
//!           unit      h0 = BN-ReLU(x); y = convs(h0) + (x or Conv1×1/s(h0))
//! both      head      BN-ReLU, GlobalAveragePool, Flatten, Gemm → logits
//! ```
//!
//! Batch norms use the running statistics (eval mode) and dropout is absent. The weights
//! are initializers named as the PyTorch state dict (`features.conv0.weight`, …); every
//! node output is named after its layer (`….norm1`, `….norm1.relu`, `….conv1`). The
//! graph input is `input` `[N, C, H, W]` (N fixed, or the symbol `batch`), the output
//! `logits` `[N, classes]`. The model's `metadata_props` record the model, its
//! configuration, the class names when known, and the input preprocessing
//! ([`Preprocessing`]).

pub mod graph;
pub mod proto;

pub use graph::{INPUT, OUTPUT};

use crate::model::Model;
use crate::prepare::{InputPrep, PrepSource};
use graph::Builder;
use proto::tensor_shape_proto::{dimension, Dimension};
use proto::{
    type_proto, GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::HashSet;

/// The opsets the export writes. 13 is the first with today's forms of every operator it
/// uses (Flatten, Gemm, Relu, Concat, BatchNormalization inputs); 21 is the newest the
/// tested runtimes read. The operators' semantics are the same across the range.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// The default opset (ONNX 1.12, read by every current runtime).
pub const DEFAULT_OPSET: i64 = 17;

/// The symbolic batch dimension of a dynamic-batch export.
pub const BATCH_SYMBOL: &str = "batch";

/// The IR version that goes with an opset: the one of the ONNX release that introduced
/// it (onnx/helper.py's `VERSION_TABLE`), so that a runtime that reads the opset also
/// reads the file.
pub fn ir_version(opset: i64) -> Option<i64> {
    Some(match opset {
        13 | 14 => 7,
        15..=18 => 8,
        19 | 20 => 9,
        21 => 10,
        _ => return None,
    })
}

/// The batch dimension of the exported input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// A fixed number of images.
    Fixed(usize),
    /// Any number: the symbol [`BATCH_SYMBOL`].
    Dynamic,
}

/// How an image file becomes the network's input, recorded in the model's metadata as the
/// JSON object `preprocess`, so that a user of the `.onnx` file alone prepares inputs as
/// `densenet predict` does ([`crate::prepare::InputPrep`], whatever the data set):
/// 1. decode to RGB; for `channels` `grey`, the mean of R, G and B (rounded down);
/// 2. with `resize`: the shorter side resized to `resize` (the longer one scaled and
///    rounded down), then the centre `crop`×`crop` window; without: resized to
///    `input_size`×`input_size`, whatever the aspect ratio; `resample` `bilinear`
///    (antialiased when shrinking, as PIL's `Image.BILINEAR`);
/// 3. `x = (pixel / max_value − mean[c]) / std[c]` (one mean and std may serve every
///    channel), laid out `[C, H, W]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Preprocessing {
    /// Where it comes from: `checkpoint` (the training run's) or `torchvision-imagenet`
    /// (weights without a record on an ImageNet stem).
    pub source: String,
    /// Pixel value that maps to 1.0 before normalisation: 255, as image files hold.
    pub max_value: f32,
    /// Mean subtracted after scaling, per channel (or one for all).
    pub mean: Vec<f32>,
    /// Standard deviation divided by, per channel (or one for all).
    pub std: Vec<f32>,
    /// Shorter side after resizing, if images are resized and centre-cropped.
    pub resize: Option<usize>,
    /// Centre crop size, if images are cropped.
    pub crop: Option<usize>,
    /// Height and width of the network input.
    pub input_size: usize,
    /// Channel order of the input (`RGB`, or `grey` for one channel).
    pub channels: String,
    /// The resampling filter of the resize.
    pub resample: String,
}

impl Preprocessing {
    /// What [`InputPrep`] `p` does to an image file; `None` when it only guesses
    /// (weights without a record, not on an ImageNet stem: nothing is invented).
    pub fn of(p: &InputPrep) -> Option<Self> {
        let source = match p.source {
            PrepSource::Checkpoint => "checkpoint",
            PrepSource::ImagenetDefault => "torchvision-imagenet",
            PrepSource::Plain => return None,
        };
        Some(Preprocessing {
            source: source.into(),
            max_value: 255.0,
            mean: p.mean.clone(),
            std: p.std.clone(),
            resize: p.center_crop.map(|c| c.resize),
            crop: p.center_crop.map(|c| c.crop),
            input_size: p.size,
            channels: if p.channels == 1 { "grey" } else { "RGB" }.into(),
            resample: "bilinear".into(),
        })
    }
}

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// ONNX opset, in [`OPSETS`].
    pub opset: i64,
    /// Batch dimension of the input.
    pub batch: Batch,
    /// Input preprocessing, when known.
    pub preprocessing: Option<Preprocessing>,
    /// Class names, when known (index order of the logits).
    pub class_names: Vec<String>,
}

impl Default for ExportOptions {
    /// Opset [`DEFAULT_OPSET`], batch 1, no preprocessing or class names.
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
            batch: Batch::Fixed(1),
            preprocessing: None,
            class_names: Vec::new(),
        }
    }
}

/// An exported model.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The `.onnx` file's bytes.
    pub bytes: Vec<u8>,
    /// Number of graph nodes.
    pub nodes: usize,
    /// Number of initializers (state-dict tensors).
    pub initializers: usize,
    /// The file's IR version.
    pub ir_version: i64,
}

/// Why a model cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An opset outside [`OPSETS`].
    #[error(
        "opset {0} is not supported: the export writes opsets {lo} to {hi} (default {default})",
        lo = OPSETS.start(),
        hi = OPSETS.end(),
        default = DEFAULT_OPSET
    )]
    Opset(i64),
    /// A fixed batch of zero images.
    #[error("a batch of 0 images: give a positive batch size or `dynamic`")]
    EmptyBatch,
}

/// Exports `model`'s evaluation forward pass as an ONNX model (see the module docs).
pub fn export(model: &dyn Model, opts: &ExportOptions) -> Result<Exported, ExportError> {
    let ir = ir_version(opts.opset).ok_or(ExportError::Opset(opts.opset))?;
    if opts.batch == Batch::Fixed(0) {
        return Err(ExportError::EmptyBatch);
    }
    let cfg = model.model_config();
    let mut g = Builder::default();
    // the graph of the configuration's architecture, whose tensors are the model's
    let logits = cfg.architecture().onnx_graph(&mut g);
    debug_assert_eq!(logits, OUTPUT);

    let initializer: Vec<TensorProto> = model
        .state_dict()
        .into_iter()
        .map(|(name, t)| TensorProto {
            dims: t.shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(proto::FLOAT),
            name: Some(name),
            raw_data: Some(t.data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        })
        .collect();
    // every state-dict tensor feeds a node, and every node input is a tensor, the graph
    // input or an earlier node's output: the walk above matches the architecture
    let mut known: HashSet<&str> = initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    known.insert(INPUT);
    let mut used = HashSet::new();
    for node in &g.nodes {
        for i in &node.input {
            assert!(
                known.contains(i.as_str()),
                "ONNX node input {i} is undefined"
            );
            used.insert(i.as_str());
        }
        known.extend(node.output.iter().map(String::as_str));
    }
    for t in &initializer {
        let name = t.name.as_deref().unwrap_or_default();
        assert!(
            used.contains(name),
            "state-dict tensor {name} is not in the ONNX graph"
        );
    }

    let n = match opts.batch {
        Batch::Fixed(n) => dimension::Value::DimValue(n as i64),
        Batch::Dynamic => dimension::Value::DimParam(BATCH_SYMBOL.into()),
    };
    let s = cfg.input_size() as i64;
    let input = value_info(
        INPUT,
        &[n.clone(), dim(cfg.in_channels() as i64), dim(s), dim(s)],
        "images, NCHW, float32, preprocessed as the metadata's `preprocess` says",
    );
    let output = value_info(
        OUTPUT,
        &[n, dim(cfg.num_classes() as i64)],
        "unnormalised class scores (apply softmax for probabilities)",
    );

    let family = cfg.family();
    let mut meta = vec![
        ("model", cfg.name().to_string()),
        ("family", family.to_string()),
        (
            "config",
            serde_json::to_string(&cfg).expect("a configuration serialises"),
        ),
        ("num_classes", cfg.num_classes().to_string()),
        ("in_channels", cfg.in_channels().to_string()),
        ("input_size", cfg.input_size().to_string()),
    ];
    if !opts.class_names.is_empty() {
        let names = serde_json::to_string(&opts.class_names).expect("strings serialise");
        meta.push(("class_names", names));
    }
    if let Some(p) = &opts.preprocessing {
        let json = serde_json::to_string(p).expect("a plain struct serialises");
        meta.push(("preprocess", json));
    }
    let nodes = g.nodes.len();
    let initializers = initializer.len();
    let model_proto = ModelProto {
        ir_version: Some(ir),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opts.opset),
        }],
        producer_name: Some("densenet".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: None,
        doc_string: Some(format!(
            "{} ({family}), evaluation graph: batch norms with running statistics, no \
             dropout. Exported by densenet {}.",
            cfg.name(),
            env!("CARGO_PKG_VERSION")
        )),
        graph: Some(GraphProto {
            node: g.nodes,
            name: Some(cfg.name().to_string()),
            initializer,
            doc_string: None,
            input: vec![input],
            output: vec![output],
        }),
        metadata_props: meta
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            })
            .collect(),
    };
    Ok(Exported {
        bytes: prost::Message::encode_to_vec(&model_proto),
        nodes,
        initializers,
        ir_version: ir,
    })
}

/// A fixed dimension.
fn dim(v: i64) -> dimension::Value {
    dimension::Value::DimValue(v)
}

/// A float32 tensor graph input or output of shape `dims`.
fn value_info(name: &str, dims: &[dimension::Value], doc: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(proto::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(d.clone()),
                        })
                        .collect(),
                }),
            })),
        }),
        doc_string: Some(doc.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AnyModel, ModelConfig};
    use prost::Message;

    fn decode(e: &Exported) -> ModelProto {
        ModelProto::decode(e.bytes.as_slice()).unwrap()
    }

    fn ops(m: &ModelProto) -> Vec<String> {
        let g = m.graph.as_ref().unwrap();
        g.node.iter().map(|n| n.op_type.clone().unwrap()).collect()
    }

    #[test]
    fn densenet_graph_has_one_concat_per_layer_and_every_weight() {
        let cfg = ModelConfig::from_name("densenet-bc-40-12").unwrap();
        let net = AnyModel::new(&cfg, 0);
        let e = export(&*net, &ExportOptions::default()).unwrap();
        let m = decode(&e);
        let ops = ops(&m);
        let count = |op: &str| ops.iter().filter(|o| *o == op).count();
        // 3 blocks of 6 bottleneck layers, 2 transitions, CIFAR stem (conv only)
        assert_eq!(count("Concat"), 18);
        assert_eq!(count("Conv"), 1 + 18 * 2 + 2);
        assert_eq!(count("BatchNormalization"), 18 * 2 + 2 + 1);
        assert_eq!(count("Relu"), count("BatchNormalization"));
        assert_eq!(count("AveragePool"), 2);
        assert_eq!(count("MaxPool"), 0);
        assert_eq!(ops.last().map(String::as_str), Some("Gemm"));
        assert_eq!(e.nodes, ops.len());
        assert_eq!(e.initializers, net.state_dict().len());
        assert_eq!(m.ir_version, Some(8));
        assert_eq!(m.opset_import[0].version, Some(DEFAULT_OPSET));
    }

    #[test]
    fn initializers_are_the_state_dict_bit_for_bit() {
        let cfg = ModelConfig::from_name("preresnet-20").unwrap();
        let net = AnyModel::new(&cfg, 3);
        let m = decode(&export(&*net, &ExportOptions::default()).unwrap());
        let g = m.graph.unwrap();
        let sd = net.state_dict();
        assert_eq!(g.initializer.len(), sd.len());
        for (t, (name, want)) in g.initializer.iter().zip(&sd) {
            assert_eq!(t.name.as_deref(), Some(name.as_str()));
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            assert_eq!(dims, want.shape);
            let raw = t.raw_data.as_ref().unwrap();
            let got: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(got, want.data, "{name}");
        }
        // one Add per residual unit: 3 stages of 3 basic units
        let adds = g
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("Add"))
            .count();
        assert_eq!(adds, 9);
    }

    #[test]
    fn opsets_outside_the_range_are_refused() {
        let net = AnyModel::new(&ModelConfig::from_name("densenet-bc-40-12").unwrap(), 0);
        for opset in [0, 12, 22] {
            let opts = ExportOptions {
                opset,
                ..Default::default()
            };
            let e = export(&*net, &opts).unwrap_err().to_string();
            assert!(
                e.contains(&format!("opset {opset} is not supported")),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
        for opset in OPSETS {
            let opts = ExportOptions {
                opset,
                ..Default::default()
            };
            assert!(export(&*net, &opts).is_ok(), "opset {opset}");
        }
    }
}
