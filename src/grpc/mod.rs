//! gRPC: the only module that imports generated protobuf code. Handlers
//! convert the request (`convert`), call the registry core, and convert back.

pub mod codec;
mod convert;
mod service;

pub use convert::content_of;
pub use service::RegistryService;

/// The generated `promptreg.v1` package.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("promptreg.v1");
}

/// The encoded descriptor set of `proto/`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/promptreg_descriptor.bin"));
