//! The `promptreg` command line: `serve`, and the client subcommands that
//! SREs run from runbooks. Flags are a stable contract; every client
//! subcommand takes `--output json`.
//!
//! Exit codes: 0 success; 1 the server refused the request (not found,
//! failed precondition, invalid argument, unavailable: nothing changed); 2 a
//! usage error; 3 the server could not be reached; 4 a label move happened
//! but `--wait` did not see the fleet converge.

mod access;
mod args;
mod backup;
mod catalog;
mod client;
mod completion;
mod config;
mod filters;
mod json;
mod lookup;
mod moves;
mod policy;
mod provenance;
mod release;
mod release_args;
mod rollout;
mod rollout_args;
mod serve;
mod serve_store;
mod text;
mod watch;

pub use args::*;
pub use client::run_client;
pub use completion::{CompletionArgs, CompletionShell};
pub use config::{ConfigAction, ConfigArgs};
pub use release_args::*;
pub use rollout_args::*;
pub use serve::{run_serve, ServeArgs};
pub use watch::Backoff;

/// The process exit codes of the CLI.
pub mod exit {
    pub const REFUSED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const UNREACHABLE: i32 = 3;
    /// The label moved, but `--wait` did not see every connected agent
    /// apply it (timed out, or no agent is connected): do not repeat the move.
    pub const NOT_CONVERGED: i32 = 4;
    /// The label is protected: the promote made a promotion request and
    /// the label did not move (yet); `promptreg approve ID` moves it.
    pub const PENDING_APPROVAL: i32 = 5;
}

/// The user running the CLI, the default `--actor` and `--author`: `$USER`
/// (or `$LOGNAME`, `$USERNAME`), else the name of the process's effective
/// user id in `/etc/passwd` (root shells, containers, CI and systemd often
/// leave `$USER` unset), else `uid N`.
pub fn local_user() -> String {
    let from_env = ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|u| !u.trim().is_empty());
    from_env
        .or_else(os_user_name)
        .unwrap_or_else(|| "unknown".to_string())
}

/// The effective user of this process by name. `/proc/self` belongs to the
/// process's effective uid, so no libc call is needed to learn it.
fn os_user_name() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Some(user_of_uid(&passwd, uid).unwrap_or_else(|| format!("uid {uid}")))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The name of `uid` in the text of an `/etc/passwd` file
/// (`name:password:uid:gid:...`).
fn user_of_uid(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_uid_is_found_by_name_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\noncall:x:1000:1000::/home/oncall:/bin/sh\n";
        assert_eq!(super::user_of_uid(passwd, 1000).as_deref(), Some("oncall"));
        assert_eq!(super::user_of_uid(passwd, 0).as_deref(), Some("root"));
        assert_eq!(super::user_of_uid(passwd, 7), None);
    }
}
