//! `densenet embed`: per-image features of image files or folders (the globally pooled
//! features, or a dense block's maps), prepared as in training, run in batches and written
//! as safetensors, NumPy `.npy` or CSV. The library call is [`crate::features::extract`].

use super::model_args::WeightsArgs;
use crate::data::folder::image_files;
use crate::features::{extract, feature_shape, Layer};
use crate::model::memory::{self, Use};
use crate::nn::MemoryMode;
use crate::prepare::InputPrep;
use crate::util::atomic::{check_output, write_output};
use crate::util::paths::extension_lowercase;
use crate::util::tensor::Tensor;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Arguments of `densenet embed`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "Examples:\n  \
    densenet embed --weights runs/<run>/best.safetensors photos/ \\\n    \
    --out features.npy\n  \
    densenet embed --weights densenet121.pth --model densenet121 a.jpg b.jpg \\\n    \
    --layer block3 --out maps.safetensors\n\n\
    Images are prepared as `predict` prepares them (see `densenet summary --weights FILE`). \
    Rows follow the images in the order given, a folder's files sorted by path. \
    safetensors: tensor `features` [N, ...] and the image paths (`images`, a JSON list), \
    layer, model and preprocessing in the metadata; .npy: float32 [N, ...], no names; \
    .csv: a header `image,f0,f1,…`, then one row per image.")]
pub struct Args {
    /// Image files (PNG or JPEG), or folders of them (searched recursively).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub source: WeightsArgs,
    /// Which features: pool (after the final BN-ReLU, globally average-pooled: the
    /// classifier's input), blockN (DenseNets: dense block N's output, C×H×W per image) or
    /// stageN (pre-activation ResNets: stage N's output).
    #[arg(long, default_value = "pool", value_name = "LAYER")]
    pub layer: String,
    /// Output file: .safetensors, .npy or .csv (by its extension).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Images per batch, 1 to 65536.
    #[arg(long, default_value_t = 32, value_parser = super::values::batch_size())]
    pub batch_size: usize,
    /// Print one JSON object (what was written).
    #[arg(long)]
    pub json: bool,
}

/// The output formats, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    Safetensors,
    Npy,
    Csv,
}

impl Format {
    fn of(path: &Path) -> anyhow::Result<Self> {
        match extension_lowercase(path).as_deref() {
            Some("safetensors") => Ok(Format::Safetensors),
            Some("npy") => Ok(Format::Npy),
            Some("csv") => Ok(Format::Csv),
            _ => anyhow::bail!(
                "--out {}: expected a .safetensors, .npy or .csv file",
                path.display()
            ),
        }
    }
}

/// `densenet embed --json`.
#[derive(serde::Serialize)]
struct Report {
    out: PathBuf,
    format: Format,
    model: String,
    layer: String,
    images: usize,
    /// `[N, ...]`: images, then the per-image feature shape.
    shape: Vec<usize>,
    preprocess: InputPrep,
    seconds: f64,
    images_per_second: f64,
}

/// Runs `densenet embed`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let format = Format::of(&a.out)?;
    // parsed here rather than by clap: a bad name is one line, as the model's missing
    // layers are
    let layer: Layer = a.layer.parse()?;
    let mut m = a.source.load()?;
    let cfg = m.net.model_config();
    let shape = feature_shape(&cfg, layer)?;
    let prep = InputPrep::new(&cfg, m.preprocess.as_ref(), &a.source.weights)?;
    let images = list_images(&a.images)?;
    // before any work: the output is none of the inputs, nor a special file
    let inputs: Vec<(&str, &Path)> =
        std::iter::once(("the --weights file", a.source.weights.as_path()))
            .chain(images.iter().map(|p| ("the image", p.as_path())))
            .collect();
    let out_err = || format!("--out {}", a.out.display());
    check_output(&a.out, &inputs).with_context(out_err)?;
    let (n, d) = (images.len(), shape.iter().product::<usize>());
    let batch = a.batch_size.min(n);
    // the features are gathered, then written (and copied once more for safetensors)
    let gathered = 2 * (n as u128) * (d as u128) * 4;
    memory::check(
        &cfg,
        &[Use::eval(batch)],
        gathered,
        &format!("{n} × {d} features gathered"),
    )
    .with_context(|| a.source.weights.display().to_string())?;
    let mut ws = m.net.workspace(batch, MemoryMode::Efficient, false);

    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("embed [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let t = std::time::Instant::now();
    let mut features = Vec::with_capacity(n * d);
    let mut x = vec![0f32; batch * prep.len()];
    for chunk in images.chunks(batch) {
        let x = &mut x[..chunk.len() * prep.len()];
        // decoding and resizing dominate for small models: one image per thread
        chunk
            .par_iter()
            .zip(x.par_chunks_mut(prep.len()))
            .try_for_each(|(path, out)| prep.load_into(path, out))?;
        features.extend(extract(&mut *m.net, &mut ws, x, chunk.len(), layer)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let seconds = t.elapsed().as_secs_f64();

    let mut full = vec![n];
    full.extend(&shape);
    let names: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let bytes = match format {
        Format::Safetensors => {
            let meta = HashMap::from([
                ("images".to_string(), serde_json::to_string(&names)?),
                ("layer".to_string(), layer.to_string()),
                ("model".to_string(), serde_json::to_string(&cfg)?),
                ("preprocess".to_string(), serde_json::to_string(&prep)?),
            ]);
            let tensors = [("features".to_string(), Tensor::new(full.clone(), features))];
            crate::weights::write_safetensors(&a.out, &tensors, &[], meta)?;
            None
        }
        Format::Npy => Some(npy(&full, &features)),
        Format::Csv => Some(csv(&names, &features, d)),
    };
    if let Some(bytes) = bytes {
        write_output(&a.out, &bytes, &inputs).with_context(out_err)?;
    }
    let report = Report {
        out: a.out.clone(),
        format,
        model: cfg.name().to_string(),
        layer: layer.to_string(),
        images: n,
        shape: full,
        preprocess: prep,
        seconds,
        images_per_second: n as f64 / seconds.max(1e-9),
    };
    if a.json {
        return super::print_json(&report);
    }
    eprintln!(
        "wrote {}: {} × {} features ({} of {}), {:.1} images/s",
        a.out.display(),
        super::count(n, "image"),
        d,
        report.layer,
        report.model,
        report.images_per_second
    );
    Ok(())
}

/// The image files named, folders replaced by the image files under them (sorted).
fn list_images(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let found = image_files(p)?;
            anyhow::ensure!(
                !found.is_empty(),
                "{}: no image files ({}) in this folder",
                p.display(),
                crate::data::folder::EXTENSIONS.join(", ")
            );
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// A NumPy `.npy` file (format version 1.0) of little-endian float32 values in C order.
/// The header is a dozen lines of the published format; the crates that write it bring
/// an array type (ndarray) or a general reader this command does not need.
fn npy(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    // a one-element tuple keeps its comma: (5,)
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // magic (6) + version (2) + length (2) + header, padded with spaces and ended by a
    // newline to a multiple of 64 bytes, so the data is aligned
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// CSV: `image,f0,f1,…`, then per image its path (quoted where needed) and its `d`
/// values, each printed so that it parses back to the same f32.
fn csv(names: &[String], data: &[f32], d: usize) -> Vec<u8> {
    use std::fmt::Write;
    let mut s = String::from("image");
    for i in 0..d {
        let _ = write!(s, ",f{i}");
    }
    s.push('\n');
    for (name, row) in names.iter().zip(data.chunks_exact(d)) {
        if name.contains([',', '"', '\n', '\r']) {
            let _ = write!(s, "\"{}\"", name.replace('"', "\"\""));
        } else {
            s.push_str(name);
        }
        for v in row {
            let _ = write!(s, ",{v}");
        }
        s.push('\n');
    }
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header NumPy itself writes for these shapes (`np.save` of float32 arrays),
    /// padded to 64 bytes: written down here, not computed by the code under test.
    #[test]
    fn npy_headers_are_numpys() {
        let b = npy(&[2, 3], &[0.0; 6]);
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let h = std::str::from_utf8(&b[10..10 + len]).unwrap();
        assert_eq!(
            h.trim_end(),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
        );
        assert!(h.ends_with('\n'));
        assert_eq!(b.len(), 10 + len + 24);
        let b = npy(&[7], &[1.5; 7]);
        let len = u16::from_le_bytes([b[8], b[9]]) as usize;
        let h = std::str::from_utf8(&b[10..10 + len]).unwrap();
        assert!(h.contains("'shape': (7,)"), "{h}");
        assert_eq!(&b[10 + len..10 + len + 4], &[0, 0, 0xc0, 0x3f]);
    }

    #[test]
    fn csv_quotes_names_and_keeps_values() {
        let s = csv(
            &["a,b.png".into(), "c.png".into()],
            &[0.1, -2.0, 3e-8, 4.0],
            2,
        );
        let s = String::from_utf8(s).unwrap();
        assert_eq!(s, "image,f0,f1\n\"a,b.png\",0.1,-2\nc.png,0.00000003,4\n");
    }

    #[test]
    fn formats_by_extension() {
        assert_eq!(Format::of(Path::new("x.NPY")).unwrap(), Format::Npy);
        let e = Format::of(Path::new("x.txt")).unwrap_err().to_string();
        assert!(
            e.contains("x.txt") && e.contains(".safetensors, .npy or .csv"),
            "{e}"
        );
    }
}
