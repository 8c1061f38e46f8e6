//! The `promptreg` binary: the server and its command-line clients.

use clap::Parser;
use promptreg::cli::{run_client, run_serve, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // With the LIFO slot, a task woken by the running task runs next. A
    // watch stream that queues a message wakes its connection's HTTP/2
    // task, which then writes that one message: a revision fanned out to
    // the 100 streams of a connection became 100 system calls. Without it,
    // the connection task runs after the streams and writes them together.
    // The option needs `--cfg tokio_unstable` (.cargo/config.toml); a build
    // without it works the same, with a slower fan-out.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
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
