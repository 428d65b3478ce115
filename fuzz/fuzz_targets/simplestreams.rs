//! The simplestreams index and products parser: `image_store_proxy::simplestreams::fuzz_products`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| image_store_proxy::simplestreams::fuzz_products(data));
