//! The monoio runtimes every Sluice thread-per-core program builds: the gateway's workers and
//! the bench suite's mock and load generator. One place for the io_uring ring setup, because
//! it decides the CPU cost per request: without cooperative task running every completion
//! interrupts the core (measured here at twice the CPU per proxied request, DESIGN.md).

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
