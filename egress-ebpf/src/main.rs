//! Kernel side of egress-observer: capture, key, emit, count drops.
//!
//! One hook family per module. Every event goes through [`emit`], which
//! counts what was produced and what the ring could not take.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod adopt;
mod compat_canary;
mod connect;
mod conntrack;
mod dns;
mod emit;
mod error_report;
mod flow;
mod flow_table;
mod getsockopt;
mod maps;
mod net;
mod payload;
mod retransmit;
mod set_state;
mod sock;
mod tp;

use egress_common::Config;

/// Written by the agent before load (tracefs and BTF offsets of *this* kernel).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::DEFAULT;

/// Read one field of [`CONFIG`] without letting the compiler fold the default.
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: a read of a plain-integer field of a static that lives for
        // the whole program; volatile only so the load-time value is read.
        unsafe { core::ptr::read_volatile(&raw const crate::CONFIG.$($field).+) }
    };
}
pub(crate) use config;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
