//! An image folder in ImageNet's (and torchvision `ImageFolder`'s) layout:
//! `root/<class>/**/<image>.{png,jpg,jpeg}`, split into `train/` and `val/` or flat (see
//! [`open_split`]). Classes are the sorted names of the subdirectories
//! of `root`; images are listed (sorted, recursively, hidden entries skipped) when the folder is
//! opened and decoded only when asked for, since a set like ImageNet does not fit in memory.
//! Symbolic links are followed, and each directory is listed once however many paths lead
//! to it (see `Walk`). Decoding uses the `png` crate and the `image` crate's JPEG decoder,
//! strictly (see [`decode_bytes`]); every image becomes 8-bit RGB.

use std::cell::Cell;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use super::{DataError, Image, Split};
use crate::util::paths::extension_lowercase;

/// File extensions (lower-case) that are treated as images.
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// A lazily decoded image folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFolder {
    /// Name, e.g. `imagenet-train` or the root directory's name.
    pub name: String,
    /// The directory holding one subdirectory per class.
    pub root: PathBuf,
    /// Every image file, grouped by class in class order, each group sorted by path.
    pub paths: Vec<PathBuf>,
    /// The label of each file in `paths`.
    pub labels: Vec<u32>,
    /// Class names (the subdirectory names), sorted.
    pub classes: Vec<String>,
}

impl ImageFolder {
    /// Lists `root/<class>/...`. Errors if `root` has no class subdirectory or no image at all;
    /// a class directory without images is allowed (its class keeps its index).
    pub fn open(root: &Path) -> Result<Self, DataError> {
        let mut classes: Vec<(String, PathBuf)> = Vec::new();
        for (entry, _) in read_dir_sorted(root)? {
            let name = file_name(&entry);
            if name.starts_with('.') || !entry.is_dir() {
                continue;
            }
            classes.push((name, entry));
        }
        if classes.is_empty() {
            return Err(DataError::format(
                root,
                "directory",
                "one subdirectory per class",
                "no subdirectories",
            )
            .with_hint("an image folder is laid out as root/<class>/<image>.jpg"));
        }
        // the root and the class directories count as visited before anything is listed:
        // a link from inside a class back to the root or to another class lists nothing
        // more (a class directory that is another one under a second name lists nothing)
        let mut walk = Walk::default();
        walk.first_visit(root);
        let groups: Vec<Option<&Path>> = classes
            .iter()
            .map(|(_, dir)| walk.first_visit(dir).then_some(dir.as_path()))
            .collect();
        let mut paths = Vec::new();
        let mut labels = Vec::new();
        for (label, files) in walk.list(&groups)?.into_iter().enumerate() {
            labels.extend(std::iter::repeat_n(label as u32, files.len()));
            paths.extend(files);
        }
        if paths.is_empty() {
            return Err(DataError::format(
                root,
                "class subdirectories",
                format!("image files ({})", EXTENSIONS.join(", ")),
                format!("none in {} class directories", classes.len()),
            ));
        }
        let name = root
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "images".into());
        Ok(ImageFolder {
            name,
            root: root.to_path_buf(),
            paths,
            labels,
            classes: classes.into_iter().map(|(n, _)| n).collect(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Decodes image `i` to RGB CHW bytes.
    pub fn image(&self, i: usize) -> Result<Image, DataError> {
        let path = self.paths.get(i).ok_or_else(|| {
            DataError::Config(format!(
                "index {i} is out of range for image folder {} of {} images",
                self.name,
                self.len()
            ))
        })?;
        decode_file(path)
    }
}

/// One image in this many of each class is held out as the test split of a flat folder
/// (`root/<class>/<image>`, no `train/`); see [`open_split`].
pub const FLAT_HOLDOUT_EVERY: usize = 10;

/// Opens one split of an image folder data set. Two layouts are understood:
///
/// * `dir/train/<class>/…` with `dir/val/<class>/…` (or `dir/test/<class>/…`): the splits
///   as given (ImageNet's layout);
/// * a flat `dir/<class>/…` (no `train/`): every [`FLAT_HOLDOUT_EVERY`]th image of each
///   class (evenly spaced in file-name order, at least one of a class of two or more) is the
///   test split, the rest the training split. The choice depends only on the file names, so
///   `train` and `eval` agree on it.
///
/// The test split's classes are not reconciled with the training split's here: see
/// [`Source::align_classes`](super::Source::align_classes).
pub fn open_split(dir: &Path, split: Split) -> Result<ImageFolder, DataError> {
    let candidates: &[&str] = match split {
        Split::Train => &["train"],
        Split::Test => &["val", "test"],
        Split::Extra => {
            return Err(DataError::Config(
                "an image folder has no 'extra' split".into(),
            ))
        }
    };
    if !dir.join("train").is_dir() {
        if ["val", "test"].iter().any(|c| dir.join(c).is_dir()) {
            return Err(DataError::NotFound {
                path: dir.join("train"),
                hint: Some(format!(
                    "{} has a val/ or test/ split but no train/ split; lay it out as \
                     {0}/train/<class>/<image> (and {0}/val/<class>/<image>), or as \
                     {0}/<class>/<image>",
                    dir.display()
                )),
            });
        }
        return open_flat(dir, split);
    }
    let root = candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_dir())
        .ok_or_else(|| DataError::NotFound {
            path: dir.join(candidates[0]),
            hint: Some(format!(
                "expected {} with one subdirectory per class (ImageNet's validation images must be \
                 sorted into class directories first, e.g. with the common valprep.sh); or lay the \
                 images out as {}/<class>/<image> to hold out every {}th image of each class",
                candidates.iter().map(|c| format!("{}/{c}/", dir.display())).collect::<Vec<_>>().join(" or "),
                dir.display(),
                FLAT_HOLDOUT_EVERY
            )),
        })?;
    let mut f = ImageFolder::open(&root)?;
    f.name = format!("imagenet-{split}");
    Ok(f)
}

/// A flat `dir/<class>/…` folder: the training split, or the held-out test split.
fn open_flat(dir: &Path, split: Split) -> Result<ImageFolder, DataError> {
    let all = ImageFolder::open(dir)?;
    let test = split == Split::Test;
    let (mut paths, mut labels) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < all.len() {
        let label = all.labels[start];
        let n = all.labels[start..]
            .iter()
            .take_while(|&&l| l == label)
            .count();
        let held = if n >= 2 {
            (n / FLAT_HOLDOUT_EVERY).max(1)
        } else {
            0
        };
        // evenly spaced positions: the middle of each of `held` equal parts
        let mut is_held = vec![false; n];
        for j in 0..held {
            is_held[((2 * j + 1) * n) / (2 * held)] = true;
        }
        for (k, h) in is_held.into_iter().enumerate() {
            if h == test {
                paths.push(all.paths[start + k].clone());
                labels.push(label);
            }
        }
        start += n;
    }
    if paths.is_empty() {
        return Err(DataError::format(
            dir,
            "class subdirectories",
            format!(
                "at least one class with two or more images (one in {FLAT_HOLDOUT_EVERY} is \
                 held out for testing)"
            ),
            format!("{} images in {} classes", all.len(), all.classes.len()),
        ));
    }
    Ok(ImageFolder {
        name: format!("{}-{split}", all.name),
        root: all.root,
        paths,
        labels,
        classes: all.classes,
    })
}

/// The most pixels an image may decode to: 64 megapixels (an 8000×8000 photo), 192 MB as
/// RGB.
pub const MAX_PIXELS: u64 = 64 << 20;

/// The most pixels an image may decode to per byte of its file: 8 (1-bit pixels) × 1032
/// (deflate's largest expansion), rounded up. A PNG cannot exceed this; a JPEG that does is a
/// crafted one. Files of at most [`SMALL_IMAGE_PIXELS`] pixels are always allowed.
pub const MAX_PIXELS_PER_FILE_BYTE: u64 = 8 * 1032 + 64;

/// Images of at most this many pixels (1024×1024) pass the per-byte limit whatever their
/// file size.
pub const SMALL_IMAGE_PIXELS: u64 = 1 << 20;

pub use super::augment::MAX_ASPECT_RATIO;

/// Checks an image's dimensions before it is decoded: at most [`MAX_PIXELS`] pixels, at most
/// [`MAX_PIXELS_PER_FILE_BYTE`] per byte of the file (beyond [`SMALL_IMAGE_PIXELS`]), and an
/// aspect ratio of at most [`MAX_ASPECT_RATIO`]:1.
pub fn check_dimensions(
    path: &Path,
    width: u32,
    height: u32,
    file_len: u64,
) -> Result<(), DataError> {
    let (w, h) = (u64::from(width), u64::from(height));
    let pixels = w * h;
    let found = format!("a {width}×{height} image in a {file_len}-byte file");
    let refuse = |expected: String| {
        Err(DataError::format(
            path,
            "image header",
            expected,
            found.clone(),
        ))
    };
    if pixels == 0 {
        return refuse("an image of at least 1×1 pixels".into());
    }
    if pixels > MAX_PIXELS {
        return refuse(format!("an image of at most {MAX_PIXELS} pixels"));
    }
    if w.max(h) > MAX_ASPECT_RATIO * w.min(h) {
        return refuse(format!(
            "an aspect ratio of at most {MAX_ASPECT_RATIO}:1 (a wider image would need a huge \
             buffer when its shorter side is resized)"
        ));
    }
    if pixels > SMALL_IMAGE_PIXELS && pixels > file_len.saturating_mul(MAX_PIXELS_PER_FILE_BYTE) {
        return refuse(format!(
            "at most {MAX_PIXELS_PER_FILE_BYTE} pixels per byte of the file (the header claims \
             more pixels than the file can hold)"
        ));
    }
    Ok(())
}

/// Decodes a PNG or JPEG file to RGB CHW bytes; errors name the file. The dimensions are
/// checked with [`check_dimensions`] before anything is decoded.
pub fn decode_file(path: &Path) -> Result<Image, DataError> {
    let bytes = super::read_file(path)?;
    decode_bytes(path, &bytes)
}

/// Decodes the PNG or JPEG `bytes` of file `path` (used in errors), like [`decode_file`].
///
/// Stricter than the decoders' defaults, as PIL is: a PNG's compressed pixels must match
/// their zlib (Adler-32) checksum, which the `png` crate skips unless asked, and a JPEG must
/// run to its end-of-image marker (`check_jpeg_complete`; a truncated one decodes with
/// its missing rows filled in). A decoder that panics on malformed data (png 0.18 does on a
/// PLTE that is not a whole number of entries) gives an error naming the file like any
/// other, and nothing on stderr (`catch_quietly`).
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<Image, DataError> {
    match catch_quietly(|| decode_any(path, bytes).map(|img| Image::from_rgb(&img.to_rgb8()))) {
        Ok(decoded) => decoded,
        Err(panic) => Err(DataError::format(
            path,
            "image data",
            "a well-formed PNG or JPEG file",
            format!("data its decoder cannot handle (it failed with \"{panic}\")"),
        )),
    }
}

/// The PNG signature.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The bytes a decoder may allocate for a `w`×`h` image: 8 per pixel (16-bit RGBA), plus
/// slack.
fn decoder_budget(w: u32, h: u32) -> u64 {
    u64::from(w) * u64::from(h) * 8 + (1 << 20)
}

/// Decodes a PNG with [`decode_png`], anything else with the `image` crate (which knows
/// JPEG only, as built here).
fn decode_any(path: &Path, bytes: &[u8]) -> Result<image::DynamicImage, DataError> {
    if bytes.starts_with(PNG_SIGNATURE) {
        return decode_png(path, bytes);
    }
    let decode_err = |e| DataError::Decode {
        path: path.to_path_buf(),
        source: e,
    };
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DataError::io(path, e))
    };
    let r = reader()?;
    let jpeg = r.format() == Some(image::ImageFormat::Jpeg);
    let (w, h) = r.into_dimensions().map_err(decode_err)?;
    check_dimensions(path, w, h, bytes.len() as u64)?;
    if jpeg {
        check_jpeg_complete(path, bytes)?;
    }
    let mut r = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(decoder_budget(w, h));
    r.limits(limits);
    r.decode().map_err(decode_err)
}

/// Decodes a PNG with the `png` crate itself, as the `image` crate does (the same
/// expansion of palettes and small bit depths, the same 8- and 16-bit buffers), but with
/// the zlib checksum checked, which `image` gives no way to ask for.
fn decode_png(path: &Path, bytes: &[u8]) -> Result<image::DynamicImage, DataError> {
    use image::{DynamicImage as D, ImageBuffer};
    use png::{BitDepth::*, ColorType::*};
    let err = |e: png::DecodingError| {
        // the checksum's failure reads "Corrupt deflate stream. WrongChecksum"
        if e.to_string().contains("WrongChecksum") {
            return DataError::format(
                path,
                "compressed pixel data (IDAT)",
                "data that matches its zlib checksum (Adler-32)",
                "a mismatch: the file is damaged",
            );
        }
        DataError::Decode {
            path: path.to_path_buf(),
            source: image::ImageError::Decoding(image::error::DecodingError::new(
                image::ImageFormat::Png.into(),
                e,
            )),
        }
    };
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.ignore_checksums(false);
    let info = decoder.read_header_info().map_err(err)?;
    let (w, h) = (info.width, info.height);
    check_dimensions(path, w, h, bytes.len() as u64)?;
    let budget = usize::try_from(decoder_budget(w, h)).unwrap_or(usize::MAX);
    decoder.set_limits(png::Limits { bytes: budget });
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(err)?;
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= budget)
        .ok_or_else(|| err(png::DecodingError::LimitsExceeded))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(err)?;
    buf.truncate(frame.buffer_size());
    let (w, h) = (frame.width, frame.height);
    // 16-bit samples are big-endian in the file
    let wide = |b: Vec<u8>| -> Vec<u16> {
        b.chunks_exact(2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]))
            .collect()
    };
    let img = match (frame.color_type, frame.bit_depth) {
        (Grayscale, Eight) => ImageBuffer::from_raw(w, h, buf).map(D::ImageLuma8),
        (GrayscaleAlpha, Eight) => ImageBuffer::from_raw(w, h, buf).map(D::ImageLumaA8),
        (Rgb, Eight) => ImageBuffer::from_raw(w, h, buf).map(D::ImageRgb8),
        (Rgba, Eight) => ImageBuffer::from_raw(w, h, buf).map(D::ImageRgba8),
        (Grayscale, Sixteen) => ImageBuffer::from_raw(w, h, wide(buf)).map(D::ImageLuma16),
        (GrayscaleAlpha, Sixteen) => ImageBuffer::from_raw(w, h, wide(buf)).map(D::ImageLumaA16),
        (Rgb, Sixteen) => ImageBuffer::from_raw(w, h, wide(buf)).map(D::ImageRgb16),
        (Rgba, Sixteen) => ImageBuffer::from_raw(w, h, wide(buf)).map(D::ImageRgba16),
        _ => None,
    };
    img.ok_or_else(|| {
        DataError::format(
            path,
            "image data",
            format!("{w}×{h} pixels of 8 or 16 bits"),
            format!(
                "{:?} pixels of {} bits in {} bytes",
                frame.color_type, frame.bit_depth as u8, frame.line_size
            ),
        )
    })
}

/// Checks that a JPEG's markers run to its end-of-image marker (EOI, `FF D9`). A file cut
/// short decodes without complaint, the missing rows filled in (zune-jpeg outside its
/// strict mode, which would also refuse files that are merely unusual); PIL refuses it as
/// truncated, and so does this. The walk follows each segment's length (so the EOI of an
/// EXIF thumbnail inside APP1 is skipped) and scans a scan's entropy-coded data for the
/// next marker (`FF 00` is a data byte, `FF D0`…`FF D7` restart markers, `FF FF` fill).
/// Bytes after EOI are allowed, and stray bytes between segments skipped, as decoders do.
fn check_jpeg_complete(path: &Path, b: &[u8]) -> Result<(), DataError> {
    let truncated = |inside: String| {
        Err(DataError::format(
            path,
            format!("offset {}", b.len()),
            "a JPEG that runs to its end-of-image marker (FF D9)",
            format!("the end of the file inside {inside} (the file is truncated)"),
        ))
    };
    // after SOI
    let mut i = 2;
    loop {
        while b.get(i).is_some_and(|&x| x != 0xff) {
            i += 1;
        }
        while b.get(i) == Some(&0xff) {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return truncated("the marker segments".into());
        };
        i += 1;
        match marker {
            0xd9 => return Ok(()),
            // markers without a segment
            0x00 | 0x01 | 0xd0..=0xd7 => continue,
            _ => {}
        }
        let segment = format!("the segment of marker FF {marker:02X}");
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return truncated(segment);
        };
        if len < 2 {
            return Err(DataError::format(
                path,
                format!("offset {i}"),
                format!("the length of {segment}, at least 2"),
                len.to_string(),
            ));
        }
        i += len;
        if i > b.len() {
            return truncated(segment);
        }
        if marker != 0xda {
            continue;
        }
        // a scan: entropy-coded data up to the next marker
        loop {
            let Some(k) = b[i..].iter().position(|&x| x == 0xff) else {
                return truncated("the compressed image data".into());
            };
            i += k;
            match b.get(i + 1) {
                None => return truncated("the compressed image data".into()),
                Some(0x00 | 0xd0..=0xd7) => i += 2,
                Some(0xff) => i += 1,
                Some(_) => break,
            }
        }
    }
}

thread_local! {
    /// Whether this thread is inside [`catch_quietly`].
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into its message, without the panic hook's report. The
/// default hook prints "thread … panicked at …" and a note on backtraces to stderr before
/// `catch_unwind` sees the panic, from whichever thread decodes (the loader's threads would
/// print across the progress bar), when the error that names the file says it all. So a
/// hook, installed once, keeps quiet for a thread inside this function and passes every
/// other panic on to the hook it replaced.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.get() {
                previous(info)
            }
        }));
    });
    let outer = QUIET.replace(true);
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.set(outer);
    result.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The entries of `dir`, sorted by path, with their types (a link's own type).
fn read_dir_sorted(dir: &Path) -> Result<Vec<(PathBuf, std::fs::FileType)>, DataError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let kind = e.file_type().map_err(|err| DataError::io(&e.path(), err))?;
        v.push((e.path(), kind));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

fn is_image(p: &Path) -> bool {
    extension_lowercase(p).is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

/// The image files (by extension) under `dir`, sorted, recursing into subdirectories
/// (through links too, each directory once) and skipping hidden entries.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut walk = Walk::default();
    walk.first_visit(dir);
    Ok(walk.list(&[Some(dir)])?.pop().unwrap_or_default())
}

/// A listing of directory trees that follows symbolic links but enters each directory
/// once. Directories are known by device and inode, which every path to one shares, so a
/// link to a parent (a loop: the listing never ended, or went 40 links deep until the OS
/// refused, listing every image once per level) or a second link to the same place adds
/// nothing. Real subdirectories are listed before any link is followed, so a link from
/// one class to another class's subdirectory cannot take its images away from it.
#[derive(Default)]
struct Walk {
    /// The directories entered or about to be, as (device, inode).
    seen: HashSet<(u64, u64)>,
    /// Links to directories, with the group (class) they were found in, in the order
    /// found.
    links: Vec<(usize, PathBuf)>,
}

impl Walk {
    /// Marks `dir` as visited; false when it was already. A directory that cannot be
    /// read counts as new (listing it then reports the error).
    fn first_visit(&mut self, dir: &Path) -> bool {
        match std::fs::metadata(dir) {
            Ok(m) => self.seen.insert((m.dev(), m.ino())),
            Err(_) => true,
        }
    }

    /// The image files of each group (a directory already marked visited, or none), each
    /// sorted by path: the real subdirectories first, then the links found, in the order
    /// found (following one may find more).
    fn list(mut self, groups: &[Option<&Path>]) -> Result<Vec<Vec<PathBuf>>, DataError> {
        let mut out = vec![Vec::new(); groups.len()];
        for (g, dir) in groups.iter().enumerate() {
            if let Some(dir) = dir {
                self.walk(dir, g, &mut out[g])?;
            }
        }
        let mut next = 0;
        while let Some((g, link)) = self.links.get(next).cloned() {
            next += 1;
            if self.first_visit(&link) {
                self.walk(&link, g, &mut out[g])?;
            }
        }
        for files in &mut out {
            files.sort();
        }
        Ok(out)
    }

    /// Appends the image files under `dir` to `out`, entering real subdirectories not
    /// seen before and setting links to directories aside for [`Walk::list`].
    fn walk(&mut self, dir: &Path, group: usize, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
        for (p, kind) in read_dir_sorted(dir)? {
            if file_name(&p).starts_with('.') {
                continue;
            }
            if kind.is_dir() {
                if self.first_visit(&p) {
                    self.walk(&p, group, out)?;
                }
            } else if kind.is_symlink() && p.is_dir() {
                self.links.push((group, p));
            } else if is_image(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;
    use crate::data::DatasetKind;

    fn rgb(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 10) as u8, 200])
        })
    }

    #[test]
    fn lists_classes_and_decodes_lazily() {
        let t = TempDir::new("folder");
        let train = t.path().join("train");
        for c in ["dog", "cat", "ant"] {
            std::fs::create_dir_all(train.join(c)).unwrap();
        }
        rgb(5, 4).save(train.join("cat/b.png")).unwrap();
        rgb(6, 3).save(train.join("cat/a.PNG")).unwrap();
        rgb(16, 8).save(train.join("dog/x.jpg")).unwrap();
        std::fs::create_dir_all(train.join("dog/sub")).unwrap();
        image::GrayImage::from_pixel(3, 3, image::Luma([77]))
            .save(train.join("dog/sub/y.png"))
            .unwrap();
        std::fs::write(train.join("dog/notes.txt"), "not an image").unwrap();
        std::fs::write(train.join("dog/.hidden.jpg"), "junk").unwrap();
        let f = open_split(t.path(), Split::Train).unwrap();
        assert_eq!(f.classes, vec!["ant", "cat", "dog"]);
        assert_eq!(f.labels, vec![1, 1, 2, 2]);
        assert_eq!(file_name(&f.paths[0]), "a.PNG");
        // sorted by path: dog/sub/y.png comes before dog/x.jpg
        assert_eq!(file_name(&f.paths[2]), "y.png");
        assert_eq!(f.name, "imagenet-train");
        let a = f.image(0).unwrap();
        assert_eq!((a.channels, a.height, a.width), (3, 3, 6));
        // CHW: red plane is x*10, green plane y*10, blue 200
        assert_eq!(a.data[5], 50);
        assert_eq!(a.data[18 + 2 * 6], 20);
        assert_eq!(a.data[36], 200);
        let j = f.image(3).unwrap();
        assert_eq!((j.channels, j.height, j.width), (3, 8, 16));
        let g = f.image(2).unwrap();
        assert_eq!(g.data, vec![77; 27]);
        assert!(f.image(4).is_err());

        let e = open_split(t.path(), Split::Test).unwrap_err().to_string();
        assert!(e.contains("val: not found") && e.contains("valprep"), "{e}");
    }

    #[test]
    fn undecodable_image_names_file() {
        let t = TempDir::new("folderbad");
        std::fs::create_dir_all(t.path().join("c")).unwrap();
        let p = t.path().join("c/broken.jpg");
        std::fs::write(&p, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
        let f = ImageFolder::open(t.path()).unwrap();
        let e = f.image(0).unwrap_err().to_string();
        assert!(e.contains("broken.jpg: cannot decode image"), "{e}");

        // a truncated PNG
        let good = t.path().join("c/good.png");
        rgb(8, 8).save(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(t.path().join("c/trunc.png"), &bytes[..bytes.len() / 2]).unwrap();
        let f = ImageFolder::open(t.path()).unwrap();
        let i = f
            .paths
            .iter()
            .position(|p| file_name(p) == "trunc.png")
            .unwrap();
        let e = f.image(i).unwrap_err().to_string();
        assert!(e.contains("trunc.png"), "{e}");

        let empty = TempDir::new("folderempty");
        let e = ImageFolder::open(empty.path()).unwrap_err().to_string();
        assert!(e.contains("one subdirectory per class"), "{e}");
        std::fs::create_dir_all(empty.path().join("k")).unwrap();
        let e = ImageFolder::open(empty.path()).unwrap_err().to_string();
        assert!(
            e.contains("image files") && e.contains("none in 1 class"),
            "{e}"
        );
    }

    /// Issue 12, item 14: a flat `root/<class>/<image>` folder (the layout the help
    /// describes) is a data set: one image in ten of each class is the test split, the rest
    /// train; messages name no internal API.
    #[test]
    fn flat_folder_holds_out_a_test_split() {
        let t = TempDir::new("flat");
        for (c, n) in [("cat", 12), ("dog", 3), ("eel", 1)] {
            std::fs::create_dir_all(t.path().join(c)).unwrap();
            for i in 0..n {
                rgb(4, 4)
                    .save(t.path().join(format!("{c}/{i:02}.png")))
                    .unwrap();
            }
        }
        let train =
            crate::data::load(DatasetKind::ImageFolder, Some(t.path()), Split::Train).unwrap();
        let test =
            crate::data::load(DatasetKind::ImageFolder, Some(t.path()), Split::Test).unwrap();
        assert_eq!(train.classes(), test.classes());
        assert_eq!(train.classes(), ["cat", "dog", "eel"]);
        // cat: 12 -> 1 held out (the middle one, 06); dog: 3 -> 1 (01); eel: 1 -> none
        let names = |s: &crate::data::Source| -> Vec<String> {
            s.as_folder()
                .unwrap()
                .paths
                .iter()
                .map(|p| {
                    let c = file_name(p.parent().unwrap());
                    format!("{c}/{}", file_name(p))
                })
                .collect()
        };
        assert_eq!(names(&test), ["cat/06.png", "dog/01.png"]);
        assert_eq!(test.labels(), [0, 1]);
        assert_eq!(train.len(), 14);
        assert!(!names(&train)
            .iter()
            .any(|n| n == "cat/06.png" || n == "dog/01.png"));
        // deterministic
        let again =
            crate::data::load(DatasetKind::ImageFolder, Some(t.path()), Split::Test).unwrap();
        assert_eq!(names(&again), names(&test));

        // a val/ without train/ is explained, with no internal names
        let u = TempDir::new("valonly");
        std::fs::create_dir_all(u.path().join("val/cat")).unwrap();
        let e = open_split(u.path(), Split::Train).unwrap_err().to_string();
        assert!(
            e.contains("train: not found") && e.contains("<class>/<image>"),
            "{e}"
        );
        assert!(!e.contains("::"), "{e}");
        // and so is a train/ without val/
        let v = TempDir::new("trainonly");
        std::fs::create_dir_all(v.path().join("train/cat")).unwrap();
        let e = open_split(v.path(), Split::Test).unwrap_err().to_string();
        assert!(e.contains("val: not found") && !e.contains("::"), "{e}");
    }

    /// Issue 12, item 5: a val/ class the training split lacks is an error naming it; val's
    /// labels are mapped through the training split's class names.
    #[test]
    fn val_classes_are_matched_by_name() {
        let t = TempDir::new("valnames");
        for c in [
            "train/cat",
            "train/dog",
            "train/fish",
            "val/dog",
            "val/fish",
        ] {
            std::fs::create_dir_all(t.path().join(c)).unwrap();
            rgb(4, 4).save(t.path().join(c).join("a.png")).unwrap();
        }
        let train =
            crate::data::load(DatasetKind::ImageFolder, Some(t.path()), Split::Train).unwrap();
        let mut val =
            crate::data::load(DatasetKind::ImageFolder, Some(t.path()), Split::Test).unwrap();
        assert_eq!(val.labels(), [0, 1]);
        val.align_classes(train.classes()).unwrap();
        assert_eq!(val.labels(), [1, 2]);
        assert_eq!(val.classes(), train.classes());

        // a class train/ lacks (equal counts, different names: bird is no fish)
        for c in ["val/bird", "val/cat"] {
            std::fs::create_dir_all(t.path().join(c)).unwrap();
            rgb(4, 4).save(t.path().join(c).join("a.png")).unwrap();
        }
        std::fs::remove_dir_all(t.path().join("val/fish")).unwrap();
        std::fs::remove_dir_all(t.path().join("val/dog")).unwrap();
        let mut val =
            crate::data::load(DatasetKind::ImageFolder, Some(t.path()), Split::Test).unwrap();
        let e = val.align_classes(train.classes()).unwrap_err().to_string();
        assert!(
            e.contains("1 class 'bird' not in the training split"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    /// Issue 12, item 7: an image of absurd shape is refused from its header, naming the
    /// file, before it is decoded or resized.
    #[test]
    fn extreme_images_are_refused_before_decoding() {
        let t = TempDir::new("extreme");
        let p = t.path().join("wide.png");
        image::GrayImage::from_pixel(65535, 1, image::Luma([0]))
            .save(&p)
            .unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() < 1000);
        let e = decode_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("wide.png: image header") && e.contains("aspect ratio"),
            "{e}"
        );
        // a header claiming 3000x3000 pixels in a small file
        let mut png = Vec::new();
        image::GrayImage::from_pixel(64, 64, image::Luma([9]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // IHDR width and height at bytes 16..24
        png[16..20].copy_from_slice(&3000u32.to_be_bytes());
        png[20..24].copy_from_slice(&3000u32.to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&png[12..29]);
        png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        let e = decode_bytes(Path::new("big.png"), &png)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("big.png: image header") && e.contains("per byte"),
            "{e}"
        );
        // a resize of an already decoded extreme image is bounded by the target too
        let img = Image::new(1, 1, 4000, vec![0; 4000]).unwrap();
        let mut rng = crate::data::Rng::new(1);
        let tf = crate::data::Transform {
            geometry: crate::data::Geometry::imagenet_eval(),
            ..Default::default()
        };
        let e = tf.apply(img, &mut rng).unwrap_err().to_string();
        assert!(e.contains("aspect ratio"), "{e}");
        // an ordinary image still decodes
        rgb(40, 30).save(t.path().join("ok.png")).unwrap();
        assert_eq!(decode_file(&t.path().join("ok.png")).unwrap().width, 40);
    }
}
