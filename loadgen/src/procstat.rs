//! CPU time of the stack's processes during a run (from `/proc`), so a run tells not only how
//! fast it went but which process spent the machine's cores: the first cut of a profile.

use std::{process::Command, time::Instant};

use serde::Serialize;

#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// `NAME=PID`, as given on the command line.
pub fn parse_watch(s: &str) -> Result<Watched, String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=PID"))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: the pid must be a number"))?;
    Ok(Watched {
        name: name.trim().to_string(),
        pid,
    })
}

/// utime + stime of a process, in clock ticks.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_ticks(&stat)
}

fn parse_process_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Context switches (voluntary + involuntary) of all threads of a process.
fn process_switches(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            total += parse_switches(&status);
        }
    }
    Some(total)
}

fn parse_switches(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// (busy, total) ticks of the whole machine, from the first line of /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(stat.lines().next()?)
}

fn parse_machine_ticks(cpu_line: &str) -> Option<(u64, u64)> {
    let values: Vec<u64> = cpu_line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

pub struct CpuProbe {
    watched: Vec<Watched>,
    tck: f64,
    started: Instant,
    start_ticks: Vec<Option<u64>>,
    start_switches: Vec<Option<u64>>,
    start_machine: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessCpu {
    pub name: String,
    pub pid: u32,
    pub cpu_secs: f64,
    /// CPU time over wall time: 100 = one core busy all along.
    pub pct_of_one_core: f64,
    /// Context switches of all its threads (threads that exited meanwhile are not counted).
    pub context_switches: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuReport {
    pub wall_secs: f64,
    pub cores: usize,
    /// Busy share of all cores, from /proc/stat.
    pub machine_busy_pct: Option<f64>,
    /// CPU seconds the machine spent outside the watched processes: other work sharing the
    /// cores during the run, which the figures then understate the stack by.
    pub other_cpu_secs: Option<f64>,
    pub processes: Vec<ProcessCpu>,
}

impl CpuProbe {
    /// Starts watching `watched` plus this process (as `loadgen`).
    pub fn start(mut watched: Vec<Watched>) -> Self {
        watched.push(Watched {
            name: "loadgen".into(),
            pid: std::process::id(),
        });
        let start_ticks = watched
            .iter()
            .map(|w| process_ticks(&w.pid.to_string()))
            .collect();
        let start_switches = watched
            .iter()
            .map(|w| process_switches(&w.pid.to_string()))
            .collect();
        CpuProbe {
            watched,
            tck: clock_ticks_per_sec(),
            started: Instant::now(),
            start_ticks,
            start_switches,
            start_machine: machine_ticks(),
        }
    }

    pub fn finish(&self) -> CpuReport {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let processes: Vec<ProcessCpu> = self
            .watched
            .iter()
            .zip(self.start_ticks.iter().zip(&self.start_switches))
            .filter_map(|(w, (start, switches))| {
                let pid = w.pid.to_string();
                let end = process_ticks(&pid)?;
                let cpu_secs = end.saturating_sub((*start)?) as f64 / self.tck;
                let context_switches = match (switches, process_switches(&pid)) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(*a)),
                    _ => None,
                };
                Some(ProcessCpu {
                    name: w.name.clone(),
                    pid: w.pid,
                    cpu_secs,
                    pct_of_one_core: cpu_secs * 100.0 / wall,
                    context_switches,
                })
            })
            .collect();
        let machine = match (self.start_machine, machine_ticks()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0, t1 - t0)),
            _ => None,
        };
        let machine_busy_pct = machine.map(|(busy, total)| busy as f64 * 100.0 / total as f64);
        let watched: f64 = processes.iter().map(|p: &ProcessCpu| p.cpu_secs).sum();
        let other_cpu_secs = machine.map(|(busy, _)| (busy as f64 / self.tck - watched).max(0.0));
        CpuReport {
            wall_secs: wall,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            machine_busy_pct,
            other_cpu_secs,
            processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_is_read_past_an_awkward_command_name() {
        let stat = "1234 (roombook (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_process_ticks(stat), Some(300));
    }

    #[test]
    fn context_switches_add_voluntary_and_involuntary() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_switches(status), 127);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let line = "cpu  100 5 50 800 20 3 2 0 0 0";
        assert_eq!(parse_machine_ticks(line), Some((160, 980)));
    }

    #[test]
    fn this_process_can_be_measured() {
        let probe = CpuProbe::start(vec![]);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let report = probe.finish();
        assert_eq!(report.processes.len(), 1);
        assert_eq!(report.processes[0].name, "loadgen");
    }

    #[test]
    fn watch_arguments_are_name_equals_pid() {
        let w = parse_watch("gateway=4321").unwrap();
        assert_eq!((w.name.as_str(), w.pid), ("gateway", 4321));
        assert!(parse_watch("gateway").is_err());
        assert!(parse_watch("gateway=x").is_err());
    }
}
