//! Image decoding, every supported format: gapmeter::fuzzing::decode_image (verify_image, decode_rgb).
//! docs/reliability.md, "Fuzzing".
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::run(|| {
        let _ = gapmeter::fuzzing::decode_image(data);
    });
});
