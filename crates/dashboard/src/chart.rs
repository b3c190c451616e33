//! Charts drawn on the server as inline SVG (no script, nothing fetched):
//! a line chart of one or more series and a bar chart, over one label per
//! point. Colours come from the stylesheet's `.s0`–`.s3` classes (the
//! content security policy allows no inline styles). Pages print the
//! numbers beside every chart; the chart is for looking, `aria-hidden`.

use maud::{Markup, html};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// One series of a line chart: its name (the legend) and a value per label.
pub struct Line<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `max`, at least 2 (so the
/// axis's middle value is whole).
pub fn nice_ceiling(max: f64) -> f64 {
    if !max.is_finite() || max <= 2.0 {
        return 2.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|step| step * magnitude).find(|top| *top >= max).unwrap_or(max)
}

/// The plot's scale: a value's height and a point's x position.
#[derive(Debug, Clone, Copy)]
struct Scale {
    top: f64,
    points: usize,
}

impl Scale {
    fn y(self, value: f64) -> f64 {
        let plot = HEIGHT - TOP - BOTTOM;
        let value = value.clamp(0.0, self.top);
        HEIGHT - BOTTOM - value / self.top * plot
    }

    /// The centre of the `index`th of `points` slots.
    fn x(self, index: usize) -> f64 {
        let slot = (WIDTH - LEFT - RIGHT) / self.points.max(1) as f64;
        LEFT + slot * (index as f64 + 0.5)
    }

    fn slot(self) -> f64 {
        (WIDTH - LEFT - RIGHT) / self.points.max(1) as f64
    }
}

fn round(v: f64) -> String {
    format!("{:.1}", v)
}

/// The frame: grid lines with the axis's values, the first, middle and last labels.
fn frame(scale: Scale, labels: &[String], suffix: &str) -> Markup {
    let ticks = [0.0, scale.top / 2.0, scale.top];
    let shown: Vec<usize> = if labels.is_empty() {
        Vec::new()
    } else {
        let mut shown = vec![0, labels.len() / 2, labels.len() - 1];
        shown.dedup();
        shown
    };
    html! {
        @for tick in ticks {
            line.grid x1=(round(LEFT)) x2=(round(WIDTH - RIGHT)) y1=(round(scale.y(tick))) y2=(round(scale.y(tick))) {}
            text.axis x=(round(LEFT - 6.0)) y=(round(scale.y(tick) + 4.0)) text-anchor="end" {
                (crate::i18n::grouped(tick.round() as u64)) (suffix)
            }
        }
        @for index in shown {
            text.axis x=(round(scale.x(index))) y=(round(HEIGHT - 8.0)) text-anchor="middle" { (labels[index]) }
        }
    }
}

fn empty(id: &str, title: &str, note: &str) -> Markup {
    html! {
        svg.chart id=(id) role="img" aria-label=(title) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } xmlns="http://www.w3.org/2000/svg" {
            text.axis x=(round(WIDTH / 2.0)) y=(round(HEIGHT / 2.0)) text-anchor="middle" { (note) }
        }
    }
}

/// A line chart: one polyline per series, a legend, values from 0 to a nice
/// ceiling (`suffix` after the axis's numbers, e.g. `%`). With no labels,
/// a frame saying `note`.
pub fn line_chart(id: &str, title: &str, labels: &[String], lines: &[Line<'_>], suffix: &str, note: &str) -> Markup {
    if labels.is_empty() || lines.is_empty() {
        return empty(id, title, note);
    }
    let max = lines.iter().flat_map(|l| l.values.iter().copied()).fold(0.0, f64::max);
    let scale = Scale { top: nice_ceiling(max), points: labels.len() };
    html! {
        svg.chart id=(id) role="img" aria-label=(title) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } xmlns="http://www.w3.org/2000/svg" {
            (frame(scale, labels, suffix))
            @for (n, line) in lines.iter().enumerate() {
                @let points: Vec<String> = line.values.iter().enumerate().map(|(i, v)| format!("{},{}", round(scale.x(i)), round(scale.y(*v)))).collect();
                polyline class={ "series s" (n % 4) } data-name=(line.name) points=(points.join(" ")) {}
                rect class={ "key s" (n % 4) } x=(round(LEFT + 8.0 + 130.0 * n as f64)) y="2" width="10" height="10" {}
                text.legend x=(round(LEFT + 22.0 + 130.0 * n as f64)) y="11" { (line.name) }
            }
        }
    }
}

/// A bar chart of one series.
pub fn bar_chart(id: &str, title: &str, labels: &[String], values: &[f64], note: &str) -> Markup {
    if labels.is_empty() {
        return empty(id, title, note);
    }
    let scale = Scale { top: nice_ceiling(values.iter().copied().fold(0.0, f64::max)), points: labels.len() };
    let width = (scale.slot() * 0.7).max(1.0);
    html! {
        svg.chart id=(id) role="img" aria-label=(title) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } xmlns="http://www.w3.org/2000/svg" {
            (frame(scale, labels, ""))
            @for (i, value) in values.iter().enumerate() {
                @let y = scale.y(*value);
                rect class="bar s0" x=(round(scale.x(i) - width / 2.0)) y=(round(y)) width=(round(width)) height=(round(HEIGHT - BOTTOM - y)) data-value=(value) {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element opened is closed, in order (maud writes `<a></a>`, never `<a/>`).
    fn balanced(svg: &str) -> bool {
        let mut open: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let Some(end) = rest[start..].find('>') else { return false };
            let tag = &rest[start + 1..start + end];
            rest = &rest[start + end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if open.pop().as_deref() != Some(name) {
                    return false;
                }
            } else {
                open.push(tag.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
        open.is_empty()
    }

    fn labels(n: usize) -> Vec<String> {
        (1..=n).map(|d| format!("12-{d:02}")).collect()
    }

    #[test]
    fn ceilings_are_one_two_or_five() {
        assert_eq!(nice_ceiling(0.0), 2.0);
        assert_eq!(nice_ceiling(1.0), 2.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(11.0), 20.0);
        assert_eq!(nice_ceiling(420.0), 500.0);
        assert_eq!(nice_ceiling(1_000_001.0), 2_000_000.0);
        assert_eq!(nice_ceiling(f64::NAN), 2.0);
    }

    #[test]
    fn the_scale_puts_zero_at_the_bottom_and_the_ceiling_at_the_top() {
        let scale = Scale { top: 100.0, points: 4 };
        assert_eq!(scale.y(0.0), HEIGHT - BOTTOM);
        assert_eq!(scale.y(100.0), TOP);
        assert_eq!(scale.y(50.0), (HEIGHT - BOTTOM + TOP) / 2.0);
        assert_eq!(scale.y(-5.0), HEIGHT - BOTTOM, "clamped");
        assert!(scale.x(0) > LEFT && scale.x(3) < WIDTH - RIGHT);
        assert!(scale.x(1) > scale.x(0));
    }

    #[test]
    fn a_line_chart_is_valid_svg_with_a_point_per_label() {
        let friends = [10.0, 20.0, 40.0];
        let blocked = [1.0, 1.0, 2.0];
        let lines = [Line { name: "friends", values: &friends }, Line { name: "blocked", values: &blocked }];
        let svg = line_chart("c", "Friends", &labels(3), &lines, "", "no data").into_string();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(balanced(&svg), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2);
        let points = svg.split("points=\"").nth(1).and_then(|p| p.split('"').next()).unwrap_or_default();
        assert_eq!(points.split(' ').count(), 3);
        // 40 → ceiling 50: the last point of `friends` sits at 4/5 of the height.
        let last_y: f64 = points.rsplit(',').next().and_then(|y| y.parse().ok()).unwrap_or(-1.0);
        let expected = HEIGHT - BOTTOM - 0.8 * (HEIGHT - TOP - BOTTOM);
        assert!((last_y - expected).abs() < 0.06, "{last_y} vs {expected}");
        assert!(svg.contains(">50<"), "the axis's top value: {svg}");
        assert!(svg.contains(">12-01<") && svg.contains(">12-03<"));
    }

    #[test]
    fn a_bar_chart_has_a_bar_per_value_and_escapes_labels() {
        let svg = bar_chart("b", "Sends", &["<a>".to_string(), "b".to_string()], &[3.0, 0.0], "none").into_string();
        assert!(balanced(&svg), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("&lt;a&gt;") && !svg.contains("<a>"));
        assert!(svg.contains("height=\"0.0\""), "a zero is a flat bar: {svg}");
    }

    #[test]
    fn empty_series_say_so() {
        let svg = line_chart("e", "Nothing", &[], &[], "", "no data yet").into_string();
        assert!(balanced(&svg));
        assert!(svg.contains("no data yet"));
        assert!(!svg.contains("<polyline"));
        let svg = bar_chart("e", "Nothing", &[], &[], "none").into_string();
        assert!(svg.contains("none") && !svg.contains("<rect"));
    }
}
