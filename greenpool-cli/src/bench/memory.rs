//! Process memory as the kernel sees it: resident set size now and at its
//! peak, read from `/proc/self/status` (Linux; `None` elsewhere).

/// A `Vm*` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Resident set size now, in bytes.
pub(crate) fn rss() -> Option<u64> {
    status_bytes("VmRSS")
}

/// Peak resident set size so far (VmHWM), in bytes.
pub(crate) fn peak_rss() -> Option<u64> {
    status_bytes("VmHWM")
}

/// RSS growth per item between two readings (0 when RSS is unknown).
pub(crate) fn per_item(before: Option<u64>, after: Option<u64>, items: u64) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) if items > 0 => a.saturating_sub(b) as f64 / items as f64,
        _ => 0.0,
    }
}
