//! `retrace`: parse arguments, dispatch, print errors on one line.

mod cli;

use clap::Parser as _;

fn main() {
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
