//! .npy features and .npz statistics: gapmeter::fuzzing::read_npy_npz.
//! docs/reliability.md, "Fuzzing".
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::run(|| {
        let _ = gapmeter::fuzzing::read_npy_npz(data);
    });
});
