//! Images for berth: a content store of blobs addressed by digest, a registry client (OCI
//! distribution), layers unpacked once into snapshots that overlayfs stacks, import and
//! export of archives, and the `diff` of a container's upper directory as a new layer.
//!
//! This crate knows nothing of containers or how they run: it hands out directories (the
//! snapshots of an image, top first) and takes directories back (an upper dir to diff).
//! Metadata is in SQLite (`meta`); content is plain files (`content`).

pub mod archive;
pub mod config;
pub mod content;
pub mod credentials;
pub mod diff;
pub mod digest;
mod error;
pub mod manifest;
pub mod meta;
pub mod mirrors;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use reference::Reference;
pub use store::{Image, ImageStore, Removed};
