//! `retrace`: parse arguments, dispatch, print errors on one line.

mod cli;

use clap::Parser as _;

fn main() {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("retrace: error: {e:#}");
            std::process::exit(1);
        }
    }
}
