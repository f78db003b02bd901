//! What every benchmark shares: how many rounds to run, the statistics
//! (medians, percentiles, spread), the printed table of baseline against
//! Draupnir with the ratio and the target, the JSON results and the SVG
//! charts.
//!
//! `cargo bench` passes `--bench`: a full run, whose charts land in
//! `docs/bench/`. Without it (as `cargo test --all-targets` runs bench
//! targets) each benchmark does one round as a smoke test: figures are
//! printed but no target is judged, and charts go under `target/`.
//! `DRAUPNIR_BENCH_ROUNDS=N` overrides the number of rounds.
#![allow(dead_code)]

pub mod chart;
pub mod pg;
pub mod procfs;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Full run or smoke run, and where results go.
pub struct Bench {
    pub name: &'static str,
    pub full: bool,
    rows: Vec<Row>,
    charts: Vec<chart::Chart>,
    started: Instant,
}

impl Bench {
    pub fn new(name: &'static str) -> Bench {
        let full = std::env::args().any(|a| a == "--bench");
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .try_init();
        }
        eprintln!(
            "== benchmark {name} ({}) ==",
            if full {
                "full run"
            } else {
                "smoke run: one round, no targets judged"
            }
        );
        Bench {
            name,
            full,
            rows: Vec::new(),
            charts: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Rounds to run: `full` on `cargo bench`, `smoke` otherwise.
    pub fn rounds(&self, full: usize, smoke: usize) -> usize {
        if let Some(n) = std::env::var("DRAUPNIR_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return n;
        }
        if self.full {
            full
        } else {
            smoke
        }
    }

    pub fn row(&mut self, row: Row) {
        eprintln!("  {}", row.line(self.full));
        self.rows.push(row);
    }

    pub fn chart(&mut self, chart: chart::Chart) {
        self.charts.push(chart);
    }

    /// Print the table, write `NAME.json` and the charts.
    pub fn finish(self) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{} — {} in {:.0} s on {}",
            self.name,
            if self.full { "full run" } else { "smoke run" },
            self.started.elapsed().as_secs_f64(),
            machine()
        );
        let _ = writeln!(
            out,
            "{:<44} {:>22} {:>30} {:>8}  target",
            "measure", "baseline p50", "draupnir p50 [p5–p95] (n)", "ratio"
        );
        for r in &self.rows {
            let _ = writeln!(out, "{}", r.line(self.full));
        }
        println!("{out}");
        let dir = results_dir(self.full);
        let _ = std::fs::create_dir_all(&dir);
        let json = serde_json::json!({
            "benchmark": self.name,
            "full": self.full,
            "machine": machine(),
            "rows": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
        });
        let _ = std::fs::write(
            dir.join(format!("{}.json", self.name)),
            serde_json::to_vec_pretty(&json).unwrap_or_default(),
        );
        let _ = std::fs::write(dir.join(format!("{}.txt", self.name)), &out);
        for c in &self.charts {
            let path = dir.join(format!("{}.svg", c.file));
            match std::fs::write(&path, c.svg()) {
                Ok(()) => eprintln!("chart: {}", path.display()),
                Err(e) => eprintln!("chart {}: {e}", path.display()),
            }
        }
    }
}

/// `docs/bench` for full runs, `target/draupnir-bench` for smoke runs.
pub fn results_dir(full: bool) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if full {
        root.join("docs/bench")
    } else {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("draupnir-bench")
    }
}

/// One line describing the machine (cores, memory, kernel, CPU model).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores, {:.0} GiB, {cpu}, Linux {}",
        mem as f64 / 1048576.0,
        kernel.trim()
    )
}

/// The unit samples are in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    Ms,
    MBps,
    MiB,
    KiB,
    /// Things counted (file descriptors, processes).
    Count,
    /// Percent of one CPU core.
    CpuPercent,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::MBps => "MB/s",
            Unit::MiB => "MiB",
            Unit::KiB => "KiB",
            Unit::Count => "",
            Unit::CpuPercent => "% CPU",
        }
    }
}

/// Samples of one measure.
#[derive(Debug, Clone)]
pub struct Stats {
    pub unit: Unit,
    sorted: Vec<f64>,
}

impl Stats {
    pub fn new(unit: Unit, mut samples: Vec<f64>) -> Stats {
        samples.retain(|x| x.is_finite());
        samples.sort_by(|a, b| a.total_cmp(b));
        Stats {
            unit,
            sorted: samples,
        }
    }

    pub fn ms(samples: &[Duration]) -> Stats {
        Stats::new(
            Unit::Ms,
            samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
        )
    }

    pub fn n(&self) -> usize {
        self.sorted.len()
    }

    /// The q-quantile (0..=1), nearest rank.
    pub fn q(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((self.sorted.len() - 1) as f64 * q).round() as usize;
        self.sorted[i.min(self.sorted.len() - 1)]
    }

    pub fn p50(&self) -> f64 {
        self.q(0.5)
    }

    pub fn p95(&self) -> f64 {
        self.q(0.95)
    }

    pub fn min(&self) -> f64 {
        self.q(0.0)
    }

    pub fn max(&self) -> f64 {
        self.q(1.0)
    }

    pub fn fmt(&self, v: f64) -> String {
        if v.is_nan() {
            return "–".into();
        }
        let digits = if v.abs() >= 100.0 || self.unit == Unit::Count {
            0
        } else {
            1
        };
        format!("{v:.digits$} {}", self.unit.name())
    }

    fn spread(&self) -> String {
        format!(
            "{} [{}–{}] ({})",
            self.fmt(self.p50()),
            num(self.q(0.05)),
            num(self.q(0.95)),
            self.n()
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "unit": self.unit.name(), "n": self.n(), "p50": self.p50(),
            "p5": self.q(0.05), "p95": self.p95(), "min": self.min(), "max": self.max(),
        })
    }
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// What a measure must reach (judged on medians).
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Just report.
    None,
    /// Draupnir p50 ≤ factor × baseline p50.
    RatioAtMost(f64),
    /// Draupnir p50 ≥ factor × baseline p50 (throughput).
    RatioAtLeast(f64),
    /// Draupnir p50 ≤ baseline p50 + this much (same unit).
    PlusAtMost(f64),
    /// Draupnir p50 ≤ this value (same unit).
    AtMost(f64),
    /// Draupnir p95 ≤ factor × Draupnir p50.
    TailAtMost(f64),
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub what: String,
    pub baseline: Option<Stats>,
    pub draupnir: Stats,
    pub target: Target,
}

impl Row {
    pub fn new(
        what: impl Into<String>,
        baseline: Option<&Stats>,
        draupnir: &Stats,
        target: Target,
    ) -> Row {
        Row {
            what: what.into(),
            baseline: baseline.cloned(),
            draupnir: draupnir.clone(),
            target,
        }
    }

    fn ratio(&self) -> Option<f64> {
        let b = self.baseline.as_ref()?.p50();
        (b > 0.0).then(|| self.draupnir.p50() / b)
    }

    /// Whether the target is met (None: nothing to judge).
    pub fn met(&self) -> Option<bool> {
        let d = self.draupnir.p50();
        let b = self.baseline.as_ref().map(Stats::p50);
        Some(match self.target {
            Target::None => return None,
            Target::RatioAtMost(f) => d <= f * b?,
            Target::RatioAtLeast(f) => d >= f * b?,
            Target::PlusAtMost(x) => d <= b? + x,
            Target::AtMost(x) => d <= x,
            Target::TailAtMost(f) => self.draupnir.p95() <= f * d,
        })
    }

    fn target_text(&self) -> String {
        let u = self.draupnir.unit.name();
        match self.target {
            Target::None => String::new(),
            Target::RatioAtMost(f) => format!("≤ {f}× baseline"),
            Target::RatioAtLeast(f) => format!("≥ {f}× baseline"),
            Target::PlusAtMost(x) => format!("≤ baseline + {x} {u}"),
            Target::AtMost(x) => format!("≤ {x} {u}"),
            Target::TailAtMost(f) => format!("p95 ≤ {f}× p50 (p95 {})", num(self.draupnir.p95())),
        }
    }

    fn line(&self, judge: bool) -> String {
        let verdict = match (judge, self.met()) {
            (false, _) | (_, None) => "",
            (true, Some(true)) => "  met",
            (true, Some(false)) => "  MISSED",
        };
        format!(
            "{:<44} {:>22} {:>30} {:>8}  {}{}",
            self.what,
            self.baseline
                .as_ref()
                .map(|b| b.fmt(b.p50()))
                .unwrap_or_default(),
            self.draupnir.spread(),
            self.ratio().map(|r| format!("{r:.2}×")).unwrap_or_default(),
            self.target_text(),
            verdict
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "what": self.what,
            "baseline": self.baseline.as_ref().map(Stats::json),
            "draupnir": self.draupnir.json(),
            "ratio": self.ratio(),
            "target": self.target_text(),
            "met": self.met(),
        })
    }
}

/// Time one call.
/// Put `confinement` in force for the postmasters `svc` starts next (a
/// reload), so one run can measure with and without the box.
pub fn set_confinement(
    svc: &draupnir::core::Service,
    confinement: draupnir::core::test_support::Confinement,
) {
    let mut cfg = (*svc.config()).clone();
    cfg.postgres.confinement = confinement;
    svc.reload(cfg);
}

pub fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

/// Time one future.
pub async fn time_async<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let v = f.await;
    (v, t.elapsed())
}

/// Ports something listens on (TCP, IPv4 and IPv6), from /proc/net. A
/// bind test would also count connections in TIME_WAIT.
pub fn listening_ports() -> std::collections::BTreeSet<u16> {
    let mut out = std::collections::BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[3] == "0A" {
                if let Some(port) = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                {
                    out.insert(port);
                }
            }
        }
    }
    out
}
