//! Generates the gRPC code from `proto/` with protox, a pure-Rust protobuf compiler, so building
//! needs no system `protoc`. The compiled descriptors are kept too, for server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/idguard/v1/idguard.proto",
        "proto/google/rpc/status.proto",
    ];
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("idguard_descriptors.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Every method the API defines, by its HTTP/2 path: the only paths that get their own metrics
    // label, so that invented paths cannot grow the label set.
    let mut methods = String::from("&[\n");
    for file in &descriptors.file {
        for service in &file.service {
            for method in &service.method {
                methods += &format!(
                    "    \"/{}.{}/{}\",\n",
                    file.package(),
                    service.name(),
                    method.name()
                );
            }
        }
    }
    methods += "]\n";
    std::fs::write(out_dir.join("rpc_methods.rs"), methods)?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
