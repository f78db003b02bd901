//! What the benchmarks read of processes from `/proc`: a field of a
//! process's `status` or `smaps_rollup`, and every process's parent (to
//! find a postmaster's whole family).

use std::collections::HashMap;

/// A `key:` line's number (KiB) in `/proc/PID/FILE`; 0 when absent.
pub fn proc_kib(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `pm` and every descendant, given every process's parent.
pub fn family_of(pm: i32, parents: &HashMap<i32, i32>) -> Vec<i32> {
    let mut family = vec![pm];
    let mut i = 0;
    while i < family.len() {
        let p = family[i];
        family.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    family
}

/// Every process's parent.
pub fn parents() -> HashMap<i32, i32> {
    let mut map = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = draupnir::core::test_support::process::parent_pid(pid) {
            map.insert(pid, ppid);
        }
    }
    map
}
