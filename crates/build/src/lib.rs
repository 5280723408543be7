//! `berth build`: images from Dockerfiles.
//!
//! The Dockerfile is parsed ([`dockerfile`]) and read into stages; each stage runs its
//! instructions in order, each step keyed by its parent's key, the instruction with its
//! arguments expanded, and the content it reads ([`copy`] hashes files, not times). A key
//! found in the image store's build cache is the step's result without running it. RUN
//! steps run as containers through `berth runtime` over an overlay of the step's parent
//! ([`spec`]); COPY and ADD write into such an overlay through descriptors resolved inside
//! it; the overlay's upper directory becomes the step's layer. Stages the target needs run
//! at the same time on threads, each waiting only for the stages it reads.
//!
//! This crate knows nothing of containers' records, networks or the CLI: it takes a
//! Dockerfile and a context and gives an image in the store; base images come from the
//! caller (which pulls them, with its own progress display).

pub mod builder;
pub mod copy;
pub mod dockerfile;
pub mod fetch;
pub mod git;
pub mod ignore;
pub mod spec;
pub mod ssh;
pub mod words;

pub use builder::{build, BuildError, Event, Host, Options};
pub use spec::Network;
