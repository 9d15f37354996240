//! The kernel's monotonic clock as systemd reads it: `sd_notify`'s
//! `MONOTONIC_USEC` is on `CLOCK_MONOTONIC`, which `std::time::Instant`
//! uses but does not expose.

/// Microseconds of `CLOCK_MONOTONIC` now.
pub fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    #[test]
    fn it_moves_forward() {
        let first = super::monotonic_usec();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(super::monotonic_usec() >= first + 2_000);
    }
}
