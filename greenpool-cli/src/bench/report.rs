//! The report: one row per figure with greenpool, the bare-tokio baseline,
//! their ratio and the target, plus Celery's eventlet pool when `--python`
//! ran; printed as a Markdown table or as one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{Pair, Side, Workload};

/// A target on one figure. Ratios are always greenpool ÷ other.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// ratio ≥ x
    AtLeast(f64),
    /// ratio ≤ x
    AtMost(f64),
    /// greenpool's own value ≤ x (no ratio)
    ValueAtMost(f64),
}

impl Target {
    fn met(self, greenpool: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::AtLeast(x) => ratio.map(|r| r >= x),
            Target::AtMost(x) => ratio.map(|r| r <= x),
            Target::ValueAtMost(x) => Some(greenpool <= x),
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Target::AtLeast(x) => format!("≥ {}×", num(x)),
            Target::AtMost(x) => format!("≤ {}×", num(x)),
            Target::ValueAtMost(x) => format!("≤ {} {unit}", num(x)),
        }
    }
}

/// One table row's definition.
struct Spec {
    workload: Workload,
    key: &'static str,
    figure: &'static str,
    unit: &'static str,
    target: Option<Target>,
    /// Compare with the Python driver's figure of the same workload and key.
    python: bool,
    python_target: Option<Target>,
}

const fn spec(
    workload: Workload,
    key: &'static str,
    figure: &'static str,
    unit: &'static str,
) -> Spec {
    Spec {
        workload,
        key,
        figure,
        unit,
        target: None,
        python: true,
        python_target: None,
    }
}

impl Spec {
    const fn target(mut self, t: Target) -> Spec {
        self.target = Some(t);
        self
    }
    const fn python_target(mut self, t: Target) -> Spec {
        self.python_target = Some(t);
        self
    }
    const fn no_python(mut self) -> Spec {
        self.python = false;
        self
    }
}

/// Every row, in table order (targets from the bench issue).
const SPECS: &[Spec] = &[
    spec(
        Workload::Throughput,
        "jobs_per_s",
        "trivial jobs, limit 1000",
        "jobs/s",
    )
    .target(Target::AtLeast(0.85))
    .python_target(Target::AtLeast(50.0)),
    spec(
        Workload::Sleepers,
        "bytes_per_parked_job",
        "RSS per parked job",
        "B/job",
    )
    .target(Target::AtMost(1.3))
    .python_target(Target::AtMost(0.05)),
    spec(
        Workload::Sleepers,
        "wall_s",
        "wall time, all × sleep(1 s)",
        "s",
    ),
    spec(
        Workload::Sleepers1m,
        "bytes_per_parked_job",
        "RSS per parked job, 1M jobs",
        "B/job",
    )
    .no_python(),
    spec(
        Workload::Sleepers1m,
        "all_parked_after_s",
        "time to park 1M jobs",
        "s",
    )
    .no_python(),
    spec(
        Workload::AcceptLatency,
        "accept_p50_us",
        "apply → accept callback p50",
        "µs",
    ),
    spec(
        Workload::AcceptLatency,
        "accept_p99_us",
        "apply → accept callback p99",
        "µs",
    )
    .target(Target::AtMost(2.0)),
    spec(
        Workload::Terminate,
        "kills_per_s",
        "terminate_job of parked jobs",
        "kills/s",
    )
    .target(Target::AtLeast(0.5)),
    spec(
        Workload::Terminate,
        "kill_p99_us",
        "terminate_job latency p99",
        "µs",
    ),
    spec(
        Workload::Terminate,
        "jobs_with_callback",
        "killed jobs with a callback",
        "jobs",
    ),
    spec(
        Workload::Resize,
        "resize_ops_per_s",
        "grow(1)/shrink(1) while jobs run",
        "ops/s",
    )
    .target(Target::AtLeast(0.3)),
    spec(
        Workload::Resize,
        "final_limit",
        "limit after the ops",
        "slots",
    ),
    spec(
        Workload::Timer,
        "schedule_ops_per_s",
        "schedule one-shot entries",
        "ops/s",
    ),
    spec(Workload::Timer, "cancel_ops_per_s", "cancel them", "ops/s"),
    spec(
        Workload::Timer,
        "schedule_cancel_pairs_per_s",
        "schedule + cancel",
        "pairs/s",
    )
    .target(Target::AtLeast(0.5)),
    spec(
        Workload::Timer,
        "bytes_per_entry",
        "RSS per pending entry",
        "B/entry",
    )
    .target(Target::ValueAtMost(128.0)),
];

/// One filled-in row.
#[derive(Debug, serde::Serialize)]
struct Row {
    workload: &'static str,
    figure: &'static str,
    key: &'static str,
    unit: &'static str,
    greenpool: Option<f64>,
    baseline: Option<f64>,
    ratio: Option<f64>,
    target: Option<String>,
    target_met: Option<bool>,
    python: Option<f64>,
    python_ratio: Option<f64>,
    python_target: Option<String>,
    python_target_met: Option<bool>,
}

/// The whole run's report.
#[derive(Debug)]
pub(crate) struct Report {
    quick: bool,
    rows: Vec<Row>,
    python: Option<Result<Value, String>>,
    errors: Vec<String>,
}

impl Report {
    /// Fills in the rows of the chosen workloads.
    pub(crate) fn new(
        quick: bool,
        chosen: &[Workload],
        results: &BTreeMap<Workload, Pair>,
        python: Option<Result<Value, String>>,
    ) -> Report {
        let py = python.as_ref().and_then(|p| p.as_ref().ok());
        let mut errors = Vec::new();
        for (w, pair) in results {
            for (side, r) in [
                (Side::Greenpool, &pair.greenpool),
                (Side::Baseline, &pair.baseline),
            ] {
                if let Some(Err(e)) = r {
                    errors.push(format!("{} on {}: {e}", w.name(), side.name()));
                }
            }
        }
        if let Some(Err(e)) = &python {
            errors.push(format!("python: {e}"));
        }
        if let Some(Value::Object(errs)) = py.and_then(|p| p.get("errors")) {
            for (name, e) in errs {
                errors.push(format!("python {name}: {e}"));
            }
        }
        let rows = SPECS
            .iter()
            .filter(|s| chosen.contains(&s.workload))
            .map(|s| {
                let pair = results.get(&s.workload);
                let get = |side| {
                    pair.and_then(|p| p.side(side))
                        .and_then(|f| f.get(s.key))
                        .copied()
                };
                let greenpool = get(Side::Greenpool);
                let baseline = get(Side::Baseline);
                let ratio = ratio(greenpool, baseline);
                let python = if s.python {
                    py.and_then(|p| {
                        p.pointer(&format!(
                            "/workloads/{}/figures/{}",
                            s.workload.name(),
                            s.key
                        ))
                    })
                    .and_then(Value::as_f64)
                } else {
                    None
                };
                let python_ratio = ratio_opt(greenpool, python);
                let target_met = s
                    .target
                    .and_then(|t| greenpool.and_then(|g| t.met(g, ratio)));
                let python_target_met = s
                    .python_target
                    .and_then(|t| greenpool.and_then(|g| t.met(g, python_ratio)));
                Row {
                    workload: s.workload.name(),
                    figure: s.figure,
                    key: s.key,
                    unit: s.unit,
                    greenpool,
                    baseline,
                    ratio,
                    target: s.target.map(|t| t.text(s.unit)),
                    target_met,
                    python,
                    python_ratio,
                    python_target: s.python_target.map(|t| t.text(s.unit)),
                    python_target_met,
                }
            })
            .collect();
        Report {
            quick,
            rows,
            python,
            errors,
        }
    }

    /// The report as one JSON object, with every side's raw figures.
    pub(crate) fn to_json(&self, results: &BTreeMap<Workload, Pair>) -> Value {
        let raw: BTreeMap<&str, &Pair> = results.iter().map(|(w, p)| (w.name(), p)).collect();
        json!({
            "quick": self.quick,
            "machine": machine(),
            "rows": self.rows,
            "raw": raw,
            "python": match &self.python {
                None => Value::Null,
                Some(Ok(v)) => v.clone(),
                Some(Err(e)) => json!({ "error": e }),
            },
            "errors": self.errors,
        })
    }

    /// The report as a Markdown table with a header naming the machine.
    pub(crate) fn table(&self) -> String {
        let with_python = self.python.is_some();
        let mut head = vec![
            "workload",
            "figure",
            "unit",
            "greenpool",
            "baseline",
            "ratio",
            "target",
        ];
        if with_python {
            head.extend(["python", "vs python", "target"]);
        }
        let mut lines: Vec<Vec<String>> = vec![head.iter().map(|s| (*s).to_owned()).collect()];
        for r in &self.rows {
            let mut line = vec![
                r.workload.to_owned(),
                r.figure.to_owned(),
                r.unit.to_owned(),
                opt(r.greenpool),
                opt(r.baseline),
                times(r.ratio),
                verdict(r.target.as_deref(), r.target_met),
            ];
            if with_python {
                line.extend([
                    opt(r.python),
                    times(r.python_ratio),
                    verdict(r.python_target.as_deref(), r.python_target_met),
                ]);
            }
            lines.push(line);
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let m = machine();
        let _ = writeln!(
            out,
            "greenpool bench{} — {} × {}, {}, {}, {} build; ratio = greenpool ÷ other\n",
            if self.quick { " --quick" } else { "" },
            m["nproc"],
            m["cpu"].as_str().unwrap_or("?"),
            m["memory"].as_str().unwrap_or("?"),
            m["kernel"].as_str().unwrap_or("?"),
            m["build"].as_str().unwrap_or("?"),
        );
        for (i, line) in lines.iter().enumerate() {
            out.push('|');
            for (c, cell) in line.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if c >= 3 && i > 0 {
                    let _ = write!(out, " {}{cell} |", " ".repeat(pad));
                } else {
                    let _ = write!(out, " {cell}{} |", " ".repeat(pad));
                }
            }
            out.push('\n');
            if i == 0 {
                out.push('|');
                for (c, w) in widths.iter().enumerate() {
                    let dashes = "-".repeat(*w);
                    if c >= 3 {
                        let _ = write!(out, "-{dashes}:|");
                    } else {
                        let _ = write!(out, "-{dashes}-|");
                    }
                }
                out.push('\n');
            }
        }
        if let Some(Ok(py)) = &self.python {
            if let Some(v) = py.get("versions") {
                let _ = writeln!(
                    out,
                    "\npython: {} {}, celery {}, eventlet {}, kombu {}",
                    v["implementation"].as_str().unwrap_or("?"),
                    v["python"].as_str().unwrap_or("?"),
                    v["celery"].as_str().unwrap_or("?"),
                    v["eventlet"].as_str().unwrap_or("?"),
                    v["kombu"].as_str().unwrap_or("?"),
                );
            }
        }
        for e in &self.errors {
            let _ = writeln!(out, "\nerror: {e}");
        }
        out
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    ratio_opt(a, b)
}

fn ratio_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// A number with about four significant digits, thousands grouped.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a >= 10_000.0 {
        let s = format!("{:.0}", a);
        let mut grouped = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if v < 0.0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), num)
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{}×", num(v)))
}

fn verdict(target: Option<&str>, met: Option<bool>) -> String {
    match (target, met) {
        (None, _) => String::new(),
        (Some(t), Some(true)) => format!("{t} ✓"),
        (Some(t), Some(false)) => format!("{t} ✗"),
        (Some(t), None) => format!("{t} ?"),
    }
}

/// The machine the figures come from.
pub(crate) fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("unknown cpu");
    let meminfo = read("/proc/meminfo");
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "memory": format!("{:.0} GiB RAM", mem_kib as f64 / 1048576.0),
        "kernel": format!("Linux {}", read("/proc/sys/kernel/osrelease").trim()),
        "arch": std::env::consts::ARCH,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "greenpool": env!("CARGO_PKG_VERSION"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_compare_the_right_way() {
        assert_eq!(Target::AtLeast(0.85).met(1.0, Some(0.9)), Some(true));
        assert_eq!(Target::AtLeast(0.85).met(1.0, Some(0.8)), Some(false));
        assert_eq!(Target::AtMost(1.3).met(1.0, Some(1.2)), Some(true));
        assert_eq!(Target::AtMost(1.3).met(1.0, Some(1.4)), Some(false));
        assert_eq!(Target::ValueAtMost(128.0).met(100.0, None), Some(true));
        assert_eq!(Target::ValueAtMost(128.0).met(129.0, None), Some(false));
        assert_eq!(
            Target::AtLeast(0.5).met(1.0, None),
            None,
            "no baseline, no verdict"
        );
    }

    #[test]
    fn numbers_keep_about_four_digits() {
        assert_eq!(num(1_234_567.8), "1,234,568");
        assert_eq!(num(-12_345.0), "-12,345");
        assert_eq!(num(1234.6), "1235");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.12345), "0.123");
        assert_eq!(num(100.0), "100");
    }

    #[test]
    fn ratio_needs_a_nonzero_divisor() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }
}
