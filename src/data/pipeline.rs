//! The input pipeline: batches of f32 NCHW images and u32 labels, a loader that shuffles each
//! epoch and prepares batches on a background thread, and a held-out validation split.
//!
//! Everything random is derived from numbers, never from timing: the epoch's order from
//! `(seed, epoch)`, a batch's seed from `(seed, epoch, batch index)`, and each image's
//! augmentation from `(batch seed, position in the batch)`. So the batches of a run are the same
//! whether made on the background thread, with several decoding threads, or directly with
//! [`Loader::batch`], and a run can resume at any epoch (or batch) exactly.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::augment::{mix_seed, Rng};
use super::{DataError, Image, Source, Transform};

/// Tag mixed into the seed of an epoch's shuffle (batch indices never reach it).
const SHUFFLE_TAG: u64 = u64::MAX;
/// Tag mixed into the seed of a hold-out split.
const HOLDOUT_TAG: u64 = u64::MAX - 1;

/// A batch: `images` is f32 NCHW, `shape = [n, c, h, w]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `n * c * h * w` values, image-major, each image CHW, normalised.
    pub images: Vec<f32>,
    /// The label of each image.
    pub labels: Vec<u32>,
    /// The source index of each image.
    pub indices: Vec<usize>,
    /// `[n, c, h, w]`.
    pub shape: [usize; 4],
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Makes a batch of the source images at `indices`, transformed by `transform`; image `p` of the
/// batch uses the RNG seeded by `(seed, p)`. `workers > 1` decodes/augments on that many scoped
/// threads (same result). All images must come out the same shape.
pub fn make_batch(
    source: &Source,
    indices: &[usize],
    transform: &Transform,
    seed: u64,
    workers: usize,
) -> Result<Batch, DataError> {
    make_batch_at(source, indices, transform, seed, workers, 0)
}

/// [`make_batch`] of the images at positions `first..` of a batch (a process's share of
/// it): image `p` is augmented as position `first + p` is in the whole batch.
fn make_batch_at(
    source: &Source,
    indices: &[usize],
    transform: &Transform,
    seed: u64,
    workers: usize,
    first: usize,
) -> Result<Batch, DataError> {
    let n = indices.len();
    if n == 0 {
        return Err(DataError::Config("a batch needs at least one image".into()));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= source.len()) {
        return Err(DataError::Config(format!(
            "index {bad} is out of range for data set {} of {} images",
            source.name(),
            source.len()
        )));
    }
    let process = |p: usize| -> Result<Image, DataError> {
        let img = source.image(indices[p])?;
        transform.apply(img, &mut Rng::from_parts(&[seed, (first + p) as u64]))
    };
    let workers = workers.clamp(1, n);
    let images: Vec<Image> = if workers == 1 {
        (0..n).map(process).collect::<Result<_, _>>()?
    } else {
        let chunk = n.div_ceil(workers);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|start| {
                    let process = &process;
                    s.spawn(move || {
                        (start..(start + chunk).min(n))
                            .map(process)
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(n);
            for h in handles {
                match h.join() {
                    Ok(part) => all.extend(part?),
                    Err(p) => return Err(DataError::Worker(panic_message(&*p))),
                }
            }
            Ok(all)
        })?
    };
    let (c, h, w) = (images[0].channels, images[0].height, images[0].width);
    let per = c * h * w;
    let mut out = vec![0f32; n * per];
    for (p, (img, dst)) in images
        .iter()
        .zip(out.chunks_exact_mut(per.max(1)))
        .enumerate()
    {
        if (img.channels, img.height, img.width) != (c, h, w) {
            return Err(DataError::Config(format!(
                "image {} of {} comes out {}x{}x{} but the batch's first image is {c}x{h}x{w}; \
                 use a transform with a fixed output size (e.g. a crop)",
                indices[p],
                source.name(),
                img.channels,
                img.height,
                img.width
            )));
        }
        transform.normalize.write(img, source.max_value(), dst)?;
    }
    let labels = indices.iter().map(|&i| source.labels()[i]).collect();
    Ok(Batch {
        images: out,
        labels,
        indices: indices.to_vec(),
        shape: [n, c, h, w],
    })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// Splits `0..n` into (train, validation) index lists, sorted, with `val_len` validation indices
/// chosen by a permutation seeded by `seed` (the same for the same `n`, `val_len`, `seed`).
pub fn holdout_split(
    n: usize,
    val_len: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    if val_len > n {
        return Err(DataError::Config(format!(
            "cannot hold out {val_len} of {n} images"
        )));
    }
    let mut perm: Vec<usize> = (0..n).collect();
    Rng::from_parts(&[seed, HOLDOUT_TAG]).shuffle(&mut perm);
    let mut val = perm[..val_len].to_vec();
    let mut train = perm[val_len..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok((train, val))
}

/// [`holdout_split`] with `round(n * fraction)` validation images; `fraction` in `[0, 1)`.
pub fn holdout_fraction(
    n: usize,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(DataError::Config(format!(
            "validation fraction {fraction} is not in [0, 1)"
        )));
    }
    holdout_split(n, (n as f64 * fraction).round() as usize, seed)
}

/// How a [`Loader`] batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Images per batch (the last batch may be smaller unless `drop_last`).
    pub batch_size: usize,
    /// Shuffle every epoch (seeded by `(seed, epoch)`); otherwise index order.
    pub shuffle: bool,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// The run's seed.
    pub seed: u64,
    /// Threads decoding/augmenting within a batch (1 = the loader thread alone).
    pub workers: usize,
    /// Batches prepared ahead of the consumer (the channel bound), at least 1.
    pub prefetch: usize,
    /// Data-parallel training: this process's share `(index, count)` of every batch, the
    /// images `index·n/count .. (index+1)·n/count` of a batch of `n` (each with the
    /// augmentation it has in the whole batch). A last batch of fewer than `count` images
    /// is skipped. `(0, 1)`: the whole batch.
    pub share: (usize, usize),
    /// The fewest images a share may hold: a last batch whose shares would hold fewer is
    /// skipped (a run accumulating gradients over K passes asks for K, so that every
    /// pass has an image). 1: only a last batch smaller than the shares' count is.
    pub min_share: usize,
}

impl Default for LoaderConfig {
    /// Batch 64, shuffled, last batch kept, seed 0, 1 worker, prefetch 2, the whole
    /// batch.
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            shuffle: true,
            drop_last: false,
            seed: 0,
            workers: 1,
            prefetch: 2,
            share: (0, 1),
            min_share: 1,
        }
    }
}

impl LoaderConfig {
    /// For evaluation: in order, no batch dropped.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::default()
        }
    }
}

/// Makes the batches of each epoch of (a subset of) a source; see the module docs.
#[derive(Clone, Debug)]
pub struct Loader {
    source: Arc<Source>,
    indices: Arc<Vec<usize>>,
    transform: Arc<Transform>,
    config: LoaderConfig,
}

impl Loader {
    /// A loader over `indices` of `source` (all of it when `None`).
    pub fn new(
        source: Arc<Source>,
        indices: Option<Vec<usize>>,
        transform: Transform,
        config: LoaderConfig,
    ) -> Result<Self, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::Config("batch size must be at least 1".into()));
        }
        let indices = indices.unwrap_or_else(|| (0..source.len()).collect());
        if let Some(&bad) = indices.iter().find(|&&i| i >= source.len()) {
            return Err(DataError::Config(format!(
                "index {bad} is out of range for data set {} of {} images",
                source.name(),
                source.len()
            )));
        }
        if let Some(d) = source.as_dataset() {
            transform.output_shape(d.channels, d.height, d.width)?;
        } else {
            transform.normalize.check(source.channels())?;
        }
        Ok(Loader {
            source,
            indices: Arc::new(indices),
            transform: Arc::new(transform),
            config,
        })
    }

    /// The source.
    pub fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// The transform.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Number of images per epoch (before `drop_last`).
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Number of batches in an epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.indices.len(), self.config.batch_size);
        let last = n % b;
        let fewest = self.config.share.1.max(1) * self.config.min_share.max(1);
        if self.config.drop_last || last < fewest {
            n / b
        } else {
            n / b + 1
        }
    }

    /// The source indices of epoch `epoch`, in the order they are batched.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(&self.indices, self.config.shuffle, self.config.seed, epoch)
    }

    /// Batch `b` of epoch `epoch`, made on the calling thread (the same as the iterator's).
    pub fn batch(&self, epoch: u64, b: usize) -> Result<Batch, DataError> {
        if b >= self.batches_per_epoch() {
            return Err(DataError::Config(format!(
                "batch {b} is out of range: an epoch has {} batches",
                self.batches_per_epoch()
            )));
        }
        let order = self.epoch_order(epoch);
        batch_of(
            &self.source,
            &order,
            b,
            &self.transform,
            &self.config,
            epoch,
        )
    }

    /// The batches of epoch `epoch`, prepared on a background thread.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` from batch `start` on (to resume mid-epoch).
    pub fn epoch_from(&self, epoch: u64, start: usize) -> EpochIter {
        let total = self.batches_per_epoch();
        let remaining = total.saturating_sub(start);
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let (source, indices, transform, config) = (
            self.source.clone(),
            self.indices.clone(),
            self.transform.clone(),
            self.config.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("data-loader".into())
            .spawn(move || {
                let order = epoch_order(&indices, config.shuffle, config.seed, epoch);
                for b in start..total {
                    let r = batch_of(&source, &order, b, &transform, &config, epoch);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break; // consumer gone, or error delivered
                    }
                }
            });
        match spawned {
            Ok(handle) => EpochIter {
                rx: Some(rx),
                handle: Some(handle),
                remaining,
                pending_error: None,
            },
            Err(e) => EpochIter {
                rx: None,
                handle: None,
                remaining: 0,
                pending_error: Some(DataError::Worker(format!(
                    "cannot start the loader thread: {e}"
                ))),
            },
        }
    }
}

fn epoch_order(indices: &[usize], shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order = indices.to_vec();
    if shuffle {
        Rng::from_parts(&[seed, epoch, SHUFFLE_TAG]).shuffle(&mut order);
    }
    order
}

fn batch_of(
    source: &Source,
    order: &[usize],
    b: usize,
    transform: &Transform,
    config: &LoaderConfig,
    epoch: u64,
) -> Result<Batch, DataError> {
    let lo = b * config.batch_size;
    let hi = (lo + config.batch_size).min(order.len());
    let seed = mix_seed(&[config.seed, epoch, b as u64]);
    let (first, end) = share_of(hi - lo, config.share);
    let indices = &order[lo + first..lo + end];
    make_batch_at(source, indices, transform, seed, config.workers, first)
}

/// The positions `first..end` of a batch of `n` that share `(index, count)` holds.
pub fn share_of(n: usize, (index, count): (usize, usize)) -> (usize, usize) {
    let count = count.max(1);
    (index * n / count, (index + 1) * n / count)
}

/// The batches of one epoch, received from the loader thread (at most `prefetch` ahead).
/// After an error it yields nothing more. Dropping it stops the thread.
pub struct EpochIter {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
    pending_error: Option<DataError>,
}

impl EpochIter {
    fn finish(&mut self) -> Option<DataError> {
        self.rx = None;
        self.remaining = 0;
        match self.handle.take().map(|h| h.join()) {
            Some(Err(p)) => Some(DataError::Worker(panic_message(&*p))),
            _ => None,
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(Ok(b)) => {
                self.remaining = self.remaining.saturating_sub(1);
                Some(Ok(b))
            }
            Ok(Err(e)) => {
                self.finish();
                Some(Err(e))
            }
            Err(_) => self.finish().map(Err),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (
            0,
            Some(self.remaining + self.pending_error.is_some() as usize),
        )
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail, so it ends.
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;
    use crate::data::{digits, Dataset, DatasetKind, Geometry, ImageFolder, Normalize, Split};

    fn digits_source() -> Arc<Source> {
        Arc::new(Source::Memory(digits::load(Split::Test).unwrap()))
    }

    #[test]
    fn shares_of_a_batch_are_the_batch_augmented_alike() {
        let src = digits_source();
        let tf = Transform::preset(DatasetKind::Digits, true, &src).unwrap();
        let loader = |share| {
            let cfg = LoaderConfig {
                batch_size: 64,
                seed: 5,
                share,
                ..Default::default()
            };
            Loader::new(src.clone(), None, tf.clone(), cfg).unwrap()
        };
        let whole = loader((0, 1));
        // 297 = 4·64 + 41: three shares keep the last batch, 64 would not
        assert_eq!(loader((2, 3)).batches_per_epoch(), 5);
        assert_eq!(loader((0, 42)).batches_per_epoch(), 4);
        // shares of at least 13 images (passes of gradient accumulation): 41 < 3·14
        let min_share = |m| LoaderConfig {
            batch_size: 64,
            share: (0, 3),
            min_share: m,
            ..Default::default()
        };
        let with = |m| Loader::new(src.clone(), None, tf.clone(), min_share(m)).unwrap();
        assert_eq!(with(13).batches_per_epoch(), 5);
        assert_eq!(with(14).batches_per_epoch(), 4);
        for b in [0, 4] {
            let want = whole.batch(1, b).unwrap();
            let parts: Vec<Batch> = (0..3)
                .map(|r| loader((r, 3)).batch(1, b).unwrap())
                .collect();
            let cat = |f: fn(&Batch) -> Vec<f32>| parts.iter().flat_map(f).collect::<Vec<f32>>();
            assert_eq!(cat(|p| p.images.clone()), want.images);
            assert_eq!(cat(|p| p.labels.iter().map(|&l| l as f32).collect()), {
                want.labels.iter().map(|&l| l as f32).collect::<Vec<_>>()
            });
            assert_eq!(parts[1].shape[0], want.shape[0] * 2 / 3 - want.shape[0] / 3);
        }
    }

    #[test]
    fn digits_batches_have_the_right_shape_and_values() {
        let src = digits_source();
        let tf = Transform::preset(DatasetKind::Digits, true, &src).unwrap();
        let loader = Loader::new(
            src.clone(),
            None,
            tf,
            LoaderConfig {
                batch_size: 64,
                seed: 3,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(loader.batches_per_epoch(), 5);
        let batches: Vec<Batch> = loader.epoch(0).collect::<Result<_, _>>().unwrap();
        assert_eq!(batches.len(), 5);
        assert_eq!(batches[0].shape, [64, 1, 32, 32]);
        assert_eq!(batches[4].shape, [297 - 256, 1, 32, 32]);
        assert_eq!(batches[0].images.len(), 64 * 1024);
        assert!(batches[0].images.iter().all(|&v| (0.0..=1.0).contains(&v)));
        // pixel (r, c) of the 32x32 input is pixel (r/4, c/4)/16 of the 8x8 image
        let d = src.as_dataset().unwrap();
        let i = batches[1].indices[5];
        let x = &batches[1].images[5 * 1024..6 * 1024];
        for r in 0..32 {
            for c in 0..32 {
                assert_eq!(
                    x[r * 32 + c],
                    d.pixels_of(i)[(r / 4) * 8 + c / 4] as f32 / 16.0
                );
            }
        }
        assert_eq!(batches[1].labels[5], d.labels[i]);
        // each index exactly once per epoch
        let mut all: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        all.sort();
        assert_eq!(all, (0..297).collect::<Vec<_>>());
    }

    fn cifar_like() -> Arc<Source> {
        let n = 50;
        let pixels: Vec<u8> = (0..n * 3 * 32 * 32).map(|i| (i * 31 % 256) as u8).collect();
        let labels = (0..n as u32).map(|i| i % 10).collect();
        let classes = (0..10).map(|i| i.to_string()).collect();
        Arc::new(Source::Memory(
            Dataset::new("c", 3, 32, 32, pixels, labels, classes, 255.0).unwrap(),
        ))
    }

    #[test]
    fn deterministic_resumable_and_thread_independent() {
        let src = cifar_like();
        let tf = Transform::preset(DatasetKind::Cifar10, true, &src).unwrap();
        let cfg = LoaderConfig {
            batch_size: 8,
            seed: 11,
            ..Default::default()
        };
        let loader = Loader::new(src.clone(), None, tf.clone(), cfg.clone()).unwrap();
        let e2: Vec<Batch> = loader.epoch(2).map(|b| b.unwrap()).collect();
        assert_eq!(e2.len(), 7);
        let again: Vec<Batch> = loader.epoch(2).map(|b| b.unwrap()).collect();
        assert_eq!(e2, again);
        // synchronous batches equal the background thread's
        for (b, batch) in e2.iter().enumerate() {
            assert_eq!(&loader.batch(2, b).unwrap(), batch);
        }
        // resume mid-epoch
        let tail: Vec<Batch> = loader.epoch_from(2, 4).map(|b| b.unwrap()).collect();
        assert_eq!(tail, e2[4..]);
        // a fresh loader with more workers and prefetch gives the same batches
        let other = Loader::new(
            src.clone(),
            None,
            tf.clone(),
            LoaderConfig {
                workers: 3,
                prefetch: 1,
                ..cfg.clone()
            },
        )
        .unwrap();
        let e2b: Vec<Batch> = other.epoch(2).map(|b| b.unwrap()).collect();
        assert_eq!(e2, e2b);
        // other epochs and seeds differ
        let e3: Vec<Batch> = loader.epoch(3).map(|b| b.unwrap()).collect();
        assert_ne!(e2[0].indices, e3[0].indices);
        let s = Loader::new(
            src.clone(),
            None,
            tf.clone(),
            LoaderConfig {
                seed: 12,
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_ne!(s.batch(2, 0).unwrap(), e2[0]);
        // no shuffle: index order; drop_last
        let ev = Loader::new(
            src.clone(),
            None,
            tf,
            LoaderConfig {
                batch_size: 8,
                drop_last: true,
                ..LoaderConfig::eval(8)
            },
        )
        .unwrap();
        assert_eq!(ev.batches_per_epoch(), 6);
        assert_eq!(ev.batch(0, 1).unwrap().indices, (8..16).collect::<Vec<_>>());
        assert!(ev.batch(0, 6).is_err());
    }

    #[test]
    fn eval_batch_is_plain_normalisation() {
        let src = cifar_like();
        let tf = Transform::preset(DatasetKind::Cifar10, false, &src).unwrap();
        let b = make_batch(&src, &[3, 7], &tf, 0, 1).unwrap();
        let d = src.as_dataset().unwrap();
        assert_eq!(b.shape, [2, 3, 32, 32]);
        let v = d.pixels_of(7)[1024 + 5] as f32 / 255.0;
        assert!((b.images[3072 + 1024 + 5] - (v - 0.4822) / 0.2435).abs() < 1e-5);
        assert_eq!(b.labels, vec![3, 7]);
        assert!(make_batch(&src, &[50], &tf, 0, 1).is_err());
        assert!(make_batch(&src, &[], &tf, 0, 1).is_err());
    }

    #[test]
    fn early_drop_does_not_hang_and_subset_is_respected() {
        let src = cifar_like();
        let loader = Loader::new(
            src,
            Some((10..30).collect()),
            Transform::default(),
            LoaderConfig {
                batch_size: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(loader.len(), 20);
        let mut it = loader.epoch(0);
        let first = it.next().unwrap().unwrap();
        assert!(first.indices.iter().all(|i| (10..30).contains(i)));
        drop(it); // thread blocked on a full channel must end
        assert!(Loader::new(
            cifar_like(),
            Some(vec![50]),
            Transform::default(),
            LoaderConfig::default()
        )
        .is_err());
    }

    #[test]
    fn errors_from_the_thread_are_delivered() {
        let t = TempDir::new("pipefolder");
        std::fs::create_dir_all(t.path().join("a")).unwrap();
        std::fs::create_dir_all(t.path().join("b")).unwrap();
        image::RgbImage::from_pixel(40, 30, image::Rgb([10, 20, 30]))
            .save(t.path().join("a/1.png"))
            .unwrap();
        image::RgbImage::from_pixel(50, 50, image::Rgb([10, 20, 30]))
            .save(t.path().join("b/2.png"))
            .unwrap();
        std::fs::write(t.path().join("b/3.jpg"), b"garbage").unwrap();
        let src = Arc::new(Source::Folder(ImageFolder::open(t.path()).unwrap()));
        let tf = Transform {
            geometry: Geometry::RandomResizedCrop {
                size: 16,
                scale: (0.08, 1.0),
                ratio: (0.75, 4.0 / 3.0),
            },
            hflip: true,
            normalize: Normalize::imagenet(),
            ..Transform::default()
        };
        let loader = Loader::new(src.clone(), None, tf.clone(), LoaderConfig::eval(2)).unwrap();
        let out: Vec<Result<Batch, DataError>> = loader.epoch(0).collect();
        assert_eq!(out.len(), 2);
        let b0 = out[0].as_ref().unwrap();
        assert_eq!(b0.shape, [2, 3, 16, 16]);
        assert_eq!(b0.labels, vec![0, 1]);
        let r = 10.0 / 255.0;
        assert!((b0.images[0] - (r - 0.485) / 0.229).abs() < 1e-5);
        let e = out[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("3.jpg: cannot decode image"), "{e}");
        // without a fixed-size geometry, images of different sizes cannot share a batch
        let e = make_batch(
            &src,
            &[0, 1],
            &Transform {
                normalize: Normalize::imagenet(),
                ..Transform::default()
            },
            0,
            2,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fixed output size"), "{e}");
    }

    #[test]
    fn holdout_is_deterministic_and_disjoint() {
        let (tr, va) = holdout_split(100, 10, 7).unwrap();
        assert_eq!((tr.len(), va.len()), (90, 10));
        let mut all = [tr.clone(), va.clone()].concat();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(holdout_split(100, 10, 7).unwrap(), (tr, va.clone()));
        assert_ne!(holdout_split(100, 10, 8).unwrap().1, va);
        let (tr2, va2) = holdout_fraction(1000, 0.1, 1).unwrap();
        assert_eq!((tr2.len(), va2.len()), (900, 100));
        assert!(holdout_fraction(10, 1.0, 0).is_err());
        assert!(holdout_split(10, 11, 0).is_err());
    }
}
