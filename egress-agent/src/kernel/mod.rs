//! The kernel side, as the agent sees it: where this kernel keeps the fields
//! the programs read ([`offsets`]), loading and attaching the programs
//! ([`loader`]), and decoding what they put in the ring ([`decode`]).
pub mod decode;
pub mod loader;
pub mod offsets;

pub use self::loader::{LoadError, LoadOptions, Loaded, ProgramStatus, load};
