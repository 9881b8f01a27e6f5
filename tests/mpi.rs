//! Data-parallel training on MPI, with 2 and 8 processes on this machine (`--features mpi`;
//! `.ci/run` installs Open MPI; 8 processes oversubscribe its 2 cores, one thread each).
//! Two kinds of tests:
//! - gradients and steps, in the library: this test binary runs its own `worker_*` tests
//!   under `mpirun -np N`, and each process compares the summed gradient of its share (or
//!   the weights after a few steps) with the one-process result it computes itself;
//! - whole runs, through the command line: 2 × 32 and 8 × 8 images against 1 × 64,
//!   resuming, a batch size 2 does not divide, a last batch smaller than 8 processes, and
//!   a process killed mid-run.

mod common;
use common::rel_l2;
use densenet::data::pipeline::share_of;
use densenet::dist::mpi::Mpi;
use densenet::dist::{BnSync, Collective, GradSync, Numbers, Pending};
use densenet::nn::TrainOptions;
use densenet::ops::norm::set_stats_sync;
use densenet::optim::{param_groups, Sgd, SgdConfig};
use densenet::train::{DataParallel, StepInput};
use densenet::util::rng::Rng;
use densenet::{AnyModel, MemoryMode, ModelConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// `mpirun -np N PROGRAM ARGS…`, as root where the tests run as root (CI), oversubscribed
/// (this machine has 2 cores).
fn mpirun(np: usize, program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(np.to_string())
        .arg(program)
        .args(args);
    c
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the `worker` test of this binary in `np` processes; passes when all pass.
fn run_workers(worker: &str, np: usize) {
    let exe = std::env::current_exe().unwrap();
    let out = mpirun(
        np,
        &exe,
        &[worker, "--exact", "--ignored", "--test-threads=1"],
    )
    .output()
    .expect("mpirun (Open MPI) must be installed for the MPI tests");
    assert!(out.status.success(), "{}", text(&out));
    let passed = String::from_utf8_lossy(&out.stdout)
        .matches("1 passed")
        .count();
    assert_eq!(passed, np, "every process ran the worker:\n{}", text(&out));
}

/// A small DenseNet-BC (two layers per block) with non-trivial BN parameters, and a batch
/// of 64 random images with labels, the same in every process.
fn model_and_batch() -> (AnyModel, Vec<f32>, Vec<u32>) {
    let cfg = ModelConfig::from_name("densenet-bc-16-8").unwrap();
    let mut net = AnyModel::new(&cfg, 3);
    let mut rng = Rng::new(11);
    let n = 64;
    let s = cfg.input_size();
    let x: Vec<f32> = (0..n * cfg.in_channels() * s * s)
        .map(|_| rng.normal() as f32)
        .collect();
    let y: Vec<u32> = (0..n).map(|i| (i * 7 % cfg.num_classes()) as u32).collect();
    let bufs = net.buffers_mut();
    bufs.params
        .iter_mut()
        .for_each(|v| *v += 0.05 * rng.normal() as f32);
    (net, x, y)
}

/// Half `k` (0 or 1) of the batch: 32 images and their labels.
fn half<'a>(x: &'a [f32], y: &'a [u32], k: usize) -> (&'a [f32], &'a [u32]) {
    let per = x.len() / y.len();
    (
        &x[k * 32 * per..(k + 1) * 32 * per],
        &y[k * 32..(k + 1) * 32],
    )
}

/// One process's gradient of `images` (a share of `total`), summed over the processes
/// through [`GradSync`] when `comm` is given.
fn gradient(
    net: &mut AnyModel,
    x: &[f32],
    y: &[u32],
    total: Option<usize>,
    mode: MemoryMode,
    comm: Option<&dyn Collective>,
) -> Vec<f32> {
    let mut ws = net.workspace(y.len(), mode, true);
    let opts = TrainOptions {
        batch_total: total,
        ..Default::default()
    };
    net.forward_train(&mut ws, x, y, &opts);
    assert!(ws.batch() == y.len());
    net.zero_grad();
    match comm {
        None => net.backward(&mut ws, &opts),
        Some(comm) => {
            // small buckets, so that several are summed while the pass goes on
            let sync = GradSync::new(comm, net.grads().len(), 4096);
            {
                let ready = |o: usize, t: &[f32]| sync.ready(o, t);
                let opts = TrainOptions {
                    grads_ready: Some(&ready),
                    ..opts
                };
                net.backward(&mut ws, &opts);
            }
            sync.finish(net.buffers_mut().grads);
        }
    }
    net.grads().to_vec()
}

#[test]
fn with_sync_bn_two_shares_give_the_one_process_gradient() {
    run_workers("worker_sync_bn", 2);
}

#[test]
#[ignore = "run in 2 processes by with_sync_bn_two_shares_give_the_one_process_gradient"]
fn worker_sync_bn() {
    let comm: Arc<dyn Collective> = Arc::new(Mpi::start().unwrap());
    let r = comm.rank();
    for mode in [MemoryMode::Efficient, MemoryMode::Naive] {
        let (mut net, x, y) = model_and_batch();
        let whole = gradient(&mut net, &x, &y, None, mode, None);
        let whole_stats = net.stats().to_vec();
        let (mut net, _, _) = model_and_batch();
        let bn = Arc::new(BnSync::new(comm.clone()));
        bn.set_share(32, 64);
        set_stats_sync(Some(bn));
        let (xs, ys) = half(&x, &y, r);
        let summed = gradient(&mut net, xs, ys, Some(64), mode, Some(&*comm));
        set_stats_sync(None);
        let e = rel_l2(&summed, &whole);
        assert!(e < 1e-4, "{mode}: gradient relative L2 error {e:.2e}");
        // running statistics from the whole batch's statistics: the same in every process
        let e = rel_l2(net.stats(), &whole_stats);
        assert!(
            e < 1e-5,
            "{mode}: running statistics relative L2 error {e:.2e}"
        );
    }
}

#[test]
fn without_sync_bn_the_gradient_is_the_mean_of_the_processes_own() {
    run_workers("worker_own_bn", 2);
}

#[test]
#[ignore = "run in 2 processes by without_sync_bn_the_gradient_is_the_mean_of_the_processes_own"]
fn worker_own_bn() {
    let comm: Arc<dyn Collective> = Arc::new(Mpi::start().unwrap());
    let r = comm.rank();
    for mode in [MemoryMode::Efficient, MemoryMode::Naive] {
        // each share's own gradient (a batch of 32 normalised by itself), both computed here
        let own: Vec<Vec<f32>> = (0..2)
            .map(|k| {
                let (mut net, x, y) = model_and_batch();
                let (xs, ys) = half(&x, &y, k);
                gradient(&mut net, xs, ys, None, mode, None)
            })
            .collect();
        let mean: Vec<f32> = own[0]
            .iter()
            .zip(&own[1])
            .map(|(a, b)| (a + b) / 2.0)
            .collect();
        let (mut net, x, y) = model_and_batch();
        let (xs, ys) = half(&x, &y, r);
        let summed = gradient(&mut net, xs, ys, Some(64), mode, Some(&*comm));
        let e = rel_l2(&summed, &mean);
        assert!(
            e < 1e-5,
            "{mode}: relative L2 error {e:.2e} against the mean"
        );
        // and it is not the whole batch's gradient (the statistics differ): the test can fail
        let (mut net, x, y) = model_and_batch();
        let whole = gradient(&mut net, &x, &y, None, mode, None);
        assert!(rel_l2(&summed, &whole) > 1e-3);
    }
}

// ---- whole runs through the command line ----

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_densenet"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// 192 of the digits' training images (the rest held out): an epoch is 3 steps of 64.
const RUN: [&str; 8] = [
    "--threads",
    "1",
    "train",
    "--val-split",
    "0.872",
    "--augment",
    "false",
    "--json",
];

/// [`RUN`] on 195 images: 3 steps of 64, and a last batch of 3.
const RUN_195: [&str; 8] = [
    "--threads",
    "1",
    "train",
    "--val-split",
    "0.87",
    "--augment",
    "false",
    "--json",
];

fn train_one(dir: &Path, extra: &[&str]) -> Output {
    train_one_on(&RUN, dir, extra)
}

fn train_one_on(run: &[&str], dir: &Path, extra: &[&str]) -> Output {
    Command::new(exe())
        .args(run)
        .arg("--out")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

fn train_two(dir: &Path, extra: &[&str]) -> Output {
    train_n(2, dir, extra)
}

fn train_n(np: usize, dir: &Path, extra: &[&str]) -> Output {
    train_n_on(np, &RUN, dir, extra)
}

fn train_n_on(np: usize, run: &[&str], dir: &Path, extra: &[&str]) -> Output {
    let mut c = mpirun(np, &exe(), run);
    c.arg("--out").arg(dir).args(extra);
    c.output().unwrap()
}

/// Parameters (not the optimizer's state) of a run's `last.safetensors`, in table order.
fn params(dir: &Path) -> Vec<f32> {
    let cfg: densenet::train::TrainConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let mut net = AnyModel::new(&cfg.model, cfg.seed);
    let f = densenet::weights::read_safetensors(&dir.join("last.safetensors")).unwrap();
    net.load_tensors(&f.tensors, "last.safetensors").unwrap();
    net.params().to_vec()
}

/// The initial parameters of a run (its configuration's seed).
fn initial(dir: &Path) -> Vec<f32> {
    let cfg: densenet::train::TrainConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    AnyModel::new(&cfg.model, cfg.seed).params().to_vec()
}

fn update(dir: &Path) -> Vec<f32> {
    params(dir)
        .iter()
        .zip(initial(dir))
        .map(|(a, b)| a - b)
        .collect()
}

#[test]
fn three_steps_of_two_times_32_images_are_one_process_with_64() {
    let (one, two, own) = (tmp("one"), tmp("two"), tmp("own"));
    let out = train_one(&one, &["--epochs", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = train_two(&two, &["--epochs", "1", "--sync-bn"]);
    assert!(out.status.success(), "{}", text(&out));
    // the weights' change over the 3 steps, within the parity tests' gradient tolerance
    let e = rel_l2(&update(&two), &update(&one));
    assert!(e < 1e-2, "relative L2 error of the update {e:.2e}");
    // without synchronised BN the processes normalise with their own statistics: not the
    // same run (so the comparison above can fail)
    let out = train_two(&own, &["--epochs", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(rel_l2(&update(&own), &update(&one)) > 5e-2);
    // rank 0 alone wrote the run: one summary on stdout
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("\"test_accuracy\"").count(), 1, "{stdout}");
    for d in [one, two, own] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn eight_processes_with_sync_bn_are_one_process() {
    let (one, eight) = (tmp("one-of-8"), tmp("eight"));
    let out = train_one(&one, &["--epochs", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = train_n(8, &eight, &["--epochs", "1", "--sync-bn"]);
    assert!(out.status.success(), "{}", text(&out));
    // 3 steps of 8 × 8 images, each process with one thread: the weights within rounding
    // (4.7e-6 measured, what one process on 2 threads instead of 1 differs by too), and
    // their change within 1e-3 (3e-4 measured)
    let e = rel_l2(&params(&eight), &params(&one));
    assert!(e < 1e-5, "relative L2 error of the weights {e:.2e}");
    let e = rel_l2(&update(&eight), &update(&one));
    assert!(e < 1e-3, "relative L2 error of the update {e:.2e}");
    for d in [one, eight] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A last batch of 3 images cannot be shared by 8 processes: it is skipped, on every
/// process alike. Without synchronised BN, 8 processes of 8 images are one process
/// accumulating 8 passes of 8 (the same images in each pass, normalised alike), which
/// skips that batch too (a pass needs an image).
#[test]
fn eight_processes_skip_a_last_batch_smaller_than_eight() {
    let (one, eight) = (tmp("accumulate-8"), tmp("eight-195"));
    let out = train_one_on(&RUN_195, &one, &["--epochs", "1", "--accumulate", "8"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = train_n_on(8, &RUN_195, &eight, &["--epochs", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    for dir in [&one, &eight] {
        let steps = densenet::train::read_steps(&dir.join("steps.csv")).unwrap();
        let images: Vec<usize> = steps.iter().map(|s| s.images).collect();
        assert_eq!(images, [64, 64, 64], "{}", dir.display());
    }
    // rounding: one process on 1 thread against 2 differs by 5e-6 here; batch norm over 8
    // images amplifies it (1.3e-5 measured), a pass more or less would be 1e-2
    let e = rel_l2(&params(&eight), &params(&one));
    assert!(e < 1e-4, "relative L2 error of the weights {e:.2e}");
    for d in [one, eight] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn accumulating_under_mpi_sums_the_gradients_once_a_step() {
    run_workers("worker_accumulate", 8);
}

/// Counts what is summed in single precision (gradients, running statistics).
struct Counting {
    inner: Arc<dyn Collective>,
    f32_sums: AtomicUsize,
    f32_floats: AtomicUsize,
}

impl Collective for Counting {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn start_sum(&self, v: Numbers) -> Pending<Numbers> {
        if let Numbers::F32(v) = &v {
            self.f32_sums.fetch_add(1, Ordering::SeqCst);
            self.f32_floats.fetch_add(v.len(), Ordering::SeqCst);
        }
        self.inner.start_sum(v)
    }
    fn broadcast(&self, bytes: Vec<u8>) -> Vec<u8> {
        self.inner.broadcast(bytes)
    }
    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
}

/// Three steps of `dp` with `passes` passes on this process's share of the batch; the
/// weights after them.
fn three_steps(dp: &mut DataParallel, passes: usize) -> Vec<f32> {
    let (mut net, x, y) = model_and_batch();
    let (first, end) = share_of(64, dp.share());
    let per = x.len() / y.len();
    let (xs, ys) = (&x[first * per..end * per], &y[first..end]);
    let mut ws = net.workspace(ys.len() / passes, MemoryMode::Efficient, true);
    let mut opt = Sgd::new(SgdConfig::default());
    let groups = param_groups(&[(0..net.num_params(), 0.1)], 1e-4, &[]);
    for step in 0..3u64 {
        let input = StepInput {
            images: xs,
            labels: ys,
            whole: 64,
            seed: &[step],
            frozen: false,
            groups: &groups,
            passes,
            stop: false,
        };
        assert!(dp.step(&mut *net, &mut ws, &mut opt, &input).updated);
    }
    net.params().to_vec()
}

#[test]
#[ignore = "run in 8 processes by accumulating_under_mpi_sums_the_gradients_once_a_step"]
fn worker_accumulate() {
    let mpi: Arc<dyn Collective> = Arc::new(Mpi::start().unwrap());
    let n = mpi.size();
    // 8 processes × 2 passes of 4 images are one process's 16 passes of 4: the same
    // images in each pass, batch norm on each pass's own
    let alone = three_steps(&mut DataParallel::new(None, false), 2 * n);
    let counting = Arc::new(Counting {
        inner: mpi,
        f32_sums: AtomicUsize::new(0),
        f32_floats: AtomicUsize::new(0),
    });
    let mut dp = DataParallel::new(Some(counting.clone()), false);
    let together = three_steps(&mut dp, 2);
    let e = rel_l2(&together, &alone);
    assert!(e < 1e-5, "relative L2 error after 3 steps {e:.2e}");
    // once a step: the gradients and the running statistics, each summed once
    let (net, _, _) = model_and_batch();
    let per_step = net.params().len() + net.stats().len();
    let floats = counting.f32_floats.load(Ordering::SeqCst);
    assert_eq!(floats, 3 * per_step, "floats summed in 3 steps");
    // DenseNet-BC-16-8's gradients fit one bucket: 2 sums a step
    assert_eq!(counting.f32_sums.load(Ordering::SeqCst), 3 * 2);
}

#[test]
fn resuming_under_mpi_continues_exactly() {
    let (straight, resumed) = (tmp("straight"), tmp("resumed"));
    // with the large-batch recipe and accumulation, whose warmup spans the resumption
    let run = [
        "--epochs",
        "2",
        "--accumulate",
        "2",
        "--warmup-epochs",
        "2",
        "--lr-scaling",
        "linear",
        "--no-bn-decay",
    ];
    let out = train_two(&straight, &run);
    assert!(out.status.success(), "{}", text(&out));
    let out = train_two(&resumed, &[&run[..], &["--stop-after", "1"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let mut c = mpirun(
        2,
        &exe(),
        &["--threads", "1", "train", "--json", "--resume"],
    );
    let out = c.arg(&resumed).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(params(&resumed), params(&straight), "bit-identical weights");
    let steps = |d: &Path| densenet::train::read_steps(&d.join("steps.csv")).unwrap();
    assert_eq!(steps(&resumed), steps(&straight));
    for d in [straight, resumed] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_batch_size_the_processes_cannot_share_is_refused() {
    let dir = tmp("odd");
    let out = train_two(&dir, &["--epochs", "1", "--batch-size", "63"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--batch-size 63 cannot be shared by 2 processes"),
        "{}",
        text(&out)
    );
    assert!(!dir.exists(), "nothing was created");
}

#[test]
fn a_killed_process_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tmp("killed");
    // long enough to be killed during the second epoch
    let mut run = mpirun(2, &exe(), &RUN);
    run.arg("--out")
        .arg(&dir)
        .args(["--epochs", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = run.spawn().unwrap();
    let last = dir.join("last.safetensors");
    let t = std::time::Instant::now();
    while !last.exists() {
        assert!(t.elapsed().as_secs() < 120, "no checkpoint after 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // rank 1 is the densenet process whose environment says so
    let rank1 = find_rank(1, &dir).expect("rank 1's process");
    let _ = Command::new("kill")
        .args(["-9", &rank1.to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rank 1") && (err.contains("signal 9") || err.contains("Killed")),
        "mpirun says which process died and why:\n{}",
        text(&out)
    );
    // the last checkpoint is whole and loads
    let loaded = params(&dir);
    assert!(loaded.iter().all(|v| v.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pid of the densenet process of MPI rank `rank` (from its environment) training
/// into `dir` (other tests run too).
fn find_rank(rank: usize, dir: &Path) -> Option<u32> {
    let dir = dir.as_os_str().as_encoded_bytes();
    let exe = exe().canonicalize().ok()?;
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let is_ours = std::fs::read_link(entry.path().join("exe")).is_ok_and(|p| p == exe);
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let mine = cmd.split(|&b| b == 0).any(|a| a == dir);
        if is_ours && mine && env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Issue 33, items 8 and 9: SIGUSR1 to mpirun (which forwards it to every rank; Ctrl-C
/// reaches mpirun alone, which ends the job at once) stops every rank after the same
/// step, as Ctrl-C stops one process: rank 0 alone says what was kept and how to
/// continue, the exit status is 130, and the run resumes. Rank 0 alone prints notes.
#[test]
fn sigusr1_to_mpirun_stops_every_rank_after_the_same_step() {
    let dir = tmp("usr1");
    let mut run = mpirun(2, &exe(), &RUN[..RUN.len() - 1]);
    run.arg("--out")
        .arg(&dir)
        .args(["--epochs", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = run.spawn().unwrap();
    let t = std::time::Instant::now();
    while !dir.join("last.safetensors").exists() {
        assert!(t.elapsed().as_secs() < 120, "no checkpoint after 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-USR1", &child.id().to_string()])
        .status();
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed().as_secs() > 60 {
            let _ = child.kill();
            panic!("the ranks did not stop within 60 s of SIGUSR1");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let once = |s: &str| err.matches(s).count() == 1;
    assert!(
        once("interrupted after epoch") && once("densenet train --resume") && once("run directory"),
        "rank 0 alone tells:\n{}",
        text(&out)
    );
    assert!(!err.contains("error: rank"), "{}", text(&out));
    let done = densenet::train::read_metrics(&dir.join("metrics.csv"))
        .unwrap()
        .len();
    assert!(
        err.contains(&format!("interrupted after epoch {done} of 50")),
        "{err}"
    );
    let out = mpirun(2, &exe(), &["--threads", "1", "train", "--resume"])
        .arg(&dir)
        .args(["--stop-after", &(done + 1).to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
