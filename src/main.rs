//! The `promptreg` binary: the server and its command-line clients.

use clap::Parser;
use promptreg::cli::{run_client, run_serve, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => run_serve(args).await,
            command => run_client(command).await,
        }
    });
    std::process::exit(code);
}
