//! `rping`: RDMA CM connection and RDMA ping-pong test, wire-compatible with rdma-core's
//! `rping` (same flags, messages, data and output; see `tokio_rdma_examples::rping`).
//!
//! Server: `rping -s [-vVdqP] [-S size] [-C count] [-a addr] [-p port]`;
//! client: `rping -c [-vVdq] [-S size] [-C count] [-I addr] -a addr [-p port]`.

use std::process::ExitCode;

use clap::Parser;
use tokio_rdma_examples::rping::args::{Args, Role};
use tokio_rdma_examples::rping::{client, server};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cfg = match Args::parse().config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            // rping exits with EINVAL for a bad command line.
            return ExitCode::from(22);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rping: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cfg.role {
            Role::Server { .. } => server::run(&cfg).await,
            Role::Client => client::run(&cfg).await.map(drop),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let side = match cfg.role {
                Role::Server { .. } => "server",
                Role::Client => "client",
            };
            eprintln!("rping {side} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
