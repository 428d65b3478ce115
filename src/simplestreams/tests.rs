//! The simplestreams module against the real samples of `research/simplestreams.md` and the
//! made-up inheritance tree (`tests/data/simplestreams/README.md` says which is which).

use super::*;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

const INDEX: &[u8] = include_bytes!("../../tests/data/simplestreams/index.json");
const RELEASED: &[u8] = include_bytes!("../../tests/data/simplestreams/released-download.json");
const TREE: &[u8] = include_bytes!("../../tests/data/simplestreams/inheritance.json");
const ALIASES: &[u8] = include_bytes!("../../tests/data/simplestreams/aliases.json");

const NOBLE: &str = "com.example:server:24.04:amd64";
const NOBLE_ARM: &str = "com.example:server:24.04:arm64";
const JAMMY: &str = "com.example:server:22.04:amd64";

/// An RFC 2822 time, as the samples write them.
fn at(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &Rfc2822).unwrap()
}

fn tree() -> Products {
    Products::parse(TREE).unwrap()
}

fn item<'a>(products: &'a Products, product: &str, version: &str, name: &str) -> ResolvedItem<'a> {
    products
        .items()
        .find(|i| {
            i.product_name() == product && i.version_name() == version && i.item_name() == name
        })
        .unwrap_or_else(|| panic!("no {product}/{version}/{name}"))
}

fn filters(expressions: &[&str]) -> Vec<ItemFilter> {
    expressions
        .iter()
        .map(|e| ItemFilter::parse(e).unwrap())
        .collect()
}

/// `product version item` of every item passing `expressions`.
fn passing(products: &Products, expressions: &[&str]) -> Vec<String> {
    let filters = filters(expressions);
    products
        .items()
        .filter(|i| passes_all(&filters, i))
        .map(|i| {
            format!(
                "{} {} {}",
                i.product_name(),
                i.version_name(),
                i.item_name()
            )
        })
        .collect()
}

#[test]
fn the_index_follows_only_configured_image_downloads() {
    let index = Index::parse(INDEX).unwrap();
    assert_eq!(index.updated, at("Fri, 04 Nov 2016 03:34:01 +0000"));
    let entries = index
        .downloads(&[
            DEFAULT_CONTENT_ID.to_owned(),
            "com.ubuntu.cloud:released:aws".to_owned(),
            "com.ubuntu.cloud:daily:download".to_owned(),
        ])
        .unwrap();
    assert_eq!(
        entries.len(),
        1,
        "image-ids and absent ids are not followed"
    );
    let entry = &entries[0];
    assert_eq!(entry.content_id, DEFAULT_CONTENT_ID);
    assert_eq!(
        entry.path.as_str(),
        "streams/v1/com.ubuntu.cloud:released:download.sjson"
    );
    assert_eq!(entry.updated, Some(at("Fri, 04 Nov 2016 03:33:58 +0000")));
    assert_eq!(entry.products.len(), 2);
    assert!(
        index
            .content_ids()
            .any(|id| id == "com.ubuntu.cloud:released:aws")
    );
    let root = reqwest::Url::parse("https://cloud-images.ubuntu.com/releases/").unwrap();
    assert_eq!(
        entry.path.join_onto(&root).unwrap().as_str(),
        "https://cloud-images.ubuntu.com/releases/streams/v1/com.ubuntu.cloud:released:download.sjson"
    );
}

#[test]
fn an_unsafe_path_in_any_index_entry_refuses_the_index() {
    let text = String::from_utf8(INDEX.to_vec()).unwrap().replace(
        "streams/v1/com.ubuntu.cloud:released:aws.sjson",
        "../../etc/passwd",
    );
    let error = Index::parse(text.as_bytes()).unwrap_err();
    assert!(matches!(error, StreamError::Path { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "simplestreams index entry com.ubuntu.cloud:released:aws: stream path \"../../etc/passwd\" has a \"..\" or \".\" segment"
    );
}

#[test]
fn an_index_needs_its_format_and_an_rfc_2822_updated() {
    let text = String::from_utf8(INDEX.to_vec()).unwrap();
    let wrong = text.replace("\"index:1.0\"", "\"products:1.0\"");
    assert!(matches!(
        Index::parse(wrong.as_bytes()),
        Err(StreamError::Format { .. })
    ));
    let iso = text.replace("Fri, 04 Nov 2016 03:34:01 +0000", "2016-11-04T03:34:01Z");
    let error = Index::parse(iso.as_bytes()).unwrap_err();
    assert!(matches!(error, StreamError::Updated { .. }), "{error:?}");
    assert!(!error.to_string().contains('\n'));
    let error = Index::parse(b"{\"format\": \"index:1.0\", ").unwrap_err();
    assert!(matches!(error, StreamError::Json { .. }), "{error:?}");
}

#[test]
fn the_real_products_file_resolves_its_items() {
    let products = Products::parse(RELEASED).unwrap();
    assert_eq!(products.content_id, DEFAULT_CONTENT_ID);
    assert_eq!(products.updated, at("Fri, 04 Nov 2016 03:33:58 +0000"));
    let disk = item(
        &products,
        "com.ubuntu.cloud:server:16.10:s390x",
        "20161012.3",
        "disk1.img",
    );
    assert_eq!(disk.ftype(), Some("disk1.img"));
    assert_eq!(disk.arch(), Some("s390x"));
    assert_eq!(disk.release(), Some("yakkety"));
    assert_eq!(disk.version(), Some("16.10"));
    assert_eq!(disk.release_title(), Some("16.10"));
    assert_eq!(disk.release_codename(), Some("Yakkety Yak"));
    assert_eq!(disk.label(), Some("release"));
    assert_eq!(disk.os(), Some("ubuntu"));
    assert_eq!(
        disk.pubname(),
        Some("ubuntu-yakkety-16.10-s390x-server-20161012.3")
    );
    assert_eq!(
        disk.get("supported"),
        Some("True"),
        "as sstream-query prints it"
    );
    assert_eq!(
        disk.get("datatype"),
        Some("image-downloads"),
        "from the top"
    );
    assert_eq!(disk.size(), Ok(274792448));
    assert_eq!(
        disk.checksum(),
        Ok(Checksum::Sha256(
            crate::cache::Sha256Hex::parse(
                "d049b58e603d2d1ec463342f593f4f3af018a35a972ac2f4a4b34c1ba3f41dd6"
            )
            .unwrap()
        )),
        "sha256 wins over md5"
    );
    assert_eq!(
        disk.identity().to_string(),
        "com.ubuntu.cloud:released:download/com.ubuntu.cloud:server:16.10:s390x/20161012.3/disk1.img"
    );
    let bare = Products::parse(
        br#"{"format": "products:1.0", "content_id": "c", "updated": "Fri, 01 May 2026 03:00:00 +0000",
             "products": {"p": {"versions": {"v": {"items": {"i": {"path": "x/y", "size": "0"}}}}}}}"#,
    )
    .unwrap();
    let bare = bare.items().next().unwrap();
    assert_eq!(
        bare.checksum().unwrap_err().to_string(),
        "stream item c/p/v/i has no \"sha256\""
    );
    assert_eq!(
        bare.size().unwrap_err().to_string(),
        "stream item c/p/v/i has \"size\" \"0\", which is not a size in bytes within the file cap"
    );
    assert_eq!(products.items().count(), 5);
}

#[test]
fn fields_inherit_from_each_level_and_lower_levels_override() {
    let products = tree();
    let disk = item(&products, NOBLE, "20260501", "disk1.img");
    assert_eq!(disk.get("color"), Some("top"), "set only at the top");
    assert_eq!(disk.get("shade"), Some("product"), "product overrides top");
    assert_eq!(
        disk.get("tone"),
        Some("version"),
        "version overrides product"
    );
    assert_eq!(disk.get("hue"), Some("item"), "item overrides version");
    assert_eq!(
        disk.get("size"),
        Some("500"),
        "item overrides the top's number"
    );
    assert_eq!(disk.ftype(), Some("disk1.img"), "hoisted to the product");
    assert_eq!(disk.get("nested"), None, "only scalars inherit");
    assert_eq!(disk.get("missing"), None);
    let tarball = item(&products, NOBLE, "20260501", "tar.gz");
    assert_eq!(
        tarball.ftype(),
        Some("tar.gz"),
        "item overrides the hoisted ftype"
    );
    assert_eq!(tarball.get("hue"), Some("version"));
    assert_eq!(tarball.get("tone"), Some("version"), "a null hides nothing");
    assert_eq!(disk.get("weight"), Some("1.5"));
    assert_eq!(disk.get("big"), Some("1e+16"), "as Python prints a float");
    assert_eq!(disk.get("tiny"), Some("1e-05"));
    let hoisted = item(&products, NOBLE, "20260501.1", "disk1.img");
    assert!(
        matches!(hoisted.checksum(), Ok(Checksum::Sha256(ref h)) if h.as_str().starts_with("6666")),
        "sha256 hoisted to the version"
    );
    assert_eq!(hoisted.get("tone"), Some("product"));
    let md5 = item(&products, NOBLE, "20260415", "tar.gz");
    assert_eq!(
        md5.checksum(),
        Ok(Checksum::Md5("0123456789abcdef0123456789abcdef".into())),
        "md5 only where there is no sha256"
    );

    let fields = disk.fields();
    assert_eq!(fields.get("product_name"), Some(&NOBLE));
    assert_eq!(fields.get("version_name"), Some(&"20260501"));
    assert_eq!(fields.get("item_name"), Some(&"disk1.img"));
    assert_eq!(
        fields.get("content_id"),
        Some(&"com.example.test:released:download")
    );
    for (key, value) in &fields {
        assert_eq!(disk.get(key), Some(*value), "{key}");
    }
}

#[test]
fn aliases_expand_where_an_item_names_them() {
    let products = Products::parse(ALIASES).unwrap();
    let product = "com.ubuntu.cloud:server:16.04:amd64";
    let hvm = item(&products, product, "20161020", "apne1hs");
    assert_eq!(hvm.get("region"), Some("ap-northeast-1"));
    assert_eq!(
        hvm.get("endpoint"),
        Some("https://ec2.ap-northeast-1.amazonaws.com")
    );
    assert_eq!(hvm.get("crsn"), Some("apne1"), "the alias name stays");
    let pv = item(&products, product, "20161020", "use1pe");
    assert_eq!(
        pv.get("region"),
        Some("us-east-1"),
        "the alias overrides the item"
    );
    assert_eq!(hvm.get("_aliases"), None);
    let text = String::from_utf8(ALIASES.to_vec())
        .unwrap()
        .replace("\"crsn\": \"use1\"", "\"crsn\": \"euw1\"");
    assert_eq!(
        Products::parse(text.as_bytes()).unwrap_err().to_string(),
        "simplestreams products file: \"crsn\" \"euw1\" is not defined in its \"_aliases\""
    );
}

#[test]
fn alias_expansion_is_capped() {
    let value = "v".repeat(crate::limits::MAX_STREAM_STRING_BYTES - 8);
    let alias: Vec<String> = (0..64).map(|n| format!("\"f{n}\": \"{value}\"")).collect();
    let items: Vec<String> = (0..100)
        .map(|n| format!("\"i{n}\": {{\"big\": \"one\"}}"))
        .collect();
    let text = format!(
        r#"{{"format": "products:1.0", "content_id": "c", "updated": "Fri, 01 May 2026 03:00:00 +0000",
            "_aliases": {{"big": {{"one": {{{}}}}}}},
            "products": {{"p": {{"versions": {{"v": {{"items": {{{}}}}}}}}}}}}}"#,
        alias.join(","),
        items.join(",")
    );
    let error = Products::parse(text.as_bytes()).unwrap_err();
    assert!(
        matches!(
            error,
            StreamError::Aliases {
                source: AliasError::TooLarge { .. },
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn an_unsafe_inherited_item_path_refuses_the_products_file() {
    let text = String::from_utf8(TREE.to_vec()).unwrap().replace(
        "\"sha256\": \"6666",
        "\"path\": \"/etc/shadow\", \"sha256\": \"6666",
    );
    let text = text.replace(
        "\"size\": 600,\n       \"path\": \"server/releases/noble/release-20260501.1/ubuntu-24.04-server-cloudimg-amd64.img\"",
        "\"size\": 600",
    );
    let error = Products::parse(text.as_bytes()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "simplestreams products file item com.example.test:released:download/com.example:server:24.04:amd64/20260501.1/disk1.img: stream path \"/etc/shadow\" is absolute; paths are relative to the mirror root"
    );
}

#[test]
fn each_filter_operator_as_sstream_mirror_has_it() {
    let products = tree();
    let all = passing(&products, &[]);
    assert_eq!(all.len(), 7);
    assert_eq!(
        passing(&products, &["arch=arm64"]),
        [format!("{NOBLE_ARM} 20260501 disk1.img")]
    );
    assert_eq!(
        passing(&products, &["arch!=amd64"]),
        passing(&products, &["arch=arm64"])
    );
    assert_eq!(
        passing(&products, &["ftype~^(tar\\.gz|squash)"]),
        [
            format!("{JAMMY} 20260420 squashfs"),
            format!("{NOBLE} 20260415 tar.gz"),
            format!("{NOBLE} 20260501 tar.gz"),
        ]
    );
    assert_eq!(
        passing(&products, &["ftype!~img"]),
        passing(&products, &["ftype~^(tar\\.gz|squash)"])
    );
    // `~` searches: not anchored.
    assert_eq!(passing(&products, &["pubname~arm"]).len(), 1);
    // AND-ed.
    assert_eq!(
        passing(
            &products,
            &["release=noble", "ftype=tar.gz", "version_name~^202605"]
        ),
        [format!("{NOBLE} 20260501 tar.gz")]
    );
    // A missing key compares as "".
    assert_eq!(passing(&products, &["missing="]).len(), 7);
    assert!(passing(&products, &["missing!="]).is_empty());
    // Spaces around the operator, as filters.py allows.
    assert_eq!(passing(&products, &["arch = arm64"]).len(), 1);
    // A product-level key excludes whole products.
    let noble_only = passing(&products, &["release=noble"]);
    assert!(noble_only.iter().all(|line| !line.starts_with(JAMMY)));
    assert_eq!(noble_only.len(), 5);
    let selection = Selection {
        filters: filters(&["release!=noble"]),
        ..Selection::default()
    };
    let chosen = selection.choose(&products, &InstalledVersions::default());
    assert_eq!(chosen.len(), 1);
    assert_eq!(chosen[0].product_name, JAMMY);
}

#[test]
fn bad_filters_are_refused_in_one_line() {
    for bad in ["", "arch", "=amd64", "arch<amd64", "ar ch=x"] {
        let error = ItemFilter::parse(bad).unwrap_err();
        assert!(
            matches!(error, FilterError::Syntax { .. }),
            "{bad:?}: {error:?}"
        );
    }
    for bad in ["arch~(amd64", "arch!~(?=x)", "arch~\\1"] {
        let error = ItemFilter::parse(bad).unwrap_err();
        assert!(
            matches!(error, FilterError::Regex { .. }),
            "{bad:?}: {error:?}"
        );
        assert!(!error.to_string().contains('\n'), "{error}");
    }
}

#[test]
fn the_default_filter_follows_the_cloud_architecture() {
    let products = tree();
    let x86 = ItemFilter::for_cloud_architecture("x86_64").unwrap();
    assert_eq!(x86.to_string(), "arch~(amd64|x86_64)");
    assert_eq!(x86.key(), "arch");
    let arm = ItemFilter::for_cloud_architecture("aarch64").unwrap();
    assert_eq!(passing(&products, &[&arm.to_string()]).len(), 1);
    assert_eq!(passing(&products, &[&x86.to_string()]).len(), 6);
    assert_eq!(
        ItemFilter::for_cloud_architecture("riscv64")
            .unwrap()
            .to_string(),
        "arch=riscv64"
    );
}

#[test]
fn serials_sort_as_python_sorts_strings() {
    let mut serials = vec![
        "20260501.1",
        "20260415",
        "20260501",
        "20260501.10",
        "20260501.2",
    ];
    serials.sort_by(|a, b| compare_serials(a, b));
    assert_eq!(
        serials,
        [
            "20260415",
            "20260501",
            "20260501.1",
            "20260501.10",
            "20260501.2"
        ]
    );
}

fn chosen(selection: &Selection, installed: &InstalledVersions) -> Vec<String> {
    let products = tree();
    selection
        .choose(&products, installed)
        .iter()
        .map(|v| format!("{} {}", v.product_name, v.version_name))
        .collect()
}

#[test]
fn the_newest_versions_are_chosen_and_installed_ones_kept() {
    let noble_only = Selection {
        filters: filters(&["arch~(amd64|x86_64)", "release=noble"]),
        ..Selection::default()
    };
    let none = InstalledVersions::default();
    assert_eq!(chosen(&noble_only, &none), [format!("{NOBLE} 20260501.1")]);
    let two = Selection {
        max_versions: 2,
        ..noble_only.clone()
    };
    assert_eq!(
        chosen(&two, &none),
        [format!("{NOBLE} 20260501.1"), format!("{NOBLE} 20260501")]
    );
    let installed: InstalledVersions = [(NOBLE, "20260415")].into_iter().collect();
    assert_eq!(
        chosen(&noble_only, &installed),
        [format!("{NOBLE} 20260501.1"), format!("{NOBLE} 20260415")]
    );
    // Filters first: the newest version with a tar.gz, not the newest version.
    let tarballs = Selection {
        filters: filters(&["release=noble", "arch=amd64", "ftype=tar.gz"]),
        ..Selection::default()
    };
    assert_eq!(chosen(&tarballs, &none), [format!("{NOBLE} 20260501")]);
    let nothing = Selection {
        max_versions: 0,
        ..noble_only
    };
    assert_eq!(chosen(&nothing, &installed), [format!("{NOBLE} 20260415")]);
}

fn offers_of(virtualization: Virtualization, installed: &InstalledVersions) -> Offers {
    let products = tree();
    Selection {
        filters: filters(&["arch~(amd64|x86_64)"]),
        max_versions: 3,
        virtualization,
    }
    .offers(&products, installed)
}

fn by_version(offers: &Offers) -> BTreeMap<String, &Offer> {
    offers
        .offers
        .iter()
        .map(|o| (format!("{} {}", o.identity.product_name, o.version), o))
        .collect()
}

#[test]
fn hvm_from_disk1_img_paravirtual_from_tar_gz_falling_back_to_the_one_there() {
    let none = InstalledVersions::default();
    let hvm = offers_of(Virtualization::Hvm, &none);
    let offers = by_version(&hvm);
    assert_eq!(offers.len(), 3);
    let both = offers[&format!("{NOBLE} 20260501")];
    assert_eq!(both.virtualization, Virtualization::Hvm);
    assert_eq!(both.identity.item_name, "disk1.img");
    assert_eq!(both.size, 500);
    assert_eq!(
        both.path.as_str(),
        "server/releases/noble/release-20260501/ubuntu-24.04-server-cloudimg-amd64.img"
    );
    let only_tarball = offers[&format!("{NOBLE} 20260415")];
    assert_eq!(only_tarball.virtualization, Virtualization::Paravirtual);
    assert_eq!(only_tarball.identity.item_name, "tar.gz");
    assert!(matches!(only_tarball.checksum, Checksum::Md5(_)));
    assert_eq!(
        hvm.passed_over,
        [format!(
            "com.example.test:released:download/{JAMMY} 20260420: no disk1.img or tar.gz item passed the filters"
        )]
    );

    let pv = offers_of(Virtualization::Paravirtual, &none);
    let offers = by_version(&pv);
    let both = offers[&format!("{NOBLE} 20260501")];
    assert_eq!(both.virtualization, Virtualization::Paravirtual);
    assert_eq!(both.identity.item_name, "tar.gz");
    assert_eq!(
        both.summary,
        "ubuntu-noble-24.04-amd64-server-20260501 (release), paravirtual UEC tarball"
    );
    let only_disk = offers[&format!("{NOBLE} 20260501.1")];
    assert_eq!(only_disk.virtualization, Virtualization::Hvm);

    assert_eq!("hvm".parse(), Ok(Virtualization::Hvm));
    assert_eq!("paravirtual".parse(), Ok(Virtualization::Paravirtual));
    assert_eq!(
        "pv".parse::<Virtualization>().unwrap_err().to_string(),
        "virtualization \"pv\" is neither \"hvm\" nor \"paravirtual\""
    );
}

#[test]
fn an_offer_names_its_release_and_arch_and_knows_an_upgrade() {
    let installed: InstalledVersions = [(NOBLE, "20260501")].into_iter().collect();
    let hvm = offers_of(Virtualization::Hvm, &installed);
    let offers = by_version(&hvm);
    let newest = offers[&format!("{NOBLE} 20260501.1")];
    assert_eq!(newest.title, "Ubuntu 24.04 LTS (Noble Numbat) amd64");
    assert_eq!(newest.version, "20260501.1");
    assert_eq!(
        newest.summary,
        "ubuntu-noble-24.04-amd64-server-20260501.1 (release), HVM disk image"
    );
    assert_eq!(newest.arch.as_deref(), Some("amd64"));
    assert_eq!(newest.release.as_deref(), Some("noble"));
    assert!(newest.is_upgrade(&installed));
    assert!(!offers[&format!("{NOBLE} 20260501")].is_upgrade(&installed));
    assert!(!offers[&format!("{NOBLE} 20260415")].is_upgrade(&installed));
    assert!(!newest.is_upgrade(&InstalledVersions::default()));

    let products = Products::parse(RELEASED).unwrap();
    let real = Selection::default().offers(&products, &InstalledVersions::default());
    let titles: Vec<&str> = real.offers.iter().map(|o| o.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Ubuntu 16.10 (Yakkety Yak) s390x",
            "Ubuntu 22.04 LTS (Jammy Jellyfish) amd64",
            "Ubuntu 24.04 LTS (Noble Numbat) amd64",
        ]
    );
}

#[test]
fn a_products_file_must_carry_its_index_entrys_content_id() {
    let index = Index::parse(INDEX).unwrap();
    let entry = index
        .downloads(&[DEFAULT_CONTENT_ID.to_owned()])
        .unwrap()
        .remove(0);
    Products::parse(RELEASED)
        .unwrap()
        .check_entry(&entry)
        .unwrap();
    let error = tree().check_entry(&entry).unwrap_err();
    assert_eq!(
        error.to_string(),
        "simplestreams products file streams/v1/com.ubuntu.cloud:released:download.sjson has content_id \"com.example.test:released:download\", but its index entry names \"com.ubuntu.cloud:released:download\""
    );
}

#[test]
fn a_products_file_needs_its_format_content_id_and_updated() {
    let text = String::from_utf8(TREE.to_vec()).unwrap();
    let cases = [
        (text.replace("\"products:1.0\"", "\"index:1.0\""), "format"),
        (text.replace("\"content_id\"", "\"content\""), "content_id"),
        (text.replace("\"updated\"", "\"changed\""), "updated"),
        (
            text.replace("Fri, 01 May 2026", "Fri, 41 May 2026"),
            "RFC 2822",
        ),
    ];
    for (bad, says) in cases {
        let error = Products::parse(bad.as_bytes()).unwrap_err().to_string();
        assert!(error.contains(says), "{says}: {error}");
        assert!(!error.contains('\n'), "{error}");
    }
}

#[test]
fn a_rollback_is_refused_and_the_same_time_accepted() {
    let accepted = at("Fri, 04 Nov 2016 03:34:01 +0000");
    refuse_rollback("index", accepted, accepted).unwrap();
    refuse_rollback("index", accepted, at("Sat, 05 Nov 2016 00:00:00 +0000")).unwrap();
    let error =
        refuse_rollback("index", accepted, at("Thu, 03 Nov 2016 00:00:00 +0000")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "simplestreams index was updated Thu, 03 Nov 2016 00:00:00 +0000, before the Fri, 04 Nov 2016 03:34:01 +0000 of the one already accepted"
    );
}

#[test]
fn the_fuzz_harness_takes_the_samples_and_garbage() {
    for data in [
        INDEX,
        RELEASED,
        TREE,
        ALIASES,
        b"",
        b"{",
        b"[]",
        b"{\"format\": 1}",
    ] {
        fuzz_products(data);
    }
}
