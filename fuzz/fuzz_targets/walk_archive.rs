//! Archive walking (tar, tar.gz, zip) with the member and byte budgets: gapmeter::fuzzing::walk_archive_bytes.
//! docs/reliability.md, "Fuzzing".
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::run(|| {
        let _ = gapmeter::fuzzing::walk_archive_bytes(data);
    });
});
