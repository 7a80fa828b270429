//! Compiles the benchmarks' echo service (the floor every gRPC figure is compared with), with
//! protox as the service's own build.rs does (no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["crm/iam/bench/v1/echo.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
