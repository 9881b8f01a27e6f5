//! An image folder in ImageNet's (and torchvision `ImageFolder`'s) layout:
//! `root/<class>/**/<image>.{png,jpg,jpeg}`. Classes are the sorted names of the subdirectories
//! of `root`; images are listed (sorted, recursively, hidden entries skipped) when the folder is
//! opened and decoded only when asked for, since a set like ImageNet does not fit in memory.
//! Decoding uses the `image` crate (PNG and JPEG); every image becomes 8-bit RGB.

use std::path::{Path, PathBuf};

use super::{DataError, Image, Split};

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
        for entry in read_dir_sorted(root)? {
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
        let mut paths = Vec::new();
        let mut labels = Vec::new();
        for (label, (_, dir)) in classes.iter().enumerate() {
            let mut files = Vec::new();
            walk(dir, &mut files)?;
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

/// Opens `dir/train` for [`Split::Train`], and `dir/val` (or else `dir/test`) for
/// [`Split::Test`]. The class lists of the two splits are the caller's to compare.
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
    let root = candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_dir())
        .ok_or_else(|| DataError::NotFound {
            path: dir.join(candidates[0]),
            hint: Some(format!(
                "expected {} with one subdirectory per class (ImageNet's validation images must be \
                 sorted into class directories first, e.g. with the common valprep.sh); to read a \
                 single folder use ImageFolder::open",
                candidates.iter().map(|c| format!("{}/{c}/", dir.display())).collect::<Vec<_>>().join(" or ")
            )),
        })?;
    let mut f = ImageFolder::open(&root)?;
    f.name = format!("imagenet-{split}");
    Ok(f)
}

/// Decodes a PNG or JPEG file to RGB CHW bytes; errors name the file.
pub fn decode_file(path: &Path) -> Result<Image, DataError> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let img = reader.decode().map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(Image::from_rgb(&img.to_rgb8()))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        v.push(e.map_err(|e| DataError::io(dir, e))?.path());
    }
    v.sort();
    Ok(v)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .map(|e| EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Appends the image files under `dir`, sorted, recursing into subdirectories.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for p in read_dir_sorted(dir)? {
        if file_name(&p).starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;

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
}
