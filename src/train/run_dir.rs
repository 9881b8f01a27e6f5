//! The run directory: created (or claimed) for a fresh run so that nothing is ever
//! overwritten, and removed again when a run fails before its first checkpoint.

use super::TrainError;
use crate::dist::Collective;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Options of one call to [`train`](super::train).
pub struct RunOptions<'a> {
    /// The run directory. A fresh run creates it; an existing directory is used only if
    /// it is empty (or, with `replace`, holds a run).
    pub dir: &'a Path,
    /// Continue from `dir/last.safetensors`.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many epochs in total, even if the configuration
    /// asks for more; a later `resume` continues. `None`: run to the end.
    pub stop_after: Option<usize>,
    /// A fresh run in a directory that holds a run replaces that run's files (the files
    /// [`RUN_FILES`] names; anything else there is kept) instead of being refused.
    pub replace: bool,
    /// When `dir` exists, a fresh run takes the first free `dir-2`, `dir-3`, … instead
    /// (for generated names: two runs started in the same second get two directories).
    pub unique: bool,
    /// Raised (e.g. by a Ctrl-C handler) to stop after the current step; see
    /// [`TrainError::Interrupted`].
    pub interrupt: Option<&'a AtomicBool>,
    /// The processes of a data-parallel run (`None`, or one process: this one alone).
    /// Each takes its share of every batch; rank 0 writes the run directory.
    pub comm: Option<Arc<dyn Collective>>,
}

impl<'a> RunOptions<'a> {
    /// A fresh run in `dir`, to the end, not replacing anything, uninterruptible.
    pub fn new(dir: &'a Path) -> Self {
        RunOptions {
            dir,
            resume: false,
            stop_after: None,
            replace: false,
            unique: false,
            interrupt: None,
            comm: None,
        }
    }
}

/// The files a run directory is made of (and their temporary files while being written).
pub const RUN_FILES: [&str; 7] = [
    "config.json",
    "metrics.csv",
    "steps.csv",
    "last.safetensors",
    "best.safetensors",
    "summary.json",
    "curves.png",
];

/// Whether `dir` holds a run (any of [`RUN_FILES`], or one being written).
pub fn is_run_dir(dir: &Path) -> bool {
    RUN_FILES
        .iter()
        .any(|f| dir.join(f).exists() || dir.join(format!(".{f}.tmp")).exists())
}

/// Removes the files of a run from `dir` (not the directory, nor other files in it).
pub(super) fn remove_run_files(dir: &Path) -> Result<(), TrainError> {
    for f in RUN_FILES {
        for name in [f.to_string(), format!(".{f}.tmp")] {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(TrainError::Io { path, source: e })
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// What [`claim_run_dir`] created, to be removed if the run fails before its first
/// checkpoint.
pub(super) struct Claimed {
    pub dir: PathBuf,
    /// The directory was created by this run (else it was empty, or a replaced run).
    created: bool,
    /// Its parent (`runs/`) was created by this run too.
    parent: Option<PathBuf>,
}

/// Creates (or claims) the directory of a fresh run as `opts` says.
pub(super) fn claim_run_dir(opts: &RunOptions) -> Result<Claimed, TrainError> {
    let base = opts.dir;
    let mut new_parent = None;
    if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            new_parent = Some(parent.to_path_buf());
        }
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let claimed = |dir: PathBuf, created: bool| Claimed {
        dir,
        created,
        parent: new_parent.clone().filter(|_| created),
    };
    // `create_dir`, not `create_dir_all`: of two processes asking for the same name,
    // exactly one creates it
    let max = if opts.unique { 1000 } else { 1 };
    for k in 1..=max {
        let dir = if k == 1 {
            base.to_path_buf()
        } else {
            let mut name = base.as_os_str().to_owned();
            name.push(format!("-{k}"));
            PathBuf::from(name)
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(claimed(dir, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if opts.unique {
                    continue;
                }
            }
            Err(e) => {
                return Err(TrainError::Io {
                    path: dir,
                    source: e,
                })
            }
        }
        // an existing directory named by the user
        let meta = std::fs::metadata(&dir).map_err(io(&dir))?;
        if !meta.is_dir() {
            return Err(TrainError::NotARunDir {
                dir,
                what: "exists and is not a directory".into(),
            });
        }
        let empty = std::fs::read_dir(&dir).map_err(io(&dir))?.next().is_none();
        if empty {
            return Ok(claimed(dir, false));
        }
        if !is_run_dir(&dir) {
            return Err(TrainError::NotARunDir {
                dir,
                what: "not empty and not a run directory".into(),
            });
        }
        if !opts.replace {
            return Err(TrainError::RunExists { dir });
        }
        remove_run_files(&dir)?;
        return Ok(claimed(dir, false));
    }
    Err(TrainError::NotARunDir {
        dir: base.to_path_buf(),
        what: format!("{max} directories of this name exist already"),
    })
}

/// Undoes [`claim_run_dir`] for a run that failed before its first checkpoint.
pub(super) fn release_run_dir(c: &Claimed) {
    if c.created {
        let _ = std::fs::remove_dir_all(&c.dir);
    } else {
        let _ = remove_run_files(&c.dir);
    }
    if let Some(parent) = &c.parent {
        // only if empty: another run may have started there meanwhile
        let _ = std::fs::remove_dir(parent);
    }
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
