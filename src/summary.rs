//! Per-stage description of a network: output shape, parameters, multiply-accumulates and
//! the dense connectivity of each block (the numbers of the paper's Table 1 and §3).

use crate::net::Architecture;
use serde::Serialize;

/// One stage: the stem, a dense block, a transition, or the classifier.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    /// `stem`, `denseblock1`, `transition1`, …, `classifier`.
    pub name: String,
    /// Output shape per image, `[C, H, W]` (`[classes, 1, 1]` for the classifier).
    pub output: [usize; 3],
    /// Trainable parameters of the stage.
    pub parameters: usize,
    /// Multiply-accumulates per image (convolutions and the linear layer).
    pub macs: usize,
    /// Dense blocks: number of layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// Dense blocks: direct connections L(L+1)/2 (each layer to every later one, the
    /// block input counted as layer 0).
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
    /// Input shape per image `[C, H, W]`.
    pub input: [usize; 3],
    /// Classes.
    pub classes: usize,
    /// Growth rate k.
    pub growth_rate: usize,
    /// Bottleneck (DenseNet-B).
    pub bottleneck: bool,
    /// Compression θ.
    pub compression: f64,
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
    let count = |prefix: &str| -> usize {
        arch.params
            .entries()
            .iter()
            .filter(|e| e.name.starts_with(prefix))
            .map(|e| e.numel())
            .sum()
    };
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
        input: [cfg.in_channels, s, s],
        classes: cfg.num_classes,
        growth_rate: cfg.growth_rate,
        bottleneck: cfg.bottleneck,
        compression: cfg.compression,
        depth,
        parameters: stages.iter().map(|s| s.parameters).sum(),
        macs: stages.iter().map(|s| s.macs).sum(),
        stages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DenseNetConfig;

    /// DENSENET.md §3: the parameter counts must match to the parameter, MACs within 1%.
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
}
