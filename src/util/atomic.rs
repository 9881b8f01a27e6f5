//! Crash-safe file writes: write a temporary file next to the target, flush it to disk,
//! then rename it over the target. A rename within one directory is atomic on POSIX file
//! systems, so a reader (or a process killed at any moment) sees either the old file or the
//! new one, never half of one.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a file path", path.display())))?;
    let tmp = match dir {
        Some(d) => d.join(format!(".{}.tmp", name.to_string_lossy())),
        None => format!(".{}.tmp", name.to_string_lossy()).into(),
    };
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(d) = dir {
        // make the rename itself durable; not every platform can open a directory
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
    Ok(())
}
