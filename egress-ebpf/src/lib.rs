//! Library target so that `egress-agent` can build-depend on this crate and be
//! rebuilt when it changes (the programs themselves are the `egress` binary).
#![no_std]
