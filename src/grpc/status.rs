//! Every error of the core as a gRPC status, in one place: the exhaustive
//! mapping of [`RegistryError`], which bad input ([`ValidationError`]) also
//! goes through, so INVALID_ARGUMENT is decided here and nowhere else.

use crate::domain::ValidationError;
use crate::registry::watch::set::WatchSetError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use tonic::{Code, Status};

impl From<RegistryError> for Status {
    fn from(error: RegistryError) -> Status {
        let code = match &error {
            RegistryError::Invalid(_) => Code::InvalidArgument,
            RegistryError::NotFound(_) => Code::NotFound,
            RegistryError::FailedPrecondition(_) => Code::FailedPrecondition,
            RegistryError::NotDurable(_) | RegistryError::Unwritable(_) => Code::Unavailable,
            RegistryError::Exhausted(_) => Code::ResourceExhausted,
            RegistryError::Denied(denied) => {
                tracing::warn!(principal = %denied.principal, "denied: {denied}");
                metrics::counter!(crate::telemetry::metrics::DENIED, "what" => denied.what.clone())
                    .increment(1);
                Code::PermissionDenied
            }
            RegistryError::Key(_) => Code::Internal,
            RegistryError::Store(store) => match store {
                StoreError::Io(_) | StoreError::DurableHead { .. } | StoreError::Unavailable(_) => {
                    Code::Unavailable
                }
                StoreError::Corrupt(_)
                | StoreError::Engine(_)
                | StoreError::Damaged(_)
                | StoreError::Inconsistent(_) => Code::DataLoss,
                // Another writer moved the store first: nothing was written,
                // and the request may be retried.
                StoreError::Conflict(_) => Code::Aborted,
                StoreError::Schema { .. }
                | StoreError::Encryption(_)
                | StoreError::Precondition(_) => Code::Internal,
            },
        };
        if matches!(code, Code::Internal | Code::DataLoss | Code::Unavailable) {
            tracing::error!(%error, "request failed");
        }
        Status::new(code, bounded(error.to_string()))
    }
}

/// Bad input found by a converter or a handler: the same status as the
/// core's [`RegistryError::Invalid`].
impl From<ValidationError> for Status {
    fn from(error: ValidationError) -> Status {
        Status::from(RegistryError::Invalid(error))
    }
}

/// A refused open or cancel on a `WatchMany` stream: the core's errors as
/// above, the stream's own refusals by what they mean to the client.
impl From<WatchSetError> for Status {
    fn from(error: WatchSetError) -> Status {
        let message = bounded(error.to_string());
        match error {
            WatchSetError::Registry(error) => Status::from(error),
            WatchSetError::AlreadyOpen(_) => Status::new(Code::AlreadyExists, message),
            WatchSetError::NotOpen(_) => Status::new(Code::NotFound, message),
            WatchSetError::ShuttingDown => Status::new(Code::Unavailable, message),
        }
    }
}

/// Status messages quote the offending input; a quoted 70 KB field would
/// not fit in the HTTP/2 trailers the message travels in (the client would
/// see a protocol error instead of the answer), so messages are cut.
pub(super) fn bounded(mut message: String) -> String {
    const MAX: usize = 1024;
    if message.len() > MAX {
        let mut cut = MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (truncated)");
    }
    message
}
