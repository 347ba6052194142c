//! The multipart upload without its database: gapmeter::fuzzing::multipart_upload (the input is the Content-Type value, CRLF, the body).
//! docs/reliability.md, "Fuzzing".
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::run(|| {
        let _ = gapmeter::fuzzing::multipart_upload(data);
    });
});
