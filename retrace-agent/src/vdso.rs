//! A process's vDSO, patched so that its wall-clock reads and getrandom reach the kernel as
//! system calls. The vDSO answers `clock_gettime`, `gettimeofday` and `time` (and getrandom,
//! on newer kernels and libcs) inside the process, where neither a tracepoint nor seccomp
//! sees them. `record` patches each traced image at exec so the calls are recorded; `replay`
//! patches each replayed image so the replayer answers them with what was recorded. Both
//! patch the same way, so the program makes the same calls in both.

use std::{fs::File, os::unix::fs::FileExt as _};

/// The vDSO's wall-clock entry points, and the system call each becomes.
const PATCHED: &[(&str, i64)] = &[
    ("__vdso_clock_gettime", libc::SYS_clock_gettime),
    ("__vdso_gettimeofday", libc::SYS_gettimeofday),
    ("__vdso_time", libc::SYS_time),
];

/// Patches the wall-clock entry points of `pid`'s vDSO into system calls (`mov eax, NR;
/// syscall; ret`); how many were patched.
pub fn patch(pid: u32) -> std::io::Result<usize> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let Some(range) = maps.lines().find(|l| l.ends_with("[vdso]")).and_then(|l| l.split(' ').next()) else {
        return Ok(0); // no vDSO: the calls are system calls already
    };
    let (lo, hi) = range.split_once('-').unwrap_or_default();
    let (lo, hi) = (u64::from_str_radix(lo, 16).unwrap_or(0), u64::from_str_radix(hi, 16).unwrap_or(0));
    let mem = File::options().read(true).write(true).open(format!("/proc/{pid}/mem"))?;
    let mut image = vec![0u8; hi.saturating_sub(lo) as usize];
    mem.read_exact_at(&mut image, lo)?;
    let mut patched = 0;
    for (name, offset) in vdso_symbols(&image) {
        let code = if name == "__vdso_getrandom" {
            // `mov rax, -ENOSYS; ret`: libc falls back to the system call, answered like the
            // clock (the vDSO's own getrandom keeps state the replayer cannot give).
            [0x48, 0xc7, 0xc0, 0xda, 0xff, 0xff, 0xff, 0xc3]
        } else if let Some(&(_, nr)) = PATCHED.iter().find(|(n, _)| *n == name) {
            let mut code = [0xb8, 0, 0, 0, 0, 0x0f, 0x05, 0xc3];
            code[1..5].copy_from_slice(&(nr as u32).to_le_bytes());
            code
        } else {
            continue;
        };
        mem.write_all_at(&code, lo + offset)?;
        patched += 1;
    }
    Ok(patched)
}

/// The dynamic symbols of a vDSO image (an ELF64 shared object linked at 0): (name, offset).
fn vdso_symbols(image: &[u8]) -> Vec<(String, u64)> {
    let u16_at = |at: usize| image.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| image.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let u64_at = |at: usize| image.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let mut out = Vec::new();
    if !image.starts_with(b"\x7fELF\x02") {
        return out;
    }
    let (Some(shoff), Some(shentsize), Some(shnum)) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c)) else { return out };
    let section = |i: usize| {
        let at = shoff as usize + i * shentsize;
        Some((u32_at(at + 4)?, u64_at(at + 0x18)? as usize, u64_at(at + 0x20)? as usize, u32_at(at + 0x28)?))
    };
    const SHT_DYNSYM: usize = 11;
    for i in 0..shnum {
        let Some((kind, offset, size, link)) = section(i) else { continue };
        if kind != SHT_DYNSYM {
            continue;
        }
        let Some((_, strings, _, _)) = section(link) else { continue };
        for sym in (offset..offset + size).step_by(24) {
            let (Some(name), Some(value)) = (u32_at(sym), u64_at(sym + 8)) else { break };
            let start = strings + name;
            let Some(end) = image.get(start..).and_then(|s| s.iter().position(|&b| b == 0)) else { continue };
            if value != 0 {
                out.push((String::from_utf8_lossy(&image[start..start + end]).into_owned(), value));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_vdso_has_the_wall_clock_entry_points() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let Some(range) = maps.lines().find(|l| l.ends_with("[vdso]")).and_then(|l| l.split(' ').next()) else {
            return; // a kernel without a vDSO
        };
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
        // SAFETY: our own vDSO mapping, readable for its whole length.
        let image = unsafe { std::slice::from_raw_parts(lo as *const u8, hi - lo) };
        let names: Vec<String> = vdso_symbols(image).into_iter().map(|(n, _)| n).collect();
        for (name, _) in PATCHED {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }
}
