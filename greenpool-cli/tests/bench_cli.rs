//! `greenpool bench` end to end on its cheapest workloads: the report comes
//! out as one JSON object with both sides measured, and a missing Python
//! is reported with install instructions instead of failing the run.

// Test helpers outside #[test] fns: a failed setup should stop the test.
#![allow(clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenpool"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run greenpool bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "greenpool bench failed: {stderr}");
    let json = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    (json, stderr)
}

#[test]
fn json_report_has_both_sides_and_targets() {
    let (report, _) = bench(&["--quick", "--json", "--only", "resize"]);
    assert_eq!(report["quick"], Value::Bool(true));
    let rows = report["rows"].as_array().expect("rows");
    let ops = rows
        .iter()
        .find(|r| r["key"] == "resize_ops_per_s")
        .expect("a resize ops/s row");
    assert!(ops["greenpool"].as_f64().expect("greenpool figure") > 0.0);
    assert!(ops["baseline"].as_f64().expect("baseline figure") > 0.0);
    assert!(ops["ratio"].as_f64().is_some());
    assert!(ops["target_met"].is_boolean());
    let limit = rows
        .iter()
        .find(|r| r["key"] == "final_limit")
        .expect("a final limit row");
    // grow(1)/shrink(1) pairs leave greenpool's limit where it started.
    assert_eq!(limit["greenpool"].as_f64(), Some(100.0));
    assert!(
        rows.iter().all(|r| r["workload"] == "resize"),
        "--only resize ran only resize"
    );
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(0));
}

#[test]
fn memory_workload_runs_in_a_child_process() {
    let (report, _) = bench(&["--quick", "--json", "--only", "sleepers"]);
    let rows = report["rows"].as_array().expect("rows");
    let per_job = rows
        .iter()
        .find(|r| r["key"] == "bytes_per_parked_job")
        .expect("a bytes per parked job row");
    assert!(per_job["greenpool"].as_f64().expect("greenpool figure") > 0.0);
    assert!(per_job["baseline"].as_f64().expect("baseline figure") > 0.0);
    assert_eq!(
        report["raw"]["sleepers"]["greenpool"]["callbacks"].as_f64(),
        Some(2000.0),
        "every sleeper got its callback"
    );
}

#[test]
fn missing_python_says_how_to_install() {
    let (report, _) = bench(&[
        "--quick",
        "--json",
        "--only",
        "resize",
        "--python",
        "--python-bin",
        "/nonexistent/python3",
    ]);
    let error = report["python"]["error"].as_str().expect("a python error");
    assert!(error.contains("not found"), "{error}");
    assert!(error.contains("pip install celery eventlet"), "{error}");
}
