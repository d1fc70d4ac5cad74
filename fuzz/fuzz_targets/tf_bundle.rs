#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| swa_fuzz::tf_bundle(data));
