//! `muxado`: the command-line tool of muxado-uring.

use std::process::ExitCode;

const USAGE: &str = "\
muxado: the muxado stream multiplexer on io_uring

USAGE:
    muxado <COMMAND> [OPTIONS]

COMMANDS:
    bench    run the loopback multiplexing benchmark (not built yet)
    serve    run a muxado echo/sink server (not built yet)
    help     print this message

Run `cargo test` to check the library; see README.md.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(cmd @ ("bench" | "serve")) => {
            eprintln!("muxado: `{cmd}` is not built yet; this release has the codec and the protocol core");
            ExitCode::from(2)
        }
        Some(other) => {
            eprintln!("muxado: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
