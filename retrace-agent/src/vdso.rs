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
        if name == "__vdso_clock_gettime" {
            // Only the wall clocks leave the vDSO; the others keep its own code (a Go runtime
            // reads the monotonic clock at every turn of its scheduler).
            if let Some(detour) = wall_clock_detour(&image, offset) {
                mem.write_all_at(&detour.trampoline, lo + detour.at)?;
                mem.write_all_at(&detour.entry, lo + offset)?;
                patched += 1;
                continue;
            }
        }
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

/// `clock_gettime`'s entry, rewritten into a jump to a trampoline in the image's trailing
/// padding (still in its executable mapping): the trampoline makes the system call for
/// `CLOCK_REALTIME` and `CLOCK_REALTIME_COARSE`, and for any other clock runs the entry's first
/// instructions, moved there, and jumps back after them.
struct Detour {
    entry: Vec<u8>,
    at: u64,
    trampoline: Vec<u8>,
}

/// The detour for the function at `entry` of `image`, if its first instructions can move (no
/// branch, nothing relative to the instruction pointer) and the padding has room; else the
/// caller turns the whole function into the system call.
fn wall_clock_detour(image: &[u8], entry: u64) -> Option<Detour> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    // Instructions that run the same anywhere (a prologue's): no branch among them.
    const MOVABLE: &[Mnemonic] = &[
        Mnemonic::Push,
        Mnemonic::Mov,
        Mnemonic::Sub,
        Mnemonic::Add,
        Mnemonic::And,
        Mnemonic::Or,
        Mnemonic::Xor,
        Mnemonic::Lea,
        Mnemonic::Endbr64,
        Mnemonic::Nop,
    ];
    const JMP_LEN: usize = 5;
    let start = entry as usize;
    let mut decoder = Decoder::with_ip(64, image.get(start..)?, entry, DecoderOptions::NONE);
    let mut moved = 0;
    while moved < JMP_LEN {
        let instruction = decoder.decode();
        if instruction.is_invalid()
            || !MOVABLE.contains(&instruction.mnemonic())
            || instruction.is_ip_rel_memory_operand()
        {
            return None;
        }
        moved += instruction.len();
    }
    let back = entry + moved as u64;
    // cmp edi, CLOCK_REALTIME; je sys; cmp edi, CLOCK_REALTIME_COARSE; je sys; <moved>;
    // jmp back; sys: mov eax, SYS_clock_gettime; syscall; ret
    let sys = 15 + moved;
    let mut trampoline = vec![0x83, 0xff, 0x00, 0x74, (sys - 5) as u8, 0x83, 0xff, 0x05, 0x74, (sys - 10) as u8];
    trampoline.extend_from_slice(&image[start..start + moved]);
    // The padding after the image's last byte, 16-aligned, all zeros.
    let used = image.iter().rposition(|&b| b != 0)? + 1;
    let at = (used + 16).next_multiple_of(16);
    let length = trampoline.len() + JMP_LEN + 8;
    if at + length > image.len() || image[at..at + length].iter().any(|&b| b != 0) {
        return None;
    }
    let jump_back = back as i64 - (at + trampoline.len() + JMP_LEN) as i64;
    trampoline.push(0xe9);
    trampoline.extend_from_slice(&(i32::try_from(jump_back).ok()?).to_le_bytes());
    trampoline.extend_from_slice(&[0xb8]);
    trampoline.extend_from_slice(&(libc::SYS_clock_gettime as u32).to_le_bytes());
    trampoline.extend_from_slice(&[0x0f, 0x05, 0xc3]);
    let jump_there = at as i64 - (start + JMP_LEN) as i64;
    let mut patch = vec![0xe9];
    patch.extend_from_slice(&(i32::try_from(jump_there).ok()?).to_le_bytes());
    patch.resize(moved, 0x90);
    Some(Detour { entry: patch, at: at as u64, trampoline })
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

    #[test]
    fn clock_gettime_jumps_to_a_trampoline_that_sends_only_the_wall_clocks_to_the_kernel() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let Some(range) = maps.lines().find(|l| l.ends_with("[vdso]")).and_then(|l| l.split(' ').next()) else {
            return;
        };
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
        // SAFETY: our own vDSO mapping, readable for its whole length.
        let image = unsafe { std::slice::from_raw_parts(lo as *const u8, hi - lo) };
        let entry = vdso_symbols(image).into_iter().find(|(n, _)| n == "__vdso_clock_gettime").unwrap().1;
        let Some(detour) = wall_clock_detour(image, entry) else {
            return; // a vDSO whose entry cannot move: the whole function becomes the call
        };
        // jmp rel32 to the trampoline, from the entry.
        assert_eq!(detour.entry[0], 0xe9);
        let rel = i32::from_le_bytes(detour.entry[1..5].try_into().unwrap()) as i64;
        assert_eq!(entry as i64 + 5 + rel, detour.at as i64);
        // The trampoline: the two wall clocks, the moved bytes, the jump back, the call.
        let t = &detour.trampoline;
        assert_eq!(&t[..3], &[0x83, 0xff, 0x00]);
        assert_eq!(&t[5..8], &[0x83, 0xff, 0x05]);
        let moved = detour.entry.len();
        assert_eq!(&t[10..10 + moved], &image[entry as usize..entry as usize + moved]);
        let back = i32::from_le_bytes(t[11 + moved..15 + moved].try_into().unwrap()) as i64;
        assert_eq!(detour.at as i64 + 15 + moved as i64 + back, (entry as usize + moved) as i64);
        assert_eq!(&t[15 + moved..], &[0xb8, 228, 0, 0, 0, 0x0f, 0x05, 0xc3]);
        // Both je land on the call.
        assert_eq!(5 + t[4] as usize, 15 + moved);
        assert_eq!(10 + t[9] as usize, 15 + moved);
    }
}
