//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes
//! the encoded descriptor set for gRPC reflection.

use std::path::PathBuf;

const PROTO_FILES: &[&str] = &["proto/promptreg/v1/registry.proto"];

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
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::grpc::codec::SmallBufferCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
