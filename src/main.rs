//! The `image-store-proxy` command: the daemon (flags of the original proxy), `demo`, `client`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use image_store_proxy::report::one_line;
use image_store_proxy::{app, client, config::DaemonArgs};
use std::io::Write;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "image-store-proxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run fake-store with demo images and the proxy in fake-Eucalyptus mode, and say how to use them
    #[cfg(feature = "demo")]
    Demo(image_store_proxy::demo::DemoArgs),
    /// Send signed requests to a running proxy, as the Store tab does
    Client(client::ClientArgs),
    /// Print what the next catalog refresh would install and deregister for the subscriptions
    /// (--subscribe, --keep), with sizes, and the cache against its budget; changes nothing.
    /// Takes the daemon's flags and --config
    Plan(Box<DaemonArgs>),
}

fn main() -> ExitCode {
    tune_malloc();
    run()
}

/// glibc malloc settings for a process whose allocations are few and large (buffers of 64 KiB to
/// 1 MiB, made and freed by many threads), each unless the environment sets it already.
///
/// - `MALLOC_ARENA_MAX=1`: glibc gives each thread that allocates an arena of its own (up to 8
///   per core) and keeps what is freed there: an install's threads (download, signature, bundle,
///   encryption, deflate, uploads, tokio's blocking pool) took the daemon's peak RSS from 46 to
///   169 MiB (`bench/pipeline gzip 1024 0`; 72 MiB with 2). Threads sharing one arena cost
///   nothing measurable (2.83 s with one against 3.17 s with two).
/// - `MALLOC_MMAP_THRESHOLD_=131072`: glibc's own starting value, fixed. Left alone, the
///   threshold climbs to the size of each mmapped buffer freed, so the 1 MiB chunks then come
///   from the heap, which keeps their pages when they are freed: the 4 GiB uncompressed install
///   peaked at 64.2 MiB, 46 MiB of it heap; fixed, at 55.3. At 1 GiB it peaks at 54–56 MiB
///   against 61–67 uncompressed and 44–46 against 51 gzipped (`bench/pipeline raw|gzip 1024 0`).
///   The price: an uncompressed install takes about 5 % longer (16.3–16.8 s against 15.5–15.9),
///   each 1 MiB chunk now mapped and its pages faulted in afresh.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_SETTINGS: [(&str, &str); 2] = [
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
];

/// glibc reads [`MALLOC_SETTINGS`] only as the process starts, and `mallopt` would need the
/// unsafe code this crate forbids: so the process starts itself again, once, with them set (the
/// same pid, for systemd), unless its environment holds the first already. If that cannot be
/// done, it goes on as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(MALLOC_SETTINGS[0].0).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut again = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        again.arg0(arg0);
    }
    for (name, value) in MALLOC_SETTINGS {
        if std::env::var_os(name).is_none() {
            again.env(name, value);
        }
    }
    // Returns only if the exec failed.
    let error = again.args(args).exec();
    eprintln!("image-store-proxy: not restarted with its malloc settings ({error}); going on");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

#[tokio::main]
async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        #[cfg(feature = "demo")]
        Some(Command::Demo(args)) => {
            image_store_proxy::logging::init(false);
            image_store_proxy::demo::run(args).await
        }
        Some(Command::Client(args)) => {
            image_store_proxy::logging::init(false);
            if let Err(error) = client::run(args).await {
                eprintln!("image-store-proxy: {}", one_line(&error));
                return ExitCode::from(error.exit_code());
            }
            Ok(())
        }
        Some(Command::Plan(args)) => {
            image_store_proxy::logging::init(args.debug);
            run_plan(*args).await
        }
        None => {
            image_store_proxy::logging::init(cli.daemon.debug);
            run_daemon(cli.daemon).await.inspect_err(|error| {
                image_store_proxy::notify::failed(&one_line(error.as_ref()), errno_of(error))
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let line = format!("image-store-proxy: {}", one_line(error.as_ref()));
            eprintln!("{}", image_store_proxy::logging::error_line(&line));
            ExitCode::FAILURE
        }
    }
}

async fn run_daemon(args: DaemonArgs) -> anyhow::Result<()> {
    let config = args.clone().resolve()?;
    // The start-up checks (credentials, data directory, database) come before any word of
    // listening: a daemon that cannot install anything must not look as if it started.
    let app = app::App::build(&config)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // One line on stdout for whoever started us (tests pass --listen 127.0.0.1:0 and read it).
    println!("image-store-proxy listening on http://{addr}/api");
    std::io::stdout().flush()?;
    let upstreams: Vec<&str> = config.upstreams.iter().map(|u| u.url.as_str()).collect();
    tracing::info!(upstreams = %upstreams.join(" "), data_dir = %config.data_dir.display(), "starting");
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    // Installed here, before READY=1 can go out: a SIGTERM right after it must find the handler.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (reload, reloads) = tokio::sync::mpsc::unbounded_channel();
    // SIGHUP: the same flags, the --config file read again; a configuration that does not load
    // leaves the running one in place.
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match args.clone().resolve() {
                Ok(config) => {
                    let _ = reload.send(config);
                }
                Err(error) => tracing::warn!(
                    "reload refused, the running configuration stays: {}",
                    one_line(&error)
                ),
            }
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        image_store_proxy::notify::stopping();
        on_signal.cancel();
    });
    app.run(listener, shutdown, reloads).await?;
    Ok(())
}

/// `plan`: the daemon's configuration, its data dir read and its upstreams verified, nothing
/// written.
async fn run_plan(args: DaemonArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let report = app::plan(&config).await?;
    print!("{report}");
    std::io::stdout().flush()?;
    Ok(())
}

/// The OS error behind a failed start (the listen address in use, a data dir we may not write),
/// else EINVAL: the configuration was refused.
fn errno_of(error: &anyhow::Error) -> i32 {
    const EINVAL: i32 = 22;
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<std::io::Error>()?.raw_os_error())
        .unwrap_or(EINVAL)
}
