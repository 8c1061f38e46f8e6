//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes
//! the encoded descriptor set for gRPC reflection.

use std::path::PathBuf;

const PROTO_FILES: &[&str] = &["proto/promptreg/v1/registry.proto"];
const ETCD_PROTO: &str = "proto/etcd/etcd.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTO_FILES.iter().map(|f| f.trim_start_matches("proto/")))?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("promptreg_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // The messages and the client, for everyone.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .codec_path("crate::grpc::codec::SmallBufferCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    // The server, on its own: the messages are the ones above, except that
    // the server answers Watch with `WatchFrame`, a `WatchResponse` encoded
    // once per revision and shared by every stream that sends it (and
    // WatchMany with `WatchManyFrame`, the same bytes behind watch ids; and
    // GetVersion with `GetVersionFrame`, a version encoded once). Its codec
    // answers an undecodable request with INVALID_ARGUMENT.
    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .out_dir(&server_dir)
        .extern_path(
            ".promptreg.v1.WatchResponse",
            "crate::grpc::wire::WatchFrame",
        )
        .extern_path(
            ".promptreg.v1.GetVersionResponse",
            "crate::grpc::wire::GetVersionFrame",
        )
        .extern_path(
            ".promptreg.v1.WatchManyResponse",
            "crate::grpc::wire::WatchManyFrame",
        )
        .extern_path(".promptreg.v1", "crate::grpc::pb")
        .codec_path("crate::grpc::codec::ServerCodec")
        .compile_fds(compiler.file_descriptor_set())?;

    // The etcd v3 client of the cluster store (`store/etcd/`): the subset of
    // etcd's API in proto/etcd/etcd.proto, client only.
    println!("cargo:rerun-if-changed={ETCD_PROTO}");
    let mut etcd = protox::Compiler::new(["proto"])?;
    etcd.open_files([ETCD_PROTO.trim_start_matches("proto/")])?;
    let etcd_dir = out_dir.join("etcd");
    std::fs::create_dir_all(&etcd_dir)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .out_dir(&etcd_dir)
        .compile_fds(etcd.file_descriptor_set())?;
    Ok(())
}
