//! Bakes the libtorch library directory into the binary's run path, so `gapmeter` (and every test
//! and bench binary) runs without `LD_LIBRARY_PATH`. torch-sys announces the directory through its
//! `links = "tch"` metadata, which only reaches crates that depend on it directly.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
