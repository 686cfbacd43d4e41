//! `retrace`: parse arguments, dispatch, print errors on one line.

mod cli;

use clap::Parser as _;

fn main() {
    keep_freed_memory();
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            // clap's message is several lines; the first says what is wrong.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("retrace: error: {first} (see `retrace --help`)");
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    match cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("retrace: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The recorder allocates and frees payload buffers at a high rate: tell glibc to keep freed
/// memory instead of returning it to the kernel and faulting it back in (a measured 10% of the
/// agent's CPU under load).
fn keep_freed_memory() {
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
