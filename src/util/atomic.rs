//! Every file the tool writes goes through here: crash-safe, and never over an input or a
//! special file.
//!
//! A write is a temporary file next to the target, flushed to disk, then renamed over the
//! target. A rename within one directory is atomic on POSIX file systems, so a reader (or
//! a process killed at any moment) sees either the old file or the new one, never half
//! of one. Before that, [`check_output`] decides where the bytes go:
//! - an output that is one of the command's inputs (the same canonical path, or the same
//!   device and inode: a hard link) is refused, so `embed --out` naming `--weights`
//!   cannot replace the checkpoint;
//! - a symbolic link is followed and its target replaced, as a shell's `>` would write
//!   to it: the link stays a link;
//! - anything that exists and is not a regular file (a FIFO, a device such as
//!   `/dev/full`, a socket, a directory) is refused: renaming over it would replace it.
//!
//! Commands check their outputs against their inputs when they start, before any work,
//! and again when they write; files that only the tool's own run directories hold are
//! written with [`write()`].

use std::io::Write;
use std::path::{Path, PathBuf};

/// Links followed before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// One of a command's input files, and what it is to the user (`the --weights file`).
pub type Input<'a> = (&'a str, &'a Path);

/// Where writing `path` puts the bytes, after the checks of the module docs: `path`
/// itself, or the file its symbolic links lead to. `inputs` are the command's input
/// files. An error says why, starting `it is …`: callers put `path` before it.
pub fn check_output(path: &Path, inputs: &[Input]) -> std::io::Result<PathBuf> {
    let target = follow_links(path)?;
    match std::fs::metadata(&target) {
        Ok(m) if !m.is_file() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} {}, not a regular file; outputs are written to regular files only",
                    it_is(path, &target),
                    kind(&m)
                ),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some((what, input)) = inputs
        .iter()
        .find(|(_, i)| crate::util::paths::same_file(&target, i))
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} {what} {}, an input that writing would destroy; choose another path",
                it_is(path, &target),
                input.display()
            ),
        ));
    }
    Ok(target)
}

/// Writes `bytes` to `path` atomically, after [`check_output`] against `inputs`.
pub fn write_output(path: &Path, bytes: &[u8], inputs: &[Input]) -> std::io::Result<()> {
    let target = check_output(path, inputs)?;
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = match dir {
        Some(d) => d.join(format!(".{}.tmp", name.to_string_lossy())),
        None => format!(".{}.tmp", name.to_string_lossy()).into(),
    };
    // a temporary file left by a crash is replaced; `create_new` never opens whatever
    // else may sit at that name (a link, a FIFO)
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // a replaced file keeps its permissions
        if let Ok(m) = std::fs::metadata(&target) {
            f.set_permissions(m.permissions())?;
        }
        f.sync_all()?;
    }
    if let Err(e) = std::fs::rename(&tmp, &target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(d) = dir {
        // make the rename itself durable; not every platform can open a directory
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically ([`write_output`] with no inputs to protect).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_output(path, bytes, &[])
}

/// `path` with its symbolic links followed (relative targets from the link's directory),
/// up to the first name that is not a link or does not exist.
fn follow_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("more than {MAX_LINKS} symbolic links (a loop?)"),
    ))
}

/// `it is`, or `it links to TARGET, which is` when `path` is a link.
fn it_is(path: &Path, target: &Path) -> String {
    if path == target {
        "it is".into()
    } else {
        format!("it links to {}, which is", target.display())
    }
}

/// What a file that is not a regular one is, in words.
fn kind(m: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if m.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Links are written through, inputs and special files refused, and a failed check
    /// leaves everything as it was.
    #[test]
    fn outputs_follow_links_and_spare_inputs_and_special_files() {
        let dir = std::env::temp_dir().join(format!("densenet-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let target = dir.join("sub/target.bin");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink("sub/target.bin", &link).unwrap();
        write(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // a dangling link creates its target
        let dangling = dir.join("dangling.bin");
        std::os::unix::fs::symlink("sub/made.bin", &dangling).unwrap();
        write(&dangling, b"made").unwrap();
        assert_eq!(std::fs::read(dir.join("sub/made.bin")).unwrap(), b"made");
        // an input, by another spelling or through a link
        let input = dir.join("sub/../sub/target.bin");
        let e = write_output(&link, b"x", &[("the --input file", &input)]).unwrap_err();
        assert!(e.to_string().contains("which is the --input file"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // special files (never /dev/null here: a broken check would replace it) and
        // directories
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = write(&fifo, b"x").unwrap_err();
        assert!(
            e.to_string().contains("it is a FIFO, not a regular file"),
            "{e}"
        );
        let e = write(&dir.join("sub"), b"x").unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        // a link loop
        std::os::unix::fs::symlink("loop.bin", dir.join("loop.bin")).unwrap();
        let e = write(&dir.join("loop.bin"), b"x").unwrap_err();
        assert!(e.to_string().contains("symbolic links"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
