//! Per-stage description of a network: output shape, parameters, multiply-accumulates and
//! the connectivity of each block (the numbers of the paper's Table 1 and §3), for a
//! DenseNet ([`summarize`]) or a pre-activation ResNet ([`summarize_resnet`]), so the two
//! families can be read side by side.

use crate::densenet::Architecture;
use crate::model::ModelConfig;
use crate::resnet::{self, BlockKind};
use serde::Serialize;

/// One stage: the stem, a dense block, a transition, a residual stage, or the classifier.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    /// `stem`, `denseblock1`, `transition1`, …, `classifier` (ResNets: `layer1`, …).
    pub name: String,
    /// Output shape per image, `[C, H, W]` (`[classes, 1, 1]` for the classifier).
    pub output: [usize; 3],
    /// Trainable parameters of the stage.
    pub parameters: usize,
    /// Multiply-accumulates per image (convolutions and the linear layer).
    pub macs: usize,
    /// Dense blocks: number of layers; residual stages: number of units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// Dense blocks: direct connections L(L+1)/2 (each layer to every later one, the
    /// block input counted as layer 0); residual stages: one shortcut per unit, L.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
}

/// The whole network's summary; `--json` prints this.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Format version of this JSON.
    pub version: u32,
    /// Model name.
    pub model: String,
    /// `densenet` or `preact_resnet`.
    pub family: String,
    /// Input shape per image `[C, H, W]`.
    pub input: [usize; 3],
    /// Classes.
    pub classes: usize,
    /// DenseNets: growth rate k.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_rate: Option<usize>,
    /// Bottleneck layers (DenseNet-B) or bottleneck residual units.
    pub bottleneck: bool,
    /// DenseNets: compression θ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<f64>,
    /// Depth: convolutions and the linear layer on the longest path.
    pub depth: usize,
    /// Stages in order.
    pub stages: Vec<Stage>,
    /// Trainable parameters in all.
    pub parameters: usize,
    /// Multiply-accumulates per image in all.
    pub macs: usize,
}

/// Summarises `arch` for one input image at the family's input size.
pub fn summarize(arch: &Architecture) -> Summary {
    let cfg = &arch.config;
    let s = cfg.input_size;
    let count = |prefix: &str| arch.params.numel_with_prefix(prefix);
    let mut stages = Vec::new();
    let conv0 = arch.conv0.shape(1, s);
    let stem_params = count("features.conv0.") + count("features.norm0.");
    stages.push(Stage {
        name: "stem".into(),
        output: [cfg.init_features, arch.blocks[0].size, arch.blocks[0].size],
        parameters: stem_params,
        macs: conv0.macs(),
        layers: None,
        connections: None,
    });
    let mut depth = 2; // stem conv + classifier
    for (b, block) in arch.blocks.iter().enumerate() {
        let macs = block
            .layers
            .iter()
            .map(|l| {
                let first = l.conv1.shape(1, block.size).macs();
                let second = l
                    .bottleneck
                    .as_ref()
                    .map(|(_, c)| c.shape(1, block.size).macs())
                    .unwrap_or(0);
                first + second
            })
            .sum();
        let nl = block.layers.len();
        depth += nl * if cfg.bottleneck { 2 } else { 1 };
        stages.push(Stage {
            name: format!("denseblock{}", b + 1),
            output: [block.c_out, block.size, block.size],
            parameters: count(&format!("features.denseblock{}.", b + 1)),
            macs,
            layers: Some(nl),
            connections: Some(nl * (nl + 1) / 2),
        });
        if let Some(t) = &block.transition {
            depth += 1;
            stages.push(Stage {
                name: format!("transition{}", b + 1),
                output: [t.conv.cout, block.size / 2, block.size / 2],
                parameters: count(&format!("features.transition{}.", b + 1)),
                macs: t.conv.shape(1, block.size).macs(),
                layers: None,
                connections: None,
            });
        }
    }
    let cf = cfg.final_channels();
    stages.push(Stage {
        name: "classifier".into(),
        output: [cfg.num_classes, 1, 1],
        parameters: count(cfg.final_norm_name()) + count("classifier."),
        macs: cf * cfg.num_classes,
        layers: None,
        connections: None,
    });
    Summary {
        version: 1,
        model: cfg.name.clone(),
        family: "densenet".into(),
        input: [cfg.in_channels, s, s],
        classes: cfg.num_classes,
        growth_rate: Some(cfg.growth_rate),
        bottleneck: cfg.bottleneck,
        compression: Some(cfg.compression),
        depth,
        parameters: stages.iter().map(|s| s.parameters).sum(),
        macs: stages.iter().map(|s| s.macs).sum(),
        stages,
    }
}

/// Summarises a pre-activation ResNet: the stem, one stage per `layer{s}`, the classifier.
pub fn summarize_resnet(arch: &resnet::Architecture) -> Summary {
    let cfg = &arch.config;
    let s = cfg.input_size;
    let count = |prefix: &str| arch.params.numel_with_prefix(prefix);
    let mut stages = vec![Stage {
        name: "stem".into(),
        output: [cfg.stem_channels, s, s],
        parameters: count("conv1."),
        macs: arch.conv1.shape(1, s).macs(),
        layers: None,
        connections: None,
    }];
    for (i, stage) in arch.stages.iter().enumerate() {
        let macs = stage
            .units
            .iter()
            .map(|u| {
                let convs: usize = u
                    .layers
                    .iter()
                    .zip(&u.sizes)
                    .map(|((_, c), &size)| c.shape(1, size).macs())
                    .sum();
                convs
                    + u.shortcut
                        .as_ref()
                        .map_or(0, |c| c.shape(1, u.size_in).macs())
            })
            .sum();
        let n = stage.units.len();
        stages.push(Stage {
            name: format!("layer{}", i + 1),
            output: [stage.channels, stage.size, stage.size],
            parameters: count(&format!("layer{}.", i + 1)),
            macs,
            layers: Some(n),
            connections: Some(n),
        });
    }
    let cf = cfg.final_channels();
    stages.push(Stage {
        name: "classifier".into(),
        output: [cfg.num_classes, 1, 1],
        parameters: count("bn.") + count("fc."),
        macs: cf * cfg.num_classes,
        layers: None,
        connections: None,
    });
    Summary {
        version: 1,
        model: cfg.name.clone(),
        family: crate::model::PREACT_RESNET.into(),
        input: [cfg.in_channels, s, s],
        classes: cfg.num_classes,
        growth_rate: None,
        bottleneck: cfg.block == BlockKind::Bottleneck,
        compression: None,
        depth: cfg.depth(),
        parameters: stages.iter().map(|s| s.parameters).sum(),
        macs: stages.iter().map(|s| s.macs).sum(),
        stages,
    }
}

/// Summarises a model of either family.
pub fn summarize_model(cfg: &ModelConfig) -> Summary {
    match cfg {
        ModelConfig::DenseNet(c) => summarize(&Architecture::new(c)),
        ModelConfig::PreActResNet(c) => summarize_resnet(&resnet::Architecture::new(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::densenet::config::DenseNetConfig;

    /// The paper's models (Table 1 and the CIFAR results table; torchvision's counts for
    /// the ImageNet ones): the parameter counts must match to the parameter, MACs within 1%.
    #[test]
    fn paper_parameter_counts_and_macs() {
        let cases: &[(&str, usize, usize, Option<f64>)] = &[
            ("densenet-40-12", 10, 1_019_722, Some(0.265)),
            ("densenet-100-12", 10, 6_979_642, None),
            ("densenet-100-24", 10, 27_249_082, None),
            ("densenet-bc-100-12", 10, 769_162, Some(0.288)),
            ("densenet-bc-250-24", 10, 15_324_406, None),
            ("densenet-bc-190-40", 10, 25_624_430, None),
            ("densenet-bc-40-12", 10, 176_122, None),
            ("densenet121", 1000, 7_978_856, Some(2.834)),
            ("densenet169", 1000, 14_149_480, Some(3.360)),
            ("densenet201", 1000, 20_013_928, Some(4.291)),
            ("densenet161", 1000, 28_681_000, Some(7.728)),
            ("densenet264", 1000, 33_337_704, None),
        ];
        for &(name, classes, params, gmacs) in cases {
            let mut cfg = DenseNetConfig::from_name(name).unwrap();
            cfg.num_classes = classes;
            let s = summarize(&Architecture::new(&cfg));
            assert_eq!(s.parameters, params, "{name}");
            if let Some(g) = gmacs {
                let rel = (s.macs as f64 / 1e9 - g).abs() / g;
                assert!(rel < 0.01, "{name}: {} GMACs vs {g}", s.macs as f64 / 1e9);
            }
        }
    }

    #[test]
    fn depth_and_connections() {
        let s = summarize(&Architecture::new(
            &DenseNetConfig::from_name("densenet-bc-100-12").unwrap(),
        ));
        assert_eq!(s.depth, 100);
        assert_eq!(s.stages[1].connections, Some(16 * 17 / 2));
        let s = summarize(&Architecture::new(
            &DenseNetConfig::from_name("densenet121").unwrap(),
        ));
        assert_eq!(s.depth, 121);
    }

    /// He et al. 2016 (and the DenseNet paper's results table): pre-activation ResNet-110
    /// and -164 have 1.7M parameters, ResNet-1001 10.2M. The exact counts (BN γ and β
    /// included, as the DenseNet counts above) are PyTorch's for the same definition,
    /// printed by `tests/fixtures/make_preresnet_fixtures.py --counts` together with the
    /// MACs (every convolution and the linear layer, 32×32 input).
    #[test]
    fn resnet_parameter_counts_match_pytorch_and_the_paper() {
        let cases: &[(&str, usize, usize, f64, usize)] = &[
            // (model, parameters, without BN γ/β, paper's millions, MACs)
            ("preresnet-110", 1_730_522, 1_722_426, 1.7, 253_149_824),
            ("preresnet-164", 1_703_258, 1_679_034, 1.7, 247_646_720),
            (
                "preresnet-1001",
                10_327_706,
                10_178_490,
                10.2,
                1_490_995_712,
            ),
        ];
        let millions = |n: usize| (n as f64 / 1e5).round() / 10.0;
        for &(name, params, without_bn, paper, macs) in cases {
            let cfg = ModelConfig::from_name(name).unwrap();
            let s = summarize_model(&cfg);
            assert_eq!(s.parameters, params, "{name}");
            assert_eq!(s.macs, macs, "{name}");
            let ModelConfig::PreActResNet(c) = &cfg else {
                panic!("{name} is a ResNet")
            };
            let arch = resnet::Architecture::new(c);
            let bn: usize = arch
                .params
                .entries()
                .iter()
                .filter(|e| e.shape.len() == 1 && !e.name.starts_with("fc."))
                .map(|e| e.numel())
                .sum();
            assert_eq!(params - bn, without_bn, "{name}");
            // the paper's rounded figure: with BN parameters for 110 and 164; for 1001,
            // 10.2M is the count without them (10,327,706 with them rounds to 10.3M)
            assert_eq!(millions(without_bn), paper, "{name}");
            if name != "preresnet-1001" {
                assert_eq!(millions(params), paper, "{name}");
            } else {
                assert_eq!(millions(params), 10.3);
            }
            let depth: usize = name["preresnet-".len()..].parse().unwrap();
            assert_eq!(s.depth, depth, "{name}");
            assert_eq!(s.stages[1].connections, Some(c.units[0]));
        }
    }
}
