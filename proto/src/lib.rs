//! aquifer-proto: the gRPC protocol (generated from `proto/aquifer/v1`) and
//! the event framing and wire rules shared by the client and the server.
//!
//! Owns the wire formats only; it must never hold policy (limits, retries).

pub mod frame;
pub mod keys;
pub mod name;
pub mod wire;

// The decoders' property tests measure what decoding allocates.
#[cfg(test)]
#[global_allocator]
static ALLOC_PROBE: aquifer_alloc_probe::Probe = aquifer_alloc_probe::Probe;

/// Generated messages and services of `aquifer.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("aquifer.v1");

    /// The encoded `FileDescriptorSet` of the protocol, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/aquifer_descriptor.bin"));
}
