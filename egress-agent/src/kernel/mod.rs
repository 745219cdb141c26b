//! The kernel side, as the agent sees it: the programs, one value each
//! ([`programs`]); where this kernel keeps the fields they read
//! ([`offsets`]); loading and attaching them for this kernel ([`loader`],
//! [`attach`]); and decoding what they put in the ring ([`decode`]).
pub mod adopt;
pub mod attach;
pub mod control;
pub mod decode;
pub mod loader;
pub mod offsets;
pub mod programs;
pub mod run_skips;

pub use self::loader::{LoadError, LoadOptions, Loaded, ProgramStatus, load};
