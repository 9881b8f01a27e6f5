//! Path identity, so a command can refuse to write over one of its own inputs, and the
//! extension that names a file's format.

use std::path::{Path, PathBuf};

/// `path` made absolute with symbolic links resolved; a path that does not exist yet (an
/// output) is resolved through its parent directory, when that exists.
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let name = path.file_name()?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = match parent {
        Some(p) => p.canonicalize().ok()?,
        None => std::env::current_dir().ok()?,
    };
    Some(parent.join(name))
}

/// Whether `a` and `b` name the same file: the same resolved path, or (both existing) the
/// same device and inode, which also catches hard links.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            if x.dev() == y.dev() && x.ino() == y.ino() {
                return true;
            }
        }
    }
    match (resolved(a), resolved(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// `path`'s extension in lower case (`a.PNG`: `png`), the way a file's format is told.
pub fn extension_lowercase(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_sees_through_spellings_and_links() {
        let dir = std::env::temp_dir().join(format!("densenet-paths-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let f = dir.join("f.bin");
        std::fs::write(&f, b"x").unwrap();
        assert!(same_file(&f, &dir.join("sub/../f.bin")));
        assert!(same_file(&dir.join("new.bin"), &dir.join("sub/../new.bin")));
        assert!(!same_file(&f, &dir.join("g.bin")));
        let link = dir.join("hard.bin");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&f, &link).unwrap();
        assert!(same_file(&f, &link));
        std::fs::remove_dir_all(&dir).ok();
    }
}
