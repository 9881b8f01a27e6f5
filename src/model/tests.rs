//! The model interface's tests: frozen passes, configurations, bounds.

use super::*;
use crate::densenet::DenseNetConfig;
use crate::nn::MemoryMode;

/// A frozen model's passes are bit for bit the plain ones (the kernels pack the same
/// weights the same way, once instead of per call), at batch 2 and 1 and on the
/// second pass, which reuses the packs; and a model frozen again after its weights
/// changed packs the new ones (packs kept across freezes by address would not).
/// densenet121 on 64×64 images: its 3×3s at 16×16 and 8×8 and its stem take the
/// broadcast and Winograd routes, which pack.
#[test]
fn frozen_passes_are_the_plain_ones_and_follow_new_weights() {
    let mut cfg = ModelConfig::from_name("densenet121").unwrap();
    cfg.set_io(10, 3, 64);
    let mut net = AnyModel::new(&cfg, 1);
    let n = 2;
    let mut ws = net.workspace(n, MemoryMode::Efficient, false);
    let x: Vec<f32> = (0..n * 3 * 64 * 64)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let one = &x[..3 * 64 * 64];
    let mut passes = |net: &mut AnyModel| {
        let plain = (
            net.forward_eval(&mut ws, &x, n, None),
            net.forward_eval(&mut ws, one, 1, None),
        );
        let mut frozen = Frozen::new(&mut **net);
        for pass in 0..2 {
            let got = (
                frozen.forward_eval(&mut ws, &x, n, None),
                frozen.forward_eval(&mut ws, one, 1, None),
            );
            assert!(
                got == plain,
                "frozen pass {pass} differs from the plain one"
            );
        }
        if crate::kernels::active().direct.is_some() {
            assert!(!frozen.packs().is_empty(), "nothing was packed");
        } else {
            crate::kernels::testutil::say("SKIPPED: the portable kernels pack nothing to keep");
        }
        plain
    };
    let before = passes(&mut net);
    net.buffers_mut().params.iter_mut().for_each(|v| *v *= 0.75);
    let after = passes(&mut net);
    assert!(after.0 != before.0, "the new weights changed nothing");
}

#[test]
fn densenet_configs_serialise_bare_and_old_ones_load() {
    let d = DenseNetConfig::from_name("densenet-bc-40-12").unwrap();
    let m = ModelConfig::from(d.clone());
    // exactly what checkpoints stored before the ResNet existed
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        serde_json::to_string(&d).unwrap()
    );
    let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(back, m);
}

/// Issue 33, item 9: `--model` takes what the tool writes (a run's config.json `model`,
/// pretty-printed as there, or a checkpoint's `config`), for both families, adjusted
/// presets included; a bad value is named as the tool's own rules name it.
#[test]
fn model_json_is_the_schema_the_tool_writes() {
    for name in [
        "densenet-bc-16-4",
        "densenet121",
        "densenet-40-12",
        "preresnet-110",
    ] {
        let mut cfg = ModelConfig::from_name(name).unwrap();
        cfg.set_io(7, 1, 64);
        for json in [
            serde_json::to_string(&cfg).unwrap(),
            serde_json::to_string_pretty(&cfg).unwrap(),
        ] {
            let back = ModelConfig::from_name(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(back, cfg, "{json}");
        }
    }
    let mut v = serde_json::to_value(ModelConfig::from_name("densenet-bc-16-4").unwrap()).unwrap();
    v["growth_rate"] = serde_json::json!(0);
    let e = ModelConfig::from_name(&v.to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("growth_rate"), "{e}");
    // the reference files' format still reads
    let r = r#"{"family":"cifar_densenet","depth":40,"growth_rate":12,"bottleneck":true}"#;
    assert!(ModelConfig::from_name(r).is_ok());
}

#[test]
fn resnet_configs_round_trip_with_their_family() {
    let m = ModelConfig::from_name("preresnet-164").unwrap();
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains(r#""family":"preact_resnet""#), "{json}");
    let back: ModelConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    assert_eq!(ModelConfig::from_name(&json).unwrap(), m);
    let e = serde_json::from_str::<ModelConfig>(r#"{"family":"vgg"}"#).unwrap_err();
    assert!(e.to_string().contains("unknown model family 'vgg'"), "{e}");
}

/// The parameter count the validator checks is the one the network gets.
#[test]
fn parameter_counts_without_building_match_the_architecture() {
    for name in [
        "densenet-40-12",
        "densenet-bc-100-12",
        "densenet-c-40-12",
        "densenet-b-40-12",
        "densenet121",
        "densenet161",
        "preresnet-110",
        "preresnet-164",
        "preresnet-bottleneck-20",
    ] {
        let cfg = ModelConfig::from_name(name).unwrap();
        let built = match &cfg {
            ModelConfig::DenseNet(c) => crate::densenet::Architecture::new(c).params.total(),
            ModelConfig::PreActResNet(c) => crate::resnet::Architecture::new(c).params.total(),
        };
        let counted = match &cfg {
            ModelConfig::DenseNet(c) => c.num_params_checked(),
            ModelConfig::PreActResNet(c) => c.num_params_checked(),
        };
        assert_eq!(counted, Some(built as u128), "{name}");
    }
}

/// Stored settings of either family, read as a checkpoint's or a run's configuration
/// is, fail on their bound with a message naming the field and the limit, before
/// anything is allocated (these would ask for terabytes, or overflow).
#[test]
fn stored_configurations_are_bounded_before_anything_is_built() {
    let dense = serde_json::to_value(ModelConfig::from_name("densenet-bc-40-12").unwrap()).unwrap();
    let resnet = serde_json::to_value(ModelConfig::from_name("preresnet-110").unwrap()).unwrap();
    let huge = serde_json::json!(1_000_000_000_000u64);
    let cases = [
        (
            &dense,
            "growth_rate",
            huge.clone(),
            "growth_rate (growth rate k) must be in 1..=65536",
        ),
        (
            &dense,
            "block_config",
            serde_json::json!([6, 1_000_000_000_000u64, 6]),
            "block_config (layers per dense block) must be in 1..=10000",
        ),
        (
            &dense,
            "block_config",
            serde_json::json!(vec![1; 70]),
            "at most 8 blocks, got 70",
        ),
        (
            &dense,
            "num_classes",
            huge.clone(),
            "num_classes (classifier outputs) must be in 1..=1000000",
        ),
        (
            &dense,
            "input_size",
            huge.clone(),
            "input_size (input height and width) must be in 1..=4096",
        ),
        (
            &dense,
            "bn_size",
            huge.clone(),
            "bn_size (bottleneck width factor) must be in 1..=64",
        ),
        (
            &dense,
            "init_features",
            huge.clone(),
            "init_features (channels of the stem) must be in 1..=65536",
        ),
        (
            &dense,
            "in_channels",
            huge.clone(),
            "in_channels (input channels) must be in 1..=1024",
        ),
        (
            &dense,
            "compression",
            serde_json::json!(1e308),
            "compression θ must be in (0, 1], got 1e308",
        ),
        (
            &dense,
            "growth_rate",
            serde_json::json!(20_000),
            "parameters, more than the limit of 1073741824",
        ),
        (
            &resnet,
            "units",
            serde_json::json!([18, 1_000_000_000u64, 18]),
            "units (residual units per stage) must be in 1..=10000",
        ),
        (
            &resnet,
            "widths",
            serde_json::json!([16, 1_000_000_000u64, 64]),
            "widths (stage width) must be in 1..=65536",
        ),
        (
            &resnet,
            "num_classes",
            huge.clone(),
            "num_classes (classifier outputs) must be in 1..=1000000",
        ),
        (
            &resnet,
            "input_size",
            huge.clone(),
            "input_size (input height and width) must be in 1..=4096",
        ),
        (
            &resnet,
            "stem_channels",
            huge.clone(),
            "stem_channels (channels of the stem) must be in 1..=65536",
        ),
        (
            &resnet,
            "widths",
            serde_json::json!([16, 32, 40_000]),
            "parameters, more than the limit",
        ),
    ];
    for (base, field, value, want) in cases {
        let mut v = base.clone();
        v[field] = value;
        let e = serde_json::from_value::<ModelConfig>(v.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{field}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
        // the same rules when the JSON comes as --model
        if base == &resnet {
            let e = ModelConfig::from_name(&v.to_string())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "--model {field}: {e}");
        }
    }
    // the reference files' JSON format and preset names meet the same bounds
    let e = ModelConfig::from_name(
        r#"{"family":"imagenet_densenet","growth_rate":1000000000000,"block_config":[1,1]}"#,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("growth_rate (growth rate k) must be in 1..=65536"),
        "{e}"
    );
    let e = ModelConfig::from_name(
        r#"{"family":"cifar_densenet","depth":40,"growth_rate":12,"num_classes":10000000}"#,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("must be in 1..=1000000, got 10000000"),
        "{e}"
    );
    let e = ModelConfig::from_name("densenet-bc-1000000000000-12").unwrap_err();
    assert!(e.to_string().contains("layers per dense block"), "{e}");
    let e = ModelConfig::from_name("preresnet-2000000000000").unwrap_err();
    assert!(e.to_string().contains("residual units per stage"), "{e}");
    let e = AnyModel::try_new(
        &ModelConfig::DenseNet(DenseNetConfig {
            input_size: 1 << 40,
            ..DenseNetConfig::from_name("densenet-bc-40-12").unwrap()
        }),
        0,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("input_size"), "{e}");
}

#[test]
fn names_of_both_families_parse() {
    assert_eq!(
        ModelConfig::from_name("preresnet-110").unwrap().family(),
        PREACT_RESNET
    );
    assert_eq!(
        ModelConfig::from_name("densenet121").unwrap().family(),
        "densenet"
    );
    let e = ModelConfig::from_name("resnet50").unwrap_err();
    assert!(e.to_string().contains("preresnet-164"), "{e}");
}
