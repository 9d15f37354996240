#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portmon::fuzzing::etc_services(data));
