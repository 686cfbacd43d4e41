//! Where the TLS probes go: every ELF file (shared library or program) that defines a TLS
//! library's read and write functions, found by its symbols rather than its name, so that
//! OpenSSL, BoringSSL and GnuTLS are covered whether loaded as the system's library, a copy
//! of their own, or linked into the program (node, a static binary). Uprobes are set on the
//! file (its inode): every process that maps it, now or later, runs them, and the programs keep
//! the traced ones.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSymbol as _};

/// (symbol, entry program) of each probed function; all share the return program `tls_exit`.
pub const TLS_FUNCTIONS: [(&str, &str); 6] = [
    ("SSL_read", "ssl_read_enter"),
    ("SSL_write", "ssl_write_enter"),
    ("SSL_read_ex", "ssl_read_ex_enter"),
    ("SSL_write_ex", "ssl_write_ex_enter"),
    ("gnutls_record_recv", "gnutls_recv_enter"),
    ("gnutls_record_send", "gnutls_send_enter"),
];

pub const TLS_EXIT: &str = "tls_exit";

/// The TLS functions an ELF file defines (not those it imports).
pub fn defined_functions(path: &Path) -> Vec<&'static str> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    // SAFETY: a read-only private mapping; a file changed under it gives wrong symbols, not
    // memory unsafety in this process beyond what reading it would.
    let Ok(map) = (unsafe { memmap(&file) }) else { return Vec::new() };
    let Ok(elf) = object::File::parse(&*map) else { return Vec::new() };
    let mut found = Vec::new();
    for symbol in elf.dynamic_symbols().chain(elf.symbols()) {
        if !symbol.is_definition() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        // Versioned names (`SSL_read@@OPENSSL_3.0.0`) in some tables.
        let name = name.split('@').next().unwrap_or(name);
        if let Some((function, _)) = TLS_FUNCTIONS.iter().find(|(f, _)| *f == name) {
            if !found.contains(function) {
                found.push(*function);
            }
        }
    }
    found
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

/// A file or process the TLS probes should look at: filled by the streams thread (programs
/// exec'd, shared objects opened by traced processes), drained by whoever owns the probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// An ELF file by path (absolute).
    File(PathBuf),
    /// A process's program and mapped libraries (a relative exec path).
    Process(u32),
}

/// The queue between the streams thread and the probes' owner.
#[derive(Clone, Default)]
pub struct Watch(std::sync::Arc<std::sync::Mutex<Vec<Candidate>>>);

impl Watch {
    pub fn push(&self, candidate: Candidate) {
        self.0.lock().expect("tls watch").push(candidate);
    }

    /// Attaches the probes to what was queued since the last call.
    pub fn drain_into(&self, probes: &mut super::Probes) {
        let queued = std::mem::take(&mut *self.0.lock().expect("tls watch"));
        for candidate in queued {
            match candidate {
                Candidate::File(path) => {
                    probes.attach_tls(&path);
                }
                Candidate::Process(pid) => {
                    for path in mapped_files(pid) {
                        probes.attach_tls(&path);
                    }
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
