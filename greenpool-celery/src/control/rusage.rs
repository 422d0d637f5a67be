//! `stats.rusage`: the process's resource usage, read from `/proc`
//! (Linux) without a libc binding; keys as Python's `resource.getrusage`.

use serde_json::{json, Map, Value};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on
/// every Linux platform Rust supports).
const TICKS: f64 = 100.0;

/// The fields that could be read; empty where `/proc` is missing.
pub(crate) fn rusage() -> Value {
    let mut out = Map::new();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name, which may hold spaces.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
            // rest[0] is field 3 (state): minflt = 10, majflt = 12,
            // utime = 14, stime = 15 in proc(5)'s numbering.
            if let Some(v) = num(14 - 3) {
                out.insert("utime".into(), json!(v as f64 / TICKS));
            }
            if let Some(v) = num(15 - 3) {
                out.insert("stime".into(), json!(v as f64 / TICKS));
            }
            if let Some(v) = num(10 - 3) {
                out.insert("minflt".into(), json!(v));
            }
            if let Some(v) = num(12 - 3) {
                out.insert("majflt".into(), json!(v));
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let n = v
                .split_whitespace()
                .next()
                .and_then(|s| s.parse::<u64>().ok());
            let key = match k {
                "VmHWM" => "maxrss",
                "voluntary_ctxt_switches" => "nvcsw",
                "nonvoluntary_ctxt_switches" => "nivcsw",
                _ => continue,
            };
            if let Some(n) = n {
                out.insert(key.into(), json!(n));
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn reads_proc() {
        let r = super::rusage();
        assert!(r["maxrss"].as_u64().is_some_and(|n| n > 0), "{r}");
        assert!(r["utime"].as_f64().is_some(), "{r}");
    }
}
