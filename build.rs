//! Compiles `proto/corral.proto` with protox (pure Rust), so building corral
//! never needs a `protoc` binary on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/corral.proto");
    let descriptors = protox::compile(["corral.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
