//! `image_store_proxy::fuzzing::simplestreams`: any bytes as a simplestreams index, then as a
//! products file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| image_store_proxy::fuzzing::simplestreams(data));
