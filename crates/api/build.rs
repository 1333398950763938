//! Compiles keel's .proto files into Rust with protox (a pure-Rust protobuf
//! compiler) and tonic-prost-build, so that building keel never needs `protoc`.

use std::env;
use std::path::PathBuf;

/// Every .proto file of the crate, relative to `proto/`. Listed by hand (not
/// discovered) so the generated module set is exactly what `lib.rs` includes.
const PROTO_FILES: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "keelpb/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={}", proto_dir.join(file).display());
    }

    let mut compiler = protox::Compiler::new([&proto_dir])?;
    // Source info carries the .proto comments into the generated docs.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTO_FILES)?;

    // Kept for gRPC reflection and tooling; see `keel_api::FILE_DESCRIPTOR_SET`.
    std::fs::write(
        out_dir.join("keel_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // We print precise rerun-if-changed lines above; the builder's own
        // would point at paths protox resolved, not at our files.
        .emit_rerun_if_changed(false)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
