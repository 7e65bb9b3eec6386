#![no_main]
// Body in walship::fuzzing, shared with the stable corpus replay.
libfuzzer_sys::fuzz_target!(|data: &[u8]| walship::fuzzing::ltx_bytes(data));
