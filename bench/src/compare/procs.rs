//! The processes under test: spawning children pinned to a CPU list, and reading what the
//! kernel says about them from `/proc` (CPU time, resident memory, read/write syscalls) and,
//! where it works, from `perf stat` (every syscall).
//!
//! Every child is kept by its PID in a [`ChildProc`], which stops it (SIGTERM, then SIGKILL
//! after a grace period) and reaps it when dropped: nothing is ever looked up or killed by
//! name. The parsers are plain functions over the files' text, tested below.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`): fixed at 100 by the Linux ABI on
/// every architecture we run on, whatever the kernel's own `HZ`.
pub const TICKS_PER_SECOND: u64 = 100;

/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// CPU lists and pinning

/// A list of CPU numbers as `taskset` writes it: `0`, `0-1`, `0,2-3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// The CPUs, ascending, without repeats.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// How many CPUs the list names (at least 1).
    pub fn count(&self) -> usize {
        self.0.len()
    }

    fn cpu_set(&self) -> anyhow::Result<CpuSet> {
        let mut set = CpuSet::new();
        for &cpu in &self.0 {
            set.set(cpu)
                .with_context(|| format!("CPU {cpu} is beyond what this system can pin"))?;
        }
        Ok(set)
    }
}

impl FromStr for CpuList {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<CpuList> {
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let lo: usize = lo
                .parse()
                .with_context(|| format!("bad CPU `{lo}` in list `{s}`"))?;
            let hi: usize = hi
                .parse()
                .with_context(|| format!("bad CPU `{hi}` in list `{s}`"))?;
            if hi < lo || hi - lo > 1024 {
                bail!("bad CPU range `{part}` in list `{s}`");
            }
            cpus.extend(lo..=hi);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Runs `f` with the calling thread pinned to `cpus`, then restores its affinity. Threads and
/// processes started inside `f` inherit the pinning and keep it.
pub fn with_affinity<T>(cpus: &CpuList, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let me = Pid::from_raw(0);
    let before = sched_getaffinity(me).context("reading this thread's CPU affinity")?;
    sched_setaffinity(me, &cpus.cpu_set()?)
        .with_context(|| format!("pinning to CPUs {cpus} (does this machine have them?)"))?;
    let out = f();
    sched_setaffinity(me, &before).context("restoring this thread's CPU affinity")?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Children

/// A child process this run started, kept by PID; stopped and reaped when dropped.
pub struct ChildProc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildProc {
    /// Spawns `cmd` pinned to `cpus`, its stdout and stderr appended to `log`.
    pub fn spawn_pinned(
        name: &str,
        mut cmd: Command,
        cpus: &CpuList,
        log: &Path,
    ) -> anyhow::Result<ChildProc> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = with_affinity(cpus, || cmd.spawn())?
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(ChildProc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the child wrote so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails when the child has already exited (with its log's tail).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                let log = self.log_text();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
            }
        }
        Ok(())
    }

    /// Sends `signal` to the child (by its PID).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid()).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("signalling {}", self.name))?;
        Ok(())
    }

    /// Stops the child: SIGTERM, a grace period, then SIGKILL; always reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for the child to exit by itself within `within` (after a signal); kills it
    /// when it does not.
    pub fn wait_exit(&mut self, within: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readers: pure parsers

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The parent's PID.
    pub ppid: u32,
    /// User CPU time, in clock ticks (all threads of the process).
    pub utime: u64,
    /// System CPU time, in clock ticks (all threads of the process).
    pub stime: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), … utime (14), stime (15).
    Some(ProcStat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`…), in KiB.
pub fn parse_status_kb(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// `syscr + syscw` from `/proc/PID/io`: read- and write-family syscalls (io_uring operations
/// are not among them).
pub fn parse_io_syscalls(text: &str) -> Option<u64> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some(field("syscr")? + field("syscw")?)
}

/// The event count from `perf stat -x,` output (the first line whose third field names
/// `event`).
pub fn parse_perf_count(text: &str, event: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.get(2).is_some_and(|f| f.trim() == event) {
            fields.first()?.trim().parse().ok()
        } else {
            None
        }
    })
}

// ---------------------------------------------------------------------------------------------
// /proc readers: the files

/// `/proc/PID/stat` of one process.
pub fn read_stat(pid: u32) -> anyhow::Result<ProcStat> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&text).with_context(|| format!("parsing {path}"))
}

/// utime + stime of all of `pids`, in microseconds.
pub fn cpu_time_us(pids: &[u32]) -> anyhow::Result<u64> {
    let mut ticks = 0;
    for &pid in pids {
        let stat = read_stat(pid)?;
        ticks += stat.utime + stat.stime;
    }
    Ok(ticks * 1_000_000 / TICKS_PER_SECOND)
}

/// The command name of a `/proc/PID/stat` or `/proc/PID/task/TID/stat` line (field 2,
/// between the first `(` and the last `)`; a thread's name as `pthread_setname_np` set it,
/// cut to 15 bytes by the kernel).
pub fn parse_stat_comm(text: &str) -> Option<&str> {
    text.get(text.find('(')? + 1..text.rfind(')')?)
}

/// utime + stime, in microseconds, of the threads of `pids` whose name starts with
/// `prefix` (`/proc/PID/task/*/stat`), or `None` when no thread has such a name. A thread
/// that ends between the listing and the read is skipped (its time is lost to the figure).
pub fn thread_cpu_time_us(pids: &[u32], prefix: &str) -> Option<u64> {
    let mut ticks = 0;
    let mut found = false;
    for &pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.filter_map(Result::ok) {
            let Ok(text) = fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if !parse_stat_comm(&text).is_some_and(|c| c.starts_with(prefix)) {
                continue;
            }
            if let Some(stat) = parse_stat(&text) {
                found = true;
                ticks += stat.utime + stat.stime;
            }
        }
    }
    found.then(|| ticks * 1_000_000 / TICKS_PER_SECOND)
}

/// The PIDs whose parent is `ppid` (scanning `/proc/*/stat`): nginx's workers.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| read_stat(pid).is_ok_and(|s| s.ppid == ppid))
        .collect();
    pids.sort_unstable();
    pids
}

/// The sum over `pids` of a `kB` field of `/proc/PID/status`, in KiB.
pub fn status_kb(pids: &[u32], field: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for &pid in pids {
        let path = format!("/proc/{pid}/status");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        total += parse_status_kb(&text, field).with_context(|| format!("{field} in {path}"))?;
    }
    Ok(total)
}

/// The sum over `pids` of `syscr + syscw` (`/proc/PID/io`).
pub fn io_syscalls(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for &pid in pids {
        let path = format!("/proc/{pid}/io");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        total += parse_io_syscalls(&text).with_context(|| format!("parsing {path}"))?;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// perf stat

/// The tracepoint counted: every syscall entry.
pub const SYSCALL_EVENT: &str = "raw_syscalls:sys_enter";

/// A `perf stat` counting the syscalls of some PIDs, from [`SyscallCounter::start`] to
/// [`SyscallCounter::finish`].
pub struct SyscallCounter {
    perf: ChildProc,
    out: PathBuf,
}

impl SyscallCounter {
    /// Starts `perf stat -e raw_syscalls:sys_enter -p PIDS`, writing to `out`. `None` when
    /// perf is missing or refuses (no permission to the tracepoint).
    pub fn start(perf: &Path, pids: &[u32], out: &Path) -> Option<SyscallCounter> {
        let pid_list: Vec<String> = pids.iter().map(ToString::to_string).collect();
        let mut cmd = Command::new(perf);
        cmd.args(["stat", "-x", ",", "-e", SYSCALL_EVENT, "-o"])
            .arg(out)
            .args(["-p", &pid_list.join(",")]);
        let log = out.with_extension("log");
        let all = CpuList((0..available_cpus()).collect());
        let mut proc = ChildProc::spawn_pinned("perf", cmd, &all, &log).ok()?;
        // perf attaches in a few ms; a refusal shows as an early exit.
        std::thread::sleep(Duration::from_millis(300));
        proc.check_alive().ok()?;
        Some(SyscallCounter {
            perf: proc,
            out: out.to_path_buf(),
        })
    }

    /// Stops perf (SIGINT makes it write its counts) and returns the count.
    pub fn finish(mut self) -> Option<u64> {
        self.perf.signal(Signal::SIGINT).ok()?;
        self.perf.wait_exit(Duration::from_secs(5));
        let text = fs::read_to_string(&self.out).ok()?;
        parse_perf_count(&text, SYSCALL_EVENT)
    }
}

/// How many CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!("0".parse::<CpuList>().unwrap().cpus(), [0]);
        assert_eq!("0-2".parse::<CpuList>().unwrap().cpus(), [0, 1, 2]);
        assert_eq!("3, 0-1,1".parse::<CpuList>().unwrap().cpus(), [0, 1, 3]);
        assert_eq!("0-1".parse::<CpuList>().unwrap().to_string(), "0,1");
        assert!("".parse::<CpuList>().is_err());
        assert!("2-1".parse::<CpuList>().is_err());
        assert!("a".parse::<CpuList>().is_err());
    }

    #[test]
    fn stat_fields_count_from_the_last_paren() {
        let text = "4242 (nginx: worker) S 4241 4241 4241 0 -1 4194624 120 0 0 0 \
                    37 12 0 0 20 0 1 0 123456 10000000 500 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                ppid: 4241,
                utime: 37,
                stime: 12
            })
        );
        let odd = "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0";
        assert_eq!(
            parse_stat(odd).map(|s| (s.ppid, s.utime, s.stime)),
            Some((1, 5, 6))
        );
        assert_eq!(parse_stat("7 (x) R 1"), None);
        assert_eq!(parse_stat_comm(text), Some("nginx: worker"));
        assert_eq!(parse_stat_comm(odd), Some("a) b (c)"));
        assert_eq!(
            parse_stat_comm("99 (sluice-audit-w) S 1 1 1 0 -1 0 0 0 0 0 3 4"),
            Some("sluice-audit-w")
        );
        assert_eq!(parse_stat_comm("no name"), None);
    }

    #[test]
    fn status_and_io_fields() {
        let status =
            "Name:\tsluice\nVmPeak:\t  300000 kB\nVmHWM:\t    9876 kB\nVmRSS:\t    8000 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(9876));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(8000));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
        let io = "rchar: 10\nwchar: 20\nsyscr: 300\nsyscw: 45\nread_bytes: 0\n";
        assert_eq!(parse_io_syscalls(io), Some(345));
        assert_eq!(parse_io_syscalls("rchar: 1\n"), None);
    }

    #[test]
    fn perf_csv_count() {
        let text = "# started on Thu\n\n109,,raw_syscalls:sys_enter,1803581,100.00,,\n";
        assert_eq!(parse_perf_count(text, SYSCALL_EVENT), Some(109));
        let refused = "<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n";
        assert_eq!(parse_perf_count(refused, SYSCALL_EVENT), None);
    }

    #[test]
    fn this_process_reads_from_proc() {
        let me = std::process::id();
        assert!(read_stat(me).is_ok());
        assert!(status_kb(&[me], "VmHWM").unwrap() > 0);
        // A thread named like the audit writer is found while it lives; no thread has
        // the odd prefix.
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let probe = std::thread::Builder::new()
            .name("bench-probe-thread".into())
            .spawn(move || {
                let _ = ready_tx.send(());
                let _ = stop_rx.recv_timeout(Duration::from_secs(10));
            })
            .unwrap();
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(thread_cpu_time_us(&[me], "bench-probe").is_some());
        assert_eq!(thread_cpu_time_us(&[me], "no-such-thread-"), None);
        drop(stop_tx);
        probe.join().unwrap();
    }
}
