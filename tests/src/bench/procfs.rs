//! What a process costs, from /proc: CPU seconds (user+sys) and memory.
use anyhow::{Context as _, bail};

/// user + system CPU seconds of process `pid` so far (all its threads).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    parse_cpu(&stat)
}

fn parse_cpu(stat: &str) -> anyhow::Result<f64> {
    // comm may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no ')' in stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state is field 3; utime and stime are fields 14 and 15.
    let (Some(u), Some(s)) = (f.get(11), f.get(12)) else { bail!("short stat line") };
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((u.parse::<u64>()? + s.parse::<u64>()?) as f64 / hz)
}

/// Memory of process `pid` in bytes: (VmRSS now, VmHWM = peak RSS so far).
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    parse_memory(&status)
}

fn parse_memory(status: &str) -> anyhow::Result<(u64, u64)> {
    let kib = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in status"))?;
        let v = line.split_whitespace().nth(1).context("no value")?;
        Ok(v.parse::<u64>()? * 1024)
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 0 0";
        // SAFETY: sysconf reads a constant of the system; no pointers.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(parse_cpu(s).expect("cpu"), 300.0 / hz);
    }

    #[test]
    fn parses_memory_and_reads_self() {
        assert_eq!(
            parse_memory("VmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n").expect("mem"),
            (1024 * 1024, 2048 * 1024)
        );
        let (rss, hwm) = memory(std::process::id()).expect("self");
        assert!(rss > 0 && hwm >= rss);
        assert!(cpu_seconds(std::process::id()).expect("cpu") >= 0.0);
    }
}
