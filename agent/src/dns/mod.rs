//! DNS from the kernel's copies of DNS-port packets: decoding, TCP stream
//! reassembly, query/response matching and per-pod aggregation.

pub mod tcp;
pub mod wire;

#[cfg(test)]
mod wire_tests;
