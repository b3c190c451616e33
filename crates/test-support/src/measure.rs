//! What benchmarks report of the machine: memory and CPU time, from `/proc`
//! (Linux; elsewhere the figures read as NaN or zero).

/// Peak resident memory of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident memory of this process now (VmRSS), in MB.
pub fn current_rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) this process has used: on a shared
/// 2-core machine a steadier figure than wall time.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_of("self", false)
}

/// CPU seconds (user + system) of a process from /proc/PID/stat: its own
/// and, with `children`, those of its reaped children too.
pub fn cpu_seconds_of(pid: &str, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: utime and stime are
    // the 12th and 13th, cutime and cstime next.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let own = ticks(11) + ticks(12);
    (if children { own + ticks(13) + ticks(14) } else { own }) / 100.0
}

/// CPU seconds of a local PostgreSQL server, when
/// `RENKEI_BENCH_POSTMASTER_PID` names its postmaster: (client
/// connections, everything else: autovacuum, checkpoints, WAL writer,
/// ended processes).
pub fn postgres_cpu_seconds() -> Option<(f64, f64)> {
    let pid = std::env::var("RENKEI_BENCH_POSTMASTER_PID").ok()?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let (mut clients, mut other) = (0.0, cpu_seconds_of(&pid, true));
    for child in children.split_whitespace() {
        let cmdline = std::fs::read_to_string(format!("/proc/{child}/cmdline")).unwrap_or_default();
        // A client backend names itself "postgres: USER DATABASE HOST ...".
        if cmdline.starts_with("postgres: renkei ") {
            clients += cpu_seconds_of(child, false);
        } else {
            other += cpu_seconds_of(child, false);
        }
    }
    Some((clients, other))
}
