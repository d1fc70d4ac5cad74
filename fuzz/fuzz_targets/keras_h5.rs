#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| swa_fuzz::keras_h5(data));
