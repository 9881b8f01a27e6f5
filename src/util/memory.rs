//! How much more memory this process may take, read before a large allocation so that a
//! command refuses with a message instead of aborting in the allocator (or being killed).
//!
//! The machine's available memory is only one bound. A process may also be held to:
//! - its address-space limit (`RLIMIT_AS`, `ulimit -v`): every mapping counts, so what is
//!   left is the limit less the address space in use (`VmSize`);
//! - its data limit (`RLIMIT_DATA`, Linux ≥ 4.7 counts private writable mappings):
//!   the limit less `VmData`;
//! - its control group's memory limit (containers, Slurm, systemd): cgroup v2
//!   `memory.max` less `memory.current`, v1 `memory.limit_in_bytes` less
//!   `memory.usage_in_bytes`, at every level from the process's group up, page cache that
//!   could be dropped (`inactive_file`) not counted as used.
//!
//! [`headroom`] is the least of these. Linux only; elsewhere it is unknown (`None`) and
//! nothing is checked.

use std::path::{Path, PathBuf};

/// Which limit leaves the least room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The machine's available memory (`MemAvailable` in /proc/meminfo).
    Available,
    /// The process's address-space limit.
    AddressSpace,
    /// The process's data-segment limit.
    Data,
    /// The control group's memory limit.
    Cgroup,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bound::Available => "this machine has available",
            Bound::AddressSpace => "this process may still map (its RLIMIT_AS, `ulimit -v`)",
            Bound::Data => "this process may still allocate (its RLIMIT_DATA, `ulimit -d`)",
            Bound::Cgroup => "this process's control group may still use (its memory limit)",
        })
    }
}

/// Bytes this process may still take, and the limit that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    /// Bytes.
    pub bytes: u64,
    /// The limit that leaves the least.
    pub bound: Bound,
}

/// The least room any limit leaves (see the module docs); `None` where nothing is known.
pub fn headroom() -> Option<Headroom> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let candidates = [
        meminfo_available().map(|b| (b, Bound::Available)),
        rlimit_room(Bound::AddressSpace, kib_field(&status, "VmSize:"))
            .map(|b| (b, Bound::AddressSpace)),
        rlimit_room(Bound::Data, kib_field(&status, "VmData:")).map(|b| (b, Bound::Data)),
        cgroup_room().map(|b| (b, Bound::Cgroup)),
    ];
    candidates
        .into_iter()
        .flatten()
        .min_by_key(|&(b, _)| b)
        .map(|(bytes, bound)| Headroom { bytes, bound })
}

/// `MemAvailable` of /proc/meminfo, bytes.
fn meminfo_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&s, "MemAvailable:")
}

/// A `Name:   1234 kB` line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The soft limit of `which` (address space or data) less `used`, what the process
/// already has of it; `None` when unlimited.
#[cfg(target_os = "linux")]
fn rlimit_room(which: Bound, used: Option<u64>) -> Option<u64> {
    let resource = match which {
        Bound::Data => libc::RLIMIT_DATA,
        _ => libc::RLIMIT_AS,
    };
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(r.rlim_cur.saturating_sub(used.unwrap_or(0)))
}

#[cfg(not(target_os = "linux"))]
fn rlimit_room(_which: Bound, _used: Option<u64>) -> Option<u64> {
    None
}

/// The least room the control groups of this process leave, from its own group up.
fn cgroup_room() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut least: Option<u64> = None;
    for line in membership.lines() {
        // v2: `0::/path`; v1: `N:memory:/path` (or with other controllers, comma-joined)
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (root, files) = if controllers.is_empty() {
            (Path::new("/sys/fs/cgroup"), V2)
        } else if controllers.split(',').any(|c| c == "memory") {
            (Path::new("/sys/fs/cgroup/memory"), V1)
        } else {
            continue;
        };
        for dir in group_dirs(root, path) {
            if let Some(room) = group_room(&dir, files) {
                least = Some(least.map_or(room, |l| l.min(room)));
            }
        }
    }
    least
}

/// The files of one cgroup version: limit, usage, and the statistic of reclaimable cache.
type GroupFiles = (&'static str, &'static str, &'static str);
const V2: GroupFiles = ("memory.max", "memory.current", "inactive_file");
const V1: GroupFiles = (
    "memory.limit_in_bytes",
    "memory.usage_in_bytes",
    "total_inactive_file",
);

/// The directories of the group at `path` and of its ancestors under `root`, those that
/// exist (inside a container the group's own directory is often mounted as the root).
fn group_dirs(root: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut p = Path::new(path.trim_start_matches('/'));
    loop {
        let d = root.join(p);
        if d.is_dir() {
            dirs.push(d);
        }
        match p.parent() {
            Some(up) => p = up,
            None => break,
        }
    }
    dirs
}

/// Limit less usage (without reclaimable cache) of the group at `dir`; `None` when it has
/// no limit.
fn group_room(dir: &Path, (limit, usage, cache): GroupFiles) -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    // "max" (v2) or a number near i64::MAX (v1) means no limit
    let limit: u64 = read(limit)?.trim().parse().ok()?;
    if limit >= 1 << 60 {
        return None;
    }
    let usage: u64 = read(usage)?.trim().parse().ok()?;
    let cache = read("memory.stat")
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(cache)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0u64);
    Some(limit.saturating_sub(usage.saturating_sub(cache)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields_and_group_files() {
        let status = "Name:\tx\nVmSize:\t  2048 kB\nVmData:\t 10 kB\n";
        assert_eq!(kib_field(status, "VmSize:"), Some(2 << 20));
        assert_eq!(kib_field(status, "VmRSS:"), None);
        let dir = std::env::temp_dir().join(format!("densenet-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let write = |f: &str, s: &str| std::fs::write(dir.join(f), s).unwrap();
        write("a/memory.max", "1000\n");
        write("a/memory.current", "900\n");
        write("a/memory.stat", "anon 500\ninactive_file 300\n");
        write("a/b/memory.max", "max\n");
        // 1000 − (900 − 300); the inner group has no limit of its own
        assert_eq!(group_room(&dir.join("a"), V2), Some(400));
        assert_eq!(group_room(&dir.join("a/b"), V2), None);
        let dirs = group_dirs(&dir, "/a/b");
        assert_eq!(dirs, [dir.join("a/b"), dir.join("a"), dir.clone()]);
        std::fs::remove_dir_all(&dir).ok();
        // whatever this machine's limits, the least is reported with its reason
        if let Some(h) = headroom() {
            assert!(h.bytes > 0, "{h:?}");
        }
    }
}
