//! The 16 random bytes the kernel gives each new image (`AT_RANDOM` in its auxiliary vector):
//! libc's stack protector and pointer guard, Go's hash seeds and map order, and the generators
//! seeded from them start there. `record` reads them at each exec, before the image runs;
//! `replay` writes the recorded ones back at the new image's first system call, before its
//! code reads them.

const AT_RANDOM: u64 = 25;
pub const AT_RANDOM_LEN: usize = 16;

/// Where `pid`'s AT_RANDOM bytes are (an address on its initial stack).
fn at_random_address(pid: u32) -> Option<u64> {
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).ok()?;
    auxv.chunks_exact(16).find_map(|pair| {
        let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
        (key == AT_RANDOM).then(|| u64::from_ne_bytes(pair[8..].try_into().unwrap_or_default()))
    })
}

/// `pid`'s AT_RANDOM bytes (None if it is gone, or has none).
pub fn read(pid: u32) -> Option<[u8; AT_RANDOM_LEN]> {
    let at = at_random_address(pid).filter(|&a| a != 0)?;
    let mut bytes = [0u8; AT_RANDOM_LEN];
    let local = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: AT_RANDOM_LEN };
    let remote = libc::iovec { iov_base: at as *mut _, iov_len: AT_RANDOM_LEN };
    // SAFETY: one read of 16 bytes of the target into our own buffer.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    (n == AT_RANDOM_LEN as isize).then_some(bytes)
}

/// Puts `bytes` in place of `pid`'s AT_RANDOM bytes.
pub fn write(pid: u32, bytes: &[u8; AT_RANDOM_LEN]) -> std::io::Result<()> {
    let at = at_random_address(pid)
        .filter(|&a| a != 0)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no AT_RANDOM in its auxiliary vector"))?;
    let local = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: AT_RANDOM_LEN };
    let remote = libc::iovec { iov_base: at as *mut _, iov_len: AT_RANDOM_LEN };
    // SAFETY: one write of 16 bytes into the target's initial stack, where the kernel put its own.
    let n = unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n == AT_RANDOM_LEN as isize {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_reads_its_own_at_random_bytes() {
        const AT_RANDOM: libc::c_ulong = 25;
        // SAFETY: getauxval has no preconditions; AT_RANDOM points at 16 readable bytes.
        let ours = unsafe { std::slice::from_raw_parts(libc::getauxval(AT_RANDOM) as *const u8, 16) };
        assert_eq!(super::read(std::process::id()).unwrap().as_slice(), ours);
    }
}
