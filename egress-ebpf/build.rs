//! Rebuild the programs when bpf-linker changes (it is the real compiler back end).
fn main() {
    match which::which("bpf-linker") {
        Ok(p) => println!("cargo:rerun-if-changed={}", p.display()),
        Err(e) => {
            println!("cargo:warning=bpf-linker not found on PATH: {e}; run `cargo xtask setup`")
        }
    }
}
