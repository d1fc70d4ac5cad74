#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| swa_fuzz::swag_part(data));
