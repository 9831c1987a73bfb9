//! Compiles the .proto files with protox (pure Rust), so a fresh machine
//! builds without a system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/aquifer/v1/aquifer.proto",
        "proto/aquifer/v1/segments.proto",
        "proto/aquifer/v1/groups.proto",
        "proto/aquifer/v1/transactions.proto",
        "proto/aquifer/v1/access.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // For gRPC server reflection (grpcurl and friends).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("aquifer_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".aquifer.v1")
        .compile_fds(fds)?;
    Ok(())
}
