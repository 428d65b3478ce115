//! `image_store_proxy::fuzzing::clearsign`: any bytes as a clear-signed message, and any text
//! clear-signed and read back.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| image_store_proxy::fuzzing::clearsign(data));
