//! What every berth crate needs and `std` lacks, written once (rust-analyzer's `stdx` is the
//! model): civil time in RFC 3339, atomic file writes, errors with their causes, randomness
//! from the OS that fails closed, and percent-decoding for the HTTP servers. It depends on nothing and knows nothing of containers,
//! images or the API.

pub mod error;
pub mod fs;
pub mod net;
pub mod random;
pub mod time;
pub mod url;
