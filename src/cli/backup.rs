//! `promptreg backup`, `restore` and `check`: the operator's tools for
//! keeping a store safe.

use super::client::{connect, Failure};
use super::json::emit;
use super::text::counted;
use super::{exit, BackupArgs, CheckArgs, RestoreArgs};
use crate::grpc::pb;
use crate::store::backup;
use serde::Serialize;

/// `backup`'s answer.
#[derive(Serialize)]
struct Written<'a> {
    file: String,
    revision: u64,
    bytes: usize,
    entries: u64,
    encryption_key_id: Option<&'a str>,
}

/// `restore`'s answer.
#[derive(Serialize)]
struct Restored<'a> {
    data_dir: String,
    revision: u64,
    entries: u64,
    encryption_key_id: Option<&'a str>,
}

/// `check`'s answer.
#[derive(Serialize)]
struct Checked<'a> {
    data_dir: String,
    sound: bool,
    problems: &'a [String],
}

pub(super) async fn backup(args: BackupArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let mut stream = client.backup(pb::BackupRequest {}).await?.into_inner();
    let mut bytes = Vec::new();
    let mut revision = 0;
    while let Some(chunk) = stream.message().await? {
        revision = chunk.revision;
        bytes.extend_from_slice(&chunk.data);
    }
    // Check what arrived before it replaces anything.
    let (header, _) = backup::decode(&bytes).map_err(|e| Failure {
        code: exit::REFUSED,
        message: format!("the backup received is not valid: {e}"),
    })?;
    let partial = args.file.with_extension("partial");
    let write = |path: &std::path::Path| write_owner_only(path, &bytes);
    write(&partial)
        .and_then(|()| std::fs::rename(&partial, &args.file))
        .map_err(|e| Failure::usage(format!("cannot write {}: {e}", args.file.display())))?;
    emit(
        &args.client,
        || {
            format!(
                "wrote {} ({}, {}), consistent at revision {revision}",
                args.file.display(),
                counted(bytes.len() as u64, "byte"),
                counted(header.entries, "record")
            )
        },
        Written {
            file: args.file.display().to_string(),
            revision,
            bytes: bytes.len(),
            entries: header.entries,
            encryption_key_id: header.encryption_key_id.as_deref(),
        },
    );
    Ok(())
}

/// Writes a file only its owner can read (mode 0600): a backup holds every
/// version's content.
fn write_owner_only(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // A file left by an earlier attempt keeps its mode when opened.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

pub(super) fn restore(args: RestoreArgs) -> Result<(), Failure> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", args.file.display())))?;
    let (header, entries) = backup::decode(&bytes).map_err(|e| Failure {
        code: exit::REFUSED,
        message: format!("{} is not a usable backup: {e}", args.file.display()),
    })?;
    let target = match args.store.to_backend(usize::MIN) {
        Ok(crate::registry::StoreBackend::Etcd(etcd)) => {
            if args.data_dir.is_some() {
                return Err(Failure::usage(
                    "give --data-dir or --store etcd, not both".to_string(),
                ));
            }
            backup::restore_into_etcd(&etcd, entries).map_err(|message| Failure {
                code: exit::REFUSED,
                message,
            })?;
            format!(
                "etcd prefix {} at {}",
                etcd.prefix,
                etcd.endpoints.join(",")
            )
        }
        Ok(crate::registry::StoreBackend::Sled) => {
            let Some(dir) = &args.data_dir else {
                return Err(Failure::usage(
                    "restore needs --data-dir DIR (or --store etcd --etcd-endpoints …)".to_string(),
                ));
            };
            backup::restore_into(dir, &header, entries).map_err(|message| Failure {
                code: exit::REFUSED,
                message,
            })?;
            dir.display().to_string()
        }
        Err(message) => return Err(Failure::usage(message)),
    };
    let dir = &target;
    emit(
        &args.client,
        || {
            let mut text = format!(
                "restored revision {} into {dir}.\nSigning keys are not in backups: copy your backup of the old DATA_DIR/keys/ into the server's DATA_DIR/keys/, or start with --signing-key FILE.",
                header.revision
            );
            if let Some(id) = &header.encryption_key_id {
                text.push_str(&format!("\nThe store is encrypted with data key {id}: start with --encryption-key-file holding it."));
            }
            text
        },
        Restored {
            data_dir: dir.to_string(),
            revision: header.revision,
            entries: header.entries,
            encryption_key_id: header.encryption_key_id.as_deref(),
        },
    );
    Ok(())
}

pub(super) fn check(args: CheckArgs) -> Result<(), Failure> {
    let problems =
        crate::registry::check_offline(&args.data_dir, args.encryption_key_file.as_deref())
            .map_err(|e| Failure {
                code: exit::REFUSED,
                message: e.to_string(),
            })?;
    emit(
        &args.client,
        || {
            if problems.is_empty() {
                format!("{}: sound", args.data_dir.display())
            } else {
                let mut text = format!(
                    "{}: {}",
                    args.data_dir.display(),
                    counted(problems.len() as u64, "problem")
                );
                for p in &problems {
                    text.push_str(&format!("\n- {p}"));
                }
                text
            }
        },
        Checked {
            data_dir: args.data_dir.display().to_string(),
            sound: problems.is_empty(),
            problems: &problems,
        },
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: exit::REFUSED,
            message: format!(
                "the store has {}",
                counted(problems.len() as u64, "problem")
            ),
        })
    }
}
