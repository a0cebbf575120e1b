//! The `huizhen` binary: `serve` runs the server, `config check` validates a config file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use huizhen::config::Config;

/// huizhen (会诊): real-time telemedicine media server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SFU, signaling, web client). Without --config, embedded defaults.
    Serve(ServeArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see configs/huizhen.toml for every field).
    #[arg(long, env = "HUIZHEN_CONFIG")]
    config: Option<PathBuf>,
    /// Override http.listen.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Override media.udp_listen.
    #[arg(long)]
    udp_listen: Option<SocketAddr>,
    /// Override media.tcp_listen.
    #[arg(long)]
    tcp_listen: Option<SocketAddr>,
    /// Override media.announce (repeatable).
    #[arg(long)]
    announce: Vec<IpAddr>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration.
    Check {
        /// The file.
        path: PathBuf,
    },
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(a) = args.http_listen {
        config.http.listen = a;
    }
    if let Some(a) = args.udp_listen {
        config.media.udp_listen = a;
    }
    if let Some(a) = args.tcp_listen {
        config.media.tcp_listen = a;
    }
    if !args.announce.is_empty() {
        config.media.announce = args.announce.clone();
    }
    config.validate()?;
    Ok(config)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    huizhen::telemetry::init_logging(config.log.format);
    let server = huizhen::server::start(config)
        .await
        .context("starting the server")?;
    let scheme = if server.is_tls() { "https" } else { "http" };
    let http = server.http_addr();
    println!("huizhen is running.");
    println!("  Open a room:  {scheme}://{http}/room/demo  (open it in two tabs to talk to yourself)");
    println!("  Metrics:      {scheme}://{http}/metrics");
    println!("  Media:        udp {}  ice-tcp {:?}", server.udp_addr(), server.tcp_addr());
    wait_for_signal().await;
    tracing::info!("shutdown requested");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(serve(args)),
        Command::Config {
            command: ConfigCommand::Check { path },
        } => {
            let config = Config::from_file(&path)?;
            println!("{} is valid:\n{config:#?}", path.display());
            Ok(())
        }
    }
}
