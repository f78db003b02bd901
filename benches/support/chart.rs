//! A small SVG bar chart, written by the benchmark itself: one horizontal
//! bar per measure (its median), a whisker from p5 to p95, the value at
//! the end. Baselines are grey, Draupnir is blue.

use super::Stats;

pub struct Bar {
    pub label: String,
    pub stats: Stats,
    pub baseline: bool,
}

pub struct Chart {
    /// File name without `.svg`.
    pub file: String,
    pub title: String,
    pub bars: Vec<Bar>,
}

impl Chart {
    pub fn new(file: &str, title: &str) -> Chart {
        Chart {
            file: file.into(),
            title: title.into(),
            bars: Vec::new(),
        }
    }

    pub fn baseline(mut self, label: &str, stats: &Stats) -> Chart {
        self.bars.push(Bar {
            label: label.into(),
            stats: stats.clone(),
            baseline: true,
        });
        self
    }

    pub fn draupnir(mut self, label: &str, stats: &Stats) -> Chart {
        self.bars.push(Bar {
            label: label.into(),
            stats: stats.clone(),
            baseline: false,
        });
        self
    }

    pub fn svg(&self) -> String {
        let label_w = 300.0;
        let plot_w = 480.0;
        let value_w = 110.0;
        let bar_h = 26.0;
        let gap = 12.0;
        let top = 48.0;
        let width = label_w + plot_w + value_w + 20.0;
        let height = top + self.bars.len() as f64 * (bar_h + gap) + 40.0;
        let max = self
            .bars
            .iter()
            .map(|b| b.stats.q(0.95).max(b.stats.p50()))
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        let scale = plot_w / (max * 1.05);
        let unit = self.bars.first().map(|b| b.stats.unit.name()).unwrap_or("");
        let mut s = format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="24" font-size="16" font-weight="bold">{}</text>
<text x="10" y="40" fill="#555">median, whiskers p5–p95, {unit}</text>
"##,
            esc(&self.title)
        );
        for (i, b) in self.bars.iter().enumerate() {
            let y = top + i as f64 * (bar_h + gap);
            let p50 = b.stats.p50();
            let w = if p50.is_finite() { p50 * scale } else { 0.0 };
            let fill = if b.baseline { "#9e9e9e" } else { "#1f6fb2" };
            s += &format!(
                r##"<text x="{}" y="{}" text-anchor="end">{}</text>
<rect x="{label_w}" y="{y}" width="{w:.1}" height="{bar_h}" fill="{fill}"/>
"##,
                label_w - 8.0,
                y + bar_h * 0.68,
                esc(&b.label)
            );
            let (lo, hi) = (b.stats.q(0.05), b.stats.q(0.95));
            if b.stats.n() > 1 && lo.is_finite() && hi.is_finite() {
                let (x1, x2, ym) = (label_w + lo * scale, label_w + hi * scale, y + bar_h / 2.0);
                s += &format!(
                    r##"<line x1="{x1:.1}" y1="{ym}" x2="{x2:.1}" y2="{ym}" stroke="#222" stroke-width="1.5"/>
<line x1="{x1:.1}" y1="{}" x2="{x1:.1}" y2="{}" stroke="#222"/><line x1="{x2:.1}" y1="{}" x2="{x2:.1}" y2="{}" stroke="#222"/>
"##,
                    ym - 5.0,
                    ym + 5.0,
                    ym - 5.0,
                    ym + 5.0
                );
            }
            let whisker = if hi.is_finite() { hi * scale } else { 0.0 };
            let vx = label_w + w.max(whisker) + 6.0;
            s += &format!(
                r##"<text x="{vx:.1}" y="{}">{}</text>
"##,
                y + bar_h * 0.68,
                esc(&b.stats.fmt(p50))
            );
        }
        let ay = height - 28.0;
        s += &format!(
            r##"<line x1="{label_w}" y1="{ay}" x2="{}" y2="{ay}" stroke="#888"/>
<text x="{label_w}" y="{}" fill="#555">0</text><text x="{}" y="{}" fill="#555" text-anchor="end">{:.0} {unit}</text>
</svg>
"##,
            label_w + plot_w,
            ay + 16.0,
            label_w + plot_w,
            ay + 16.0,
            max * 1.05
        );
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
