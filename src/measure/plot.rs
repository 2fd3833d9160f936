//! SVG line charts of clock error over time, as plain strings.
//!
//! A chart is the quickest way to see whether a cluster converges, oscillates or has one client
//! that never settles, and an SVG file opens in any browser without a plotting stack. The chart
//! is built by a pure function from numbers to text, so it is tested like any other function
//! and needs no crate beyond std.
//!
//! The one hard part is the y range. Clock errors start at up to an hour (a freshly started
//! client) and settle to microseconds; scaling to the extremes would flatten everything that
//! matters into the zero line. So the range is the 2nd..98th percentile of all values, widened
//! by a fifth and always wide enough to show ±[`MIN_HALF_RANGE_US`] around zero, the reference
//! an error is read against. Points outside are drawn on the edge they crossed and counted in a
//! note, so the chart never hides that they exist. Ticks are 1, 2 or 5 × 10^k of the unit shown,
//! and the unit switches from µs to ms once the range passes [`MS_ABOVE_US`].
//!
//! The legend sits right of the plot area so it never covers a line.

use std::fmt::Write;

/// One line of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Legend text (a client id, say).
    pub label: String,
    /// `(t, error)`: seconds since the start of the run, error in µs. Non-finite points are
    /// skipped.
    pub points: Vec<(f64, f64)>,
}

/// Canvas size (SVG user units); 16:9, readable as an image on a laptop screen.
pub const WIDTH: f64 = 960.0;
/// Canvas height; see [`WIDTH`].
pub const HEIGHT: f64 = 540.0;
/// Left edge of the plot area: room for y tick labels of up to eight characters (an hour in ms)
/// and the rotated y axis label.
const PLOT_LEFT: f64 = 96.0;
/// Estimated width of one tick label character at 12 px (digits in common sans fonts).
const TICK_CHAR_WIDTH: f64 = 7.5;
/// Right edge of the plot area; the legend lives in the remaining 240 units.
const PLOT_RIGHT: f64 = 716.0;
/// Top of the plot area, below the title and the clipping note.
const PLOT_TOP: f64 = 56.0;
/// Bottom of the plot area, above the x tick labels and axis label.
const PLOT_BOTTOM: f64 = 476.0;
/// Where legend swatches start.
const LEGEND_LEFT: f64 = 732.0;
/// Height of one legend row.
const LEGEND_ROW: f64 = 22.0;

/// Intervals between ticks the axes aim for (giving about six ticks).
const TARGET_INTERVALS: usize = 5;
/// Lower and upper percentile of all y values that set the y range.
const Y_PERCENTILES: (f64, f64) = (0.02, 0.98);
/// How much the percentile range is widened, in total (half on each side).
const Y_PADDING: f64 = 0.2;
/// The y range always covers at least ±this (µs): a chart of perfect clocks still has a scale.
pub const MIN_HALF_RANGE_US: f64 = 10.0;
/// A y range wider than this (µs) is labelled in ms.
pub const MS_ABOVE_US: f64 = 5_000.0;
/// Legend rows before the rest are summarized as "+N more".
pub const LEGEND_MAX: usize = 16;
/// Legend labels are cut to this many characters to stay inside the canvas (a UUID is 36).
const LEGEND_LABEL_CHARS: usize = 26;
/// Line colours, cycled: Tableau 10 plus two darker ones; distinct for the first twelve series.
pub const PALETTE: [&str; 12] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#1b3a5c", "#7a1f3d",
];

/// Renders `series` as a 960×540 SVG line chart: error (µs, or ms for wide ranges) over time (s).
///
/// `y_label` names the quantity; the unit is appended. Never panics and never prints a
/// non-finite number, whatever the input (no series, empty series, one point, NaN).
pub fn svg(title: &str, y_label: &str, series: &[Line]) -> String {
    let lines: Vec<Vec<(f64, f64)>> = series.iter().map(|s| finite_sorted(&s.points)).collect();
    let all_t = lines.iter().flatten().map(|p| p.0);
    let mut all_y: Vec<f64> = lines.iter().flatten().map(|p| p.1).collect();

    let (x0, x1) = x_range(all_t);
    let y = YAxis::new(&mut all_y);
    let px = |t: f64| PLOT_LEFT + (t - x0) / (x1 - x0) * (PLOT_RIGHT - PLOT_LEFT);
    let py = |v: f64| PLOT_BOTTOM - (v - y.lo) / (y.hi - y.lo) * (PLOT_BOTTOM - PLOT_TOP);

    let mut out = String::with_capacity(4096 + lines.iter().map(Vec::len).sum::<usize>() * 16);
    let o = &mut out;
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        o,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        n((PLOT_LEFT + PLOT_RIGHT) / 2.0),
        escape(title)
    );

    // Grid, ticks and tick labels.
    let _ = writeln!(o, r##"<g stroke="#e3e3e3">"##);
    let x_step = nice_step(x1 - x0, TARGET_INTERVALS);
    let x_ticks = ticks(x0, x1, x_step);
    for &t in &x_ticks {
        let x = n(px(t));
        let _ = writeln!(
            o,
            r#"<line x1="{x}" y1="{PLOT_TOP}" x2="{x}" y2="{PLOT_BOTTOM}"/>"#
        );
    }
    let y_ticks = ticks(y.lo, y.hi, y.step);
    for &v in &y_ticks {
        let yy = n(py(v));
        let _ = writeln!(
            o,
            r#"<line x1="{PLOT_LEFT}" y1="{yy}" x2="{PLOT_RIGHT}" y2="{yy}"/>"#
        );
    }
    let _ = writeln!(o, "</g>");
    let _ = writeln!(o, r##"<g fill="#333">"##);
    for &t in &x_ticks {
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            n(px(t)),
            PLOT_BOTTOM + 18.0,
            tick_label(t, x_step)
        );
    }
    let y_labels: Vec<String> = y_ticks
        .iter()
        .map(|v| tick_label(v / y.scale, y.step / y.scale))
        .collect();
    for (&v, label) in y_ticks.iter().zip(&y_labels) {
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
            PLOT_LEFT - 8.0,
            n(py(v) + 4.0),
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">time (s)</text>"#,
        n((PLOT_LEFT + PLOT_RIGHT) / 2.0),
        PLOT_BOTTOM + 44.0
    );
    // The axis label goes just left of the widest tick label, but not off the canvas.
    let widest = y_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    let label_x = n((PLOT_LEFT - 20.0 - widest as f64 * TICK_CHAR_WIDTH).clamp(14.0, 40.0));
    let y_mid = n((PLOT_TOP + PLOT_BOTTOM) / 2.0);
    let _ = writeln!(
        o,
        r#"<text x="{label_x}" y="{y_mid}" text-anchor="middle" font-size="13" transform="rotate(-90 {label_x} {y_mid})">{} ({})</text>"#,
        escape(y_label),
        y.unit
    );
    let _ = writeln!(o, "</g>");
    let _ = writeln!(
        o,
        r##"<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        PLOT_RIGHT - PLOT_LEFT,
        PLOT_BOTTOM - PLOT_TOP
    );
    if y.lo < 0.0 && y.hi > 0.0 {
        let z = n(py(0.0));
        let _ = writeln!(
            o,
            r##"<line x1="{PLOT_LEFT}" y1="{z}" x2="{PLOT_RIGHT}" y2="{z}" stroke="#555" stroke-dasharray="6 4"/>"##
        );
    }

    // The lines, clamped to the y range (and clipped to the plot area for the stroke's sake).
    let _ = writeln!(
        o,
        r#"<clipPath id="plot-area"><rect x="{PLOT_LEFT}" y="{}" width="{}" height="{}"/></clipPath>"#,
        PLOT_TOP - 2.0,
        PLOT_RIGHT - PLOT_LEFT,
        PLOT_BOTTOM - PLOT_TOP + 4.0
    );
    let _ = writeln!(
        o,
        r#"<g clip-path="url(#plot-area)" fill="none" stroke-width="1.5" stroke-linejoin="round">"#
    );
    let mut clipped = 0usize;
    for (i, (s, pts)) in series.iter().zip(&lines).enumerate() {
        if pts.is_empty() {
            continue;
        }
        let colour = PALETTE[i % PALETTE.len()];
        let mut coords = String::with_capacity(pts.len() * 14);
        for &(t, v) in pts {
            if v < y.lo || v > y.hi {
                clipped += 1;
            }
            let _ = write!(coords, "{},{} ", n(px(t)), n(py(v.clamp(y.lo, y.hi))));
        }
        let _ = writeln!(
            o,
            r#"<polyline stroke="{colour}" points="{}"><title>{}</title></polyline>"#,
            coords.trim_end(),
            escape(&s.label)
        );
        if let [(t, v)] = pts[..] {
            // A one-point line draws nothing; mark the point.
            let _ = writeln!(
                o,
                r#"<circle cx="{}" cy="{}" r="3" fill="{colour}"/>"#,
                n(px(t)),
                n(py(v.clamp(y.lo, y.hi)))
            );
        }
    }
    let _ = writeln!(o, "</g>");

    if lines.iter().all(Vec::is_empty) {
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888" font-size="14">no data</text>"##,
            n((PLOT_LEFT + PLOT_RIGHT) / 2.0),
            // Above the zero line, not on it.
            n((PLOT_TOP + PLOT_BOTTOM) / 2.0 - 40.0)
        );
    }
    if clipped > 0 {
        let _ = writeln!(
            o,
            r##"<text x="{PLOT_RIGHT}" y="{}" text-anchor="end" font-size="11" fill="#a33">{clipped} point{} outside the range clipped</text>"##,
            PLOT_TOP - 8.0,
            if clipped == 1 { "" } else { "s" }
        );
    }
    legend(o, series, &lines);
    let _ = writeln!(o, "</svg>");
    out
}

/// The legend, right of the plot area: a swatch and the label per series, at most
/// [`LEGEND_MAX`] rows.
fn legend(o: &mut String, series: &[Line], lines: &[Vec<(f64, f64)>]) {
    let _ = writeln!(o, r##"<g font-size="11" fill="#333">"##);
    for (i, (s, pts)) in series.iter().zip(lines).take(LEGEND_MAX).enumerate() {
        let y = PLOT_TOP + 8.0 + i as f64 * LEGEND_ROW;
        let colour = PALETTE[i % PALETTE.len()];
        let mut label = truncate(&s.label, LEGEND_LABEL_CHARS);
        if pts.is_empty() {
            label.push_str(" (no data)");
        }
        let _ = writeln!(
            o,
            r#"<line x1="{LEGEND_LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}<title>{}</title></text>"#,
            LEGEND_LEFT + 18.0,
            LEGEND_LEFT + 24.0,
            y + 4.0,
            escape(&label),
            escape(&s.label)
        );
    }
    if series.len() > LEGEND_MAX {
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" font-style="italic">+{} more</text>"#,
            LEGEND_LEFT + 24.0,
            PLOT_TOP + 12.0 + LEGEND_MAX as f64 * LEGEND_ROW,
            series.len() - LEGEND_MAX
        );
    }
    let _ = writeln!(o, "</g>");
}

/// The y axis: its range (µs), tick step (µs) and the unit its labels are in.
struct YAxis {
    lo: f64,
    hi: f64,
    step: f64,
    /// µs per label unit.
    scale: f64,
    unit: &'static str,
}

impl YAxis {
    /// The robust range of `ys` (finite values, any order; sorted in place), snapped outwards to
    /// whole ticks.
    fn new(ys: &mut [f64]) -> YAxis {
        ys.sort_by(f64::total_cmp);
        let (mut lo, mut hi) = match (
            percentile(ys, Y_PERCENTILES.0),
            percentile(ys, Y_PERCENTILES.1),
        ) {
            (Some(lo), Some(hi)) => (lo, hi),
            _ => (0.0, 0.0),
        };
        let pad = (hi - lo) * Y_PADDING / 2.0;
        lo = (lo - pad).min(-MIN_HALF_RANGE_US);
        hi = (hi + pad).max(MIN_HALF_RANGE_US);
        if !(hi - lo).is_finite() {
            // Values near f64::MAX; nothing sensible to show, but show something.
            (lo, hi) = (-MIN_HALF_RANGE_US, MIN_HALF_RANGE_US);
        }
        let (scale, unit) = if hi - lo > MS_ABOVE_US {
            (1_000.0, "ms")
        } else {
            (1.0, "µs")
        };
        let step = nice_step((hi - lo) / scale, TARGET_INTERVALS) * scale;
        YAxis {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
            scale,
            unit,
        }
    }
}

/// The time range of the points; a width of at least one second around a lone instant.
fn x_range(ts: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = ts.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
        (lo.min(t), hi.max(t))
    });
    if !lo.is_finite() || !hi.is_finite() {
        (0.0, 1.0)
    } else if hi - lo <= 0.0 || !(hi - lo).is_finite() {
        (lo - 0.5, lo + 0.5)
    } else {
        (lo, hi)
    }
}

/// The finite points of a series, in time order.
fn finite_sorted(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, v)| t.is_finite() && v.is_finite())
        .collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

/// The `q` quantile of sorted values, interpolating between neighbours.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = q * last as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    let next = sorted[(i + 1).min(last)];
    Some(sorted[i] + (next - sorted[i]) * frac)
}

/// A step of 1, 2 or 5 × 10^k that cuts `span` into about `intervals` pieces; 1 for a span that
/// is not a positive finite number.
fn nice_step(span: f64, intervals: usize) -> f64 {
    let raw = span / intervals.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    // Round to the nearest of 1, 2, 5, 10 (on a roughly logarithmic scale).
    let nice = if f < 1.5 {
        1.0
    } else if f < 3.0 {
        2.0
    } else if f < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Multiples of `step` within `[lo, hi]` (with rounding slack), at most a hundred.
fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).take(100).map(|k| k as f64 * step).collect()
}

/// A tick value with as many decimals as its step needs, and no "-0".
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10() - 1e-9).ceil().max(0.0) as usize
    };
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

/// A coordinate with one decimal; 0 for a non-finite value, which the ranges rule out anyway.
fn n(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.1}");
        s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
    } else {
        "0".into()
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// `s` safe inside XML text and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_US: f64 = 3_600_000_000.0;

    fn series(label: &str, points: &[(f64, f64)]) -> Line {
        Line {
            label: label.into(),
            points: points.to_vec(),
        }
    }

    /// A client settling from `start` µs to near zero, one point a second.
    fn settling(label: &str, start: f64, seconds: usize) -> Line {
        let points = (0..seconds)
            .map(|s| {
                let t = s as f64;
                let v = if s == 0 {
                    start
                } else {
                    40.0 * (t * 0.7).sin()
                };
                (t, v)
            })
            .collect();
        Line {
            label: label.into(),
            points,
        }
    }

    #[test]
    fn nice_steps() {
        // (span, intervals) -> step
        let cases = [
            (10.0, 5, 2.0),
            (1.0, 5, 0.2),
            (7.0, 5, 1.0),
            (13.0, 5, 2.0),
            (100.0, 5, 20.0),
            (30.0, 5, 5.0),
            (0.3, 5, 0.05),
            (45.0, 5, 10.0),
            (7.2e9, 5, 1e9),
            (0.0, 5, 1.0),
            (-3.0, 5, 1.0),
            (f64::NAN, 5, 1.0),
            (f64::INFINITY, 5, 1.0),
            (10.0, 0, 10.0),
        ];
        for (span, intervals, want) in cases {
            let got = nice_step(span, intervals);
            assert!(
                (got - want).abs() <= want * 1e-9,
                "nice_step({span}, {intervals}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn tick_labels() {
        let cases = [
            (20.0, 5.0, "20"),
            (0.4, 0.2, "0.4"),
            (-0.05, 0.05, "-0.05"),
            (-1e-12, 0.2, "0.0"),
            (-1e-12, 1.0, "0"),
            (3_600_000.0, 1_000_000.0, "3600000"),
        ];
        for (v, step, want) in cases {
            assert_eq!(tick_label(v, step), want, "tick_label({v}, {step})");
        }
    }

    #[test]
    fn one_polyline_per_series_with_points() {
        let cases: &[(&[Line], usize)] = &[
            (&[], 0),
            (&[series("a", &[])], 0),
            (&[series("a", &[(0.0, 1.0), (1.0, 2.0)])], 1),
            (
                &[
                    series("a", &[(0.0, 1.0), (1.0, 2.0)]),
                    series("b", &[]),
                    series("c", &[(0.0, 3.0)]),
                    series("d", &[(f64::NAN, 3.0)]),
                ],
                2,
            ),
        ];
        for (s, want) in cases {
            let out = svg("t", "error", s);
            assert_eq!(out.matches("<polyline").count(), *want, "{s:?}");
        }
    }

    #[test]
    fn never_prints_non_finite_numbers() {
        let cases: Vec<Vec<Line>> = vec![
            vec![],
            vec![series("empty", &[])],
            vec![series("one point", &[(5.0, 7.0)])],
            vec![series("flat", &[(0.0, 3.0), (1.0, 3.0), (2.0, 3.0)])],
            vec![series("same instant", &[(2.0, 1.0), (2.0, 9.0)])],
            vec![series(
                "garbage",
                &[
                    (f64::NAN, 1.0),
                    (1.0, f64::INFINITY),
                    (2.0, f64::NEG_INFINITY),
                    (3.0, 1.0),
                ],
            )],
            vec![series("huge", &[(0.0, f64::MAX), (1.0, -f64::MAX)])],
            vec![series("negative time", &[(-10.0, -HOUR_US), (-5.0, 0.0)])],
            vec![settling("settling", HOUR_US, 60)],
        ];
        for s in cases {
            let out = svg("t", "error", &s);
            for bad in ["NaN", "inf"] {
                assert!(!out.contains(bad), "{bad} in chart of {s:?}:\n{out}");
            }
            assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
        }
    }

    #[test]
    fn escapes_text() {
        let out = svg(
            "a<b & \"c\"",
            "x>'y'",
            &[series("<script>&", &[(0.0, 1.0)])],
        );
        for want in [
            "a&lt;b &amp; &quot;c&quot;",
            "x&gt;&apos;y&apos;",
            "&lt;script&gt;&amp;",
        ] {
            assert!(out.contains(want), "{want} missing");
        }
        for raw in ["a<b", "<script>", "x>'y'"] {
            assert!(!out.contains(raw), "unescaped {raw}");
        }
    }

    #[test]
    fn clips_outliers_and_says_so() {
        // (series, note expected)
        let cases = [
            (vec![settling("a", 5.0, 100)], None),
            (
                vec![settling("a", HOUR_US, 100)],
                Some("1 point outside the range clipped"),
            ),
            (
                vec![settling("a", HOUR_US, 100), settling("b", -HOUR_US, 100)],
                Some("2 points outside the range clipped"),
            ),
        ];
        for (s, note) in cases {
            let out = svg("t", "error", &s);
            match note {
                Some(n) => assert!(out.contains(n), "{n} missing"),
                None => assert!(!out.contains("clipped"), "unexpected note"),
            }
            // The settled part decides the scale: microseconds, not hours.
            assert!(out.contains("error (µs)"), "unit");
        }
    }

    #[test]
    fn unit_follows_the_range() {
        let cases = [(100.0, "(µs)"), (2_000.0, "(µs)"), (50_000.0, "(ms)")];
        for (amplitude, unit) in cases {
            let s = series("a", &[(0.0, -amplitude), (1.0, amplitude)]);
            let out = svg("t", "error", &[s]);
            assert!(out.contains(unit), "{amplitude}: want {unit}");
        }
    }

    #[test]
    fn legend_summarizes_many_series() {
        let cases = [(3, None), (LEGEND_MAX, None), (20, Some("+4 more"))];
        for (count, more) in cases {
            let s: Vec<Line> = (0..count)
                .map(|i| series(&format!("client-{i}"), &[(0.0, i as f64)]))
                .collect();
            let out = svg("t", "error", &s);
            assert_eq!(out.contains("more</text>"), more.is_some(), "{count}");
            if let Some(m) = more {
                assert!(out.contains(m), "{count}: {m}");
            }
            assert!(out.contains("client-0<title>"));
            assert!(!out.contains(&format!("client-{LEGEND_MAX}<title>")));
        }
    }
}
