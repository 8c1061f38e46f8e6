#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| promptreg::fuzzing::digest(data));
