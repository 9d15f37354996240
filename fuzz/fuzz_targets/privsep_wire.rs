#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portmon::fuzzing::privsep_wire(data));
