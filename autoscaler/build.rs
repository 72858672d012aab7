//! Compiles KEDA's external-scaler proto (`proto/externalscaler.proto`) into tonic code when the
//! `controller` feature is on. protox parses the proto in pure Rust, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "controller")]
    {
        let fds = protox::compile(["proto/externalscaler.proto"], ["proto"])?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .compile_fds(fds)?;
    }
    Ok(())
}
