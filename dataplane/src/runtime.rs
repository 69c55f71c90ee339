//! The monoio runtimes every Sluice thread-per-core program builds: the gateway's workers and
//! the bench suite's mock and load generator. One place for the io_uring ring setup, because
//! it decides the CPU cost per request: without cooperative task running every completion
//! interrupts the core (measured here at twice the CPU per proxied request, DESIGN.md), and
//! one place for the choice between io_uring and epoll ([`block_on`]).

use std::future::Future;
use std::io;

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, Runtime, RuntimeBuilder};

/// io_uring submission queue size per thread.
pub const RING_ENTRIES: u32 = 1024;

/// An io_uring runtime with timers, its ring built with `setup_coop_taskrun` and
/// `setup_taskrun_flag`. Fails where the kernel refuses io_uring (callers fall back to
/// [`epoll_runtime`], saying so).
pub fn uring_runtime() -> io::Result<Runtime<TimeDriver<IoUringDriver>>> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun().setup_taskrun_flag();
    RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(RING_ENTRIES)
        .uring_builder(urb)
        .enable_timer()
        .build()
}

/// An epoll runtime with timers: the fallback where io_uring is refused.
pub fn epoll_runtime() -> io::Result<Runtime<TimeDriver<LegacyDriver>>> {
    RuntimeBuilder::<LegacyDriver>::new().enable_timer().build()
}

/// The name [`block_on`] gives its task for the io_uring driver (as logs and reports show it).
pub const IO_URING: &str = "io_uring";
/// The name [`block_on`] gives its task for the epoll driver.
pub const EPOLL: &str = "epoll";

/// Which I/O driver a thread's runtime uses (`--driver auto|io-uring|epoll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverChoice {
    /// io_uring with cooperative task running, falling back to epoll where refused.
    Auto,
    /// io_uring only; fail where refused.
    IoUring,
    /// epoll only.
    Epoll,
}

/// Why a thread got no runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `--driver io-uring` and the kernel refuses io_uring (seccomp, `kernel.io_uring_disabled`,
    /// an old kernel, the memlock limit).
    #[error("io_uring refused: {0}")]
    UringRefused(io::Error),
    /// The epoll driver could not be built either.
    #[error("cannot start the epoll driver: {0}")]
    Epoll(io::Error),
}

/// Builds this thread's runtime as `choice` says and runs the future `task` makes on it to
/// completion, returning its output. `task` gets the driver's name ([`IO_URING`] or
/// [`EPOLL`]) and is called only once the runtime exists, so the future can own what it runs
/// with, and is not called at all when no runtime could be built.
///
/// `Auto`: io_uring ([`uring_runtime`]); where the kernel refuses it, `on_fallback` is called
/// with the reason (to log it) and the task runs on epoll ([`epoll_runtime`]). `IoUring`:
/// io_uring or [`RuntimeError::UringRefused`]. `Epoll`: epoll.
///
/// # Errors
/// [`RuntimeError`] when the chosen driver (or, for `Auto`, both) cannot be built.
pub fn block_on<F: Future>(
    choice: DriverChoice,
    on_fallback: impl FnOnce(&io::Error),
    task: impl FnOnce(&'static str) -> F,
) -> Result<F::Output, RuntimeError> {
    block_on_with(uring_runtime, choice, on_fallback, task)
}

/// [`block_on`] with the io_uring runtime built by `uring` (tests refuse it at will).
fn block_on_with<F: Future>(
    uring: impl FnOnce() -> io::Result<Runtime<TimeDriver<IoUringDriver>>>,
    choice: DriverChoice,
    on_fallback: impl FnOnce(&io::Error),
    task: impl FnOnce(&'static str) -> F,
) -> Result<F::Output, RuntimeError> {
    if choice != DriverChoice::Epoll {
        match uring() {
            Ok(mut rt) => return Ok(rt.block_on(task(IO_URING))),
            Err(e) if choice == DriverChoice::IoUring => return Err(RuntimeError::UringRefused(e)),
            Err(e) => on_fallback(&e),
        }
    }
    let mut rt = epoll_runtime().map_err(RuntimeError::Epoll)?;
    Ok(rt.block_on(task(EPOLL)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    fn refused() -> io::Result<Runtime<TimeDriver<IoUringDriver>>> {
        Err(io::Error::from_raw_os_error(1)) // EPERM, as a seccomp profile answers
    }

    /// A task that needs the runtime's timer and says which driver it ran on.
    async fn nap(driver: &'static str) -> &'static str {
        monoio::time::sleep(Duration::from_millis(1)).await;
        driver
    }

    #[test]
    fn auto_falls_back_to_epoll_once_and_says_why() {
        let fallbacks = Cell::new(0);
        let ran = block_on_with(
            refused,
            DriverChoice::Auto,
            |e| {
                assert_eq!(e.raw_os_error(), Some(1));
                fallbacks.set(fallbacks.get() + 1);
            },
            nap,
        );
        assert_eq!(ran.ok(), Some(EPOLL));
        assert_eq!(fallbacks.get(), 1);
    }

    #[test]
    fn forced_io_uring_fails_without_running_the_task() {
        let called = Cell::new(false);
        let ran = block_on_with(
            refused,
            DriverChoice::IoUring,
            |_| panic!("no fallback when io_uring is forced"),
            |d| {
                called.set(true);
                nap(d)
            },
        );
        let Err(RuntimeError::UringRefused(e)) = ran else {
            panic!("expected UringRefused, got {ran:?}");
        };
        assert_eq!(e.raw_os_error(), Some(1));
        assert!(!called.get());
        assert_eq!(
            RuntimeError::UringRefused(e).to_string(),
            format!("io_uring refused: {}", io::Error::from_raw_os_error(1))
        );
    }

    #[test]
    fn epoll_never_asks_for_io_uring() {
        let ran = block_on_with(
            || panic!("io_uring built for --driver epoll"),
            DriverChoice::Epoll,
            |_| panic!("no fallback for --driver epoll"),
            nap,
        );
        assert_eq!(ran.ok(), Some(EPOLL));
    }

    /// Where the kernel allows io_uring, `Auto` runs on it; where it does not, it falls back.
    #[test]
    fn auto_runs_on_io_uring_where_the_kernel_allows_it() {
        let allowed = io_uring::IoUring::new(8).is_ok();
        let fell_back = Cell::new(false);
        let ran = block_on(DriverChoice::Auto, |_| fell_back.set(true), nap);
        let expected = if allowed { IO_URING } else { EPOLL };
        assert_eq!(ran.ok(), Some(expected));
        assert_eq!(fell_back.get(), !allowed);
    }
}
