//! State-dict key names: torchvision's, with the prefixes and legacy spellings older
//! checkpoints use mapped onto them.

/// Maps a checkpoint key to the engine's name: strips a `module.` prefix (saved from
/// `DataParallel`) and renames the legacy dense-layer keys. torchvision explains: "'.'s are
/// no longer allowed in module names, but previous _DenseLayer has keys 'norm.1', 'relu.1',
/// 'conv.1', 'norm.2', 'relu.2', 'conv.2'" (its regex `^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$`).
pub fn canonical_name(name: &str) -> String {
    let name = name.strip_prefix("module.").unwrap_or(name);
    let parts: Vec<&str> = name.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        let is_legacy = i > 0
            && parts[i - 1].starts_with("denselayer")
            && matches!(parts[i], "norm" | "relu" | "conv")
            && matches!(parts.get(i + 1), Some(&"1") | Some(&"2"));
        if is_legacy {
            out.push(format!("{}{}", parts[i], parts[i + 1]));
            i += 2;
        } else {
            out.push(parts[i].to_string());
            i += 1;
        }
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names_are_renamed() {
        assert_eq!(
            canonical_name("features.denseblock1.denselayer1.norm.1.weight"),
            "features.denseblock1.denselayer1.norm1.weight"
        );
        assert_eq!(
            canonical_name("module.features.denseblock2.denselayer10.conv.2.weight"),
            "features.denseblock2.denselayer10.conv2.weight"
        );
        assert_eq!(
            canonical_name("features.transition1.norm.weight"),
            "features.transition1.norm.weight"
        );
    }
}
