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
    /// Mint an identity token with the server's key (development and integration).
    Token(TokenArgs),
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    /// TOML configuration file (for the key and the data directory).
    #[arg(long, env = "HUIZHEN_CONFIG")]
    config: Option<PathBuf>,
    /// User id.
    #[arg(long)]
    sub: String,
    /// Display name.
    #[arg(long)]
    name: String,
    /// doctor, patient, companion, expert or observer.
    #[arg(long)]
    role: String,
    /// Clinic grant (repeatable).
    #[arg(long = "clinic")]
    clinics: Vec<String>,
    /// Consultation grant.
    #[arg(long)]
    consultation: Option<String>,
    /// Appointment grant.
    #[arg(long)]
    appointment: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit trail; names the first bad entry.
    Verify {
        /// TOML configuration file (for the data directory).
        #[arg(long, env = "HUIZHEN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write the audit trail as JSON lines (for a regulator's platform).
    Export {
        /// TOML configuration file (for the data directory).
        #[arg(long, env = "HUIZHEN_CONFIG")]
        config: Option<PathBuf>,
        /// Output file; standard output if absent.
        #[arg(long)]
        out: Option<PathBuf>,
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
    /// Override storage.data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
    if let Some(dir) = &args.data_dir {
        config.storage.data_dir = dir.clone();
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
    if let Some(dev) = server.dev_info() {
        println!("Development mode: demo clinic seeded (tokens signed with a generated secret).");
        println!("  Doctor:     {}", dev.links.doctor);
        println!("  Patient:    {}", dev.links.patient);
        println!("  Companion:  {}", dev.links.companion);
        if let Some(key) = &dev.generated_api_key {
            println!("  API key:    {key}  (REST API /api/v1, Authorization: Bearer <key>)");
        }
    }
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

fn config_or_default(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    })
}

fn mint_token(args: TokenArgs) -> anyhow::Result<()> {
    let config = config_or_default(&args.config)?;
    let store = huizhen::store::Store::open(&config.storage.data_dir.join("huizhen.db"))?;
    let (auth, _) = huizhen::server::resolve_auth(&config, &store)?;
    let minter = huizhen::auth::TokenMinter::new(&auth)?;
    let role: huizhen_signaling::clinic::Role =
        serde_json::from_value(serde_json::Value::String(args.role.clone()))
            .with_context(|| format!("unknown role {:?}", args.role))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut claims = huizhen::auth::Claims::new(args.sub, args.name, role, now, args.ttl);
    claims.clinics = args.clinics;
    claims.consultation = args.consultation;
    claims.appointment = args.appointment;
    println!("{}", minter.mint(&claims)?);
    Ok(())
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    let (config, out) = match &command {
        AuditCommand::Verify { config } => (config_or_default(config)?, None),
        AuditCommand::Export { config, out } => (config_or_default(config)?, Some(out.clone())),
    };
    let path = config.storage.data_dir.join("huizhen.db");
    anyhow::ensure!(path.exists(), "no database at {}", path.display());
    let store = huizhen::store::Store::open(&path)?;
    let entries = store.audit_entries(1)?;
    match out {
        None => match huizhen::audit::verify(&entries) {
            Ok(report) => {
                println!(
                    "audit trail OK: {} entries, last seq {}, head hash {}",
                    report.entries, report.last_seq, report.last_hash
                );
                Ok(())
            }
            Err(e) => anyhow::bail!("audit trail BROKEN: {e}"),
        },
        Some(None) => Ok(huizhen::audit::export_jsonl(&entries, std::io::stdout().lock())?),
        Some(Some(file)) => {
            let f = std::fs::File::create(&file)
                .with_context(|| format!("creating {}", file.display()))?;
            huizhen::audit::export_jsonl(&entries, std::io::BufWriter::new(f))?;
            eprintln!("wrote {} entries to {}", entries.len(), file.display());
            Ok(())
        }
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
        Command::Token(args) => mint_token(args),
        Command::Audit { command } => audit(command),
        Command::Config {
            command: ConfigCommand::Check { path },
        } => {
            let config = Config::from_file(&path)?;
            println!("{} is valid:\n{config:#?}", path.display());
            Ok(())
        }
    }
}
