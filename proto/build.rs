//! Generates the Rust code of the control-plane API from `sluice/control/v1/*.proto`.
//!
//! `protox` parses the files into a `FileDescriptorSet` in Rust (with the well-known
//! `google/protobuf/*.proto` built in), and `tonic-prost-build` turns that into prost messages
//! and tonic services — so the build needs no `protoc` on the machine.

use std::error::Error;
use std::path::PathBuf;

/// The `.proto` files, relative to this crate's folder (which is the import root).
const PROTOS: &[&str] = &[
    "sluice/control/v1/backend.proto",
    "sluice/control/v1/config.proto",
    "sluice/control/v1/live.proto",
    "sluice/control/v1/node.proto",
    "sluice/control/v1/subscription.proto",
    "sluice/control/v1/usage.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=sluice");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    // Source info keeps the comments, which become the generated docs; the imports (the
    // well-known types) make the descriptor set self-contained.
    let mut compiler = protox::Compiler::new(["."])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?;

    // The encoded descriptor set, for gRPC reflection or tools that need the schema.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sluice_control_v1_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // One copy of a version's document serves every node's Watch stream: `Bytes` clones
    // share it.
    tonic_prost_build::configure()
        .bytes(".sluice.control.v1.ConfigSnapshot.toml")
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
