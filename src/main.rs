//! The `walship` binary: parse flags, set up logging, dispatch, map errors to exit codes.

use clap::Parser;
use std::process::ExitCode;
use walship::cli::{self, Cli, Command, LogFormat};

fn init_logging(format: LogFormat, filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| filter.and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok()))
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info,object_store=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A closed stderr must never stop replication: the subscriber's fallback report of
        // a failed write is an `eprintln!`, which panics (and aborts) on a closed pipe.
        .log_internal_errors(false);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// Register for SIGTERM/SIGINT now (so a signal during start-up is not fatal) and return
/// a future that resolves, with the signal's number, when one arrives.
fn terminated() -> impl std::future::Future<Output = i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        }
    }
}

fn main() -> ExitCode {
    walship::clock::process_start();
    // Anything but a file proven absent is fatal to recovery: PostgreSQL takes a
    // `restore_command` exit status above 125 as such and stops, where 1 or 2 would mean
    // "not archived" and promote a truncated history. A misconfigured wal-fetch included.
    let fetching = std::env::args().skip(1).any(|a| a == "wal-fetch");
    let args = match Cli::try_parse_from(cli::gostyle::rewrite(std::env::args_os())) {
        Ok(a) => a,
        Err(e) if fetching && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(cli::wal::FETCH_FATAL_EXIT);
        }
        Err(e) => e.exit(),
    };
    // `replicate` does its heavy work on its capture threads; one async thread serves the
    // uploads and the metrics endpoint with fewer wake-ups. Restore writes from blocking
    // sections while downloads continue, which needs the multi-threaded runtime.
    let runtime = if matches!(args.command, Command::Replicate(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    // From here on a SIGTERM is a request to ship and stop, not a kill.
    let stop = {
        let _in_runtime = runtime.enter();
        terminated()
    };
    walship::config::set_expand_env(!args.no_expand_env);
    let verbose = args.verbose.then_some("debug");
    // `replicate` sets up logging once its config (which may choose JSON) is read.
    if !matches!(args.command, Command::Replicate(_)) {
        init_logging(args.log_format, args.log.as_deref().or(verbose));
    }
    let result = runtime.block_on(async {
        let done: walship::Result<()> = match args.command {
            Command::Replicate(a) => {
                let cfg = a.config();
                let json = cfg.as_ref().map(|c| c.log_json).unwrap_or(false);
                let level = cfg.as_ref().ok().and_then(|c| c.log_level.clone());
                let format = if json {
                    LogFormat::Json
                } else {
                    args.log_format
                };
                let filter = args
                    .log
                    .as_deref()
                    .or(a.log_level.as_deref())
                    .or(verbose)
                    .or(level.as_deref());
                init_logging(format, filter);
                return cli::replicate::run(cfg?, a.banner(), a.once, stop).await;
            }
            Command::Version => {
                println!("walship {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
            Command::Restore(a) => cli::restore::run(a).await,
            Command::Generations(a) => cli::generations::run(a).await,
            Command::Snapshots(a) => cli::snapshots::run(a).await,
            Command::Verify(a) => cli::verify::run(a).await,
            Command::Cleanup(a) => cli::cleanup::run(a).await,
            Command::WalPush(a) => cli::wal::push(a).await,
            Command::PgBackup(a) => cli::wal::backup(a).await,
            Command::PgRestore(a) => cli::wal::restore(a).await,
            Command::Backups(a) => cli::backups::run(a).await,
            Command::WalFetch(a) => {
                let name = a.wal_name.clone();
                match cli::wal::fetch(a).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(walship::Error::Absent(format!("{name} is not archived"))),
                    Err(e) => Err(e),
                }
            }
        };
        done.map(|()| 0)
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e @ walship::Error::Absent(_)) => {
            tracing::debug!("{e}");
            ExitCode::from(1)
        }
        Err(e) => {
            cli::say_err(&format!("walship: error: {e}"));
            if fetching {
                return ExitCode::from(cli::wal::FETCH_FATAL_EXIT);
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
