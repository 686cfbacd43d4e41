//! `record --cpus`: keep the agent's threads on chosen CPUs, away from the cores the recorded
//! service runs on (the traced process then pays only its probes; see BENCHMARKS.md).

use nix::{
    sched::{sched_getaffinity, sched_setaffinity, CpuSet},
    unistd::Pid,
};

#[derive(Debug, thiserror::Error)]
pub enum CpusError {
    #[error("--cpus: `{text}` is not a CPU list (give numbers and ranges, e.g. `3` or `2-3,6`)")]
    Syntax { text: String },
    #[error("--cpus: CPU {cpu} is not one this process may run on (allowed: {allowed})")]
    NotAllowed { cpu: usize, allowed: String },
    #[error("could not move the recorder's threads to --cpus {list}")]
    Set {
        list: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parses a CPU list (`3`, `0,2`, `2-3,6`) and checks that this process may use every CPU in it.
pub fn parse(text: &str) -> Result<Vec<usize>, CpusError> {
    let syntax = || CpusError::Syntax { text: text.to_owned() };
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: usize = lo.trim().parse().map_err(|_| syntax())?;
        let hi: usize = hi.trim().parse().map_err(|_| syntax())?;
        if lo > hi || hi >= CpuSet::count() {
            return Err(syntax());
        }
        cpus.extend(lo..=hi);
    }
    let allowed = allowed_cpus();
    if let Some(&cpu) = cpus.iter().find(|c| !allowed.contains(c)) {
        return Err(CpusError::NotAllowed { cpu, allowed: format_list(&allowed) });
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// The CPUs this process may run on now.
fn allowed_cpus() -> Vec<usize> {
    let set = sched_getaffinity(Pid::from_raw(0)).unwrap_or_else(|_| CpuSet::new());
    (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect()
}

/// How many CPUs this process may use: its affinity and its cgroup's CPU quota counted (what
/// the seal-thread default is sized by when no `--cpus` list says).
pub fn usable() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How many threads seal and hash segments in parallel when the agent may use `cpus` CPUs:
/// those beyond the pipeline's own four busy threads (ring, streams, writer, disk/hash), at
/// most 8; none on small machines, where the writer thread seals as before.
pub fn seal_threads(cpus: usize) -> usize {
    cpus.saturating_sub(4).min(8)
}

/// `0-3,6`.
pub fn format_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { cpus[i].to_string() } else { format!("{}-{}", cpus[i], cpus[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// Moves every thread of this process to `cpus`; threads started later inherit it from the
/// thread that starts them. Call after a launched command was forked (it keeps the CPUs it had).
pub fn pin_process(cpus: &[usize]) -> Result<(), CpusError> {
    let err = |source: std::io::Error| CpusError::Set { list: format_list(cpus), source };
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).map_err(|e| err(e.into()))?;
    }
    // Twice: a thread another thread started during the first pass is caught by the second.
    for _ in 0..2 {
        for task in std::fs::read_dir("/proc/self/task").map_err(err)?.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
            match sched_setaffinity(Pid::from_raw(tid), &set) {
                // A thread that ended meanwhile.
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(err(e.into())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print_as_ranges() {
        assert_eq!(format_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert!(matches!(parse("x"), Err(CpusError::Syntax { .. })));
        assert!(matches!(parse("3-1"), Err(CpusError::Syntax { .. })));
        assert!(matches!(parse(""), Err(CpusError::Syntax { .. })));
        assert!(matches!(parse("100000"), Err(CpusError::Syntax { .. })));
        let first = allowed_cpus()[0];
        assert_eq!(parse(&format!("{first},{first}")).unwrap(), vec![first]);
    }
}
