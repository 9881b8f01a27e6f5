//! Which algorithm runs each convolution: the **one** place that decides it.
//!
//! A convolution's route is a pure function ([`choose`]) of its shape (batch included),
//! what it reads ([`Reads`]: its input as stored, or a BN-ReLU of it formed on the fly),
//! whether it trains, the active kernels table, the thread count, the `DENSENET_ROUTES`
//! policy ([`Policy`]) and the `--precision` ([`Precision`]). Each family's memory plan calls it once per
//! convolution and batch size and keeps the answer ([`Routes`]); the layers pass that
//! answer to the ops in [`super::conv`] and [`super::fused`], which only dispatch on it,
//! and the kernels only compute. `densenet summary MODEL --plan` prints the routes, and
//! [`trace`] records the routes that really ran, so a test can hold the two together.
//!
//! The kernels keep the predicates of what they *can* compute (`conv3x3::applies`,
//! `conv1x1::pointwise_applies`, …); whether they *should* is decided here, beside the
//! measurements that chose it.

use crate::kernels::ConvShape;
use crate::kernels::{self, conv1x1, conv3x3, winograd};
use serde::Serialize;
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// An algorithm for one product of a convolution (its forward, its input gradient or its
/// weight gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// A 1×1 stride-1 convolution by the direct register kernels of
    /// [`crate::kernels::conv1x1`] (a BN-ReLU input formed a tile at a time where fused).
    Pointwise,
    /// A 1×1 stride-1 convolution by the `gemm` crate (on tiles of a fused BN-ReLU input).
    Gemm,
    /// A 3×3 stride-1 convolution by the direct kernels on a zero-padded copy
    /// ([`crate::kernels::conv3x3`]).
    Direct3x3,
    /// A 3×3 stride-1 convolution with output channels in the vector
    /// ([`crate::kernels::broadcast`], on the direct kernels' padded copy).
    Broadcast3x3,
    /// A 3×3 stride-1 convolution as Winograd F(tile×tile, 3×3)
    /// ([`crate::kernels::winograd`]).
    Winograd {
        /// Outputs per tile side: 2 or 4.
        tile: usize,
    },
    /// A k×k convolution of any stride (the ImageNet stem's 7×7, stride 2) with output
    /// channels in the vector, on a zero-padded copy of the input.
    BroadcastPadded,
    /// im2col a tile of positions at a time, into the direct 1×1 kernel.
    Im2colTiles,
    /// im2col of as many samples as the scratch holds, then the `gemm` crate (and col2im
    /// for the input gradient): any kernel, stride and padding.
    Im2col,
    /// A 1×1 in bfloat16 with f32 sums ([`crate::kernels::bf16`]), its input (a fused
    /// BN-ReLU's or a stored one) rounded a tile at a time: evaluation at
    /// `--precision bf16`.
    PointwiseBf16,
    /// A 3×3 stride-1 convolution in bfloat16 with f32 sums on zero-padded pair planes
    /// ([`super::bf16::conv3x3`]): evaluation at `--precision bf16` on AMX (or wherever
    /// [`Policy::Bf16All`] asks).
    Conv3x3Bf16,
    /// Any other convolution (the ImageNet stem) in bfloat16 with f32 sums: its im2col
    /// tiles gathered from a bf16 copy of the input ([`super::bf16::im2col`]): evaluation
    /// at `--precision bf16` on AMX (or wherever [`Policy::Bf16All`] asks).
    Im2colBf16,
}

impl Route {
    /// A short name (`summary --plan`, `bench --profile`).
    pub fn name(self) -> &'static str {
        match self {
            Route::Pointwise => "pointwise",
            Route::Gemm => "gemm",
            Route::Direct3x3 => "direct3x3",
            Route::Broadcast3x3 => "broadcast3x3",
            Route::Winograd { tile: 2 } => "winograd-f2",
            Route::Winograd { .. } => "winograd-f4",
            Route::BroadcastPadded => "broadcast-padded",
            Route::Im2colTiles => "im2col-tiles",
            Route::Im2col => "im2col",
            Route::PointwiseBf16 => "pointwise-bf16",
            Route::Conv3x3Bf16 => "conv3x3-bf16",
            Route::Im2colBf16 => "im2col-bf16",
        }
    }
}

impl Route {
    /// Whether this gradient route takes a BN-ReLU input as it is stored and forms the
    /// BN-ReLU in its padded copies, as the fused 3×3 needs (the direct 3×3 kernels and
    /// Winograd, whose input gradient reads only dY and the weights); the others need it
    /// written out.
    pub fn forms_bn_relu_backward(self) -> bool {
        matches!(self, Route::Direct3x3 | Route::Winograd { .. })
    }
}

impl Serialize for Route {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a convolution reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// Its input as stored (a stem's image, a naive-mode layer's kept BN-ReLU output).
    Stored,
    /// `relu(x·scale + shift)` of a stored buffer, formed on the fly where the route
    /// can ([`super::fused`]), else written out to scratch first.
    BnRelu,
}

/// A convolution's routes: its forward and, in training, its two gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ConvRoute {
    /// A transition's BN-ReLU is pooled 2×2 before its 1×1 (the pool and the 1×1
    /// commute), so the 1×1 runs on a quarter of the positions.
    pub pooled_first: bool,
    /// The forward product.
    pub forward: Route,
    /// The input gradient (training, where the input needs one).
    pub input_grad: Option<Route>,
    /// The weight gradient (training).
    pub weight_grad: Option<Route>,
}

/// The `DENSENET_ROUTES` policy: which routes [`choose`] may take. For comparing results
/// or times with another summation order; the default takes the fastest measured route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The fastest measured route for each shape (`auto`, the default).
    Auto,
    /// Every 3×3 on the direct kernels or broadcast, never Winograd (`no-winograd`).
    NoWinograd,
    /// Every 3×3 the direct kernels take on them alone, neither Winograd nor broadcast
    /// (`direct`).
    Direct,
    /// At `--precision bf16`, every convolution of evaluation on a bf16 route whatever
    /// the table's bf16 kernel (`bf16-all`), where the default keeps the 3×3s and the stem
    /// to AMX: to measure them on AVX512-BF16 (Zen 4) with one switch.
    Bf16All,
}

/// A `DENSENET_ROUTES` value that names no policy.
#[derive(Debug, thiserror::Error)]
#[error("DENSENET_ROUTES={0}: expected auto, no-winograd, direct or bf16-all")]
pub struct PolicyError(String);

impl Policy {
    /// Parses a `DENSENET_ROUTES` value (`None` or empty: [`Policy::Auto`]).
    pub fn parse(value: Option<&str>) -> Result<Policy, PolicyError> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(Policy::Auto),
            Some("no-winograd") => Ok(Policy::NoWinograd),
            Some("direct") => Ok(Policy::Direct),
            Some("bf16-all") => Ok(Policy::Bf16All),
            Some(other) => Err(PolicyError(other.to_string())),
        }
    }

    /// [`Policy::parse`] of the environment's `DENSENET_ROUTES`.
    pub fn from_env() -> Result<Policy, PolicyError> {
        Policy::parse(std::env::var("DENSENET_ROUTES").ok().as_deref())
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::NoWinograd => "no-winograd",
            Policy::Direct => "direct",
            Policy::Bf16All => "bf16-all",
        }
    }

    fn code(self) -> u8 {
        match self {
            Policy::Auto => 1,
            Policy::NoWinograd => 2,
            Policy::Direct => 3,
            Policy::Bf16All => 4,
        }
    }
}

/// 0: not yet read from the environment; else [`Policy::code`].
static POLICY: AtomicU8 = AtomicU8::new(0);

/// Sets the policy for the whole process (the command line does, from `DENSENET_ROUTES`,
/// before any work; plans made earlier keep their routes).
pub fn set_policy(p: Policy) {
    POLICY.store(p.code(), Ordering::Release);
}

/// The active policy: as set, else read once from `DENSENET_ROUTES` (an unusable value
/// leaves [`Policy::Auto`] with a warning; the command line refuses it instead).
pub fn policy() -> Policy {
    let from = |c| match c {
        2 => Policy::NoWinograd,
        3 => Policy::Direct,
        4 => Policy::Bf16All,
        _ => Policy::Auto,
    };
    match POLICY.load(Ordering::Acquire) {
        0 => {
            let p = Policy::from_env().unwrap_or_else(|e| {
                eprintln!("warning: {e}; routes stay auto");
                Policy::Auto
            });
            let _ = POLICY.compare_exchange(0, p.code(), Ordering::AcqRel, Ordering::Acquire);
            from(POLICY.load(Ordering::Acquire))
        }
        c => from(c),
    }
}

/// The arithmetic of the products: `--precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout (the default; parity with PyTorch).
    F32,
    /// bfloat16 operands with f32 sums where a bf16 route exists (PyTorch's CPU autocast):
    /// evaluation's convolutions ([`Route::PointwiseBf16`], and on AMX
    /// [`Route::Conv3x3Bf16`] and [`Route::Im2colBf16`]); everything else stays f32.
    Bf16,
}

impl Precision {
    /// The name `--precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Parses a `--precision` value.
    pub fn parse(s: &str) -> Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("{s}: expected f32 or bf16")),
        }
    }
}

/// 1 while [`Precision::Bf16`] is set.
static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision for the whole process (the command line does, before any plan is
/// made; plans made earlier keep their routes).
pub fn set_precision(p: Precision) {
    PRECISION.store((p == Precision::Bf16) as u8, Ordering::Release);
}

/// The active precision ([`Precision::F32`] unless set).
pub fn precision() -> Precision {
    match PRECISION.load(Ordering::Acquire) {
        1 => Precision::Bf16,
        _ => Precision::F32,
    }
}

/// Widest 1×1 convolution (in output channels) that the direct kernel takes in
/// evaluation: a dense layer's bottleneck (4k = 48 outputs). `cargo bench --bench shapes`
/// (`gemm_shapes`), 48×216·216×65536: direct 37.5 / 73.5 GFLOP/s (1 / 2 threads), gemm
/// 18.9 / 33.9; but 128×512·512×12544 (densenet121): direct 52 / 68, gemm 56 / 108, so
/// wider outputs keep the `gemm` crate (and fused, `fused_shapes` o108 and o128, ~20%).
/// Training takes the direct kernel for every width of a fused 1×1 (`gemm` allocates its
/// packing buffers on every call; a step allocates nothing after its first).
pub const DIRECT_1X1_MAX_OUTPUTS: usize = 48;

/// Whether a 3×3 takes [`Route::Winograd`]. Measured in-process against the direct
/// kernel (`cargo bench --bench shapes -- winograd`, Zen 3, 2 threads, several runs on a
/// busy machine): densenet121's 128 → 32 forward took 0.66–0.95 of the direct time at
/// batch 16 (every block) and 0.64–0.83 at batch 1 on 56×56 and 28×28 (28×28 1.05–1.12
/// in the busiest hour); at batch 1 on 14×14 (49 tiles: two tasks) 1.14–1.56, on 7×7
/// 1.9–3. With 12 outputs (BC-100) it was about even (0.87–1.26), and the CIFAR stem (3
/// inputs) 1.3–2.8: the transforms are then as much work as the products. So: at least 64
/// inputs, 32 outputs and two tasks of [`winograd::TILES_PER_TASK`] tiles per thread, and
/// a policy that allows it.
fn winograd_pays(s: &ConvShape) -> bool {
    let tiles = s.n * s.h.div_ceil(2) * s.w.div_ceil(2);
    let per_thread = 2 * winograd::TILES_PER_TASK * rayon::current_num_threads();
    s.cin >= 64 && s.cout >= 32 && tiles >= per_thread && policy() == Policy::Auto
}

/// Outputs per Winograd tile side: 4 (F(4×4, 3×3)) where its tiles of 4×4 still make two
/// tasks per thread and cover at most 9/8 of the image, else 2.
///
/// F(4×4) does 36 multiply-adds per 16 outputs, input and output channel, where F(2×2)
/// does 64 (16 per 4 outputs); its transforms cost more per tile but about the same per
/// output. Measured with `bench … --ab` (Zen 4, 2 threads, F(4×4) against F(2×2) where
/// this rule takes it): densenet121 training step at batch 16 0.966 (`avx512`) and 0.938
/// (`avx2`), evaluation 0.916 at batch 16 and 0.964 at batch 1. By shape (`bench train
/// --profile`, batch 16): the 3×3 at 56×56 and 28×28 13–19% faster forward and backward;
/// at 14×14, whose 4×4 tiles cover 16×16 (1.31 of the image), even or slower, hence the
/// 9/8 bound.
fn winograd_tile(s: &ConvShape) -> usize {
    let (th, tw) = (s.h.div_ceil(4), s.w.div_ceil(4));
    let per_thread = 2 * winograd::TILES_PER_TASK * rayon::current_num_threads();
    let covered = 16 * th * tw;
    if s.n * th * tw >= per_thread && 8 * covered <= 9 * s.h * s.w {
        4
    } else {
        2
    }
}

/// Whether a 3×3 takes [`Route::Broadcast3x3`]: densenet121's 128 → 32 shape (at least
/// 64 inputs and 32 outputs), on planes of at most 16×16 with at least 128 positions in
/// the batch, where Winograd does not pay or wastes work on an odd plane (its 2×2 tiles
/// cover 8×8 of a 7×7). Measured against both other routes (`cargo bench --bench shapes
/// -- conv3x3_routes`, Zen 3, 2 threads; this route's time over the best other's): batch
/// 1 at 14×14 0.88–0.94 (direct), batch 16 at 7×7 0.75 (Winograd); it lost at batch 1 on
/// 7×7 (1.02–1.08: packing the weights is a fifth of such a call), and to Winograd at
/// 28×28 and up, and at batch 16 on 14×14 (1.08–1.11).
fn broadcast_pays(s: &ConvShape) -> bool {
    s.cin >= 64
        && s.cout >= 32
        && s.h * s.w <= 256
        && s.n * s.h * s.w >= 128
        && (s.h % 2 == 1 || s.w % 2 == 1 || !winograd_pays(s))
        && policy() != Policy::Direct
}

/// Whether evaluation's convolutions other than the 1×1s take bf16 routes
/// ([`Route::Conv3x3Bf16`], [`Route::Im2colBf16`]): at `--precision bf16` where the
/// products run on AMX (or [`Policy::Bf16All`] asks). densenet121 at batch 1 (Xeon with
/// AMX, 2 threads): with the 1×1s in bf16 and the rest in f32 the 3×3s were 57% of a
/// pass and the stem 8.5%; with the 3×3s in bf16 a pass took 9.6 ms against 14.4. On
/// AVX512-BF16 alone (Zen 4) a bf16 3×3 through im2col was slower than the f32 routes,
/// and these routes are not measured there yet: they keep f32.
fn all_bf16() -> bool {
    precision() == Precision::Bf16
        && (kernels::active().bf16 == kernels::bf16::Products::Amx || policy() == Policy::Bf16All)
}

/// The forward route of a 3×3 stride-1 padding-1 convolution the direct kernels take.
fn forward_3x3(s: &ConvShape) -> Route {
    if broadcast_pays(s) {
        Route::Broadcast3x3
    } else if winograd_pays(s) && winograd::applies(s) {
        Route::Winograd {
            tile: winograd_tile(s),
        }
    } else {
        Route::Direct3x3
    }
}

/// The gradient routes `(input, weights)` of a 3×3 the direct kernels take (`data`: with
/// an input gradient). Winograd takes the input gradient where it pays for the forward
/// shape (the input gradient is the same convolution with the channels swapped, so it
/// must take that shape too), and then the weight gradient where the forward takes
/// F(4×4) and the one-tap and outer-product kernels take its channel counts; the direct
/// kernels do whatever is left, in one pass over their padded copies.
fn backward_3x3(s: &ConvShape, data: bool) -> (Option<Route>, Route) {
    let wino = winograd_pays(s);
    let data_route = data.then(|| {
        let ds = winograd::data_shape(s);
        if wino && winograd::applies(&ds) {
            Route::Winograd {
                tile: winograd_tile(&ds),
            }
        } else {
            Route::Direct3x3
        }
    });
    let data_done = !matches!(data_route, Some(Route::Direct3x3));
    let weights = if data_done && wino && winograd_tile(s) == 4 && winograd::weights_fit(s) {
        Route::Winograd { tile: 4 }
    } else {
        Route::Direct3x3
    };
    (data_route, weights)
}

/// The routes of the convolution `s` reading `reads`; `training` asks for the gradient
/// routes too (the input gradient's: the route it takes where a pass asks for it; a
/// stem's image needs none unless asked).
pub fn choose(s: &ConvShape, reads: Reads, training: bool) -> ConvRoute {
    let direct = kernels::active().direct.is_some();
    let (forward, input_grad, weight_grad) = if s.is_pointwise() {
        // training allocates nothing after its first step: the direct kernel, which packs
        // into scratch of its own, takes every output count it can
        let fused = reads == Reads::BnRelu;
        let narrow = s.cout <= DIRECT_1X1_MAX_OUTPUTS || (fused && training);
        let fwd = if !training && precision() == Precision::Bf16 {
            // bf16 for every 1×1 of evaluation, a fused BN-ReLU's or a stored input's:
            // `cargo bench --bench bf16` (Zen 4, one thread) put densenet121's 1×1s at
            // 0.56–0.60 of the faster f32 kernel's time, 0.81 at 7×7
            Route::PointwiseBf16
        } else if narrow && conv1x1::pointwise_applies(s.cout) {
            Route::Pointwise
        } else {
            Route::Gemm
        };
        // the fused backward's direct kernels need the input count (dA's rows); a stored
        // input's backward is the `gemm` crate's
        let bwd = if fused && conv1x1::pointwise_applies(s.cin) {
            Route::Pointwise
        } else {
            Route::Gemm
        };
        (fwd, bwd, bwd)
    } else if !training && all_bf16() {
        let fwd = if s.is_same_3x3() {
            Route::Conv3x3Bf16
        } else {
            Route::Im2colBf16
        };
        (fwd, Route::Im2col, Route::Im2col)
    } else if conv3x3::applies(s) && direct {
        if conv3x3::applies_data(s) {
            let (data, weights) = backward_3x3(s, true);
            (forward_3x3(s), data.unwrap_or(Route::Direct3x3), weights)
        } else {
            // (the CIFAR stem: 3 input channels) the input gradient, where asked, by im2col
            let (_, weights) = backward_3x3(s, false);
            (forward_3x3(s), Route::Im2col, weights)
        }
    } else if s.k == 7 && direct {
        // the ImageNet stem: output channels in the vector, on a padded copy (`cargo bench
        // --bench shapes -- stem_routes`: forward 0.74–0.90 of im2col-tiles, weight
        // gradient 0.58–0.81 of im2col + GEMM); its input's gradient, where asked, by im2col
        (
            Route::BroadcastPadded,
            Route::Im2col,
            Route::BroadcastPadded,
        )
    } else if conv1x1::pointwise_applies(s.cout) {
        (Route::Im2colTiles, Route::Im2col, Route::Im2col)
    } else {
        (Route::Im2col, Route::Im2col, Route::Im2col)
    };
    ConvRoute {
        pooled_first: false,
        forward,
        input_grad: training.then_some(input_grad),
        weight_grad: training.then_some(weight_grad),
    }
}

/// The routes of a transition's BN-ReLU → 1×1 (`s`, at full resolution) with `drop_rate`
/// after the 1×1, `tmp` floats of scratch, in `naive` mode or not.
///
/// Pooled first where no dropout sits between the 1×1 and the pool, `tmp` holds the
/// pooled BN-ReLU (and, in training, its gradient) and the direct kernels take both
/// channel counts (an even input count): in evaluation (densenet121 at batch 1 and 16,
/// alternating per pass in one process: 0.94 and 0.92 of the time, BC-100 at batch 64
/// 0.955) in the efficient mode; in training in both memory modes, so that they still
/// compute the same sums in the same order (densenet121 at batch 16, alternating per
/// step: 0.933 and 1/1.079 of the step time; BC-100 at batch 64 0.950).
pub fn transition(
    s: &ConvShape,
    drop_rate: f32,
    tmp: usize,
    naive: bool,
    training: bool,
) -> ConvRoute {
    let pooled = s.n * (s.h / 2) * (s.w / 2);
    let (o_n, i_n) = (s.cout, s.cin);
    let kernels_take =
        conv1x1::pointwise_applies(o_n) && conv1x1::pointwise_applies(i_n) && i_n.is_multiple_of(2);
    let pooled_first = if training {
        drop_rate == 0.0 && pooled > 0 && tmp >= 2 * i_n * pooled && kernels_take
    } else {
        !naive && tmp >= i_n * pooled
    };
    let reads = if naive { Reads::Stored } else { Reads::BnRelu };
    if !pooled_first {
        return choose(s, reads, training);
    }
    // the 1×1 on the pooled positions: the direct kernel in training (it allocates
    // nothing after its first call), else as any stored 1×1
    let ps = ConvShape {
        n: 1,
        h: 1,
        w: pooled,
        ..*s
    };
    let mut r = choose(&ps, Reads::Stored, false);
    if training {
        r.forward = Route::Pointwise;
        r.input_grad = Some(Route::Pointwise);
        r.weight_grad = Some(Route::Pointwise);
    }
    r.pooled_first = true;
    r
}

/// The routes of every convolution of a network for one batch size: what a family's
/// memory plan holds and its layers look up ([`Routes::of`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Routes {
    /// The batch size they were chosen for.
    pub batch: usize,
    /// Whether they include the gradient routes.
    pub training: bool,
    /// One entry per convolution, in order of their weights in the parameter buffer
    /// (the forward order).
    pub convs: Vec<PlannedConv>,
}

/// One convolution's entry in [`Routes`]: what [`choose`] (or [`transition`]) was asked,
/// and its answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedConv {
    /// State-dict prefix, e.g. `features.denseblock1.denselayer1.conv2`.
    pub name: String,
    /// Offset of its weight in the parameters.
    #[serde(skip)]
    pub weight: usize,
    /// Its geometry at the planned batch size.
    #[serde(skip)]
    pub shape: ConvShape,
    /// What it reads.
    #[serde(skip)]
    pub reads: Reads,
    /// A transition's dropout rate, scratch and memory mode ([`transition`]'s question).
    #[serde(skip)]
    pub transition: Option<(f32, usize, bool)>,
    /// Its routes.
    #[serde(flatten)]
    pub route: ConvRoute,
}

impl PlannedConv {
    fn decide(&self, training: bool) -> ConvRoute {
        match self.transition {
            Some((drop, tmp, naive)) => transition(&self.shape, drop, tmp, naive, training),
            None => choose(&self.shape, self.reads, training),
        }
    }
}

impl Routes {
    /// An empty table for batches of `batch`, with gradient routes where `training`.
    pub fn new(batch: usize, training: bool) -> Self {
        Routes {
            batch,
            training,
            convs: vec![],
        }
    }

    /// Plans the convolution `name` (weight at `weight`) of shape `shape` (at this
    /// table's batch size) reading `reads`.
    pub fn push(&mut self, name: &str, weight: usize, shape: ConvShape, reads: Reads) {
        self.push_planned(name, weight, shape, reads, None);
    }

    /// Plans a transition's BN-ReLU → 1×1 ([`transition`]: `shape` at full resolution).
    pub fn push_transition(
        &mut self,
        name: &str,
        weight: usize,
        shape: ConvShape,
        drop_rate: f32,
        tmp: usize,
        naive: bool,
    ) {
        let reads = if naive { Reads::Stored } else { Reads::BnRelu };
        self.push_planned(name, weight, shape, reads, Some((drop_rate, tmp, naive)));
    }

    fn push_planned(
        &mut self,
        name: &str,
        weight: usize,
        shape: ConvShape,
        reads: Reads,
        transition: Option<(f32, usize, bool)>,
    ) {
        debug_assert_eq!(shape.n, self.batch);
        let mut c = PlannedConv {
            name: name.to_string(),
            weight,
            shape,
            reads,
            transition,
            route: ConvRoute {
                pooled_first: false,
                forward: Route::Im2col,
                input_grad: None,
                weight_grad: None,
            },
        };
        c.route = c.decide(self.training);
        let at = self.convs.partition_point(|p| p.weight < weight);
        self.convs.insert(at, c);
    }

    /// Chooses again for a pass of `n` images in mode `training`, where they differ from
    /// the plan's (the last, shorter batch of an epoch; an evaluation pass over a training
    /// workspace), in place: nothing is allocated.
    pub fn for_pass(&mut self, n: usize, training: bool) {
        if (n, training) == (self.batch, self.training) {
            return;
        }
        (self.batch, self.training) = (n, training);
        for c in &mut self.convs {
            c.shape.n = n;
            c.route = c.decide(self.training);
        }
    }

    /// The routes of the convolution whose weight starts at `weight`.
    ///
    /// # Panics
    /// Where the plan has no such convolution (a bug in the family's plan).
    pub fn of(&self, weight: usize) -> ConvRoute {
        match self.convs.binary_search_by_key(&weight, |c| c.weight) {
            Ok(i) => self.convs[i].route,
            Err(_) => panic!("no planned route for the weight at {weight}"),
        }
    }
}

/// One convolution product that ran: what [`trace`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ran {
    /// The convolution's geometry.
    pub shape: ConvShape,
    /// Which product: forward, input gradient or weight gradient.
    pub product: Product,
    /// The route that computed it.
    pub route: Route,
}

/// The three products of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Product {
    /// `y = conv(x)`.
    Forward,
    /// The input gradient.
    InputGrad,
    /// The weight gradient.
    WeightGrad,
}

thread_local! {
    /// The products run on this thread while [`trace`] records (ops dispatch on the
    /// calling thread; only the kernels inside fan out).
    static TRACE: RefCell<Option<Vec<Ran>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, beside its result, every convolution product the ops ran on this
/// thread meanwhile, with the route that ran it.
pub fn trace<R>(f: impl FnOnce() -> R) -> (R, Vec<Ran>) {
    let outer = TRACE.with(|t| t.replace(Some(Vec::new())));
    let r = f();
    let ran = TRACE.with(|t| t.replace(outer)).unwrap_or_default();
    (r, ran)
}

/// Records that `route` computed `product` of `s` (where [`trace`] is on).
pub(crate) fn ran(s: &ConvShape, product: Product, route: Route) {
    TRACE.with(|t| {
        if let Some(v) = t.borrow_mut().as_mut() {
            v.push(Ran {
                shape: *s,
                product,
                route,
            });
        }
    });
}

/// Checks, where it cannot be planned around, that a route's kernel took the call
/// (`taken`): a route the plan chose must run.
pub(crate) fn expect(taken: bool, route: Route, s: &ConvShape) {
    assert!(
        taken,
        "route {route} did not take {s:?}: its scratch is too small"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_and_refuses() {
        assert_eq!(Policy::parse(None).unwrap(), Policy::Auto);
        assert_eq!(Policy::parse(Some(" direct ")).unwrap(), Policy::Direct);
        assert_eq!(
            Policy::parse(Some("no-winograd")).unwrap(),
            Policy::NoWinograd
        );
        let e = Policy::parse(Some("fast")).unwrap_err().to_string();
        assert!(
            e.contains("DENSENET_ROUTES=fast") && e.contains("no-winograd"),
            "{e}"
        );
    }

    #[test]
    fn names_are_distinct() {
        let all = [
            Route::Pointwise,
            Route::Gemm,
            Route::Direct3x3,
            Route::Broadcast3x3,
            Route::Winograd { tile: 2 },
            Route::Winograd { tile: 4 },
            Route::BroadcastPadded,
            Route::Im2colTiles,
            Route::Im2col,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), all.len());
    }
}
