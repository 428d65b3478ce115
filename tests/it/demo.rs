//! The README's first command, as a person uses it: `image-store-proxy demo` starts, the client
//! commands it prints work when pasted into a shell, the install reaches the fake cloud, and a
//! second run of the demo on the same directory keeps the installed state.

use crate::common;

use common::demo::Demo;
use serde_json::Value;
use std::time::{Duration, Instant};

fn karmic_state(reply: &Value) -> Value {
    reply["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["image-uri"]
                .as_str()
                .unwrap()
                .ends_with("ubuntu-9.10-server-amd64")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no state for Ubuntu 9.10 in {reply}"))
}

#[test]
fn the_printed_commands_install_an_image_and_a_second_run_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "127.0.0.1:0", "127.0.0.1:0");

    let dashboard = demo.run(dir.path(), "dashboard");
    assert!(dashboard.get("error-message").is_none(), "{dashboard}");
    assert_eq!(dashboard["images"].as_array().unwrap().len(), 2);
    assert_eq!(karmic_state(&dashboard)["status"], "uninstalled");

    let pressed = demo.run(dir.path(), "install 'Ubuntu 9.10'");
    assert_eq!(pressed["state"]["status"], "downloading", "{pressed}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let installed = loop {
        let state = karmic_state(&demo.run(dir.path(), "states 'Ubuntu 9.10'"));
        if state["status"] == "installed" {
            break state;
        }
        assert!(state.get("error-message").is_none(), "{state}");
        assert!(Instant::now() < deadline, "not installed in time: {state}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let emi = installed["emi"].as_str().unwrap().to_string();
    assert!(emi.starts_with("emi-"), "{installed}");
    let bucket = common::fake_cloud_bucket(&dir.path().join("demo-data/proxy"));
    let registration: Value = serde_json::from_slice(
        &std::fs::read(bucket.join("ubuntu-server-amd64-9.10-image.registration.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(registration["image_id"], emi.as_str());
    // A person runs the demo again on its default addresses; here, on the ones just used (the
    // catalog's image URIs carry fake-store's address).
    let (proxy, store) = (demo.proxy.clone(), demo.store.clone());
    demo.interrupt();

    let again = Demo::start(dir.path(), &proxy, &store);
    let state = karmic_state(&again.run(dir.path(), "states 'Ubuntu 9.10'"));
    assert_eq!(state["status"], "installed", "{state}");
    assert_eq!(state["emi"], emi.as_str());
    again.interrupt();
}
