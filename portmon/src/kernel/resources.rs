//! The process's own resource settings: the descriptor limit and how the C
//! allocator holds on to memory.

/// Sets the soft limit of open descriptors to the hard one, and returns it:
/// each HTTP connection and each namespace entered holds a descriptor, and
/// running out makes the inventory fail. The hard limit is the operator's
/// (`LimitNOFILE` in the unit).
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit with a valid pointer to a local rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// Makes glibc's allocator give memory back: large buffers (a scrape's
/// exposition, an API answer) are mapped on their own and unmapped when
/// freed, instead of raising a threshold that keeps the next ones on the
/// heap for ever; and threads share two arenas rather than one each, which
/// left a burst of concurrent requests' memory behind in arenas of their own.
pub fn bound_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the
    // threads that allocate exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Hands the allocator's free pages back to the kernel: after a burst of
/// requests, memory freed in the middle of the heap stays resident until
/// trimmed.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
