//! The README's first command, as a person uses it: `image-store-proxy demo` starts, the client
//! commands it prints work when pasted into a shell, the install reaches the fake cloud, and a
//! second run of the demo on the same directory keeps the installed state.

use crate::common;

use common::demo::Demo;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The state of the image whose URI ends with `uri_end`.
fn state_of(reply: &Value, uri_end: &str) -> Value {
    reply["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["image-uri"].as_str().unwrap().ends_with(uri_end))
        .cloned()
        .unwrap_or_else(|| panic!("no state for {uri_end} in {reply}"))
}

fn karmic_state(reply: &Value) -> Value {
    state_of(reply, "ubuntu-9.10-server-amd64")
}

/// The HVM disk of the newest lucid serial in fake-store's simplestreams mirror.
const LUCID_DISK: &str = "ubuntu-10.04-server-cloudimg-amd64.img";

#[test]
fn the_printed_commands_install_an_image_and_a_second_run_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "127.0.0.1:0", "127.0.0.1:0");

    let dashboard = demo.run(dir.path(), "dashboard");
    assert!(dashboard.get("error-message").is_none(), "{dashboard}");
    // Two images from fake-store's API, two (karmic, and lucid's newest serial) from its mirror.
    assert_eq!(
        dashboard["images"].as_array().unwrap().len(),
        4,
        "{dashboard}"
    );
    let sections: Vec<&str> = dashboard["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        sections,
        [
            "Featured images",
            "Ubuntu cloud images (fake-store's simplestreams mirror)"
        ]
    );
    assert_eq!(karmic_state(&dashboard)["status"], "uninstalled");

    let pressed = demo.run(dir.path(), "install 'Ubuntu 9.10 Server'");
    assert_eq!(pressed["state"]["status"], "downloading", "{pressed}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let installed = loop {
        let state = karmic_state(&demo.run(dir.path(), "states 'Ubuntu 9.10 Server'"));
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
    assert_eq!(registration["virtualization_type"], "paravirtual");

    // The printed command for the mirror's HVM disk.
    let pressed = demo.run(dir.path(), "install '(Lucid Lynx) amd64'");
    assert_eq!(pressed["state"]["status"], "downloading", "{pressed}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let hvm = loop {
        let state = state_of(&demo.run(dir.path(), "dashboard"), LUCID_DISK);
        if state["status"] == "installed" {
            break state;
        }
        assert!(state.get("error-message").is_none(), "{state}");
        assert!(Instant::now() < deadline, "not installed in time: {state}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let hvm_emi = hvm["emi"].as_str().unwrap();
    // Each install has its own bucket.
    let cloud = dir.path().join("demo-data/proxy/fake-cloud");
    let record = std::fs::read_dir(&cloud)
        .unwrap()
        .flat_map(|bucket| std::fs::read_dir(bucket.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".registration.json"))
        .map(|path| serde_json::from_slice::<Value>(&std::fs::read(path).unwrap()).unwrap())
        .find(|record| record["image_id"] == hvm_emi)
        .unwrap_or_else(|| panic!("no registration of {hvm_emi} in {}", cloud.display()));
    assert_eq!(record["virtualization_type"], "hvm", "{record}");
    assert_eq!(record["kernel_id"], Value::Null, "{record}");
    assert!(
        record["description"]
            .as_str()
            .unwrap()
            .starts_with("simplestreams com.ubuntu.cloud:released:download "),
        "{record}"
    );
    // A person runs the demo again on its default addresses; here, on the ones just used (the
    // catalog's image URIs carry fake-store's address).
    let (proxy, store) = (demo.proxy.clone(), demo.store.clone());
    demo.interrupt();

    let again = Demo::start(dir.path(), &proxy, &store);
    let state = karmic_state(&again.run(dir.path(), "states 'Ubuntu 9.10 Server'"));
    assert_eq!(state["status"], "installed", "{state}");
    assert_eq!(state["emi"], emi.as_str());
    again.interrupt();
}
