#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portmon::fuzzing::web_config(data));
