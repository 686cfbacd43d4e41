//! Where the TLS probes go: every ELF file (shared library or program) that defines a TLS
//! library's read and write functions, found by its symbols rather than its name, so that
//! OpenSSL, BoringSSL and GnuTLS are covered whether loaded as the system's library, a copy
//! of their own, or linked into the program (node, a static binary), and so is Go's
//! crypto/tls in Go programs (their symbol table, or Go's function table when stripped). Uprobes
//! are set on the
//! file (its inode): every process that maps it, now or later, runs them, and the programs keep
//! the traced ones.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSymbol as _};

/// (symbol, entry program) of each probed C function; all share the return program `tls_exit`.
pub const TLS_FUNCTIONS: [(&str, &str); 6] = [
    ("SSL_read", "ssl_read_enter"),
    ("SSL_write", "ssl_write_enter"),
    ("SSL_read_ex", "ssl_read_ex_enter"),
    ("SSL_write_ex", "ssl_write_ex_enter"),
    ("gnutls_record_recv", "gnutls_recv_enter"),
    ("gnutls_record_send", "gnutls_send_enter"),
];

pub const TLS_EXIT: &str = "tls_exit";

/// OpenSSL's public random functions (nonces, salts, IVs, and in node the seeds of
/// `Math.random`), and the entry program that reads each one's arguments; they share the
/// return program `rand_bytes_exit`. Not RAND_priv_bytes: what it returns becomes private
/// keys, which a recording has no need to hold. Probed where they are defined, like the TLS
/// functions: the system's libcrypto and a copy linked into a program (node).
pub const RAND_FUNCTIONS: [(&str, &str); 2] =
    [("RAND_bytes", "rand_bytes_enter"), ("RAND_bytes_ex", "rand_bytes_ex_enter")];

pub const RAND_EXIT: &str = "rand_bytes_exit";

/// (symbol, entry program) of Go's crypto/tls functions; their RET instructions share
/// `go_tls_return` (no uretprobes: they rewrite a return address on a stack Go may move).
pub const GO_FUNCTIONS: [(&str, &str); 2] =
    [("crypto/tls.(*Conn).Read", "go_tls_read_enter"), ("crypto/tls.(*Conn).Write", "go_tls_write_enter")];

pub const GO_RETURN: &str = "go_tls_return";

/// Every program set by `probe_points`, to load once.
pub fn programs() -> impl Iterator<Item = &'static str> {
    TLS_FUNCTIONS
        .iter()
        .chain(&GO_FUNCTIONS)
        .chain(&RAND_FUNCTIONS)
        .map(|(_, program)| *program)
        .chain([TLS_EXIT, GO_RETURN, RAND_EXIT])
}

/// One uprobe to set: `program` at file offset `offset`, for `function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsProbe {
    pub function: &'static str,
    pub program: &'static str,
    pub offset: u64,
}

/// The probes an ELF file needs: entry and return of each TLS or random function it defines
/// (not those it imports).
pub fn probe_points(path: &Path) -> Vec<TlsProbe> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    // SAFETY: a read-only private mapping; a file changed under it gives wrong symbols, not
    // memory unsafety in this process beyond what reading it would.
    let Ok(map) = (unsafe { memmap(&file) }) else { return Vec::new() };
    let Ok(elf) = object::File::parse(&*map) else { return Vec::new() };
    let mut probes = Vec::new();
    let mut go_functions: Vec<GoFunction> = Vec::new();
    // A program that exports all of OpenSSL's functions (node) has them in its dynamic
    // symbols: its full symbol table (node's holds 107,000) is only read where they are not.
    let openssl: Vec<&str> = TLS_FUNCTIONS[..4].iter().chain(&RAND_FUNCTIONS).map(|(f, _)| *f).collect();
    let mut exported: Vec<&[u8]> = elf
        .dynamic_symbols()
        .filter(|symbol| symbol.is_definition())
        .filter_map(|symbol| symbol.name_bytes().ok())
        .map(|name| name.split(|&b| b == b'@').next().unwrap_or(name))
        .filter(|name| openssl.iter().any(|f| f.as_bytes() == *name))
        .collect();
    exported.sort();
    exported.dedup();
    let exported = exported.len() == openssl.len();
    let symbols = elf.dynamic_symbols().chain(elf.symbols().take(if exported { 0 } else { usize::MAX }));
    for symbol in symbols {
        // Most symbols are rejected by their first byte, before any other look at them.
        let Ok(name) = symbol.name_bytes() else { continue };
        if !matches!(name.first(), Some(b'S' | b'R' | b'g' | b'c')) {
            continue;
        }
        if !symbol.is_definition() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        // Versioned names (`SSL_read@@OPENSSL_3.0.0`) in some tables.
        let name = name.split(|&b| b == b'@').next().unwrap_or(name);
        let mut entry_and_exit =
            TLS_FUNCTIONS.iter().map(|f| (f, TLS_EXIT)).chain(RAND_FUNCTIONS.iter().map(|f| (f, RAND_EXIT)));
        if let Some(((function, entry), exit)) = entry_and_exit.find(|((f, _), _)| f.as_bytes() == name) {
            if !probes.iter().any(|p: &TlsProbe| p.function == *function) {
                // The file offset, worked out here once: by name, the loader would read the
                // file's symbols again for each probe (~3 ms each in node).
                let Some(offset) = file_offset(&elf, symbol.address()) else { continue };
                probes.push(TlsProbe { function, program: entry, offset });
                probes.push(TlsProbe { function, program: exit, offset });
            }
        } else if let Some(function) = GO_FUNCTIONS.iter().find(|(f, _)| f.as_bytes() == name) {
            go_functions.push((function, symbol.address(), symbol.size()));
        }
    }
    // A stripped Go program has no symbol table; its function table (pclntab) names them.
    if go_functions.is_empty() {
        go_functions = go_pclntab_functions(&elf, &map);
    }
    for ((function, entry), address, size) in go_functions {
        if probes.iter().any(|p: &TlsProbe| p.function == *function) {
            continue;
        }
        match go_function(&elf, &map, address, size) {
            Ok((start, returns)) => {
                probes.push(TlsProbe { function, program: entry, offset: start });
                probes.extend(returns.into_iter().map(|at| TlsProbe { function, program: GO_RETURN, offset: at }));
            }
            Err(why) => log::info!("no TLS plaintext from {function} in {}: {why}", path.display()),
        }
    }
    probes
}

/// The file offsets and sizes of the functions named in `names` that an ELF file defines (not
/// those it imports), by its dynamic symbols, then its symbol table.
pub fn defined_functions(path: &Path, names: &[&'static str]) -> Vec<(&'static str, u64, u64)> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    // SAFETY: as in `probe_points`.
    let Ok(map) = (unsafe { memmap(&file) }) else { return Vec::new() };
    let Ok(elf) = object::File::parse(&*map) else { return Vec::new() };
    let mut found: Vec<(&'static str, u64, u64)> = Vec::new();
    for symbol in elf.dynamic_symbols().chain(elf.symbols()) {
        if !symbol.is_definition() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = symbol.name_bytes() else { continue };
        let name = name.split(|&b| b == b'@').next().unwrap_or(name);
        let Some(&wanted) = names.iter().find(|n| n.as_bytes() == name) else { continue };
        if !found.iter().any(|(f, _, _)| *f == wanted) {
            if let Some(offset) = file_offset(&elf, symbol.address()) {
                found.push((wanted, offset, symbol.size()));
            }
        }
    }
    found
}

/// The file offsets of a Go function's first instruction and of its RET instructions, found by
/// disassembling it. Only the register ABI (Go 1.17+ on amd64) is probed: its stack-bound
/// check reads the goroutine from R14, which the probes key calls by.
fn go_function(elf: &object::File, data: &[u8], address: u64, size: u64) -> Result<(u64, Vec<u64>), &'static str> {
    use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, Register};
    if elf.architecture() != object::Architecture::X86_64 {
        return Err("Go's crypto/tls is probed on x86-64 only");
    }
    let start = file_offset(elf, address).ok_or("its address is in no section of the file")?;
    let code = usize::try_from(start)
        .ok()
        .and_then(|at| data.get(at..at.checked_add(usize::try_from(size).ok()?)?))
        .filter(|code| !code.is_empty())
        .ok_or("no code in the file for its size")?;
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let (mut register_abi, mut returns) = (false, Vec::new());
    for index in 0.. {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            return Err("undecodable code");
        }
        // `CMPQ 0x10(R14), SP` (or through R12 for a large frame) opens the function.
        if index < 3 && instruction.memory_base() == Register::R14 {
            register_abi = true;
        }
        if instruction.mnemonic() == Mnemonic::Ret {
            returns.push(instruction.ip() - address + start);
        }
    }
    if !register_abi {
        return Err("not Go's register ABI (built by Go before 1.17?)");
    }
    if returns.is_empty() {
        return Err("no RET instruction found");
    }
    Ok((start, returns))
}

/// A Go TLS function found in a program: its (symbol, entry program), address and size.
type GoFunction = (&'static (&'static str, &'static str), u64, u64);

/// Where an address of the program's image lies in its file.
fn file_offset(elf: &object::File, address: u64) -> Option<u64> {
    use object::ObjectSection as _;
    elf.sections().find_map(|section| {
        let (offset, len) = section.file_range()?;
        let within = address.checked_sub(section.address())?;
        (within < len).then_some(offset + within)
    })
}

/// Go's crypto/tls functions named by the program's function table (`.gopclntab`, Go 1.18+
/// layout), with their addresses and sizes: how a stripped Go program (`-ldflags=-s`) is
/// still probed.
fn go_pclntab_functions(elf: &object::File, data: &[u8]) -> Vec<GoFunction> {
    use object::ObjectSection as _;
    let Some(table) = elf.section_by_name(".gopclntab").and_then(|s| s.file_range()) else { return Vec::new() };
    let Some(table) = usize::try_from(table.0)
        .ok()
        .zip(usize::try_from(table.1).ok())
        .and_then(|(at, len)| data.get(at..at.checked_add(len)?))
    else {
        return Vec::new();
    };
    go_pclntab_lookup(table, elf.section_by_name(".text").map(|s| s.address()).unwrap_or(0)).unwrap_or_default()
}

fn go_pclntab_lookup(table: &[u8], text_section: u64) -> Option<Vec<GoFunction>> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(table.get(at..at + 4)?.try_into().ok()?));
    // Go 1.18–1.19 and 1.20+ headers; 8-byte pointers.
    if !matches!(u32_at(0)?, 0xffff_fff0 | 0xffff_fff1) || *table.get(7)? != 8 {
        return None;
    }
    let word = |n: usize| Some(u64::from_le_bytes(table.get(8 + 8 * n..16 + 8 * n)?.try_into().ok()?) as usize);
    let (functions, text_start, names, pcln) = (word(0)?, word(2)? as u64, word(3)?, word(7)?);
    let text_start = if text_start == 0 { text_section } else { text_start };
    let mut found = Vec::new();
    for n in 0..functions {
        let entry = pcln + 8 * n;
        let (start, info) = (u32_at(entry)?, u32_at(entry + 4)? as usize);
        let end = u32_at(entry + 8)?;
        let name_at = names + u32_at(pcln + info + 4)? as usize;
        let name = table.get(name_at..)?;
        let name = &name[..name.iter().position(|b| *b == 0)?];
        if let Some(function) = GO_FUNCTIONS.iter().find(|(f, _)| f.as_bytes() == name) {
            found.push((function, text_start + start as u64, end.saturating_sub(start) as u64));
        }
    }
    Some(found)
}

/// A file mapped read-only, unmapped on drop.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: a live mapping of `len` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: our own mapping.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

unsafe fn memmap(file: &std::fs::File) -> std::io::Result<Mapped> {
    use std::os::fd::AsRawFd as _;
    let len = file.metadata()?.len() as usize;
    if len == 0 {
        return Ok(Mapped { ptr: std::ptr::null_mut(), len: 0 });
    }
    let ptr = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0);
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Mapped { ptr, len })
}

/// Files already looked at (device, inode), probed or not.
#[derive(Default)]
pub struct Seen(HashSet<(u64, u64)>);

impl Seen {
    /// Whether `path` is new (and now seen).
    pub fn first_look(&mut self, path: &Path) -> bool {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => self.0.insert((meta.dev(), meta.ino())),
            _ => false,
        }
    }
}

/// The program and the shared objects a running process maps (dlopen'ed ones included).
pub fn mapped_files(pid: u32) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
        files.push(exe);
    }
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return files };
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else { continue };
        if path.starts_with('/') && !files.iter().any(|f| f.as_os_str() == path) {
            files.push(PathBuf::from(path));
        }
    }
    files
}

/// A file or process the uprobes should look at: filled by the streams thread (programs
/// exec'd, shared objects opened by traced processes) and the consumer (processes held at
/// exec), drained by whoever owns the probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// An ELF file by path (absolute).
    File(PathBuf),
    /// A process's program and mapped libraries (a relative exec path).
    Process(u32),
    /// A process the kernel stopped at exec until its program (`LOOKED_AT` key) is looked at.
    Held { tgid: u32, program: u64 },
}

/// The queue between the streams thread and the probes' owner.
#[derive(Clone, Default)]
pub struct Watch {
    queued: std::sync::Arc<std::sync::Mutex<Vec<Candidate>>>,
    /// Wakes the owner at once for a held process.
    held: std::sync::Arc<tokio::sync::Notify>,
}

impl Watch {
    pub fn push(&self, candidate: Candidate) {
        let held = matches!(candidate, Candidate::Held { .. });
        self.queued.lock().expect("tls watch").push(candidate);
        if held {
            self.held.notify_one();
        }
    }

    /// Returns once a held process was queued.
    pub async fn held(&self) {
        self.held.notified().await
    }

    /// Attaches the probes to what was queued since the last call, and continues the
    /// processes held for it.
    pub fn drain_into(&self, probes: &mut super::Probes) {
        let mut queued = std::mem::take(&mut *self.queued.lock().expect("tls watch"));
        // Held processes first: they wait, the others' probes are late either way.
        queued.sort_by_key(|candidate| !matches!(candidate, Candidate::Held { .. }));
        for candidate in queued {
            match candidate {
                Candidate::File(path) => {
                    probes.attach_uprobes(&path);
                }
                Candidate::Process(pid) => {
                    for path in mapped_files(pid) {
                        probes.attach_uprobes(&path);
                    }
                }
                Candidate::Held { tgid, program } => {
                    // Held again for its vDSO only: its program has its probes already.
                    if !probes.looked_at(program) {
                        for path in mapped_files(tgid) {
                            probes.attach_uprobes(&path);
                        }
                    }
                    probes.release_held(tgid, program);
                }
            }
        }
    }
}

/// Whether an opened path may be a shared object (`libx.so`, `libx.so.3`, `x.cpython-311.so`).
pub fn is_shared_object(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".so") || name.contains(".so.")
}
