//! Weight formats: safetensors (read and write) and PyTorch `.pth` checkpoints (read),
//! with PyTorch/torchvision state-dict names.
//!
//! Names are torchvision's (`features.denseblock1.denselayer1.norm1.weight`, …); the CIFAR
//! family's final norm is `features.norm_final`. Loading is all or nothing: missing,
//! unexpected and wrongly shaped tensors are collected and reported together, and the
//! network is left untouched unless every tensor fits.

pub mod pth;

use crate::densenet::DenseNet;
use crate::nn::params::TensorTable;
use crate::util::tensor::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why weights could not be read, written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The `.pth` reader failed.
    #[error(transparent)]
    Pth(#[from] pth::PthError),
    /// A tensor has a dtype the engine cannot use.
    #[error("{path}: tensor '{name}' has dtype {dtype}; expected a float or integer type")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// The tensors do not match the model; nothing was loaded.
    #[error("{source_name} does not match model {model}; nothing was loaded:\n  {}\n\
             hint: check --model and --classes against how the weights were made", problems.join("\n  "))]
    Mismatch {
        /// Where the tensors came from.
        source_name: String,
        /// The model.
        model: String,
        /// One line per missing, unexpected or wrongly shaped tensor.
        problems: Vec<String>,
    },
}

/// A tensor read from a file, with the dtype it was stored in.
#[derive(Clone, Debug)]
pub struct NamedTensor {
    /// Name in the file.
    pub name: String,
    /// Values converted to f32.
    pub tensor: Tensor,
    /// Stored dtype, lower case (`float32`, `int64`, …).
    pub dtype: String,
}

/// The tensors and metadata of a safetensors file, in file order.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// Tensors.
    pub tensors: Vec<NamedTensor>,
    /// `__metadata__` strings.
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads every tensor of a safetensors file, converting floating and integer dtypes to f32.
pub fn read_safetensors(path: &Path) -> Result<TensorFile, WeightsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    parse_safetensors(&bytes, path)
}

/// Parses safetensors bytes; `path` names the source in errors.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<TensorFile, WeightsError> {
    let fmt = |message: String| WeightsError::Format {
        path: path.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| fmt(e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| fmt(e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    // keep the file's order (offsets), not the hash map's
    let mut views = st.tensors();
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut tensors = Vec::with_capacity(views.len());
    for (name, v) in views {
        let d = v.data();
        let (data, dtype): (Vec<f32>, &str) = match v.dtype() {
            Dtype::F32 => (le::<4>(d).map(f32::from_le_bytes).collect(), "float32"),
            Dtype::F64 => (
                le::<8>(d).map(|b| f64::from_le_bytes(b) as f32).collect(),
                "float64",
            ),
            Dtype::I64 => (
                le::<8>(d).map(|b| i64::from_le_bytes(b) as f32).collect(),
                "int64",
            ),
            Dtype::I32 => (
                le::<4>(d).map(|b| i32::from_le_bytes(b) as f32).collect(),
                "int32",
            ),
            Dtype::U8 => (d.iter().map(|&b| b as f32).collect(), "uint8"),
            other => {
                return Err(WeightsError::Dtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        tensors.push(NamedTensor {
            name,
            tensor: Tensor::new(v.shape().to_vec(), data),
            dtype: dtype.to_string(),
        });
    }
    Ok(TensorFile { tensors, metadata })
}

fn le<const N: usize>(d: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    d.chunks_exact(N).map(|c| {
        let mut b = [0u8; N];
        b.copy_from_slice(c);
        b
    })
}

/// Writes f32 tensors (and i64 ones, given as `(name, shape, values)`) to a safetensors
/// file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    int64: &[(String, Vec<usize>, Vec<i64>)],
    metadata: HashMap<String, String>,
) -> Result<(), WeightsError> {
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        bufs.push((name.clone(), Dtype::F32, t.shape.clone(), bytes));
    }
    for (name, shape, v) in int64 {
        let bytes = v.iter().flat_map(|v| v.to_le_bytes()).collect();
        bufs.push((name.clone(), Dtype::I64, shape.clone(), bytes));
    }
    let fmt = |message: String| WeightsError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut views = Vec::new();
    for (name, dtype, shape, bytes) in &bufs {
        let v = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| fmt(e.to_string()))?;
        views.push((name.clone(), v));
    }
    let meta = (!metadata.is_empty()).then_some(metadata);
    let bytes = safetensors::serialize(views, meta).map_err(|e| fmt(e.to_string()))?;
    crate::util::atomic::write(path, &bytes).map_err(io_err(path))
}

/// Reads a checkpoint in either format: a zip archive (`PK` magic) is a PyTorch `.pth`
/// file (no metadata), anything else is read as safetensors.
pub fn read_checkpoint(path: &Path) -> Result<TensorFile, WeightsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    if bytes.starts_with(b"PK\x03\x04") {
        let what = path.display().to_string();
        let tensors = pth::read_pth_bytes(&bytes, &what)?
            .into_iter()
            .map(|t| NamedTensor {
                name: t.name,
                tensor: Tensor::new(t.shape, t.data),
                dtype: t.dtype,
            })
            .collect();
        return Ok(TensorFile {
            tensors,
            metadata: HashMap::new(),
        });
    }
    parse_safetensors(&bytes, path)
}

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

/// Every parameter and running statistic of a model as `(state-dict name, tensor)`, from
/// its tables and flat buffers.
pub fn state_dict(
    params: (&TensorTable, &[f32]),
    stats: (&TensorTable, &[f32]),
) -> Vec<(String, Tensor)> {
    let p = params.0.entries().iter().map(|e| (e, params.1));
    let s = stats.0.entries().iter().map(|e| (e, stats.1));
    p.chain(s)
        .map(|(e, buf)| {
            (
                e.name.clone(),
                Tensor::new(e.shape.clone(), buf[e.range()].to_vec()),
            )
        })
        .collect()
}

/// Where each of a model's tensors comes from: `(range, is_param, data)`, the range in the
/// parameter buffer (`is_param`) or the statistics buffer.
pub type LoadPlan<'a> = Vec<(std::ops::Range<usize>, bool, &'a [f32])>;

/// Matches named tensors against a model's tables: all parameters and running statistics
/// must be present with the right shapes (`num_batches_tracked` and `optim.*` entries are
/// ignored). On any mismatch every problem is reported and nothing should be loaded.
pub fn match_tensors<'a>(
    params: &TensorTable,
    stats: &TensorTable,
    tensors: &'a [NamedTensor],
    source: &str,
    model: &str,
) -> Result<LoadPlan<'a>, WeightsError> {
    let mut by_name: HashMap<String, &NamedTensor> = HashMap::new();
    for t in tensors {
        // integer bookkeeping, and optimizer state stored beside the weights in a
        // training checkpoint (`optim.momentum`)
        if t.name.ends_with("num_batches_tracked") || t.name.starts_with("optim.") {
            continue;
        }
        by_name.insert(canonical_name(&t.name), t);
    }
    let mut problems = Vec::new();
    let mut plan = Vec::new();
    for (table, is_param) in [(params, true), (stats, false)] {
        for e in table.entries() {
            match by_name.remove(&e.name) {
                None => problems.push(format!("missing: {} {:?}", e.name, e.shape)),
                Some(t) if t.tensor.shape != e.shape => problems.push(format!(
                    "wrong shape: {} is {:?} in the file, the model expects {:?}",
                    e.name, t.tensor.shape, e.shape
                )),
                Some(t) => plan.push((e.range(), is_param, t.tensor.data.as_slice())),
            }
        }
    }
    let mut unexpected: Vec<_> = by_name.into_iter().collect();
    unexpected.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in unexpected {
        problems.push(format!("unexpected: {name} {:?}", t.tensor.shape));
    }
    if !problems.is_empty() {
        return Err(WeightsError::Mismatch {
            source_name: source.to_string(),
            model: model.to_string(),
            problems,
        });
    }
    Ok(plan)
}

impl DenseNet {
    /// Every parameter and running statistic as `(state-dict name, tensor)`.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        state_dict(
            (&self.arch.params, &self.params),
            (&self.arch.stats, &self.stats),
        )
    }

    /// Loads named tensors (all parameters and running statistics must be present with the
    /// right shapes; `num_batches_tracked` and `optim.*` entries are ignored). On any
    /// mismatch nothing is changed and every problem is reported.
    pub fn load_tensors(
        &mut self,
        tensors: &[NamedTensor],
        source: &str,
    ) -> Result<(), WeightsError> {
        let plan = match_tensors(
            &self.arch.params,
            &self.arch.stats,
            tensors,
            source,
            &self.arch.config.name,
        )?;
        for (range, is_param, data) in plan {
            let dst = if is_param {
                &mut self.params[range]
            } else {
                &mut self.stats[range]
            };
            dst.copy_from_slice(data);
        }
        Ok(())
    }

    /// Loads a `.safetensors` or `.pth` file.
    pub fn load(&mut self, path: &Path) -> Result<(), WeightsError> {
        let file = read_checkpoint(path)?;
        self.load_tensors(&file.tensors, &path.display().to_string())
    }

    /// Saves parameters and running statistics to safetensors (atomically), with the model
    /// configuration as JSON in the metadata under `config`.
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        let mut meta = HashMap::new();
        meta.insert(
            "config".to_string(),
            serde_json::to_string(&self.arch.config).unwrap_or_default(),
        );
        meta.insert("format".to_string(), "densenet-rs/1".to_string());
        write_safetensors(path, &self.state_dict(), &[], meta)
    }
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
