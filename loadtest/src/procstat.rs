//! CPU time and resident memory of a process, from `/proc/<pid>`.

use std::time::Duration;

use thiserror::Error;

/// `/proc` reports CPU times in USER_HZ ticks, which Linux fixes at 100 per second for its
/// user-space interfaces on every architecture it runs this on.
const USER_HZ: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcSample {
    /// User + system CPU time since the process started (all threads, living and ended).
    pub cpu: Duration,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
}

/// The process could not be read.
#[derive(Debug, Error)]
pub enum ProcError {
    /// The files could not be read (no such process, no permission).
    #[error("cannot read /proc/{pid}: {source}")]
    Io {
        /// The process.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// The files did not look as expected.
    #[error("unexpected format of /proc/{pid}/{file}")]
    Format {
        /// The process.
        pid: u32,
        /// Which file.
        file: &'static str,
    },
}

/// Reads `pid`'s CPU time and resident memory.
pub fn sample(pid: u32) -> Result<ProcSample, ProcError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .map_err(|source| ProcError::Io { pid, source })
    };
    let cpu = parse_stat_cpu(&read("stat")?).ok_or(ProcError::Format { pid, file: "stat" })?;
    let rss_bytes = parse_status_rss(&read("status")?).ok_or(ProcError::Format {
        pid,
        file: "status",
    })?;
    Ok(ProcSample { cpu, rss_bytes })
}

/// utime + stime from the text of `/proc/<pid>/stat`.
fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// VmRSS from the text of `/proc/<pid>/status`.
fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_millis(3000)));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\thuizhen\nVmPeak:\t  99 kB\nVmRSS:\t   2048 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss(status), Some(2 * 1024 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled_and_its_cpu_time_grows() {
        let before = sample(std::process::id()).expect("own /proc");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = sample(std::process::id()).expect("own /proc");
        assert!(after.cpu > before.cpu, "{before:?} -> {after:?}");
        assert!(after.rss_bytes > 0);
        assert!(matches!(sample(u32::MAX), Err(ProcError::Io { .. })));
    }
}
