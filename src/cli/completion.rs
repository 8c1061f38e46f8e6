//! `promptreg completion SHELL`: its flags and the script it prints (a
//! local command: the server is not contacted).

use super::client::Failure;
use super::Cli;
use clap::{Args, ValueEnum};

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// The shells `promptreg completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl CompletionArgs {
    /// The completion script of the whole command line.
    pub fn script(&self) -> Vec<u8> {
        let shell = match self.shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        };
        let mut command = <Cli as clap::CommandFactory>::command();
        // Into memory first: `generate` panics when its writer fails, and
        // stdout fails as soon as the reader of a pipe goes away.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "promptreg", &mut script);
        script
    }
}

/// `completion SHELL`: the script on standard output (a closed pipe is not
/// an error).
pub(super) fn completion(args: &CompletionArgs) -> Result<(), Failure> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(&args.script()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::usage(format!("cannot write the script: {e}")))
        }
        _ => Ok(()),
    }
}
