//! Compiles `proto/` into Rust with protox, a pure-Rust protobuf compiler, so
//! the build needs nothing but cargo (no system `protoc`). The encoded file
//! descriptor set is also written to OUT_DIR for gRPC server reflection.

use protox::prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "dockercoins/v1/rng.proto",
            "dockercoins/v1/hasher.proto",
            "dockercoins/v1/replica.proto",
        ],
        ["proto"],
    )?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("dockercoins_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Payloads as `bytes::Bytes`: decoding slices the receive buffer
        // instead of copying every block into a fresh Vec.
        .bytes(".dockercoins.v1")
        .compile_fds(fds)?;
    // `bench`'s echo service: generated apart, so that no server's
    // reflection lists it.
    let echo = protox::compile(["dockercoins/bench/v1/echo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".dockercoins.bench.v1")
        .compile_fds(echo)?;
    // The ORCA load report (gRFC A51), the xDS message every gRPC stack
    // reads: in a trailer, not a service, so no server's reflection lists
    // it either.
    let orca = protox::compile(["xds/data/orca/v3/orca_load_report.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(orca)?;
    Ok(())
}
