//! Figures: learning curves of a training run and heat maps of dense connectivity
//! (paper Fig. 5), drawn with `plotters` into PNG (and, for heat maps, SVG) files.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary from `assets/fonts/` (license
//! next to it) through plotters' `ab_glyph` renderer, so plotting needs no system fonts
//! and no fontconfig. Pixels are rendered into memory, encoded with the `image` crate and
//! written with [`crate::util::atomic::write`]: a reader never sees half a figure.
//!
//! Data are taken as they come: NaN and infinite values are skipped, as are non-positive
//! values on a logarithmic axis; an axis whose values are all equal (or that has none)
//! still gets a non-empty range, and a series with a single point is drawn as a dot.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::util::paths::extension_lowercase;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

/// The embedded font: DejaVu Sans (Bitstream Vera license, see `assets/fonts/LICENSE-DejaVu.txt`).
static FONT_TTF: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/fonts/DejaVuSans.ttf"
));

/// The family every text of this module is drawn in (and plotters' default one).
const FONT: &str = "sans-serif";

/// Largest width or height accepted, in pixels.
const MAX_SIDE: u32 = 16_384;

/// Why a figure could not be written. Every variant names the output file.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The request cannot be drawn (no panels, a zero size, a matrix of the wrong length).
    #[error("plot {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// The embedded font could not be parsed (a corrupt `assets/fonts/DejaVuSans.ttf`).
    #[error("plot {}: the embedded font DejaVuSans.ttf could not be loaded", path.display())]
    Font { path: PathBuf },
    /// plotters failed while drawing.
    #[error("plot {}: drawing failed: {message}", path.display())]
    Draw { path: PathBuf, message: String },
    /// The PNG encoder failed.
    #[error("plot {}: PNG encoding failed: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// Writing the file failed.
    #[error("plot {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One line: label and (x, y) points.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Legend entry; an empty label leaves the series out of the legend.
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A panel of a figure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Colours follow the order: blue, red, green, orange, purple, brown, pink, grey.
    pub series: Vec<Series>,
    /// Logarithmic y axis (non-positive values are skipped).
    pub log_y: bool,
}

/// One epoch of a training run, for [`learning_curves`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    /// Epoch (may be fractional, e.g. for mid-epoch evaluations).
    pub epoch: f64,
    pub train_loss: f64,
    /// `None` where the test set was not evaluated.
    pub test_loss: Option<f64>,
    /// Training error in percent (0–100).
    pub train_error: f64,
    /// Test error in percent (0–100); `None` where not evaluated.
    pub test_error: Option<f64>,
    /// Learning rate.
    pub lr: f64,
}

/// A matrix drawn as a heat map by [`heatmaps`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeatMatrix {
    pub title: String,
    /// Number of source layers s; row r is labelled s = r (s = 0 is the block's input).
    pub rows: usize,
    /// Number of target layers; column c is labelled c + 1. The last column (the transition
    /// layer or the classifier) is outlined.
    pub cols: usize,
    /// Row-major, `rows * cols` values; NaN marks an empty cell (drawn white, as is any
    /// infinite value).
    pub values: Vec<f64>,
}

/// Series colours: blue, red, green, orange, purple, brown, pink, grey.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Registers the embedded font with plotters, once per process.
fn ensure_font(path: &Path) -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_TTF).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font {
            path: path.to_path_buf(),
        })
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> PlotError {
    PlotError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// plotters' error, as text (its type depends on the backend).
fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

fn check_size(path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(invalid(
            path,
            format!("size {width}x{height} px is outside 1..={MAX_SIDE}"),
        ));
    }
    Ok(())
}

/// Draws on `backend` with `draw` in the embedded font and presents the result; a
/// failure of either is a [`PlotError::Draw`] on `path`.
fn render<DB, F>(path: &Path, backend: DB, draw: F) -> Result<(), PlotError>
where
    DB: DrawingBackend,
    F: FnOnce(&DrawingArea<DB, Shift>) -> Result<(), String>,
{
    ensure_font(path)?;
    let root = backend.into_drawing_area();
    draw(&root)
        .and_then(|()| root.present().map_err(draw_err))
        .map_err(|message| PlotError::Draw {
            path: path.to_path_buf(),
            message,
        })
}

/// Writes a figure's `bytes` to `path` atomically.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    crate::util::atomic::write(path, bytes).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Renders a `width` x `height` RGB figure with `draw` and writes it to `path` as PNG.
fn write_png<F>(path: &Path, width: u32, height: u32, draw: F) -> Result<(), PlotError>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
{
    check_size(path, width, height)?;
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    render(
        path,
        BitMapBackend::with_buffer(&mut pixels, (width, height)),
        draw,
    )?;
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &pixels,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|source| PlotError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    write_file(path, &png)
}

/// Renders a `width` x `height` figure with `draw` and writes it to `path` as SVG.
fn write_svg<F>(path: &Path, width: u32, height: u32, draw: F) -> Result<(), PlotError>
where
    F: FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
{
    check_size(path, width, height)?;
    let mut text = String::new();
    render(
        path,
        SVGBackend::with_string(&mut text, (width, height)),
        draw,
    )?;
    write_file(path, text.as_bytes())
}

/// The formats a figure can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A PNG bitmap.
    Png,
    /// An SVG drawing.
    Svg,
}

impl Format {
    /// The format named by `path`'s extension (`.png` or `.svg`, any case); anything else
    /// is an error rather than, say, PNG bytes in a file called `.svg`.
    pub fn of(path: &Path) -> Result<Format, PlotError> {
        match extension_lowercase(path).as_deref() {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(invalid(
                path,
                "unknown figure format: the file name must end in .png or .svg",
            )),
        }
    }
}

/// Draws panels side by side (a grid of `columns`; 0 means all in one row) into a PNG or
/// SVG file at `path` (as its extension says, see [`Format::of`]), written atomically.
/// Width and height in pixels.
pub fn plot_panels(
    path: &Path,
    panels: &[Panel],
    columns: usize,
    width: u32,
    height: u32,
) -> Result<(), PlotError> {
    figure(path, None, panels, columns, width, height)
}

/// Learning curves of a training run: three panels against epoch, loss (train/test),
/// error % (train/test) and learning rate (log scale), under `title`; written as PNG.
pub fn learning_curves(path: &Path, title: &str, points: &[EpochPoint]) -> Result<(), PlotError> {
    learning_curves_with_lr(path, title, points, &[])
}

/// [`learning_curves`] with the learning rate of every step, as (fractional epoch, rate)
/// points, in place of the epochs' rates when there are any (a warmup rises within
/// epochs).
pub fn learning_curves_with_lr(
    path: &Path,
    title: &str,
    points: &[EpochPoint],
    step_lr: &[(f64, f64)],
) -> Result<(), PlotError> {
    let epochs = |f: &dyn Fn(&EpochPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter_map(|p| f(p).map(|v| (p.epoch, v)))
            .collect()
    };
    let pair = |train: Vec<(f64, f64)>, test: Vec<(f64, f64)>| {
        let mut series = vec![Series {
            label: "train".into(),
            points: train,
        }];
        // a run that was never tested gets no test line (nor a legend entry for one)
        if !test.is_empty() {
            series.push(Series {
                label: "test".into(),
                points: test,
            });
        }
        series
    };
    let panels = [
        Panel {
            title: "loss".into(),
            x_label: "epoch".into(),
            y_label: "cross-entropy loss".into(),
            series: pair(epochs(&|p| Some(p.train_loss)), epochs(&|p| p.test_loss)),
            log_y: false,
        },
        Panel {
            title: "error".into(),
            x_label: "epoch".into(),
            y_label: "error (%)".into(),
            series: pair(epochs(&|p| Some(p.train_error)), epochs(&|p| p.test_error)),
            log_y: false,
        },
        Panel {
            title: "learning rate".into(),
            x_label: "epoch".into(),
            y_label: "learning rate".into(),
            series: vec![Series {
                label: String::new(),
                points: if step_lr.is_empty() {
                    epochs(&|p| Some(p.lr))
                } else {
                    step_lr.to_vec()
                },
            }],
            log_y: true,
        },
    ];
    figure(path, Some(title), &panels, 3, 1500, 470)
}

/// A grid of panels, with an optional title over the whole figure.
fn figure(
    path: &Path,
    title: Option<&str>,
    panels: &[Panel],
    columns: usize,
    width: u32,
    height: u32,
) -> Result<(), PlotError> {
    if panels.is_empty() {
        return Err(invalid(path, "no panels to draw"));
    }
    let columns = if columns == 0 {
        panels.len()
    } else {
        columns.min(panels.len())
    };
    let grid = (panels.len().div_ceil(columns), columns);
    match Format::of(path)? {
        Format::Png => write_png(path, width, height, |root| {
            draw_figure(root, title, panels, grid)
        }),
        Format::Svg => write_svg(path, width, height, |root| {
            draw_figure(root, title, panels, grid)
        }),
    }
}

/// The panels of [`figure`] on a grid of (rows, columns), under an optional title.
fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: Option<&str>,
    panels: &[Panel],
    (rows, columns): (usize, usize),
) -> Result<(), String> {
    root.fill(&WHITE).map_err(draw_err)?;
    let body = match title.filter(|t| !t.is_empty()) {
        Some(t) => root.titled(t, (FONT, 25)).map_err(draw_err)?,
        None => root.clone(),
    };
    for (area, panel) in body.split_evenly((rows, columns)).iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    Ok(())
}

/// The points of a series that can be drawn: finite, and positive on a log axis.
fn drawable(points: &[(f64, f64)], log_y: bool) -> Vec<(f64, f64)> {
    points
        .iter()
        .copied()
        .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
        .collect()
}

/// A linear axis range covering `values` with a relative `margin` on each side, never
/// empty: equal values get a range of their own scale, at least `min_half` each side.
fn linear_range(values: impl Iterator<Item = f64>, margin: f64, min_half: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0); // no values
    }
    let span = hi - lo;
    if !span.is_finite() {
        return (lo, hi);
    }
    if span <= 1e-12 * lo.abs().max(hi.abs()).max(1e-300) {
        // all equal: centre the value in a range of its own scale
        let half = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() }.max(min_half);
        return (lo - half, hi + half);
    }
    (lo - margin * span, hi + margin * span)
}

/// A logarithmic axis range covering positive `values` with a small margin, never empty.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (1e-3, 1.0); // no values
    }
    if hi / lo < 1.0 + 1e-9 {
        return (lo / 3.0, hi * 3.0);
    }
    let pad = (hi / lo).powf(0.05);
    ((lo / pad).max(f64::MIN_POSITIVE), (hi * pad).min(f64::MAX))
}

/// Compact tick labels: 20, 2.5, 0.01, 1e-4, 2.5e-5, 1e6. On a linear axis spanning `span`,
/// the decimals follow the span (ticks of 1.0001 and 1.0002 stay apart) and values within
/// rounding noise of zero print as 0; on a log axis (`span` = None) up to 6 decimals.
fn tick(v: f64, span: Option<f64>) -> String {
    let a = v.abs();
    let span = span.filter(|s| s.is_finite() && *s > 0.0);
    if a == 0.0 || span.is_some_and(|s| a < s * 1e-9) {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        let decimals = span.map_or(6, |s| (2.0 - s.log10().floor()).clamp(0.0, 12.0) as usize);
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let s = format!("{v:.2e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        format!("{m}e{e}")
    }
}

/// A series ready to draw: its colour index, its label and its drawable points.
type Drawable<'a> = (usize, &'a str, Vec<(f64, f64)>);

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), String> {
    // A log axis is drawn as a linear axis over log10(y), labelled with the values: the
    // plotters log scale labels only powers of ten, so a learning rate that stays within
    // one decade got a single tick label.
    let series: Vec<Drawable<'_>> = panel
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let pts = drawable(&s.points, panel.log_y);
            let pts = if panel.log_y {
                pts.into_iter().map(|(x, y)| (x, y.log10())).collect()
            } else {
                pts
            };
            (i, s.label.as_str(), pts)
        })
        .filter(|(_, _, pts)| !pts.is_empty())
        .collect();
    let ((x0, x1), (y0, y1)) = axis_ranges(&series, panel.log_y);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(78);
    if !panel.title.is_empty() {
        builder.caption(&panel.title, (FONT, 21));
    }
    let mut chart = builder
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(draw_err)?;
    // every x an integer (epochs, depths, parameter counts): label integers only
    let integer_x = (series.iter()).all(|(_, _, pts)| pts.iter().all(|p| p.0.fract() == 0.0));
    let legend = legend_corner(&series, (x0, x1), (y0, y1));
    draw_lines(
        &mut chart,
        panel,
        &series,
        (x1 - x0, y1 - y0),
        integer_x,
        legend,
    )
}

/// The x and y ranges of a panel (y in log10 units on a log panel). Scattered single
/// points (`compare`) get room on every side, lest they sit on an axis or under the
/// frame; lines (learning curves) start at the y axis.
fn axis_ranges(series: &[Drawable<'_>], log_y: bool) -> ((f64, f64), (f64, f64)) {
    let all = || series.iter().flat_map(|(_, _, pts)| pts.iter().copied());
    let scatter = series.iter().any(|(_, _, pts)| pts.len() == 1);
    let x = linear_range(all().map(|p| p.0), if scatter { 0.08 } else { 0.0 }, 0.5);
    let y = if log_y {
        let (lo, hi) = log_range(all().map(|p| 10f64.powf(p.1)));
        (lo.log10(), hi.log10())
    } else {
        linear_range(all().map(|p| p.1), if scatter { 0.12 } else { 0.05 }, 0.0)
    };
    (x, y)
}

/// An x tick label; with `integer` (every x of the panel is an integer) fractional ticks
/// stay unlabelled, so a 4-epoch run's axis reads 1 2 3 4, not 1 1.5 2 2.5.
fn x_tick(x: f64, span: f64, integer: bool) -> String {
    if !integer {
        tick(x, Some(span))
    } else if (x - x.round()).abs() > 1e-9 * x.abs().max(1.0) {
        String::new()
    } else {
        tick(x.round(), Some(span))
    }
}

/// The corner of the plot area for the legend: the one whose box (a third of the width,
/// a quarter of the height) the fewest drawn points fall in, the lines sampled between
/// their points; upper right among equals.
fn legend_corner(
    series: &[Drawable<'_>],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> SeriesLabelPosition {
    let unit = |v: f64, lo: f64, hi: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    let mut samples = vec![];
    for (_, _, pts) in series {
        samples.extend(pts.iter().map(|&(x, y)| (unit(x, x0, x1), unit(y, y0, y1))));
        for w in pts.windows(2) {
            for k in 1..16 {
                let t = k as f64 / 16.0;
                let (x, y) = (
                    w[0].0 + t * (w[1].0 - w[0].0),
                    w[0].1 + t * (w[1].1 - w[0].1),
                );
                samples.push((unit(x, x0, x1), unit(y, y0, y1)));
            }
        }
    }
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let inside = |&(x, y): &(f64, f64), right: bool, upper: bool| {
        (if right { x > 0.62 } else { x < 0.38 }) && (if upper { y > 0.72 } else { y < 0.28 })
    };
    corners
        .into_iter()
        .min_by_key(|&(_, right, upper)| samples.iter().filter(|p| inside(p, right, upper)).count())
        .map_or(SeriesLabelPosition::UpperRight, |c| c.0)
}

/// Mesh, lines (dots for single points) and legend of one panel; `spans` are the axes'
/// extents (y in log10 units on a log panel).
fn draw_lines<'a, DB>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    panel: &Panel,
    series: &[Drawable<'_>],
    (x_span, y_span): (f64, f64),
    integer_x: bool,
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
{
    let x_label = |x: &f64| x_tick(*x, x_span, integer_x);
    let y_label = |y: &f64| {
        if panel.log_y {
            log_tick(*y, y_span)
        } else {
            tick(*y, Some(y_span))
        }
    };
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 17))
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(draw_err)?;
    let mut labelled = false;
    for (i, label, pts) in series {
        let color = PALETTE[i % PALETTE.len()];
        let annotated = if pts.len() == 1 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(draw_err)?
        } else {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(draw_err)?
        };
        if !label.is_empty() {
            labelled = true;
            annotated.label(*label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(legend)
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

/// The label of `e` = log10(value) on a log axis spanning `span` decades: the value, with
/// two significant digits where the axis spans less than two decades (ticks fall between
/// powers of ten there), else one.
fn log_tick(e: f64, span: f64) -> String {
    let v = 10f64.powf(e);
    let digits = if span < 2.0 { 2 } else { 1 };
    let s = format!("{:.*e}", digits - 1, v);
    let v: f64 = s.parse().unwrap_or(v);
    tick(v, None)
}

/// Blue (0) through cyan, yellow, to red (1): the "jet" colour map.
fn heat_color(t: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 6] = [
        (0.0, [0.0, 0.0, 0.55]),
        (0.125, [0.0, 0.0, 1.0]),
        (0.375, [0.0, 1.0, 1.0]),
        (0.625, [1.0, 1.0, 0.0]),
        (0.875, [1.0, 0.0, 0.0]),
        (1.0, [0.55, 0.0, 0.0]),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let k = STOPS.iter().position(|s| s.0 >= t).unwrap_or(0).max(1);
    let ((t0, c0), (t1, c1)) = (STOPS[k - 1], STOPS[k]);
    let f = (t - t0) / (t1 - t0);
    let ch = |i: usize| ((c0[i] + f * (c1[i] - c0[i])) * 255.0).round() as u8;
    RGBColor(ch(0), ch(1), ch(2))
}

/// Width and height of one heat-map panel (matrix and colour bar), in pixels.
const HEAT_PANEL: (u32, u32) = (470, 430);
/// Width of the colour bar with its labels.
const HEAT_BAR: u32 = 95;

/// Heat maps (paper Fig. 5): one panel per matrix, at most three to a row, cell (row =
/// source layer s, column = target layer) coloured blue (low) to red (high) on each panel's
/// own scale, shown by a colour bar; NaN cells are white and the last column is outlined.
/// Writes a PNG to `png` and, if given, the same figure as SVG to `svg`.
pub fn heatmaps(png: &Path, svg: Option<&Path>, panels: &[HeatMatrix]) -> Result<(), PlotError> {
    if panels.is_empty() {
        return Err(invalid(png, "no heat maps to draw"));
    }
    for (i, m) in panels.iter().enumerate() {
        if m.rows.checked_mul(m.cols) != Some(m.values.len()) {
            return Err(invalid(
                png,
                format!(
                    "heat map {i} ({:?}) is {}x{} but has {} values",
                    m.title,
                    m.rows,
                    m.cols,
                    m.values.len()
                ),
            ));
        }
    }
    let columns = panels.len().min(3);
    let rows = panels.len().div_ceil(columns);
    let (width, height) = (HEAT_PANEL.0 * columns as u32, HEAT_PANEL.1 * rows as u32);
    let grid = (rows, columns);
    write_png(png, width, height, |root| draw_heatmaps(root, grid, panels))?;
    if let Some(svg) = svg {
        write_svg(svg, width, height, |root| draw_heatmaps(root, grid, panels))?;
    }
    Ok(())
}

/// All heat maps, on a grid of (rows, columns) panels.
fn draw_heatmaps<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    grid: (usize, usize),
    panels: &[HeatMatrix],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(draw_err)?;
    for (area, m) in root.split_evenly(grid).iter().zip(panels) {
        draw_heatmap(area, m)?;
    }
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    m: &HeatMatrix,
) -> Result<(), String> {
    let (rows, cols) = (m.rows as i32, m.cols as i32);
    let (lo, hi) = m
        .values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let scale = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    let area = area.margin(6, 6, 6, 6);
    let (main, bar) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(HEAT_BAR));

    // Cell (r, c) spans x in [2c, 2c + 2] and, row 0 at the top as in a matrix, y in
    // [2(rows - 1 - r), 2(rows - r)]: doubled integer coordinates put the ticks at the cell
    // centres (odd numbers). An empty matrix gets one blank cell so that the axes still draw.
    let (nx, ny) = (cols.max(1), rows.max(1));
    // at most about 16 labelled cells an axis, always including the outlined last column
    let (xs, ys) = ((nx + 15) / 16, (ny + 15) / 16);
    let x_ticks: Vec<i32> = (0..cols)
        .filter(|c| c % xs == 0 || *c == cols - 1)
        .map(|c| 2 * c + 1)
        .collect();
    let y_ticks: Vec<i32> = (0..rows)
        .filter(|r| r % ys == 0)
        .map(|r| 2 * (rows - 1 - r) + 1)
        .collect();
    let mut chart = ChartBuilder::on(&main)
        .caption(&m.title, (FONT, 21))
        .margin(8)
        .x_label_area_size(46)
        .y_label_area_size(54)
        .build_cartesian_2d(
            (0..2 * nx).with_key_points(x_ticks),
            (0..2 * ny).with_key_points(y_ticks),
        )
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("target layer")
        .y_desc("source layer")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .x_label_formatter(&|x| format!("{}", x / 2 + 1))
        .y_label_formatter(&|y| format!("{}", rows - 1 - y / 2))
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(
            m.values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| {
                    let (r, c) = ((i / m.cols) as i32, (i % m.cols) as i32);
                    let y = 2 * (rows - 1 - r);
                    Rectangle::new(
                        [(2 * c, y), (2 * c + 2, y + 2)],
                        heat_color(scale(v)).filled(),
                    )
                }),
        )
        .map_err(draw_err)?;
    if cols > 0 && rows > 0 {
        chart
            // a closed path, not a Rectangle: the SVG backend ignores a rectangle's stroke width
            .draw_series(std::iter::once(PathElement::new(
                [(0, 2), (2, 2), (2, 0), (0, 0), (0, 2)]
                    .map(|(dx, y)| (2 * cols - 2 + dx, y * rows))
                    .to_vec(),
                BLACK.stroke_width(2),
            )))
            .map_err(draw_err)?;
    }
    if lo > hi {
        return Ok(()); // no values: no colour bar
    }

    // colour bar beside the matrix, as tall as it, labelled with the panel's value range
    let (_, py) = chart.plotting_area().get_pixel_range();
    let (base_y, bar_h) = (bar.get_base_pixel().1, bar.dim_in_pixel().1 as i32);
    let (b0, b1) = linear_range([lo, hi].into_iter(), 0.0, 0.0);
    let mut bar_chart = ChartBuilder::on(&bar)
        .margin_top((py.start - base_y).max(0))
        .margin_bottom((base_y + bar_h - py.end).max(0))
        .margin_left(8)
        .margin_right(4)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0.0..1.0, b0..b1)
        .map_err(draw_err)?;
    bar_chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|v| tick(*v, Some(b1 - b0)))
        .set_tick_mark_size(LabelAreaPosition::Right, 6)
        .label_style((FONT, 14))
        .draw()
        .map_err(draw_err)?;
    const STEPS: usize = 64;
    bar_chart
        .draw_series((0..STEPS).map(|k| {
            let at = |k: usize| b0 + (b1 - b0) * k as f64 / STEPS as f64;
            let t = if hi > lo {
                (k as f64 + 0.5) / STEPS as f64
            } else {
                0.5
            };
            Rectangle::new([(0.0, at(k)), (1.0, at(k + 1))], heat_color(t).filled())
        }))
        .map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests;
