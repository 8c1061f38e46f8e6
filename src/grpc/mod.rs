//! gRPC: the only module that imports generated protobuf code. Handlers
//! convert the request (`convert`), call the registry core, and convert back.

pub mod access;
pub mod codec;
pub(crate) mod convert;
mod moves;
mod provenance;
mod release;
mod resolve;
mod rollout;
pub use release::check_result_from_pb;
mod service;
mod status;
pub mod timestamp;
mod watch_many;
pub mod wire;

pub use convert::content_of;
pub use service::RegistryService;

/// The generated `promptreg.v1` package: messages and the client.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("promptreg.v1");
}

/// The generated server of `promptreg.v1.Registry`, over the messages of
/// [`pb`] (Watch answers with [`wire::WatchFrame`], WatchMany with
/// [`wire::WatchManyFrame`]).
pub mod pb_server {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/server/promptreg.v1.rs"));
}

/// The encoded descriptor set of `proto/`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/promptreg_descriptor.bin"));
