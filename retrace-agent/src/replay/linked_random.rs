//! OpenSSL linked into the program itself (node): its RAND_bytes and RAND_bytes_ex are the
//! program's own functions, which the preloaded shim cannot stand in for (a program's calls
//! to its own functions look no symbol up). So after each exec, when the vDSO is patched,
//! their first instructions in the new image are replaced (through /proc/PID/mem) by a
//! getrandom call with flags no kernel accepts, which the replayer answers with what they
//! returned when recorded (fresh bytes once those are used up), and a return of 1 when all
//! the bytes asked for came.

use std::{collections::HashMap, fs::File, os::unix::fs::FileExt as _, os::unix::fs::MetadataExt as _};

/// getrandom flags that ask for the next recorded bytes, or fresh ones once none are left.
pub const LINKED_RANDOM: u32 = 0x5254_0001;

/// With the buffer in rdi and the length in rsi: `getrandom(buf, num, LINKED_RANDOM) == num`.
const ASK: &[u8] = &[
    0xba, 0x01, 0x00, 0x54, 0x52, // mov edx, LINKED_RANDOM
    0xb8, 0x3e, 0x01, 0x00, 0x00, // mov eax, SYS_getrandom
    0x0f, 0x05, // syscall
    0x48, 0x39, 0xf0, // cmp rax, rsi
    0x0f, 0x94, 0xc0, // sete al
    0x0f, 0xb6, 0xc0, // movzx eax, al
    0xc3, // ret
];

/// Each function, and how its arguments become ASK's: RAND_bytes(buf, int num) sign-extends
/// `num` (a negative one is refused); RAND_bytes_ex(ctx, buf, num, strength) moves them down.
const FUNCTIONS: [(&str, &[u8]); 2] = [
    ("RAND_bytes", &[0x48, 0x63, 0xf6]),                      // movsxd rsi, esi
    ("RAND_bytes_ex", &[0x48, 0x89, 0xf7, 0x48, 0x89, 0xd6]), // mov rdi, rsi; mov rsi, rdx
];

/// Where a program defines the functions: (file offset, replacement code).
type Patches = Vec<(u64, Vec<u8>)>;

/// Each program's patches, by (device, inode).
#[derive(Default)]
pub struct LinkedRandom {
    programs: HashMap<(u64, u64), Patches>,
}

impl LinkedRandom {
    /// Replaces the random functions of `pid`'s program, if it defines them; how many.
    pub fn patch(&mut self, pid: u32) -> std::io::Result<usize> {
        if !cfg!(target_arch = "x86_64") {
            return Ok(0);
        }
        let exe = format!("/proc/{pid}/exe");
        let meta = std::fs::metadata(&exe)?;
        let functions = self.programs.entry((meta.dev(), meta.ino())).or_insert_with(|| {
            let names = FUNCTIONS.map(|(name, _)| name);
            crate::capture::tls::defined_functions(std::path::Path::new(&exe), &names)
                .into_iter()
                .filter_map(|(name, offset, size)| {
                    let (_, arguments) = FUNCTIONS.iter().find(|(n, _)| *n == name)?;
                    let code = [*arguments, ASK].concat();
                    (size >= code.len() as u64).then_some((offset, code))
                })
                .collect()
        });
        if functions.is_empty() {
            return Ok(0);
        }
        let path = std::fs::read_link(&exe)?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let mem = File::options().read(true).write(true).open(format!("/proc/{pid}/mem"))?;
        let mut patched = 0;
        for (offset, code) in functions.iter() {
            if let Some(address) = address_of(&maps, &path, meta.ino(), *offset) {
                mem.write_all_at(code, address)?;
                patched += 1;
            }
        }
        Ok(patched)
    }
}

/// The address at which file offset `offset` of the program (`path`, inode `ino`) is mapped
/// executable in a process (its `maps`).
fn address_of(maps: &str, path: &std::path::Path, ino: u64, offset: u64) -> Option<u64> {
    maps.lines().find_map(|line| {
        // address perms offset dev inode path
        let mut fields = line.split_whitespace();
        let (range, perms, at) = (fields.next()?, fields.next()?, fields.next()?);
        let (_, inode, file) = (fields.next()?, fields.next()?, fields.next()?);
        if !perms.contains('x') || inode.parse::<u64>().ok()? != ino || std::path::Path::new(file) != path {
            return None;
        }
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (u64::from_str_radix(lo, 16).ok()?, u64::from_str_radix(hi, 16).ok()?);
        let at = u64::from_str_radix(at, 16).ok()?;
        let within = offset.checked_sub(at)?;
        (within < hi - lo).then_some(lo + within)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_is_found_in_the_executable_mapping_that_holds_it() {
        let maps = "00400000-00401000 r--p 00000000 08:01 77 /usr/bin/node\n\
                    00401000-03000000 r-xp 00001000 08:01 77 /usr/bin/node\n\
                    7f0000000000-7f0000001000 r-xp 00001000 08:01 78 /usr/lib/libc.so.6\n";
        let node = std::path::Path::new("/usr/bin/node");
        assert_eq!(address_of(maps, node, 77, 0x1c16ec0), Some(0x401000 + 0x1c16ec0 - 0x1000));
        assert_eq!(address_of(maps, node, 77, 0x500), None, "not in an executable mapping");
        assert_eq!(address_of(maps, node, 78, 0x1c16ec0), None, "another file");
        assert_eq!(address_of(maps, node, 77, 0x3000000), None, "past the mapping");
    }

    #[test]
    fn the_replacements_ask_with_the_flags_the_replayer_knows() {
        let flags = LINKED_RANDOM.to_le_bytes();
        assert_eq!(ASK[0], 0xba, "mov edx, LINKED_RANDOM");
        assert_eq!(ASK[1..5], flags);
        assert_eq!(ASK[5..10], [0xb8, 0x3e, 0x01, 0x00, 0x00], "getrandom is 318");
        assert_eq!(ASK.last(), Some(&0xc3));
    }
}
