//! Data sets for the DenseNet engine.
//!
//! Readers for the files each publisher distributes (nothing is downloaded):
//!
//! | kind | module | files in the directory the user names |
//! |---|---|---|
//! | CIFAR-10 / CIFAR-100 | [`cifar`] | `data_batch_{1..5}.bin`, `test_batch.bin`, `batches.meta.txt` / `train.bin`, `test.bin`, `{fine,coarse}_label_names.txt` |
//! | SVHN (cropped digits) | [`svhn`] (MAT5 reader in [`mat5`]) | `train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat` |
//! | MNIST, Fashion-MNIST | [`idx`] | `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-…` (optionally `.gz`) |
//! | image folder (ImageNet layout) | [`folder`] | `root/{train,val}/<class>/<image>.{png,jpg,jpeg}` or `root/<class>/…`, decoded lazily |
//! | digits (built in) | [`digits`] | embedded in the binary (UCI 8x8 digits) |
//!
//! In-memory data sets are a [`Dataset`] (u8 pixels, image-major CHW); an image folder is an
//! [`ImageFolder`]; [`load`] returns either as a [`Source`]. Augmentation and normalisation are in
//! [`augment`], batching and the background loader in [`pipeline`].
//!
//! ```ignore
//! use std::sync::Arc;
//! use densenet::data::{self, DatasetKind, Split, Transform, Loader, LoaderConfig};
//! # fn main() -> Result<(), data::DataError> {
//! let train = Arc::new(data::load(DatasetKind::Cifar10, Some("cifar-10-batches-bin".as_ref()), Split::Train)?);
//! let tf = Transform::preset(DatasetKind::Cifar10, true, &train)?;
//! let loader = Loader::new(train.clone(), None, tf, LoaderConfig { batch_size: 64, seed: 1, ..Default::default() })?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?; // batch.images: f32 NCHW, batch.labels: u32
//! }
//! # Ok(()) }
//! ```

pub mod augment;
pub mod cifar;
pub mod digits;
pub mod folder;
pub mod idx;
pub mod mat5;
pub mod pipeline;
pub mod svhn;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use augment::{Geometry, Image, Normalize, Rng, Transform};
pub use folder::ImageFolder;
pub use pipeline::{
    holdout_fraction, holdout_split, make_batch, Batch, EpochIter, Loader, LoaderConfig,
};

/// Errors from reading a data set or preparing batches.
///
/// Messages name the file, the place in it (record and/or byte offset), what was expected and
/// what was found, with a hint where one helps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or directory the data set needs does not exist.
    #[error("{}: not found{}", .path.display(), fmt_hint(.hint))]
    NotFound {
        /// The path that was looked for.
        path: PathBuf,
        /// What to do about it, if known.
        hint: Option<String>,
    },
    /// An I/O error other than "not found" while reading a file or directory.
    #[error("{}: cannot read: {source}", .path.display())]
    Io {
        /// The file or directory being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file's content is not in the expected format (truncated, corrupt, wrong kind of file).
    #[error("{}: {location}: expected {expected}, found {found}{}", .path.display(), fmt_hint(.hint))]
    Format {
        /// The file.
        path: PathBuf,
        /// Where in the file, e.g. `record 17 (offset 52241)` or `offset 12`.
        location: String,
        /// What the reader expected there.
        expected: String,
        /// What it found.
        found: String,
        /// What to do about it, if known.
        hint: Option<String>,
    },
    /// A label is not a valid class index.
    #[error("{}: {location}: label {label} is out of range: expected {expected}", .path.display())]
    Label {
        /// The file.
        path: PathBuf,
        /// Where in the file, e.g. `record 17 (offset 52241)`.
        location: String,
        /// The label as stored in the file.
        label: String,
        /// The valid range.
        expected: String,
    },
    /// An image in an image folder could not be decoded.
    #[error("{}: cannot decode image: {}", .path.display(), one_line(.source))]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// An invalid argument or configuration (bad index, unsupported split, bad transform).
    #[error("{0}")]
    Config(String),
    /// The background loader thread panicked.
    #[error("data loader thread failed: {0}")]
    Worker(String),
}

/// `e`'s message on one line (decoders end some messages with a newline).
fn one_line(e: &dyn fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn fmt_hint(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!(" (hint: {h})"),
        None => String::new(),
    }
}

impl DataError {
    /// A [`DataError::Format`] without a hint.
    pub(crate) fn format(
        path: &Path,
        location: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            location: location.into(),
            expected: expected.into(),
            found: found.into(),
            hint: None,
        }
    }

    /// Adds (or replaces) the hint of a `Format` or `NotFound` error; other errors are returned
    /// unchanged.
    pub(crate) fn with_hint(mut self, text: impl Into<String>) -> Self {
        match &mut self {
            DataError::Format { hint, .. } | DataError::NotFound { hint, .. } => {
                *hint = Some(text.into())
            }
            _ => {}
        }
        self
    }

    /// Wraps an I/O error on `path`, turning "not found" into [`DataError::NotFound`].
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
                hint: None,
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// `record R (offset O)`, the location of a fixed-size record.
pub(crate) fn record_at(record: u64, offset: u64) -> String {
    format!("record {record} (offset {offset})")
}

/// Bytes as hex with their printable-ASCII reading, e.g. `bytes 50 4b 03 04 ("PK..")`.
pub(crate) fn show_bytes(b: &[u8]) -> String {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    let text: String = b
        .iter()
        .map(|&x| {
            if x.is_ascii_graphic() || x == b' ' {
                x as char
            } else {
                '.'
            }
        })
        .collect();
    format!("bytes {} (\"{text}\")", hex.join(" "))
}

/// `offset O`.
pub(crate) fn offset_at(offset: u64) -> String {
    format!("offset {offset}")
}

/// Which part of a data set to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set.
    Train,
    /// The test set (for an image folder: `val/`, or `test/` when there is no `val/`).
    Test,
    /// SVHN's additional training images (`extra_32x32.mat`); only SVHN has it.
    Extra,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
            Split::Extra => "extra",
        })
    }
}

/// Which CIFAR-100 labels to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LabelKind {
    /// The 100 fine classes (the default).
    #[default]
    Fine,
    /// The 20 coarse superclasses.
    Coarse,
}

/// The data sets this module can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// CIFAR-10, binary version.
    Cifar10,
    /// CIFAR-100, binary version, with fine or coarse labels.
    Cifar100(LabelKind),
    /// SVHN cropped digits (`*_32x32.mat`).
    Svhn,
    /// MNIST (IDX files).
    Mnist,
    /// Fashion-MNIST (IDX files).
    FashionMnist,
    /// An image folder in ImageNet's layout, `root/{train,val}/<class>/<image>`.
    ImageFolder,
    /// The built-in 8x8 digits set (UCI), embedded in the binary.
    Digits,
}

impl DatasetKind {
    /// The canonical name, as accepted by [`FromStr`]: `cifar10`, `cifar100`, `cifar100-coarse`,
    /// `svhn`, `mnist`, `fashion-mnist`, `imagenet`, `digits`.
    pub fn name(&self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100(LabelKind::Fine) => "cifar100",
            DatasetKind::Cifar100(LabelKind::Coarse) => "cifar100-coarse",
            DatasetKind::Svhn => "svhn",
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::ImageFolder => "imagenet",
            DatasetKind::Digits => "digits",
        }
    }

    /// The number of classes, where the format fixes it (`None` for an image folder).
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            DatasetKind::Cifar10 | DatasetKind::Svhn | DatasetKind::Mnist => Some(10),
            DatasetKind::FashionMnist | DatasetKind::Digits => Some(10),
            DatasetKind::Cifar100(LabelKind::Fine) => Some(100),
            DatasetKind::Cifar100(LabelKind::Coarse) => Some(20),
            DatasetKind::ImageFolder => None,
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    /// Parses a name case-insensitively; `-` and `_` are interchangeable and optional
    /// (`cifar-10`, `CIFAR10`, `fashion_mnist`, `image-folder`, `folder`, `imagenet`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(match key.as_str() {
            "cifar10" => DatasetKind::Cifar10,
            "cifar100" | "cifar100fine" => DatasetKind::Cifar100(LabelKind::Fine),
            "cifar100coarse" => DatasetKind::Cifar100(LabelKind::Coarse),
            "svhn" => DatasetKind::Svhn,
            "mnist" => DatasetKind::Mnist,
            "fashionmnist" | "fmnist" => DatasetKind::FashionMnist,
            "imagenet" | "imagefolder" | "folder" => DatasetKind::ImageFolder,
            "digits" => DatasetKind::Digits,
            _ => {
                return Err(DataError::Config(format!(
                    "unknown data set '{s}': expected one of cifar10, cifar100, cifar100-coarse, \
                     svhn, mnist, fashion-mnist, folder (root/<class>/<image>), digits"
                )))
            }
        })
    }
}

/// An in-memory data set of u8 images, all of one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Name, e.g. `cifar10-train`.
    pub name: String,
    /// Channels per image (3 for RGB, 1 for grey).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// `len() * channels * height * width` bytes, image-major, each image CHW (planes, rows,
    /// columns).
    pub pixels: Vec<u8>,
    /// One class index per image, each `< classes.len()`.
    pub labels: Vec<u32>,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// The value of a full-intensity pixel: 255, or 16 for the digits set.
    pub max_value: f32,
}

impl Dataset {
    /// Builds a data set, checking that `pixels` and `labels` agree with the shape and that every
    /// label is a class index.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<String>,
        channels: usize,
        height: usize,
        width: usize,
        pixels: Vec<u8>,
        labels: Vec<u32>,
        classes: Vec<String>,
        max_value: f32,
    ) -> Result<Self, DataError> {
        let name = name.into();
        let per = channels * height * width;
        if per == 0 || pixels.len() != labels.len() * per {
            return Err(DataError::Config(format!(
                "data set {name}: {} pixel bytes do not hold {} images of {channels}x{height}x{width}",
                pixels.len(),
                labels.len()
            )));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= classes.len())
        {
            return Err(DataError::Config(format!(
                "data set {name}: image {i} has label {l}, but there are {} classes",
                classes.len()
            )));
        }
        if !(max_value.is_finite() && max_value > 0.0) {
            return Err(DataError::Config(format!(
                "data set {name}: max_value must be > 0"
            )));
        }
        Ok(Dataset {
            name,
            channels,
            height,
            width,
            pixels,
            labels,
            classes,
            max_value,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The CHW bytes of image `i`. Panics if `i >= len()`.
    pub fn pixels_of(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Image `i` as an owned [`Image`], or an error if `i` is out of range.
    pub fn image(&self, i: usize) -> Result<Image, DataError> {
        if i >= self.len() {
            return Err(DataError::Config(format!(
                "index {i} is out of range for data set {} of {} images",
                self.name,
                self.len()
            )));
        }
        Ok(Image {
            channels: self.channels,
            height: self.height,
            width: self.width,
            data: self.pixels_of(i).to_vec(),
        })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Appends another data set of the same shape and classes (e.g. SVHN `train` + `extra`).
    pub fn append(&mut self, other: Dataset) -> Result<(), DataError> {
        if (other.channels, other.height, other.width) != (self.channels, self.height, self.width)
            || other.classes != self.classes
            || other.max_value != self.max_value
        {
            return Err(DataError::Config(format!(
                "cannot append {} ({}x{}x{}, {} classes) to {} ({}x{}x{}, {} classes)",
                other.name,
                other.channels,
                other.height,
                other.width,
                other.classes.len(),
                self.name,
                self.channels,
                self.height,
                self.width,
                self.classes.len()
            )));
        }
        self.pixels.extend_from_slice(&other.pixels);
        self.labels.extend_from_slice(&other.labels);
        self.name = format!("{}+{}", self.name, other.name);
        Ok(())
    }

    /// Per-channel mean and (population) standard deviation of `pixel / max_value` over the
    /// whole set, as used by [`Normalize::from_source`]. Returns zeros for an empty set.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.height * self.width;
        let mut sum = vec![0u64; self.channels];
        let mut sq = vec![0u64; self.channels];
        for img in self.pixels.chunks_exact(self.image_len().max(1)) {
            for (c, p) in img.chunks_exact(plane).enumerate() {
                let (mut s, mut q) = (0u64, 0u64);
                for &v in p {
                    s += v as u64;
                    q += (v as u64) * (v as u64);
                }
                sum[c] += s;
                sq[c] += q;
            }
        }
        let count = (self.len() * plane) as f64;
        let m = self.max_value as f64;
        let mut mean = vec![0.0; self.channels];
        let mut std = vec![0.0; self.channels];
        if count > 0.0 {
            for c in 0..self.channels {
                let mu = sum[c] as f64 / count;
                let var = (sq[c] as f64 / count - mu * mu).max(0.0);
                mean[c] = (mu / m) as f32;
                std[c] = (var.sqrt() / m) as f32;
            }
        }
        (mean, std)
    }
}

/// A data set as returned by [`load`]: in memory, or an image folder decoded on demand.
#[derive(Clone, Debug)]
pub enum Source {
    /// Images held in memory.
    Memory(Dataset),
    /// Images decoded from files when asked for.
    Folder(ImageFolder),
}

impl Source {
    /// The data set's name.
    pub fn name(&self) -> &str {
        match self {
            Source::Memory(d) => &d.name,
            Source::Folder(f) => &f.name,
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels().len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label of every image (known without decoding).
    pub fn labels(&self) -> &[u32] {
        match self {
            Source::Memory(d) => &d.labels,
            Source::Folder(f) => &f.labels,
        }
    }

    /// Class names, indexed by label.
    pub fn classes(&self) -> &[String] {
        match self {
            Source::Memory(d) => &d.classes,
            Source::Folder(f) => &f.classes,
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes().len()
    }

    /// The value of a full-intensity pixel (255, or 16 for digits).
    pub fn max_value(&self) -> f32 {
        match self {
            Source::Memory(d) => d.max_value,
            Source::Folder(_) => 255.0,
        }
    }

    /// Channels per image: fixed for a data set in memory, 3 (RGB) for an image folder.
    pub fn channels(&self) -> usize {
        match self {
            Source::Memory(d) => d.channels,
            Source::Folder(_) => 3,
        }
    }

    /// Image `i` (decoding it, for an image folder).
    pub fn image(&self, i: usize) -> Result<Image, DataError> {
        match self {
            Source::Memory(d) => d.image(i),
            Source::Folder(f) => f.image(i),
        }
    }

    /// The in-memory data set, if this is one.
    pub fn as_dataset(&self) -> Option<&Dataset> {
        match self {
            Source::Memory(d) => Some(d),
            Source::Folder(_) => None,
        }
    }

    /// The image folder, if this is one.
    pub fn as_folder(&self) -> Option<&ImageFolder> {
        match self {
            Source::Memory(_) => None,
            Source::Folder(f) => Some(f),
        }
    }

    /// Matches this (validation or test) split's classes to `classes`, those of the training
    /// split or of a model, by name: each label is mapped to the index of its class name in
    /// `classes`, and `classes` becomes this source's class list. A class `classes` lacks is
    /// an error naming it (a model cannot predict a class it was not trained on); a class of
    /// `classes` without images here is fine.
    pub fn align_classes(&mut self, classes: &[String]) -> Result<(), DataError> {
        if self.classes() == classes {
            return Ok(());
        }
        let map: Vec<Option<u32>> = self
            .classes()
            .iter()
            .map(|c| classes.iter().position(|t| t == c).map(|i| i as u32))
            .collect();
        let used = {
            let mut u = vec![false; map.len()];
            for &l in self.labels() {
                if let Some(x) = u.get_mut(l as usize) {
                    *x = true;
                }
            }
            u
        };
        let missing: Vec<&str> = self
            .classes()
            .iter()
            .zip(&map)
            .zip(&used)
            .filter(|((_, m), &u)| m.is_none() && u)
            .map(|((c, _), _)| c.as_str())
            .collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(10).map(|c| format!("'{c}'")).collect();
            let more = if missing.len() > 10 {
                format!(" and {} more", missing.len() - 10)
            } else {
                String::new()
            };
            return Err(DataError::Config(format!(
                "{}: {} class{} {}{more} not in the training split's {} classes ({}); give every \
                 evaluation class a directory in the training split too",
                self.name(),
                missing.len(),
                if missing.len() == 1 { "" } else { "es" },
                shown.join(", "),
                classes.len(),
                preview(classes)
            )));
        }
        let remap = |labels: &mut Vec<u32>| {
            for l in labels.iter_mut() {
                // every used label has a mapping (checked above)
                *l = map.get(*l as usize).copied().flatten().unwrap_or(*l);
            }
        };
        match self {
            Source::Memory(d) => {
                remap(&mut d.labels);
                d.classes = classes.to_vec();
            }
            Source::Folder(f) => {
                remap(&mut f.labels);
                f.classes = classes.to_vec();
            }
        }
        Ok(())
    }
}

/// The first few of `names`, quoted, for messages.
fn preview(names: &[String]) -> String {
    let mut s: Vec<String> = names.iter().take(6).map(|c| format!("'{c}'")).collect();
    if names.len() > 6 {
        s.push("…".into());
    }
    s.join(", ")
}

/// Loads one split of a data set from the directory `dir` holding the publisher's files.
///
/// * `dir` may be `None` only for [`DatasetKind::Digits`], which is embedded; with `Some`, digits
///   are read from `dir/train.bin` / `dir/test.bin` instead.
/// * CIFAR and MNIST readers also look in the subdirectory the publisher's archive unpacks to
///   (`cifar-10-batches-bin/`, `cifar-100-binary/`, `raw/`, ...).
/// * [`Split::Extra`] exists only for SVHN.
/// * For [`DatasetKind::ImageFolder`], `dir` holds `train/` and `val/` (or `test/`), each with
///   one subdirectory per class, or is itself `dir/<class>/<image>`, from which one image in
///   [`folder::FLAT_HOLDOUT_EVERY`] of each class is held out as the test split (see
///   [`folder::open_split`]). Match a test split's classes to the training split's with
///   [`Source::align_classes`].
pub fn load(kind: DatasetKind, dir: Option<&Path>, split: Split) -> Result<Source, DataError> {
    if split == Split::Extra && kind != DatasetKind::Svhn {
        return Err(DataError::Config(format!(
            "data set {kind} has no 'extra' split (only svhn has one)"
        )));
    }
    if kind == DatasetKind::Digits {
        return Ok(Source::Memory(match dir {
            None => digits::load(split)?,
            Some(d) => digits::load_dir(d, split)?,
        }));
    }
    let dir = dir.ok_or_else(|| {
        DataError::Config(format!(
            "data set {kind} needs the directory that holds its files (it is not downloaded)"
        ))
    })?;
    if !dir.is_dir() {
        return Err(DataError::NotFound {
            path: dir.to_path_buf(),
            hint: Some(format!("give the directory that holds the {kind} files")),
        });
    }
    Ok(match kind {
        DatasetKind::Cifar10 => Source::Memory(cifar::load_cifar10(dir, split)?),
        DatasetKind::Cifar100(labels) => Source::Memory(cifar::load_cifar100(dir, split, labels)?),
        DatasetKind::Svhn => Source::Memory(svhn::load_svhn(dir, split)?),
        DatasetKind::Mnist => Source::Memory(idx::load_mnist(dir, split, false)?),
        DatasetKind::FashionMnist => Source::Memory(idx::load_mnist(dir, split, true)?),
        DatasetKind::ImageFolder => Source::Folder(folder::open_split(dir, split)?),
        DatasetKind::Digits => unreachable!("handled above"),
    })
}

/// The evaluation transform of `kind` ([`Transform::preset`] without augmentation) for
/// evaluating on `test`, opening the training split only where the transform needs its
/// statistics (Fashion-MNIST): evaluating CIFAR needs only its test batch.
pub fn eval_transform(
    kind: DatasetKind,
    dir: Option<&Path>,
    test: &Source,
) -> Result<Transform, DataError> {
    if kind == DatasetKind::FashionMnist {
        return Transform::preset(kind, false, &load(kind, dir, Split::Train)?);
    }
    Transform::preset(kind, false, test)
}

/// Reads a whole file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Finds the first of `names` that is a file in `dir` or in one of `subdirs` of `dir`
/// (searched in order, `""` meaning `dir` itself). The error names the first candidate and
/// lists what was tried.
pub(crate) fn find_file(
    dir: &Path,
    names: &[&str],
    subdirs: &[&str],
) -> Result<PathBuf, DataError> {
    for sub in subdirs {
        for name in names {
            let p = if sub.is_empty() {
                dir.join(name)
            } else {
                dir.join(sub).join(name)
            };
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let tried: Vec<String> = subdirs
        .iter()
        .map(|s| {
            if s.is_empty() {
                ".".to_string()
            } else {
                format!("{s}/")
            }
        })
        .collect();
    Err(DataError::NotFound {
        path: dir.join(names[0]),
        hint: Some(format!(
            "looked for {} in {} of {}",
            names.join(" or "),
            tried.join(", "),
            dir.display()
        )),
    })
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers for the readers' tests: unique temporary directories, and checking what an
    //! error message names.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A fresh, empty temporary directory, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        /// Creates `$TMP/densenet-data-<pid>-<tag>-<n>`.
        pub fn new(tag: &str) -> Self {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let p = std::env::temp_dir()
                .join(format!("densenet-data-{}-{tag}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }

        /// The directory.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Asserts that the error message `e` holds each of `parts`.
    pub fn assert_mentions(e: &str, parts: &[&str]) {
        for part in parts {
            assert!(e.contains(part), "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in [
            DatasetKind::Cifar10,
            DatasetKind::Cifar100(LabelKind::Fine),
            DatasetKind::Cifar100(LabelKind::Coarse),
            DatasetKind::Svhn,
            DatasetKind::Mnist,
            DatasetKind::FashionMnist,
            DatasetKind::ImageFolder,
            DatasetKind::Digits,
        ] {
            assert_eq!(k.name().parse::<DatasetKind>().unwrap(), k);
        }
        assert_eq!(
            "CIFAR-10".parse::<DatasetKind>().unwrap(),
            DatasetKind::Cifar10
        );
        assert_eq!(
            "Fashion_MNIST".parse::<DatasetKind>().unwrap(),
            DatasetKind::FashionMnist
        );
        assert!("cifar11".parse::<DatasetKind>().is_err());
    }

    #[test]
    fn dataset_new_validates() {
        let classes = vec!["a".to_string(), "b".to_string()];
        assert!(Dataset::new("x", 1, 2, 2, vec![0; 8], vec![0, 1], classes.clone(), 255.0).is_ok());
        assert!(
            Dataset::new("x", 1, 2, 2, vec![0; 7], vec![0, 1], classes.clone(), 255.0).is_err()
        );
        let e = Dataset::new("x", 1, 2, 2, vec![0; 8], vec![0, 2], classes, 255.0).unwrap_err();
        assert!(e.to_string().contains("image 1 has label 2"), "{e}");
    }

    #[test]
    fn channel_stats_and_append() {
        let classes = vec!["a".to_string()];
        // 2 channels of 2 pixels: channel 0 = {0, 255}, channel 1 = {255, 255}
        let mut d = Dataset::new(
            "x",
            2,
            1,
            2,
            vec![0, 255, 255, 255],
            vec![0],
            classes.clone(),
            255.0,
        )
        .unwrap();
        let (m, s) = d.channel_stats();
        assert!((m[0] - 0.5).abs() < 1e-6 && (s[0] - 0.5).abs() < 1e-6);
        assert!((m[1] - 1.0).abs() < 1e-6 && s[1].abs() < 1e-6);
        let e = Dataset::new("y", 2, 1, 2, vec![1, 2, 3, 4], vec![0], classes, 255.0).unwrap();
        d.append(e).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.pixels_of(1), &[1, 2, 3, 4]);
        assert!(d.image(2).is_err());
    }

    #[test]
    fn load_requires_dir_and_extra_only_for_svhn() {
        let e = load(DatasetKind::Cifar10, None, Split::Train).unwrap_err();
        assert!(e.to_string().contains("needs the directory"), "{e}");
        let e = load(DatasetKind::Mnist, Some(Path::new(".")), Split::Extra).unwrap_err();
        assert!(e.to_string().contains("no 'extra' split"), "{e}");
        let e = load(
            DatasetKind::Cifar10,
            Some(Path::new("/nonexistent/dir")),
            Split::Train,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir: not found"), "{e}");
        let d = load(DatasetKind::Digits, None, Split::Test).unwrap();
        assert_eq!(d.len(), 297);
    }
}
