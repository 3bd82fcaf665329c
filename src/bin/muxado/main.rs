//! `muxado`: the command-line tool of muxado-uring.

mod bench;
mod serve;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use bench::{Placement, Scenario, System};
use serve::Mode;

/// The muxado stream multiplexer on io_uring: a server and a benchmark.
#[derive(Parser, Debug)]
#[command(name = "muxado", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the loopback benchmark: every scenario against every system,
    /// side by side, with ratios to plain TCP on the same engine.
    Bench {
        /// Scenarios to run (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        scenario: Vec<Scenario>,
        /// Systems to compare (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        systems: Vec<System>,
        /// Client/server placement (default: split).
        #[arg(long, value_enum, value_delimiter = ',')]
        placement: Vec<Placement>,
        /// Seconds each case runs.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        /// Write size of the bulk scenario, in bytes.
        #[arg(long, default_value_t = 64 * 1024)]
        size: usize,
        /// One JSON object per result line instead of the table.
        #[arg(long)]
        json: bool,
        /// Run only the client half against a muxado server at ADDR
        /// (ours, ngrok's or Go's, with `muxado serve` semantics).
        #[arg(long, value_name = "ADDR")]
        connect: Option<SocketAddr>,
    },
    /// Serve muxado sessions: echo or sink every stream.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// What to do with each stream.
        #[arg(long, value_enum, default_value_t = Mode::Echo)]
        mode: Mode,
        /// Engine cores (each accepts on the same address with SO_REUSEPORT).
        #[arg(long, default_value_t = 1)]
        cores: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench {
            scenario,
            systems,
            placement,
            duration,
            size,
            json,
            connect,
        } => bench_options(scenario, systems, placement, duration, size, json, connect)
            .and_then(|opts| bench::run(&opts)),
        Command::Serve {
            listen,
            mode,
            cores,
        } => serve(listen, mode, cores),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muxado: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench_options(
    scenarios: Vec<Scenario>,
    systems: Vec<System>,
    placements: Vec<Placement>,
    duration: f64,
    size: usize,
    json: bool,
    connect: Option<SocketAddr>,
) -> Result<bench::Options, String> {
    if !(duration > 0.0 && duration <= 3600.0) {
        usage_error("--duration must be in (0, 3600] seconds");
    }
    if size == 0 || size > 64 << 20 {
        usage_error("--size must be in 1..=67108864 bytes");
    }
    Ok(bench::Options {
        scenarios: or_all(scenarios, &[Scenario::Bulk, Scenario::Rpc]),
        systems: or_all(systems, &[System::TcpUring, System::Muxado]),
        placements: or_all(placements, &[Placement::Split]),
        duration: Duration::from_secs_f64(duration),
        size,
        json,
        connect,
    })
}

/// `v`, or every choice when none was given.
fn or_all<T: Clone>(v: Vec<T>, all: &[T]) -> Vec<T> {
    if v.is_empty() {
        all.to_vec()
    } else {
        v
    }
}

/// Bad arguments: a clear message and exit status 2, like clap's own errors.
fn usage_error(msg: &str) -> ! {
    eprintln!("muxado: {msg}");
    std::process::exit(2)
}

fn serve(listen: SocketAddr, mode: Mode, cores: usize) -> Result<(), String> {
    if cores == 0 {
        usage_error("--cores must be at least 1");
    }
    let engine = muxado::Engine::builder()
        .cores(cores)
        .build()
        .map_err(|e| e.to_string())?;
    eprintln!("muxado serve: {mode:?} on {listen} with {cores} core(s)");
    engine
        .run(move |_core| async move {
            match muxado::engine::net::TcpListener::bind(listen) {
                Ok(listener) => {
                    serve::muxado_server(listener, mode, muxado::Config::default()).await;
                    Ok(())
                }
                Err(e) => Err(format!("listen on {listen}: {e}")),
            }
        })
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect()
}
