//! Extractor manifest (TOML) parsing and validation: gapmeter::fuzzing::parse_manifest.
//! docs/reliability.md, "Fuzzing".
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::run(|| {
        let _ = gapmeter::fuzzing::parse_manifest(data);
    });
});
