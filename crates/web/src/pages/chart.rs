//! A bar chart's geometry, computed here and drawn by `_bar_chart.html` as inline SVG: no
//! JavaScript, no style attributes (the CSP forbids them), colours from the stylesheet.
//!
//! Quantities are integers; only the drawing coordinates are floats.

use quarterdeck_domain::pricing::group;
use time::Date;

/// The drawing's size in SVG units (it scales to its box).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
/// Room for the value labels on the left and the day labels below.
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 28.0;
/// Widest bar, so that a short range does not draw slabs.
const MAX_BAR: f64 = 36.0;
/// At most this many day labels along the bottom.
const X_LABELS: usize = 6;

/// One day's bar.
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    /// "2026-12-02: 1,234 tokens" (the bar's tooltip).
    pub label: String,
}

/// A horizontal line across the plot at a value, with its label on the left.
pub struct Gridline {
    pub y: f64,
    pub label: String,
}

/// A label under the plot.
pub struct AxisLabel {
    pub x: f64,
    pub text: String,
    /// `start`, `middle` or `end` (SVG `text-anchor`).
    pub anchor: &'static str,
}

/// Everything the template needs to draw the chart.
pub struct BarChart {
    /// Unique on the page (for `aria-labelledby`).
    pub id: String,
    pub width: f64,
    pub height: f64,
    pub plot_left: f64,
    pub plot_right: f64,
    pub baseline: f64,
    /// Where the value labels end (right-aligned left of the plot).
    pub axis_x: f64,
    /// Where the day labels sit.
    pub label_y: f64,
    pub bars: Vec<Bar>,
    pub grid: Vec<Gridline>,
    pub x_labels: Vec<AxisLabel>,
    /// The top of the value axis (a round number at or above the largest day).
    pub max: i64,
    /// What the chart says, in words (its `<title>` and accessible name).
    pub summary: String,
}

impl BarChart {
    /// One bar per day. `unit` follows the numbers in labels ("tokens"), or "".
    pub fn daily(id: &str, name: &str, days: &[(Date, i64)], unit: &str) -> Self {
        let largest = days.iter().map(|(_, v)| *v).max().unwrap_or(0).max(0);
        let max = nice_ceiling(largest);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let baseline = HEIGHT - BOTTOM;
        let n = days.len().max(1);
        let slot = plot_w / n as f64;
        let bar_w = (slot * 0.8).min(MAX_BAR);
        let bars = days
            .iter()
            .enumerate()
            .map(|(i, (day, value))| {
                let v = (*value).max(0);
                let mut h = plot_h * v as f64 / max as f64;
                if v > 0 {
                    // A small day still shows.
                    h = h.max(1.0);
                }
                Bar {
                    x: round(LEFT + slot * i as f64 + (slot - bar_w) / 2.0),
                    y: round(baseline - h),
                    width: round(bar_w),
                    height: round(h),
                    label: format!("{day}: {}", with_unit(v, unit)),
                }
            })
            .collect();
        let mut grid = vec![Gridline {
            y: baseline,
            label: "0".to_owned(),
        }];
        if max % 2 == 0 {
            grid.push(Gridline {
                y: round(baseline - plot_h / 2.0),
                label: compact(max / 2),
            });
        }
        grid.push(Gridline {
            y: TOP,
            label: compact(max),
        });
        let step = n.div_ceil(X_LABELS).max(1);
        let x_labels = days
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0)
            .map(|(i, (day, _))| {
                let (x, anchor) = if i == 0 {
                    (LEFT + (slot - bar_w) / 2.0, "start")
                } else if i + 1 == days.len() {
                    (LEFT + slot * (i + 1) as f64 - (slot - bar_w) / 2.0, "end")
                } else {
                    (LEFT + slot * i as f64 + slot / 2.0, "middle")
                };
                AxisLabel {
                    x: round(x),
                    text: short_day(*day),
                    anchor,
                }
            })
            .collect();
        let summary = summary(name, days, unit);
        Self {
            id: id.to_owned(),
            width: WIDTH,
            height: HEIGHT,
            plot_left: LEFT,
            plot_right: WIDTH - RIGHT,
            baseline,
            axis_x: LEFT - 6.0,
            label_y: HEIGHT - 6.0,
            bars,
            grid,
            x_labels,
            max,
            summary,
        }
    }
}

/// "LLM tokens per day from 2026-11-03 to 2026-12-02: 1,234 tokens in all; the most,
/// 1,000 tokens, on 2026-12-02."
fn summary(name: &str, days: &[(Date, i64)], unit: &str) -> String {
    let (Some((first, _)), Some((last, _))) = (days.first(), days.last()) else {
        return format!("{name}: no days");
    };
    let total: i64 = days.iter().map(|(_, v)| *v).fold(0, i64::saturating_add);
    let peak = days
        .iter()
        .filter(|(_, v)| *v > 0)
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
    let peak = match peak {
        Some((day, v)) => format!("the most, {}, on {day}", with_unit(*v, unit)),
        None => "nothing on any day".to_owned(),
    };
    format!(
        "{name} per day from {first} to {last}: {} in all; {peak}.",
        with_unit(total, unit)
    )
}

/// `1,234 tokens`, or `1,234` without a unit.
pub fn with_unit(n: i64, unit: &str) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let n = format!("{sign}{}", group(n.unsigned_abs()));
    if unit.is_empty() { n } else { format!("{n} {unit}") }
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `n` (at least 1).
pub fn nice_ceiling(n: i64) -> i64 {
    if n <= 1 {
        return 1;
    }
    let mut p: i64 = 1;
    while let Some(next) = p.checked_mul(10) {
        if next > n {
            break;
        }
        p = next;
    }
    for m in [1, 2, 5, 10] {
        match p.checked_mul(m) {
            Some(v) if v >= n => return v,
            Some(_) => {}
            None => return i64::MAX,
        }
    }
    i64::MAX
}

/// `2500` → `2.5k`, `2000000` → `2M` (axis labels: short, one decimal at most).
pub fn compact(n: i64) -> String {
    for (unit, suffix) in [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "B"),
        (1_000_000, "M"),
        (1_000, "k"),
    ] {
        if n >= unit {
            let whole = n / unit;
            let tenths = (n % unit) * 10 / unit;
            return if tenths == 0 {
                format!("{whole}{suffix}")
            } else {
                format!("{whole}.{tenths}{suffix}")
            };
        }
    }
    n.to_string()
}

/// `3 Nov`.
fn short_day(d: Date) -> String {
    let month = d.month().to_string();
    format!("{} {}", d.day(), month.get(..3).unwrap_or(&month))
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;
    use time::macros::date;

    #[test]
    fn the_axis_tops_out_at_a_round_number() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(10), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(2_600_000), 5_000_000);
        assert_eq!(nice_ceiling(i64::MAX), i64::MAX);
        assert_eq!(compact(2_500), "2.5k");
        assert_eq!(compact(5_000_000), "5M");
        assert_eq!(compact(999), "999");
    }

    #[test]
    fn each_day_is_a_bar_scaled_to_the_axis() {
        let days = [
            (date!(2026 - 12 - 01), 0),
            (date!(2026 - 12 - 02), 50),
            (date!(2026 - 12 - 03), 100),
        ];
        let c = BarChart::daily("c", "Tokens", &days, "tokens");
        assert_eq!(c.bars.len(), 3);
        assert_eq!(c.max, 100);
        assert_eq!(c.bars[0].height, 0.0);
        assert_eq!(c.bars[2].y, TOP);
        assert!((c.bars[1].height - (HEIGHT - TOP - BOTTOM) / 2.0).abs() < 0.01);
        assert!(c.bars.windows(2).all(|w| w[0].x < w[1].x));
        assert_eq!(
            c.grid.iter().map(|g| g.label.as_str()).collect::<Vec<_>>(),
            ["0", "50", "100"]
        );
        assert!(c.summary.contains("150 tokens in all"), "{}", c.summary);
        assert!(c.summary.contains("the most, 100 tokens, on 2026-12-03"));
        assert_eq!(c.x_labels[0].text, "1 Dec");
    }
}
