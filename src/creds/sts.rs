//! The real STS client (implemented by the STS-layer work).
