//! The DenseNet's [`Summary`]: per stage (stem, each dense block and transition, the
//! classifier) its output shape, parameters, multiply-accumulates and connections.

use super::Architecture;
use crate::summary::{Stage, Summary};

/// Summarises `arch` for one input image at the family's input size.
pub(super) fn summarize(arch: &Architecture) -> Summary {
    let cfg = &arch.config;
    let s = cfg.input_size;
    let count = |prefix: &str| arch.params.numel_with_prefix(prefix);
    let mut stages = Vec::new();
    let conv0 = arch.conv0.shape(1, s);
    let stem_params = count("features.conv0.") + count("features.norm0.");
    let size1 = arch.blocks[0].size;
    let stem_output = [cfg.init_features, size1, size1];
    stages.push(Stage::new("stem", stem_output, stem_params, conv0.macs()));
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
        let output = [block.c_out, block.size, block.size];
        let parameters = count(&format!("features.denseblock{}.", b + 1));
        stages.push(Stage {
            layers: Some(nl),
            connections: Some(nl * (nl + 1) / 2),
            ..Stage::new(format!("denseblock{}", b + 1), output, parameters, macs)
        });
        if let Some(t) = &block.transition {
            depth += 1;
            stages.push(Stage::new(
                format!("transition{}", b + 1),
                [t.conv.cout, block.size / 2, block.size / 2],
                count(&format!("features.transition{}.", b + 1)),
                t.conv.shape(1, block.size).macs(),
            ));
        }
    }
    let head = count(cfg.final_norm_name()) + count("classifier.");
    stages.push(Stage::classifier(
        cfg.num_classes,
        cfg.final_channels(),
        head,
    ));
    let input = [cfg.in_channels, s, s];
    Summary {
        growth_rate: Some(cfg.growth_rate),
        bottleneck: cfg.bottleneck,
        compression: Some(cfg.compression),
        ..Summary::new(&cfg.name, "densenet", input, cfg.num_classes, depth, stages)
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
}
