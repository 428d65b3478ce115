//! `image-store-proxy demo`: the whole road on one machine. Generates the demo images, serves them
//! with fake-store (signed with the test key) as its `image-store/1` API and as a simplestreams
//! mirror, runs the proxy against both in `--fake-eucalyptus` mode, and prints how to talk to it.

use crate::bundle::gzip::GzipSettings;
use crate::config::{CloudMode, Config, SimplestreamsSettings, Upstream, UpstreamFormat};
use crate::fetch::RetryPolicy;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The secret of the original proxy's README: the demo's UI requests are signed with it.
pub const DEMO_SECRET: &str = "Wbh3dvZwRiqYiX6VtOeBycxGjJhShWORy6r0ng";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its images, state and fake cloud
    #[arg(long, value_name = "DIR", default_value = "demo-data")]
    pub data_dir: PathBuf,
    /// Where the proxy listens (another free port is taken if this one is busy)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:52780")]
    pub listen: String,
    /// Where fake-store listens (likewise)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:52781")]
    pub store_listen: String,
    /// How fast fake-store serves files, in KiB per second in all (its whole link, however many
    /// connections the proxy opens): slow enough by default to watch an install's progress (0: as
    /// fast as possible)
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    pub store_kib_per_second: u64,
}

async fn bind_or_any(addr: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(error) => {
            tracing::warn!("{addr} is busy ({error}); taking a free port instead");
            Ok(TcpListener::bind("127.0.0.1:0").await?)
        }
    }
}

/// How to call this very binary from the current directory.
fn own_command() -> String {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("image-store-proxy"));
    let cwd = std::env::current_dir().unwrap_or_default();
    exe.strip_prefix(&cwd)
        .map(Path::to_path_buf)
        .unwrap_or(exe)
        .display()
        .to_string()
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let images = args.data_dir.join("images");
    fake_store::demo::write_demo_images(&images)
        .with_context(|| format!("writing demo images to {}", images.display()))?;
    let proxy_dir = args.data_dir.join("proxy");
    std::fs::create_dir_all(&proxy_dir)
        .with_context(|| format!("creating {}", proxy_dir.display()))?;
    let keyring = proxy_dir.join("keyring.gpg");
    std::fs::write(&keyring, fake_store::TEST_KEYRING)
        .with_context(|| format!("writing {}", keyring.display()))?;

    let shutdown = CancellationToken::new();
    let store_listener = bind_or_any(&args.store_listen).await?;
    let store_addr = store_listener.local_addr()?;
    let store = fake_store::FakeStore::open(fake_store::StoreConfig {
        dir: images.clone(),
        signing_key: None,
        updated: None,
        public_url: None,
    })
    .context("starting fake-store")?;
    if args.store_kib_per_second > 0 {
        store.faults().link = Some(fake_store::Link::new(args.store_kib_per_second << 10));
    }
    let store_task = tokio::spawn(fake_store::serve(
        store_listener,
        store,
        shutdown.clone().cancelled_owned(),
    ));

    let listener = bind_or_any(&args.listen).await?;
    let addr = listener.local_addr()?;
    let config = Config {
        // fake-store serves both: its own `image-store/1` API and the same images as a
        // clear-signed simplestreams mirror (qcow2 disks, UEC tarballs), with the same key.
        upstreams: vec![
            Upstream {
                url: format!("http://{store_addr}/api").parse()?,
                keyring: keyring.clone(),
                format: UpstreamFormat::ImageStore,
            },
            Upstream {
                url: fake_store::simplestreams_root(store_addr).parse()?,
                keyring: keyring.clone(),
                format: UpstreamFormat::Simplestreams(SimplestreamsSettings {
                    section_title: "Ubuntu cloud images (fake-store's simplestreams mirror)"
                        .to_owned(),
                    ..SimplestreamsSettings::default()
                }),
            },
        ],
        data_dir: proxy_dir.clone(),
        keyring,
        listen: addr.to_string(),
        cloud: CloudMode::Fake {
            secret: DEMO_SECRET.to_string(),
        },
        debug: false,
        catalog_max_age: Duration::from_secs(10),
        workers: 2,
        retry: RetryPolicy::default(),
        gzip: GzipSettings::default_for_this_machine(),
        upload_concurrency: crate::config::DEFAULT_UPLOAD_CONCURRENCY,
        download_connections: crate::config::DEFAULT_DOWNLOAD_CONNECTIONS,
        subscriptions: crate::subscribe::Settings::default(),
        cache_budget: crate::cache::budget::BudgetSettings::default(),
        // fake-store's catalog is dated now: fresh whatever the limit.
        max_download_rate: None,
        max_catalog_age: None,
        allowed_hosts: Vec::new(),
    };
    let app = crate::app::App::build(&config)?;
    let (_reload, no_reloads) = tokio::sync::mpsc::unbounded_channel();
    let me = own_command();
    let client = format!("{me} client --url http://{addr} --secret {DEMO_SECRET}");
    println!(
        "\nimage-store-proxy demo\n\
         \x20 fake store     http://{store_addr}/api   (images in {images})\n\
         \x20 its mirror     {mirror}   (the same images as simplestreams: qcow2 disks, UEC tarballs)\n\
         \x20 proxy          http://{addr}/api   (fake Eucalyptus; state in {proxy})\n\
         \x20 secret         {DEMO_SECRET}\n\
         \x20 fake cloud     {cloud}\n\n\
         Store page: open http://{addr}/store/ in a browser on this machine and enter the secret.\n\n\
         Each command below signs its request when it runs (signatures live 30 s):\n\
         \x20 {client} dashboard\n\
         \x20 {client} install 'Ubuntu 9.10 Server'\n\
         \x20 {client} states 'Ubuntu 9.10 Server'\n\
         \x20 {client} watch 'Ubuntu 9.10 Server'\n\
         and from the mirror, an HVM qcow2 disk:\n\
         \x20 {client} install '(Lucid Lynx) amd64'\n\n\
         Ctrl-C stops the demo; run it again to see the state kept.\n",
        images = images.display(),
        mirror = fake_store::simplestreams_root(store_addr),
        proxy = proxy_dir.display(),
        cloud = proxy_dir.join("fake-cloud").display(),
    );
    let proxy_task = tokio::spawn(app.run(listener, shutdown.clone(), no_reloads));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        result = wait_for(proxy_task) => return result,
    }
    shutdown.cancel();
    let _ = store_task.await;
    Ok(())
}

async fn wait_for(
    task: tokio::task::JoinHandle<Result<(), crate::app::AppError>>,
) -> anyhow::Result<()> {
    Ok(task.await??)
}
