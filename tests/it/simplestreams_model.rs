//! The simplestreams model against the real library (SPEC §8, issue 14 §6): python-simplestreams'
//! `sstream-query --json` reads the fixture products files (unsigned, through an `index.json`
//! this test writes) with filters and `--max`, and prints every item it keeps, flattened by
//! `products_exdata`. The proxy's [`Selection::choose`] must keep the same items, each with the
//! same resolved fields.
//!
//! The peer is PyPI `python-simplestreams` (0.1.0.post59 was checked). It is found as
//! `bin/sstream-query` in `$IMAGE_STORE_PROXY_SIMPLESTREAMS_VENV`, else `$IMAGE_STORE_PROXY_TEST_VENV`,
//! else `target/test-peers/venv`; missing, it fails under `./test.sh` and is skipped elsewhere.

use image_store_proxy::simplestreams::{InstalledVersions, ItemFilter, Products, Selection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

type FlatItem = BTreeMap<String, String>;

fn sstream_query() -> Option<PathBuf> {
    crate::common::simplestreams_tool("sstream-query")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/simplestreams")
            .join(name),
    )
    .unwrap()
}

/// A mirror tree in `dir` whose unsigned index names `products` under `streams/v1/`.
fn mirror(dir: &Path, content_id: &str, products: &[u8]) -> String {
    let streams = dir.join("streams/v1");
    std::fs::create_dir_all(&streams).unwrap();
    std::fs::write(streams.join("products.json"), products).unwrap();
    let index = serde_json::json!({
        "format": "index:1.0",
        "updated": "Fri, 01 May 2026 03:00:00 +0000",
        "index": {content_id: {
            "datatype": "image-downloads",
            "format": "products:1.0",
            "path": "streams/v1/products.json",
            "updated": "Fri, 01 May 2026 03:00:00 +0000",
        }},
    });
    std::fs::write(streams.join("index.json"), index.to_string()).unwrap();
    format!("file://{}/streams/v1/index.json", dir.display())
}

/// What sstream-query keeps, less the `item_url` it adds, in identity order.
fn theirs(tool: &Path, url: &str, max: Option<usize>, filters: &[&str]) -> Vec<FlatItem> {
    let mut command = Command::new(tool);
    command.arg("--json");
    if let Some(max) = max {
        command.arg(format!("--max={max}"));
    }
    let output = command.arg(url).args(filters).output().unwrap();
    assert!(
        output.status.success(),
        "sstream-query {filters:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut items: Vec<FlatItem> = serde_json::from_slice(&output.stdout).unwrap();
    for item in &mut items {
        item.remove("item_url");
    }
    items.sort_by_key(identity);
    items
}

fn identity(item: &FlatItem) -> (String, String, String) {
    let field = |k: &str| item.get(k).cloned().unwrap_or_default();
    (
        field("product_name"),
        field("version_name"),
        field("item_name"),
    )
}

/// What the proxy keeps with the same filters and version count.
fn ours(products: &Products, max: Option<usize>, filters: &[&str]) -> Vec<FlatItem> {
    let selection = Selection {
        filters: filters
            .iter()
            .map(|f| ItemFilter::parse(f).unwrap())
            .collect(),
        max_versions: max.unwrap_or(usize::MAX),
        ..Selection::default()
    };
    let mut items: Vec<FlatItem> = selection
        .choose(products, &InstalledVersions::default())
        .into_iter()
        .flat_map(|version| version.items)
        .map(|item| {
            item.fields()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect();
    items.sort_by_key(identity);
    items
}

#[test]
fn sstream_query_keeps_the_same_items_with_the_same_fields() {
    let Some(tool) = sstream_query() else {
        return;
    };
    let cases: &[(Option<usize>, &[&str])] = &[
        (None, &[]),
        (None, &["arch~(amd64|x86_64)"]),
        (None, &["release!=noble"]),
        (None, &["ftype!~img", "arch=amd64"]),
        (None, &["missing="]),
        (None, &["hue = item"]),
        (Some(1), &[]),
        (Some(1), &["arch~(amd64|x86_64)"]),
        (Some(1), &["ftype=tar.gz"]),
        (Some(2), &["release=noble", "ftype~disk1"]),
    ];
    for fixture_name in ["released-download.json", "inheritance.json", "aliases.json"] {
        let data = fixture(fixture_name);
        let products = Products::parse(&data).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = mirror(dir.path(), &products.content_id, &data);
        for (max, filters) in cases {
            let theirs = theirs(&tool, &url, *max, filters);
            let ours = ours(&products, *max, filters);
            assert_eq!(
                ours.iter().map(identity).collect::<Vec<_>>(),
                theirs.iter().map(identity).collect::<Vec<_>>(),
                "{fixture_name} --max={max:?} {filters:?}: the items kept"
            );
            assert_eq!(
                ours, theirs,
                "{fixture_name} --max={max:?} {filters:?}: the fields"
            );
        }
    }
}
