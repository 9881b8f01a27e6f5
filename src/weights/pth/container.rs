//! The zip container of a `torch.save` file: its top-level folder and its members, read
//! whole (stored, never compressed: the only method `torch.save` uses).

use std::io::{Cursor, Read};

/// Finds the archive's single top-level folder holding `data.pkl`.
pub(super) fn find_prefix(archive: &zip::ZipArchive<Cursor<&[u8]>>) -> Result<String, String> {
    let mut seen = Vec::new();
    for name in archive.file_names() {
        let name = name.map_err(|e| format!("unreadable member name: {e}"))?;
        if let Some((prefix, "data.pkl")) = name.split_once('/') {
            return Ok(prefix.to_string());
        }
        if seen.len() < 5 {
            seen.push(name.to_string());
        }
    }
    Err(format!(
        "no `<prefix>/data.pkl` member: not a torch.save checkpoint (first members: {seen:?})"
    ))
}

/// Reads a whole member, or `None` when the archive lacks it;
/// `archive_len` is the archive's size in bytes.
pub(super) fn read_member_opt(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    archive_len: usize,
) -> Result<Option<Vec<u8>>, String> {
    let mut file = match archive.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("cannot open member: {e}")),
    };
    if file.compression() != zip::CompressionMethod::Stored {
        return Err(format!(
            "member is compressed ({:?}); torch.save stores members uncompressed and this \
             reader supports only that",
            file.compression()
        ));
    }
    // Torch stores members uncompressed (the only method this reader
    // enables), so a member is never larger than the archive; the cap keeps a
    // lying header from causing a huge allocation.
    let cap = usize::try_from(file.size())
        .unwrap_or(usize::MAX)
        .min(archive_len);
    let mut buf = Vec::with_capacity(cap);
    file.read_to_end(&mut buf)
        .map_err(|e| format!("cannot read member (truncated or corrupt?): {e}"))?;
    Ok(Some(buf))
}
