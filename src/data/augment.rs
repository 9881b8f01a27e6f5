//! Augmentation and normalisation: a seedable RNG, u8 CHW [`Image`] operations, and the
//! [`Transform`] that turns one stored image into one network input.
//!
//! A [`Transform`] applies, in order: nearest-neighbour integer upscaling (`upscale`), a
//! [`Geometry`] (CIFAR pad-and-crop, ImageNet random-resized-crop or resize + center-crop), a
//! horizontal flip with probability 0.5 (`hflip`), then, when written out as f32,
//! `(pixel / max_value - mean[c]) / std[c]` ([`Normalize`]). Padding is with zeros before
//! normalisation, as torchvision does. All randomness comes from the [`Rng`] passed in, so results
//! depend only on its seed.
//!
//! [`Transform::preset`] gives the usual recipe per data set: CIFAR: pad 4 + random 32x32 crop +
//! flip for training, published mean/std; SVHN: pixel/255 only (as in the DenseNet paper);
//! MNIST: published mean/std; Fashion-MNIST: mean/std computed from the training set; ImageNet:
//! random-resized-crop 224 (scale 0.08-1, ratio 3/4-4/3) + flip for training, resize 256 +
//! center-crop 224 for evaluation, published mean/std; digits: 8x8 upscaled to 32x32, pixel/16
//! only (as the project's PyTorch baseline does).

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma};

use super::{DataError, DatasetKind, Source};

/// Published CIFAR-10 per-channel mean (RGB, of pixel/255).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Published CIFAR-10 per-channel standard deviation.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// Published CIFAR-100 per-channel mean.
pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
/// Published CIFAR-100 per-channel standard deviation.
pub const CIFAR100_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];
/// Published ImageNet per-channel mean.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Published ImageNet per-channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Published MNIST mean.
pub const MNIST_MEAN: [f32; 1] = [0.1307];
/// Published MNIST standard deviation.
pub const MNIST_STD: [f32; 1] = [0.3081];

pub use crate::util::rng::{mix_seed, splitmix64, Rng};

/// One u8 image, channels-first (CHW: planes, rows, columns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Number of channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `channels * height * width` bytes; pixel (c, y, x) at `(c * height + y) * width + x`.
    pub data: Vec<u8>,
}

impl Image {
    /// An image from CHW bytes, checking the length.
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        data: Vec<u8>,
    ) -> Result<Self, DataError> {
        if data.len() != channels * height * width {
            return Err(DataError::Config(format!(
                "{} bytes do not make a {channels}x{height}x{width} image",
                data.len()
            )));
        }
        Ok(Image {
            channels,
            height,
            width,
            data,
        })
    }

    /// An image of zeros.
    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        Image {
            channels,
            height,
            width,
            data: vec![0; channels * height * width],
        }
    }

    /// Converts an interleaved RGB image (HWC) to CHW.
    pub fn from_rgb(img: &image::RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let plane = w * h;
        let mut data = vec![0u8; 3 * plane];
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            data[i] = px[0];
            data[plane + i] = px[1];
            data[2 * plane + i] = px[2];
        }
        Image {
            channels: 3,
            height: h,
            width: w,
            data,
        }
    }

    /// Pixel (c, y, x). Panics if out of range.
    pub fn get(&self, c: usize, y: usize, x: usize) -> u8 {
        self.data[(c * self.height + y) * self.width + x]
    }

    fn check(&self) -> Result<(), DataError> {
        if self.data.len() != self.channels * self.height * self.width {
            return Err(DataError::Config(format!(
                "image of {} bytes is not {}x{}x{}",
                self.data.len(),
                self.channels,
                self.height,
                self.width
            )));
        }
        Ok(())
    }

    /// Mirrors the image left-right, in place.
    pub fn flip_horizontal(&mut self) {
        if self.width == 0 {
            return;
        }
        for row in self.data.chunks_exact_mut(self.width) {
            row.reverse();
        }
    }

    /// The `h` x `w` window whose top-left corner is (`top`, `left`) in the image padded with
    /// `pad` zero pixels on every side (so `top == pad, left == pad` is the unpadded origin).
    pub fn pad_crop(&self, pad: usize, top: usize, left: usize, h: usize, w: usize) -> Image {
        let mut out = Image::zeros(self.channels, h, w);
        for c in 0..self.channels {
            for y in 0..h {
                let sy = (y + top) as isize - pad as isize;
                if sy < 0 || sy >= self.height as isize {
                    continue;
                }
                let src_row =
                    &self.data[(c * self.height + sy as usize) * self.width..][..self.width];
                let dst_row = &mut out.data[(c * h + y) * w..][..w];
                for (x, d) in dst_row.iter_mut().enumerate() {
                    let sx = (x + left) as isize - pad as isize;
                    if sx >= 0 && sx < self.width as isize {
                        *d = src_row[sx as usize];
                    }
                }
            }
        }
        out
    }

    /// The `h` x `w` window at (`top`, `left`), which must lie inside the image.
    pub fn crop(&self, top: usize, left: usize, h: usize, w: usize) -> Result<Image, DataError> {
        if top + h > self.height || left + w > self.width {
            return Err(DataError::Config(format!(
                "crop {h}x{w} at ({top}, {left}) does not fit a {}x{} image",
                self.height, self.width
            )));
        }
        Ok(self.pad_crop(0, top, left, h, w))
    }

    /// Resizes to `h` x `w` with a triangle (bilinear, antialiased when shrinking) filter,
    /// channel by channel, using `image::imageops::resize`.
    pub fn resize(&self, h: usize, w: usize) -> Result<Image, DataError> {
        self.check()?;
        if (h, w) == (self.height, self.width) {
            return Ok(self.clone());
        }
        if h == 0 || w == 0 || self.height == 0 || self.width == 0 {
            return Err(DataError::Config(format!(
                "cannot resize {}x{} to {h}x{w}",
                self.height, self.width
            )));
        }
        let mut data = Vec::with_capacity(self.channels * h * w);
        for plane in self.data.chunks_exact(self.height * self.width) {
            let buf: ImageBuffer<Luma<u8>, &[u8]> =
                ImageBuffer::from_raw(self.width as u32, self.height as u32, plane)
                    .ok_or_else(|| DataError::Config("image plane has the wrong size".into()))?;
            let out = imageops::resize(&buf, w as u32, h as u32, FilterType::Triangle);
            data.extend_from_slice(out.as_raw());
        }
        Ok(Image {
            channels: self.channels,
            height: h,
            width: w,
            data,
        })
    }

    /// Nearest-neighbour upscaling by an integer factor: each pixel becomes a `factor` x
    /// `factor` block (`out[y][x] = in[y / factor][x / factor]`).
    pub fn upscale_nearest(&self, factor: usize) -> Image {
        if factor <= 1 {
            return self.clone();
        }
        let (h, w) = (self.height * factor, self.width * factor);
        let mut data = Vec::with_capacity(self.channels * h * w);
        for c in 0..self.channels {
            for y in 0..self.height {
                let row = &self.data[(c * self.height + y) * self.width..][..self.width];
                let start = data.len();
                for &v in row {
                    data.extend(std::iter::repeat_n(v, factor));
                }
                for _ in 1..factor {
                    data.extend_from_within(start..start + w);
                }
            }
        }
        Image {
            channels: self.channels,
            height: h,
            width: w,
            data,
        }
    }
}

/// The largest ratio of an image's longer side to its shorter side that the transforms
/// resize (and that an image folder decodes). Resizing the shorter side to the network's
/// input size makes the intermediate image at most this many times the input's area (e.g.
/// 256×16384 for a 256 resize).
pub const MAX_ASPECT_RATIO: u64 = 64;

/// Per-channel normalisation `(pixel / max_value - mean[c]) / std[c]`; a single mean/std value
/// applies to every channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    /// Mean of `pixel / max_value`, per channel (or one for all).
    pub mean: Vec<f32>,
    /// Standard deviation of `pixel / max_value`, per channel (or one for all); all > 0.
    pub std: Vec<f32>,
}

impl Normalize {
    /// Mean and std given explicitly.
    pub fn new(mean: &[f32], std: &[f32]) -> Self {
        Normalize {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// Only `pixel / max_value` (mean 0, std 1).
    pub fn none() -> Self {
        Normalize::new(&[0.0], &[1.0])
    }

    /// CIFAR-10's published constants.
    pub fn cifar10() -> Self {
        Normalize::new(&CIFAR10_MEAN, &CIFAR10_STD)
    }

    /// CIFAR-100's published constants.
    pub fn cifar100() -> Self {
        Normalize::new(&CIFAR100_MEAN, &CIFAR100_STD)
    }

    /// ImageNet's published constants.
    pub fn imagenet() -> Self {
        Normalize::new(&IMAGENET_MEAN, &IMAGENET_STD)
    }

    /// MNIST's published constants.
    pub fn mnist() -> Self {
        Normalize::new(&MNIST_MEAN, &MNIST_STD)
    }

    /// Mean and std computed from an in-memory training set ([`super::Dataset::channel_stats`]);
    /// a channel with zero spread gets std 1.
    pub fn from_source(train: &Source) -> Result<Self, DataError> {
        let d = train.as_dataset().ok_or_else(|| {
            DataError::Config(format!(
                "cannot compute normalisation statistics of image folder {} (it is decoded lazily); \
                 give mean/std explicitly, e.g. Normalize::imagenet()",
                train.name()
            ))
        })?;
        let (mean, mut std) = d.channel_stats();
        for s in &mut std {
            if !(s.is_finite() && *s > 1e-6) {
                *s = 1.0;
            }
        }
        Ok(Normalize { mean, std })
    }

    /// Checks that there is one value (or one per channel) and every std is positive.
    pub fn check(&self, channels: usize) -> Result<(), DataError> {
        let ok_len = |n: usize| n == 1 || n == channels;
        if !ok_len(self.mean.len()) || !ok_len(self.std.len()) {
            return Err(DataError::Config(format!(
                "normalisation has {} means and {} stds for {channels}-channel images",
                self.mean.len(),
                self.std.len()
            )));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(DataError::Config("normalisation std must be > 0".into()));
        }
        Ok(())
    }

    /// Writes the normalised image into `out` (length `channels * height * width`).
    pub fn write(&self, img: &Image, max_value: f32, out: &mut [f32]) -> Result<(), DataError> {
        self.check(img.channels)?;
        img.check()?;
        if out.len() != img.data.len() {
            return Err(DataError::Config(format!(
                "output slice of {} values for an image of {}",
                out.len(),
                img.data.len()
            )));
        }
        let plane = img.height * img.width;
        if plane == 0 {
            return Ok(());
        }
        for (c, (src, dst)) in img
            .data
            .chunks_exact(plane)
            .zip(out.chunks_exact_mut(plane))
            .enumerate()
        {
            let m = self.mean[if self.mean.len() == 1 { 0 } else { c }];
            let s = self.std[if self.std.len() == 1 { 0 } else { c }];
            let scale = 1.0 / (max_value * s);
            let bias = -m / s;
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v as f32 * scale + bias;
            }
        }
        Ok(())
    }
}

/// The geometric part of a [`Transform`].
#[derive(Clone, Debug, PartialEq)]
pub enum Geometry {
    /// Leave the image as it is.
    None,
    /// Zero-pad `pad` pixels on each side, then crop a random `size` x `size` window (CIFAR:
    /// pad 4, size 32). With `pad == 0` and `size` equal to the image, the identity.
    PadCrop {
        /// Padding on each side.
        pad: usize,
        /// Output height and width.
        size: usize,
    },
    /// torchvision's `RandomResizedCrop`: a random window of `scale` x the area and aspect
    /// ratio in `ratio` (log-uniform), resized to `size` x `size`.
    RandomResizedCrop {
        /// Output height and width.
        size: usize,
        /// Area fraction range, e.g. (0.08, 1.0).
        scale: (f64, f64),
        /// Aspect ratio (width / height) range, e.g. (3/4, 4/3).
        ratio: (f64, f64),
    },
    /// Resize so the shorter side is `resize` (keeping the aspect ratio), then take the center
    /// `crop` x `crop` window (ImageNet evaluation: 256, 224).
    ResizeCenterCrop {
        /// Length of the shorter side after resizing.
        resize: usize,
        /// Output height and width.
        crop: usize,
    },
}

impl Geometry {
    /// ImageNet training crop: `RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3))`.
    pub fn imagenet_train() -> Self {
        Geometry::RandomResizedCrop {
            size: 224,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// ImageNet evaluation: resize to 256, center-crop 224.
    pub fn imagenet_eval() -> Self {
        Geometry::ResizeCenterCrop {
            resize: 256,
            crop: 224,
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: (top, left, height, width) of the window.
pub fn random_resized_crop_params(
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(lr0, lr1).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return (top, left, h, w);
        }
    }
    // fallback: central crop with the aspect ratio clamped into range
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio.0.min(ratio.1) {
        (
            ((width as f64) / ratio.0.min(ratio.1)).round() as usize,
            width,
        )
    } else if in_ratio > ratio.0.max(ratio.1) {
        (
            height,
            ((height as f64) * ratio.0.max(ratio.1)).round() as usize,
        )
    } else {
        (height, width)
    };
    let (h, w) = (h.clamp(1, height), w.clamp(1, width));
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// How one stored image becomes one network input. See the module docs for the order.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// Nearest-neighbour integer upscaling factor applied first; 1 = none.
    pub upscale: usize,
    /// Crop / resize.
    pub geometry: Geometry,
    /// Mirror left-right with probability 0.5.
    pub hflip: bool,
    /// Normalisation applied when converting to f32.
    pub normalize: Normalize,
}

impl Default for Transform {
    /// The identity: no change, pixel / max_value.
    fn default() -> Self {
        Transform {
            upscale: 1,
            geometry: Geometry::None,
            hflip: false,
            normalize: Normalize::none(),
        }
    }
}

impl Transform {
    /// The usual recipe for `kind` (see the module docs); `train` selects augmentation, and
    /// `train_set` supplies statistics where they are computed (Fashion-MNIST).
    pub fn preset(kind: DatasetKind, train: bool, train_set: &Source) -> Result<Self, DataError> {
        let pad_crop = |size| {
            if train {
                Geometry::PadCrop { pad: 4, size }
            } else {
                Geometry::None
            }
        };
        Ok(match kind {
            DatasetKind::Cifar10 => Transform {
                upscale: 1,
                geometry: pad_crop(32),
                hflip: train,
                normalize: Normalize::cifar10(),
            },
            DatasetKind::Cifar100(_) => Transform {
                upscale: 1,
                geometry: pad_crop(32),
                hflip: train,
                normalize: Normalize::cifar100(),
            },
            DatasetKind::Svhn => Transform::default(),
            DatasetKind::Mnist => Transform {
                normalize: Normalize::mnist(),
                ..Transform::default()
            },
            DatasetKind::FashionMnist => Transform {
                normalize: Normalize::from_source(train_set)?,
                ..Transform::default()
            },
            DatasetKind::ImageFolder => Transform {
                upscale: 1,
                geometry: if train {
                    Geometry::imagenet_train()
                } else {
                    Geometry::imagenet_eval()
                },
                hflip: train,
                normalize: Normalize::imagenet(),
            },
            DatasetKind::Digits => Transform {
                upscale: 4,
                ..Transform::default()
            },
        })
    }

    /// The output shape for an input of `channels` x `height` x `width`, or an error if the
    /// transform cannot apply to it.
    pub fn output_shape(
        &self,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<(usize, usize, usize), DataError> {
        self.normalize.check(channels)?;
        if channels == 0 || height == 0 || width == 0 {
            return Err(DataError::Config(format!(
                "cannot transform an empty {channels}x{height}x{width} image"
            )));
        }
        let f = self.upscale.max(1);
        let (h, w) = (height * f, width * f);
        match &self.geometry {
            Geometry::None => Ok((channels, h, w)),
            Geometry::PadCrop { pad, size } => {
                if *size == 0 || *size > h + 2 * pad || *size > w + 2 * pad {
                    return Err(DataError::Config(format!(
                        "cannot crop {size}x{size} from a {h}x{w} image padded by {pad}"
                    )));
                }
                Ok((channels, *size, *size))
            }
            Geometry::RandomResizedCrop { size, scale, ratio } => {
                if *size == 0
                    || !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1 <= 1.0)
                    || !(ratio.0 > 0.0 && ratio.0 <= ratio.1)
                {
                    return Err(DataError::Config(format!(
                        "bad random-resized-crop: size {size}, scale {scale:?}, ratio {ratio:?}"
                    )));
                }
                Ok((channels, *size, *size))
            }
            Geometry::ResizeCenterCrop { resize, crop } => {
                if *crop == 0 || crop > resize {
                    return Err(DataError::Config(format!(
                        "cannot center-crop {crop} after resizing to {resize}"
                    )));
                }
                Ok((channels, *crop, *crop))
            }
        }
    }

    /// Applies upscaling, geometry and flip to `img`, drawing randomness from `rng`.
    pub fn apply(&self, img: Image, rng: &mut Rng) -> Result<Image, DataError> {
        img.check()?;
        self.output_shape(img.channels, img.height, img.width)?;
        let img = img.upscale_nearest(self.upscale);
        let mut img = match &self.geometry {
            Geometry::None => img,
            Geometry::PadCrop { pad, size } => {
                let top = rng.below((img.height + 2 * pad - size + 1) as u64) as usize;
                let left = rng.below((img.width + 2 * pad - size + 1) as u64) as usize;
                img.pad_crop(*pad, top, left, *size, *size)
            }
            Geometry::RandomResizedCrop { size, scale, ratio } => {
                let (t, l, h, w) =
                    random_resized_crop_params(img.height, img.width, *scale, *ratio, rng);
                img.crop(t, l, h, w)?.resize(*size, *size)?
            }
            Geometry::ResizeCenterCrop { resize, crop } => {
                let (h, w) = (img.height, img.width);
                // torchvision Resize(int): shorter side -> resize, longer scaled and truncated
                let (nh, nw) = if h <= w {
                    (*resize, ((*resize as f64) * w as f64 / h as f64) as usize)
                } else {
                    (((*resize as f64) * h as f64 / w as f64) as usize, *resize)
                };
                // the intermediate image is bounded by the target, not by the input's shape
                let most = MAX_ASPECT_RATIO as usize;
                if nh.max(nw) > resize.saturating_mul(most) {
                    return Err(DataError::Config(format!(
                        "a {h}x{w} image would be resized to {nh}x{nw} before its {crop}x{crop} \
                         center crop: its aspect ratio is beyond {most}:1"
                    )));
                }
                let r = img.resize(nh, nw)?;
                let top = ((nh - crop) as f64 / 2.0).round_ties_even() as usize;
                let left = ((nw - crop) as f64 / 2.0).round_ties_even() as usize;
                r.crop(top, left, *crop, *crop)?
            }
        };
        if self.hflip && rng.coin() {
            img.flip_horizontal();
        }
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    fn ramp(c: usize, h: usize, w: usize) -> Image {
        let data = (0..c * h * w).map(|i| (i % 251) as u8).collect();
        Image::new(c, h, w, data).unwrap()
    }

    #[test]
    fn rng_is_deterministic_and_uniform_enough() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let va: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(Rng::new(43).next_u64(), va[0]);
        assert_ne!(mix_seed(&[1, 2]), mix_seed(&[2, 1]));
        let mut counts = [0usize; 9];
        let mut r = Rng::new(7);
        for _ in 0..90_000 {
            counts[r.below(9) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        let heads = (0..10_000).filter(|_| r.coin()).count();
        assert!((4_700..5_300).contains(&heads));
        let mut v: Vec<usize> = (0..100).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

    #[test]
    fn flip_and_pad_crop_on_known_image() {
        // 1 channel, 2x3: [[1,2,3],[4,5,6]]
        let img = Image::new(1, 2, 3, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let mut f = img.clone();
        f.flip_horizontal();
        assert_eq!(f.data, vec![3, 2, 1, 6, 5, 4]);
        // pad 1 then take 2x2 at padded (0,0): top-left corner is padding
        assert_eq!(img.pad_crop(1, 0, 0, 2, 2).data, vec![0, 0, 0, 1]);
        // at padded (1,1) = original origin
        assert_eq!(img.pad_crop(1, 1, 1, 2, 3).data, img.data);
        // bottom-right window
        assert_eq!(img.pad_crop(1, 2, 2, 2, 3).data, vec![5, 6, 0, 0, 0, 0]);
        assert_eq!(img.crop(0, 1, 2, 2).unwrap().data, vec![2, 3, 5, 6]);
        assert!(img.crop(1, 1, 2, 2).is_err());
    }

    #[test]
    fn cifar_pad_crop_covers_all_offsets_and_keeps_content() {
        // CIFAR shape: 32x32 out of 32x32 padded by 4
        let t = Transform {
            upscale: 1,
            geometry: Geometry::PadCrop { pad: 4, size: 32 },
            hflip: true,
            normalize: Normalize::none(),
        };
        let out = t.apply(ramp(3, 32, 32), &mut Rng::new(1)).unwrap();
        assert_eq!((out.channels, out.height, out.width), (3, 32, 32));
        // exhaustive check on a small image: every output is a padded crop, possibly flipped
        let img = ramp(3, 6, 6);
        let t = Transform {
            geometry: Geometry::PadCrop { pad: 4, size: 6 },
            ..t
        };
        let mut seen = [[false; 9]; 9];
        let mut flips = 0;
        for seed in 0..400 {
            let out = t.apply(img.clone(), &mut Rng::new(seed)).unwrap();
            let mut found = false;
            for (top, row) in seen.iter_mut().enumerate() {
                for (left, cell) in row.iter_mut().enumerate() {
                    for flip in [false, true] {
                        let mut cand = img.pad_crop(4, top, left, 6, 6);
                        if flip {
                            cand.flip_horizontal();
                        }
                        if cand == out {
                            *cell = true;
                            flips += flip as usize;
                            found = true;
                        }
                    }
                }
            }
            assert!(
                found,
                "seed {seed}: output is not a padded crop (+flip) of the input"
            );
        }
        let offsets = seen.iter().flatten().filter(|&&s| s).count();
        assert!(offsets > 70, "only {offsets} of 81 offsets seen");
        assert!(seen[0][0] || seen[8][8] || seen[0][8] || seen[8][0]);
        assert!((150..250).contains(&flips), "{flips}");
    }

    #[test]
    fn upscale_nearest_replicates_blocks() {
        let img = Image::new(1, 2, 2, vec![1, 2, 3, 4]).unwrap();
        let u = img.upscale_nearest(2);
        assert_eq!(u.data, vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
        let d = ramp(1, 8, 8).upscale_nearest(4);
        assert_eq!((d.height, d.width), (32, 32));
        for y in 0..32 {
            for x in 0..32 {
                assert_eq!(d.get(0, y, x), ramp(1, 8, 8).get(0, y / 4, x / 4));
            }
        }
    }

    #[test]
    fn resize_and_imagenet_geometries() {
        let flat = Image::new(3, 100, 60, vec![90; 3 * 100 * 60]).unwrap();
        let r = flat.resize(50, 30).unwrap();
        assert_eq!((r.height, r.width), (50, 30));
        assert!(r.data.iter().all(|&v| v == 90));
        let img = ramp(3, 300, 400);
        let eval = Transform {
            geometry: Geometry::imagenet_eval(),
            ..Transform::default()
        };
        let e = eval.apply(img.clone(), &mut Rng::new(0)).unwrap();
        assert_eq!((e.channels, e.height, e.width), (3, 224, 224));
        let train = Transform {
            geometry: Geometry::imagenet_train(),
            hflip: true,
            ..Transform::default()
        };
        for s in 0..3 {
            let a = train.apply(img.clone(), &mut Rng::new(s)).unwrap();
            assert_eq!((a.height, a.width), (224, 224));
            assert_eq!(a, train.apply(img.clone(), &mut Rng::new(s)).unwrap());
        }
        // crop parameters stay inside the image and respect the ratio/scale ranges
        let mut rng = Rng::new(5);
        for _ in 0..1000 {
            let (t, l, h, w) =
                random_resized_crop_params(300, 400, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(t + h <= 300 && l + w <= 400 && h > 0 && w > 0);
            let area = (h * w) as f64 / 120_000.0;
            assert!(area > 0.07 && area <= 1.0, "{area}");
        }
        // fallback for an extreme aspect ratio
        let (t, l, h, w) =
            random_resized_crop_params(10, 1000, (0.9, 1.0), (0.75, 4.0 / 3.0), &mut Rng::new(1));
        assert_eq!((h, w), (10, 13));
        assert_eq!((t, l), (0, 493));
    }

    #[test]
    fn normalisation_constants_are_applied() {
        let img = Image::new(3, 1, 2, vec![0, 255, 128, 128, 255, 0]).unwrap();
        let mut out = vec![0.0; 6];
        Normalize::cifar10().write(&img, 255.0, &mut out).unwrap();
        let want = [
            (0.0 - 0.4914) / 0.2470,
            (1.0 - 0.4914) / 0.2470,
            (128.0 / 255.0 - 0.4822) / 0.2435,
            (128.0 / 255.0 - 0.4822) / 0.2435,
            (1.0 - 0.4465) / 0.2616,
            (0.0 - 0.4465) / 0.2616,
        ];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-5, "{o} vs {w}");
        }
        Normalize::none().write(&img, 255.0, &mut out).unwrap();
        assert_eq!(out[1], 1.0);
        let g = Image::new(1, 1, 1, vec![16]).unwrap();
        let mut o1 = [0.0];
        Normalize::none().write(&g, 16.0, &mut o1).unwrap();
        assert_eq!(o1[0], 1.0);
        Normalize::mnist().write(&g, 16.0, &mut o1).unwrap();
        assert!((o1[0] - (1.0 - 0.1307) / 0.3081).abs() < 1e-5);
        assert!(Normalize::imagenet().write(&g, 255.0, &mut o1).is_err());
        assert_eq!(Normalize::imagenet().mean, vec![0.485, 0.456, 0.406]);
        assert_eq!(Normalize::cifar100().std, vec![0.2673, 0.2564, 0.2762]);
    }

    #[test]
    fn presets() {
        let digits = Source::Memory(crate::data::digits::load(crate::data::Split::Train).unwrap());
        let t = Transform::preset(DatasetKind::Digits, true, &digits).unwrap();
        assert_eq!(t.output_shape(1, 8, 8).unwrap(), (1, 32, 32));
        assert_eq!(t.normalize, Normalize::none());
        let c = Transform::preset(DatasetKind::Cifar10, true, &digits).unwrap();
        assert_eq!(c.geometry, Geometry::PadCrop { pad: 4, size: 32 });
        assert!(c.hflip);
        let ce = Transform::preset(DatasetKind::Cifar10, false, &digits).unwrap();
        assert_eq!((ce.geometry.clone(), ce.hflip), (Geometry::None, false));
        // computed statistics (Fashion-MNIST recipe) from a known set
        let d = Dataset::new(
            "f",
            1,
            1,
            2,
            vec![0, 255, 255, 255],
            vec![0, 0],
            vec!["a".into()],
            255.0,
        )
        .unwrap();
        let f = Transform::preset(DatasetKind::FashionMnist, true, &Source::Memory(d)).unwrap();
        assert!((f.normalize.mean[0] - 0.75).abs() < 1e-6);
        assert!((f.normalize.std[0] - 0.4330127).abs() < 1e-6);
        let i = Transform::preset(DatasetKind::ImageFolder, false, &digits).unwrap();
        assert_eq!(
            i.geometry,
            Geometry::ResizeCenterCrop {
                resize: 256,
                crop: 224
            }
        );
        assert_eq!(i.output_shape(3, 375, 500).unwrap(), (3, 224, 224));
    }
}
