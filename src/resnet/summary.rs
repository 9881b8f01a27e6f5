//! The pre-activation ResNet's [`Summary`]: the stem, one stage per `layer{s}`, the
//! classifier.

use super::{Architecture, BlockKind};
use crate::summary::{Stage, Summary};

/// Summarises a pre-activation ResNet: the stem, one stage per `layer{s}`, the classifier.
pub(super) fn summarize(arch: &Architecture) -> Summary {
    let cfg = &arch.config;
    let s = cfg.input_size;
    let count = |prefix: &str| arch.params.numel_with_prefix(prefix);
    let stem_macs = arch.conv1.shape(1, s).macs();
    let stem = Stage::new(
        "stem",
        [cfg.stem_channels, s, s],
        count("conv1."),
        stem_macs,
    );
    let mut stages = vec![stem];
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
        let output = [stage.channels, stage.size, stage.size];
        let parameters = count(&format!("layer{}.", i + 1));
        stages.push(Stage {
            layers: Some(n),
            connections: Some(n),
            ..Stage::new(format!("layer{}", i + 1), output, parameters, macs)
        });
    }
    let head = count("bn.") + count("fc.");
    stages.push(Stage::classifier(
        cfg.num_classes,
        cfg.final_channels(),
        head,
    ));
    let family = crate::model::config::PREACT_RESNET;
    let input = [cfg.in_channels, s, s];
    Summary {
        bottleneck: cfg.block == BlockKind::Bottleneck,
        ..Summary::new(
            &cfg.name,
            family,
            input,
            cfg.num_classes,
            cfg.depth(),
            stages,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

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
            let s = cfg.architecture().summary();
            assert_eq!(s.parameters, params, "{name}");
            assert_eq!(s.macs, macs, "{name}");
            let ModelConfig::PreActResNet(c) = &cfg else {
                panic!("{name} is a ResNet")
            };
            let arch = Architecture::new(c);
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
