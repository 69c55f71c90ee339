//! `latency.svg`: one latency-by-percentile curve per target, the way HdrHistogram plots
//! them. The x axis is `log10(1 / (1 - p))` (so 90 %, 99 %, 99.9 % … are evenly spaced), the
//! y axis latency on a log scale. Plain SVG written by hand: a few paths and labels need no
//! plotting crate.

use std::fmt::Write as _;

use crate::load::CurvePoint;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Deepest percentile drawn: 99.999 % (the 100 % point is drawn there too).
const MAX_NINES: f64 = 5.0;
const X_LABELS: &[&str] = &["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
const COLOURS: &[&str] = &[
    "#555555", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e",
];

/// One curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend (and `data-target` attribute).
    pub name: String,
    /// Its points (percentile 0–100, latency µs).
    pub points: Vec<CurvePoint>,
}

fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(10f64.powf(-MAX_NINES));
    (-rest.log10()).clamp(0.0, MAX_NINES)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the plot. Every series gets a `<path>` (an empty one when it has no points), so
/// the file always shows which targets ran.
pub fn latency_svg(title: &str, series: &[Series]) -> String {
    let all = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.latency_us.max(1) as f64));
    let (lo, hi) = all.fold((f64::MAX, 1.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = if lo == f64::MAX { 1.0 } else { lo };
    let y_min = 10f64.powf(lo.log10().floor());
    let y_max = 10f64.powf(hi.log10().ceil()).max(y_min * 10.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |p: f64| LEFT + nines(p) / MAX_NINES * plot_w;
    let y_of = |us: f64| {
        let t = (us.max(y_min).log10() - y_min.log10()) / (y_max.log10() - y_min.log10());
        TOP + plot_h * (1.0 - t)
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and axes.
    for n in 0..=MAX_NINES as u32 {
        let x = LEFT + f64::from(n) / MAX_NINES * plot_w;
        let label = X_LABELS.get(n as usize).copied().unwrap_or("");
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#dddddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    let mut decade = y_min;
    while decade <= y_max * 1.0001 {
        let y = y_of(decade);
        let label = if decade >= 1000.0 {
            format!("{} ms", decade / 1000.0)
        } else {
            format!("{decade} µs")
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0
        );
        decade *= 10.0;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // Curves and legend.
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points: Vec<&CurvePoint> = s.points.iter().collect();
        points.sort_by(|a, b| a.percentile.total_cmp(&b.percentile));
        let mut d = String::new();
        for (j, p) in points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1} ",
                if j == 0 { 'M' } else { 'L' },
                x_of(p.percentile),
                y_of(p.latency_us.max(1) as f64)
            );
        }
        let _ = writeln!(
            svg,
            r#"<path data-target="{}" d="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            escape(&s.name),
            d.trim_end()
        );
        let ly = TOP + 16.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(base: u64) -> Vec<CurvePoint> {
        [0.0, 50.0, 90.0, 99.0, 99.9, 100.0]
            .iter()
            .enumerate()
            .map(|(i, &p)| CurvePoint {
                percentile: p,
                latency_us: base * (i as u64 + 1),
            })
            .collect()
    }

    #[test]
    fn x_axis_counts_nines() {
        assert!((nines(0.0) - 0.0).abs() < 1e-9);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!((nines(100.0) - MAX_NINES).abs() < 1e-9);
    }

    #[test]
    fn one_path_per_series_and_well_formed() {
        let svg = latency_svg(
            "p <at> 1000 req/s",
            &[
                Series {
                    name: "direct".into(),
                    points: curve(50),
                },
                Series {
                    name: "sluice & co".into(),
                    points: curve(80),
                },
                Series {
                    name: "empty".into(),
                    points: Vec::new(),
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path ").count(), 3);
        assert!(svg.contains(r#"data-target="sluice &amp; co""#));
        assert!(svg.contains("p &lt;at&gt; 1000 req/s"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Every opened element is closed or self-closed.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(svg.contains("99.9%"));
    }

    #[test]
    fn empty_plot_still_renders() {
        let svg = latency_svg("nothing", &[]);
        assert!(svg.starts_with("<svg") && !svg.contains("NaN"));
    }
}
