//! `fake-store DIR`: serves a directory of image sets as a signed upstream store API.

use clap::{Parser, ValueEnum};
use fake_store::{FakeStore, StoreConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "fake-store",
    version,
    about = "A fake upstream image store API, signed with a test key"
)]
struct Args {
    /// Image sets: kernel, ramdisk, image (each may end in .gz) at the top, or one set per subdirectory
    dir: PathBuf,
    /// Where to listen
    #[arg(long, default_value = "127.0.0.1:52781")]
    listen: String,
    /// Armored OpenPGP secret key to sign with [default: the test key from keyrings/]
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// The API base URL written into the catalog [default: http://<listen address>/api]
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// The catalog's "updated" time, RFC 3339 [default: now]
    #[arg(long, value_name = "TIME")]
    updated: Option<String>,
    /// Write the demo image sets into DIR first
    #[arg(long)]
    generate_demo: bool,
    /// Serve files no faster than this many KiB per second on each connection (0: as fast as
    /// possible)
    #[arg(long, value_name = "KIB", default_value_t = 0)]
    kib_per_second: u64,
    /// Serve files no faster than this many KiB per second in all, whatever the number of
    /// connections: the store's whole link (0: no cap)
    #[arg(long, value_name = "KIB", default_value_t = 0)]
    store_kib_per_second: u64,
    /// Serve the simplestreams tree with this bad input (repeatable)
    #[arg(long, value_name = "FAULT", value_enum)]
    simplestreams_fault: Vec<StreamFault>,
    /// Clear-sign the simplestreams .sjson documents with this armored secret key instead
    #[arg(long, value_name = "FILE")]
    simplestreams_signed_by: Option<PathBuf>,
}

/// The switches of `fake_store::StreamFaults`, one flag value each.
#[derive(Clone, Copy, ValueEnum)]
enum StreamFault {
    /// Every .sjson changed after signing
    TamperSigned,
    /// No .sjson: an unsigned tree of .json only
    UnsignedOnly,
    /// Every "updated" a day earlier than the store's
    RolledBack,
    /// The products file names another content id than its index entry
    ContentIdMismatch,
    /// Every item path starts with ../
    ItemPathEscapes,
    /// Every item size one more than its file's
    WrongItemSize,
    /// Every item sha256 with its last digit changed
    WrongItemSha256,
}

impl StreamFault {
    fn switch_on(self, faults: &mut fake_store::StreamFaults) {
        let switch = match self {
            StreamFault::TamperSigned => &mut faults.tamper_signed,
            StreamFault::UnsignedOnly => &mut faults.unsigned_only,
            StreamFault::RolledBack => &mut faults.rolled_back,
            StreamFault::ContentIdMismatch => &mut faults.content_id_mismatch,
            StreamFault::ItemPathEscapes => &mut faults.item_path_escapes,
            StreamFault::WrongItemSize => &mut faults.wrong_item_size,
            StreamFault::WrongItemSha256 => &mut faults.wrong_item_sha256,
        };
        *switch = true;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.generate_demo {
        fake_store::demo::write_demo_images(&args.dir)?;
    }
    let signing_key = args.signing_key.map(std::fs::read_to_string).transpose()?;
    let store = FakeStore::open(StoreConfig {
        dir: args.dir.clone(),
        signing_key,
        updated: args.updated,
        public_url: args.public_url,
    })?;
    if args.kib_per_second > 0 {
        store.faults().bytes_per_second = Some(args.kib_per_second << 10);
    }
    if args.store_kib_per_second > 0 {
        store.faults().link = Some(fake_store::Link::new(args.store_kib_per_second << 10));
    }
    {
        let mut faults = store.faults();
        for fault in &args.simplestreams_fault {
            fault.switch_on(&mut faults.simplestreams);
        }
        faults.simplestreams.signed_by = args
            .simplestreams_signed_by
            .map(std::fs::read_to_string)
            .transpose()?;
    }
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "fake-store serving http://{addr}/api from {}",
        args.dir.display()
    );
    println!(
        "  simplestreams mirror {}{}",
        fake_store::simplestreams_root(addr),
        fake_store::SIMPLESTREAMS_INDEX_PATH
    );
    for name in store.set_names() {
        println!("  image set {name}");
    }
    fake_store::serve(listener, store, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
