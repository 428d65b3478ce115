//! `image_store_proxy::fuzzing::qcow2`: any bytes as a qcow2 image file, opened, walked and read.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| image_store_proxy::fuzzing::qcow2(data));
