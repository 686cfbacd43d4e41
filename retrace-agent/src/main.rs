//! `retrace`: parse arguments, dispatch, print errors on one line.

mod cli;

use clap::Parser as _;

fn main() {
    keep_freed_memory();
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            eprintln!("retrace: error: {}", one_line(&e.to_string()));
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    let result = cli::run(args);
    cli::cleanup();
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("retrace: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// clap's message in one line: what is wrong (with the arguments it lists on the lines after)
/// and which command's help to read.
fn one_line(text: &str) -> String {
    let mut what = Vec::new();
    let mut command = "retrace".to_owned();
    for line in text.lines().map(str::trim) {
        if let Some(usage) = line.strip_prefix("Usage: ") {
            let words: Vec<&str> = usage.split_whitespace().take_while(|w| !w.starts_with(['[', '<', '-'])).collect();
            if !words.is_empty() {
                command = words.join(" ");
            }
        } else if !line.is_empty() && !line.starts_with("For more information") && !line.starts_with("tip:") {
            what.push(line.trim_start_matches("error: "));
        }
    }
    let what = if what.is_empty() { "invalid arguments".to_owned() } else { what.join(" ") };
    format!("{what} (see `{command} --help`)")
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

#[cfg(test)]
mod tests {
    #[test]
    fn clap_errors_become_one_line_naming_the_subcommand() {
        use clap::Parser as _;
        let err = match super::cli::Cli::try_parse_from(["retrace", "cat", "rec", "3"]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("cat without a direction parsed"),
        };
        assert_eq!(
            super::one_line(&err),
            "the following required arguments were not provided: --in (see `retrace cat --help`)"
        );
    }
}
