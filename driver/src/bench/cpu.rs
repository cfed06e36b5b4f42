//! What a request costs in CPU: the processes of a target (the ceiling's one, vkv's five
//! replicas, etcd's five members), the load generator (this process) and the whole box, read
//! from `/proc` before and after a run. The figures say where the time goes when a target is
//! CPU-bound on the shared cores, so a shortfall can be told in microseconds per request.

use std::time::Instant;

/// CPU seconds used over one or more runs, and the requests they answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cpu {
    /// Each process of the target, in the order given (for vkv: replica 1 first).
    pub processes_s: Vec<f64>,
    /// The load generator: this whole process.
    pub generator_s: f64,
    /// Every core of the box busy (not idle, not waiting for I/O), all processes together.
    pub busy_s: f64,
    /// Wall time × cores: what the box could have given.
    pub capacity_s: f64,
    /// 2xx answers over the same time (warm-up included).
    pub answered: u64,
}

impl Cpu {
    /// Adds another run's figures (the same target, so the same processes).
    pub fn merge(&mut self, other: &Cpu) {
        if self.processes_s.len() < other.processes_s.len() {
            self.processes_s.resize(other.processes_s.len(), 0.0);
        }
        for (mine, theirs) in self.processes_s.iter_mut().zip(&other.processes_s) {
            *mine += theirs;
        }
        self.generator_s += other.generator_s;
        self.busy_s += other.busy_s;
        self.capacity_s += other.capacity_s;
        self.answered += other.answered;
    }

    fn per_request(&self, seconds: f64) -> f64 {
        if self.answered == 0 {
            0.0
        } else {
            seconds * 1e6 / self.answered as f64
        }
    }

    /// The target's CPU per request, in microseconds (all its processes).
    pub fn us_per_request(&self) -> f64 {
        self.per_request(self.processes_s.iter().sum())
    }

    /// Each process's CPU per request, in microseconds.
    pub fn us_per_request_by_process(&self) -> Vec<f64> {
        self.processes_s.iter().map(|&s| self.per_request(s)).collect()
    }

    /// The load generator's CPU per request, in microseconds.
    pub fn generator_us_per_request(&self) -> f64 {
        self.per_request(self.generator_s)
    }

    /// How busy the box was, 0 to 1.
    pub fn box_busy(&self) -> f64 {
        if self.capacity_s > 0.0 {
            (self.busy_s / self.capacity_s).min(1.0)
        } else {
            0.0
        }
    }
}

/// The CPU counters at the start of a run.
pub struct Meter {
    pids: Vec<u32>,
    processes: Vec<Option<u64>>,
    generator: Option<u64>,
    box_ticks: Option<(u64, u64)>,
    started: Instant,
    tick: f64,
}

impl Meter {
    /// Reads the counters of `pids`, of this process and of the box.
    pub fn start(pids: Vec<u32>) -> Meter {
        let processes = pids.iter().map(|&pid| process_ticks(pid)).collect();
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&t| t > 0)
            .map_or(0.01, |t| 1.0 / t as f64);
        Meter {
            pids,
            processes,
            generator: process_ticks(std::process::id()),
            box_ticks: box_ticks(),
            started: Instant::now(),
            tick,
        }
    }

    /// The CPU used since [`Meter::start`], for `answered` requests meanwhile. A counter that
    /// could not be read (a process gone, no `/proc`) counts as zero.
    pub fn stop(self, answered: u64) -> Cpu {
        let since = |before: Option<u64>, now: Option<u64>| match (before, now) {
            (Some(b), Some(n)) => n.saturating_sub(b) as f64 * self.tick,
            _ => 0.0,
        };
        let processes_s =
            self.pids.iter().zip(&self.processes).map(|(&pid, &before)| since(before, process_ticks(pid))).collect();
        let generator_s = since(self.generator, process_ticks(std::process::id()));
        let cores = cores();
        let (busy_s, capacity_s) = match (self.box_ticks, box_ticks()) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                // The box's counters are summed over every core: scaled to wall time × cores.
                let wall = self.started.elapsed().as_secs_f64() * cores;
                (wall * busy1.saturating_sub(busy0) as f64 / (total1 - total0) as f64, wall)
            }
            _ => (0.0, self.started.elapsed().as_secs_f64() * cores),
        };
        Cpu { processes_s, generator_s, busy_s, capacity_s, answered }
    }
}

/// The cores this process may use (what the box busy share and the CPU budget count).
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// User + system clock ticks of process `pid` (all its threads), from `/proc/PID/stat`.
fn process_ticks(pid: u32) -> Option<u64> {
    parse_process_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime + stime` of a `/proc/PID/stat` line. The command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself, so the fields are counted after its last `)`.
pub fn parse_process_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state (field 3) … utime is field 14 and stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy and total ticks of the box, from the `cpu` line of `/proc/stat`.
fn box_ticks() -> Option<(u64, u64)> {
    parse_box_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Busy and total ticks from `/proc/stat`'s first line (`cpu  user nice system idle iowait irq
/// softirq steal guest guest_nice`): idle and iowait are not busy. Steal (time the hypervisor
/// gave to someone else) is left out of both, so the share is of the time this box had; guest
/// time is already in user's.
pub fn parse_box_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let counters: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if counters.len() < 4 {
        return None;
    }
    let total: u64 = counters.iter().take(7).sum();
    let idle = counters[3] + counters.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_line_is_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (vkv (server) x) S 1 4242 4242 0 -1 4194560 2981 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_process_stat(line), Some(1234 + 567));
        assert_eq!(parse_process_stat("4242 (cut) S 1 2 3"), None, "too few fields");
        assert_eq!(parse_process_stat("no parenthesis"), None);
    }

    #[test]
    fn the_box_line_counts_idle_and_iowait_as_not_busy_and_steal_and_guest_not_at_all() {
        let stat = "cpu  100 5 50 800 40 3 2 9 70 0\ncpu0 50 2 25 400 20 1 1 4 35 0\n";
        let (busy, total) = parse_box_stat(stat).unwrap();
        assert_eq!(total, 100 + 5 + 50 + 800 + 40 + 3 + 2);
        assert_eq!(busy, total - 800 - 40);
        assert_eq!(parse_box_stat("cpu0 1 2 3 4\n"), None, "only the summed line counts");
    }

    #[test]
    fn figures_per_request_add_up_over_merged_runs() {
        let mut a =
            Cpu { processes_s: vec![0.6, 0.2], generator_s: 0.1, busy_s: 1.0, capacity_s: 2.0, answered: 10_000 };
        a.merge(&Cpu { processes_s: vec![0.4, 0.3], generator_s: 0.1, busy_s: 2.0, capacity_s: 2.0, answered: 10_000 });
        assert_eq!(a.us_per_request_by_process(), vec![50.0, 25.0]);
        assert_eq!(a.us_per_request(), 75.0);
        assert_eq!(a.generator_us_per_request(), 10.0);
        assert_eq!(a.box_busy(), 0.75);
        assert_eq!(Cpu::default().us_per_request(), 0.0, "no request: no figure, not a division by zero");
    }

    #[test]
    fn a_meter_sees_this_process_work() {
        use nix::time::{clock_gettime, ClockId};
        let spent = || {
            let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
            t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
        };
        let meter = Meter::start(vec![std::process::id()]);
        // 300 ms of this thread's CPU time, however busy the box is (at most a minute's wait).
        let (from, started) = (spent(), Instant::now());
        let mut x = 0u64;
        while spent() - from < 0.3 && started.elapsed().as_secs() < 60 {
            for _ in 0..10_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let cpu = meter.stop(1);
        assert!(cpu.processes_s[0] >= 0.2, "300 ms of spinning read as {} s", cpu.processes_s[0]);
        assert!(cpu.generator_s >= 0.2, "{cpu:?}");
        assert!(cpu.capacity_s >= 0.3 && cpu.busy_s > 0.0, "{cpu:?}");
    }
}
