//! Tests of the plots: ranges, ticks, legends and the rendered PNG/SVG files.

use super::*;

/// A fresh directory for one test's files.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("densenet-plot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Decodes the PNG at `path`, checks its size, and returns how many pixels are not white.
fn check_png(path: &Path, width: u32, height: u32) -> image::RgbImage {
    let img = image::open(path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (width, height), "{}", path.display());
    let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(
        inked > 1000,
        "{}: only {inked} non-white pixels",
        path.display()
    );
    img
}

/// Pixels close to `rgb`.
fn count_near(img: &image::RgbImage, rgb: RGBColor) -> usize {
    img.pixels()
        .filter(|p| {
            let d = |a: u8, b: u8| (a as i32 - b as i32).abs();
            d(p.0[0], rgb.0) + d(p.0[1], rgb.1) + d(p.0[2], rgb.2) < 30
        })
        .count()
}

/// Item 16 of the robustness issue: the legend keeps off the lines, log axes get
/// more than one label within a decade, epoch axes label integers only, and single
/// points keep clear of the frame.
#[test]
fn legend_ticks_and_margins_keep_clear() {
    // a line rising to the upper right (memory against depth): legend elsewhere
    let rising = vec![(100.0, 0.3), (250.0, 0.65), (502.0, 1.32)];
    let s: Vec<Drawable<'_>> = vec![(0, "efficient", rising)];
    let (x, y) = axis_ranges(&s, false);
    assert!(!matches!(
        legend_corner(&s, x, y),
        SeriesLabelPosition::UpperRight
    ));
    // a falling loss curve leaves the upper right free
    let falling = vec![(1.0, 2.0), (2.0, 1.0), (3.0, 0.5), (4.0, 0.4)];
    let s: Vec<Drawable<'_>> = vec![(0, "train", falling)];
    let (x, y) = axis_ranges(&s, false);
    assert!(matches!(
        legend_corner(&s, x, y),
        SeriesLabelPosition::UpperRight
    ));
    // a learning rate within one decade: labels between the powers of ten, distinct
    let labels: Vec<String> = [-1.4, -1.2, -1.0]
        .iter()
        .map(|&e| log_tick(e, 1.0))
        .collect();
    assert_eq!(labels, ["0.04", "0.063", "0.1"]);
    // epochs: 2 is labelled, 2.5 is not; other axes keep their fractions
    assert_eq!(
        (x_tick(2.0, 3.0, true), x_tick(2.5, 3.0, true)),
        ("2".into(), String::new())
    );
    assert_eq!(x_tick(2.5, 3.0, false), "2.5");
    // single points (compare): strictly inside both ranges, with room
    let s: Vec<Drawable<'_>> = vec![(0, "a", vec![(1e5, 5.0)]), (1, "b", vec![(1e6, 7.0)])];
    let ((x0, x1), (y0, y1)) = axis_ranges(&s, false);
    assert!(x0 < 1e5 - 0.05 * 9e5 && x1 > 1e6 + 0.05 * 9e5, "{x0} {x1}");
    assert!(y0 < 5.0 - 0.1 * 2.0 && y1 > 7.0 + 0.1 * 2.0, "{y0} {y1}");
}

#[test]
fn ranges_and_ticks() {
    assert_eq!(linear_range(std::iter::empty(), 0.05, 0.0), (0.0, 1.0));
    assert_eq!(linear_range([0.0, 0.0].into_iter(), 0.05, 0.0), (-1.0, 1.0));
    assert_eq!(linear_range([1.0].into_iter(), 0.0, 0.5), (0.5, 1.5));
    let (lo, hi) = linear_range([3.0, 3.0].into_iter(), 0.05, 0.0);
    assert!(lo < 3.0 && hi > 3.0);
    assert_eq!(
        linear_range([0.0, 10.0].into_iter(), 0.05, 0.0),
        (-0.5, 10.5)
    );
    let (lo, hi) = log_range([0.1].into_iter());
    assert!(lo > 0.0 && lo < 0.1 && hi > 0.1);
    let (lo, hi) = log_range([1e-3, 0.1].into_iter());
    assert!(lo > 0.0 && lo < 1e-3 && hi > 0.1);
    assert_eq!(log_range(std::iter::empty()), (1e-3, 1.0));
    let log_ticks: Vec<String> = [0.0, 2.0, 0.30000000000000004, 1e-4, 2.5e-5, 1e6, -0.5]
        .into_iter()
        .map(|v| tick(v, None))
        .collect();
    assert_eq!(
        log_ticks,
        ["0", "2", "0.3", "1e-4", "2.5e-5", "1e6", "-0.5"]
    );
    let lin = |vs: &[f64], span: f64| -> Vec<String> {
        vs.iter().map(|&v| tick(v, Some(span))).collect()
    };
    assert_eq!(lin(&[0.0, 50.0, 300.0], 300.0), ["0", "50", "300"]);
    assert_eq!(lin(&[-5.5e-17, 0.5, 1.25], 2.5), ["0", "0.5", "1.25"]);
    assert_eq!(lin(&[1.0001, 1.0002], 0.001), ["1.0001", "1.0002"]);
    assert_eq!(lin(&[2e-5, 4e-5], 1e-4), ["2e-5", "4e-5"]);
    assert_eq!(heat_color(0.0), RGBColor(0, 0, 140));
    assert_eq!(heat_color(1.0), RGBColor(140, 0, 0));
    assert_eq!(heat_color(f64::NAN), heat_color(0.5));
}

fn run(epochs: usize) -> Vec<EpochPoint> {
    (1..=epochs)
        .map(|e| {
            let t = e as f64;
            EpochPoint {
                epoch: t,
                train_loss: 2.3 * (-t / 60.0).exp() + 0.05,
                test_loss: (e % 5 == 0).then(|| 2.3 * (-t / 70.0).exp() + 0.3),
                train_error: 90.0 * (-t / 50.0).exp() + 1.0,
                test_error: (e % 5 == 0).then(|| 88.0 * (-t / 60.0).exp() + 7.0),
                lr: if e <= 150 {
                    0.1
                } else if e <= 225 {
                    0.01
                } else {
                    0.001
                },
            }
        })
        .collect()
}

#[test]
fn learning_curves_render() {
    let dir = scratch_dir("curves");
    let path = dir.join("curves.png");
    learning_curves(&path, "three epochs", &run(3)).unwrap();
    check_png(&path, 1500, 470);
    // overwriting goes through a temporary file and leaves nothing else behind
    learning_curves(&path, "DenseNet-40 (k=12) on CIFAR-10", &run(300)).unwrap();
    let img = check_png(&path, 1500, 470);
    assert!(count_near(&img, PALETTE[0]) > 500, "no blue (train) line");
    assert!(count_near(&img, PALETTE[1]) > 500, "no red (test) line");
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn edge_cases_render() {
    let dir = scratch_dir("edges");
    // no epochs at all, a single epoch, and a run never tested
    learning_curves(&dir.join("empty.png"), "empty", &[]).unwrap();
    check_png(&dir.join("empty.png"), 1500, 470);
    learning_curves(&dir.join("one.png"), "one epoch", &run(1)).unwrap();
    check_png(&dir.join("one.png"), 1500, 470);
    let untested: Vec<_> = run(20)
        .into_iter()
        .map(|p| EpochPoint {
            test_loss: None,
            test_error: None,
            ..p
        })
        .collect();
    learning_curves(&dir.join("untested.png"), "", &untested).unwrap();
    check_png(&dir.join("untested.png"), 1500, 470);

    let nasty = vec![
        Panel {
            title: "empty series".into(),
            series: vec![Series::default()],
            ..Panel::default()
        },
        Panel {
            title: "all equal, NaN and inf".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                label: "flat".into(),
                points: vec![
                    (0.0, 3.0),
                    (1.0, f64::NAN),
                    (2.0, 3.0),
                    (f64::INFINITY, 1.0),
                    (3.0, f64::NEG_INFINITY),
                    (4.0, 3.0),
                ],
            }],
            log_y: false,
        },
        Panel {
            title: "log with zeros".into(),
            series: vec![
                Series {
                    label: "some".into(),
                    points: vec![(0.0, 0.0), (1.0, -1.0), (2.0, 1e-5), (3.0, 1e-5)],
                },
                Series {
                    label: "none".into(),
                    points: vec![(0.0, 0.0), (1.0, -2.0)],
                },
            ],
            log_y: true,
            ..Panel::default()
        },
        Panel {
            title: "one point".into(),
            series: vec![Series {
                label: "dot".into(),
                points: vec![(5.0, 0.0)],
            }],
            ..Panel::default()
        },
    ];
    plot_panels(&dir.join("nasty.png"), &nasty, 2, 900, 700).unwrap();
    check_png(&dir.join("nasty.png"), 900, 700);

    let err = plot_panels(&dir.join("none.png"), &[], 1, 100, 100).unwrap_err();
    assert!(err.to_string().contains("none.png"), "{err}");
    let err = plot_panels(&dir.join("zero.png"), &nasty, 1, 0, 100).unwrap_err();
    assert!(err.to_string().contains("zero.png"), "{err}");
    let err = learning_curves(&dir.join("missing/x.png"), "", &run(2)).unwrap_err();
    assert!(matches!(err, PlotError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing/x.png"), "{err}");
}

/// A DenseNet-like block: source s = 0..=L feeds targets t = s+1..=L+1 (L+1: transition).
fn block(title: &str, layers: usize, seed: u64) -> HeatMatrix {
    let (rows, cols) = (layers + 1, layers + 1);
    let mut values = vec![f64::NAN; rows * cols];
    let mut state = seed;
    for s in 0..rows {
        for c in s..cols {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = (state >> 11) as f64 / (1u64 << 53) as f64;
            values[s * cols + c] = 0.3 * noise + if s == c { 0.7 } else { 0.2 };
        }
    }
    HeatMatrix {
        title: title.into(),
        rows,
        cols,
        values,
    }
}

#[test]
fn heatmaps_render() {
    let dir = scratch_dir("heat");
    let (png, svg) = (dir.join("fig5.png"), dir.join("fig5.svg"));
    let panels = [
        block("Dense Block 1", 12, 1),
        block("Dense Block 2", 12, 2),
        block("Dense Block 3", 12, 3),
    ];
    heatmaps(&png, Some(&svg), &panels).unwrap();
    let img = check_png(&png, 3 * HEAT_PANEL.0, HEAT_PANEL.1);
    assert!(
        count_near(&img, heat_color(1.0)) > 100,
        "no high (red) cells"
    );
    assert!(
        count_near(&img, heat_color(0.0)) > 100,
        "no low (blue) cells"
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("source layer"));

    // edge cases: all NaN, all equal, a single (infinite) cell, an empty matrix, a large
    // matrix, five panels on two rows
    let odd = [
        HeatMatrix {
            title: "all NaN".into(),
            rows: 2,
            cols: 2,
            values: vec![f64::NAN; 4],
        },
        HeatMatrix {
            title: "all equal".into(),
            rows: 3,
            cols: 2,
            values: vec![0.5; 6],
        },
        HeatMatrix {
            title: "one cell".into(),
            rows: 1,
            cols: 1,
            values: vec![f64::INFINITY],
        },
        HeatMatrix {
            title: "empty".into(),
            ..HeatMatrix::default()
        },
        block("48 layers", 48, 4),
    ];
    heatmaps(&dir.join("odd.png"), None, &odd).unwrap();
    check_png(&dir.join("odd.png"), 3 * HEAT_PANEL.0, 2 * HEAT_PANEL.1);

    let bad = [HeatMatrix {
        rows: 2,
        cols: 2,
        values: vec![1.0; 3],
        ..HeatMatrix::default()
    }];
    let err = heatmaps(&dir.join("bad.png"), None, &bad).unwrap_err();
    assert!(matches!(err, PlotError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("bad.png"), "{err}");
}
