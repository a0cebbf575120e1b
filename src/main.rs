//! The `huizhen` binary: `serve` runs the server, `config check` validates a config file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use huizhen::config::Config;

/// Freed memory goes back to the system (measured in the README's "What strangers cost").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Archived recordings: list, verify, export.
    Recording {
        #[command(subcommand)]
        command: RecordingCommand,
    },
}

/// Where a tool finds the server's data: the same rule for every subcommand. The configuration
/// file (`--config` or `HUIZHEN_CONFIG`; without one, the embedded defaults, as `serve` uses),
/// then `--data-dir` over its `storage.data_dir`. Tools never create a database, a secret or
/// an archive: what is missing is named and the tool fails.
#[derive(clap::Args)]
struct DataArgs {
    /// TOML configuration file (the server's).
    #[arg(long, env = "HUIZHEN_CONFIG")]
    config: Option<PathBuf>,
    /// Override storage.data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DataArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.storage.data_dir = dir.clone();
        }
        Ok(config)
    }
}

/// The server's database, which must exist (a tool never creates one).
fn existing_store(config: &Config) -> anyhow::Result<huizhen::store::Store> {
    let path = config.storage.data_dir.join("huizhen.db");
    anyhow::ensure!(
        path.is_file(),
        "no database at {} (give the server's --config or --data-dir)",
        path.display()
    );
    Ok(huizhen::store::Store::open(&path)?)
}

#[derive(clap::Args)]
struct ArchiveArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Key-encryption key file (32 bytes, hex or base64); default: recording.kek_file/kek_env,
    /// or the development key in the data directory.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Pinned manifest signer: an Ed25519 public key (base64 or PEM, or a file holding one);
    /// repeatable. Default: `recording.signer_public_keys`, else the server's own signing key
    /// (`recording.signing_key_file` or the data directory) when it is at hand.
    #[arg(long = "signer")]
    signers: Vec<String>,
    /// With no pinned signer, accept whatever key a manifest names: proves the recording was
    /// not changed since it was signed, not who signed it.
    #[arg(long)]
    any_signer: bool,
}

#[derive(Subcommand)]
enum RecordingCommand {
    /// List archived recordings.
    List {
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Check the manifest signature, every segment hash and (with a key) every chunk tag;
    /// names the first bad segment.
    Verify {
        /// Recording id.
        id: String,
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Verify, then decrypt every track into a playable .webm/.mkv file.
    Export {
        /// Recording id.
        id: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Also write composite.webm: the video tracks side by side with the audio mixed
        /// (needs ffmpeg).
        #[arg(long)]
        composite: bool,
        #[command(flatten)]
        archive: ArchiveArgs,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    data: DataArgs,
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
        #[command(flatten)]
        data: DataArgs,
    },
    /// Write the audit trail as JSON lines (for a regulator's platform).
    Export {
        #[command(flatten)]
        data: DataArgs,
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
    let shutdown = shutdown_signal()?;
    let config = load_config(&args)?;
    huizhen::telemetry::init_logging(config.log.format);
    let server = huizhen::server::start(config)
        .await
        .context("starting the server")?;
    let scheme = if server.is_tls() { "https" } else { "http" };
    let http = server.http_addr();
    println!("huizhen is running.");
    println!(
        "  Open a room:  {scheme}://{http}/room/demo  (open it in two tabs to talk to yourself)"
    );
    println!(
        "  Watch it:     {scheme}://{http}/watch/demo  (WHEP player; publish with WHIP to {scheme}://{http}/whip/room/demo)"
    );
    println!("  Metrics:      {scheme}://{http}/metrics");
    println!(
        "  Media:        udp {}  ice-tcp {:?}",
        server.udp_addr(),
        server.tcp_addr()
    );
    let turn = server.turn_addrs();
    if turn.udp.is_some() || turn.tcp.is_some() || turn.tls.is_some() {
        println!(
            "  TURN:         udp {:?}  tcp {:?}  tls {:?}  (credentials per session in `joined`)",
            turn.udp, turn.tcp, turn.tls
        );
    } else {
        println!("  TURN:         off");
    }
    if let Some(dev) = server.dev_info() {
        println!("Development mode: demo clinic seeded (tokens signed with a generated secret).");
        println!("  Doctor:     {}", dev.links.doctor);
        println!("  Patient:    {}", dev.links.patient);
        println!("  Companion:  {}", dev.links.companion);
        if let Some(key) = &dev.generated_api_key {
            println!("  API key:    {key}  (REST API /api/v1, Authorization: Bearer <key>)");
        }
    }
    shutdown.await;
    tracing::info!("shutdown requested");
    server.shutdown().await;
    Ok(())
}

/// Install the SIGTERM/Ctrl-C handlers now (before anything is printed, so a supervisor
/// that signals as soon as it sees the server up never hits the default action) and return a
/// future that resolves on the first signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

fn mint_token(args: TokenArgs) -> anyhow::Result<()> {
    let config = args.data.config()?;
    let auth = if config.auth.is_dev_mode() {
        // The development secret the server generated and kept in its database: without
        // one, tokens minted with a fresh secret would be refused by the server.
        let store = existing_store(&config)?;
        let path = config.storage.data_dir.join("huizhen.db");
        anyhow::ensure!(
            store.get_meta(huizhen::server::DEV_SECRET_KEY)?.is_some(),
            "no development secret in {} (start the server once, or configure [auth])",
            path.display()
        );
        huizhen::server::resolve_auth(&config, &store)?.0
    } else {
        config.auth.clone()
    };
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
        AuditCommand::Verify { data } => (data.config()?, None),
        AuditCommand::Export { data, out } => (data.config()?, Some(out.clone())),
    };
    let store = existing_store(&config)?;
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
        Some(None) => Ok(huizhen::audit::export_jsonl(
            &entries,
            std::io::stdout().lock(),
        )?),
        Some(Some(file)) => {
            let f = std::fs::File::create(&file)
                .with_context(|| format!("creating {}", file.display()))?;
            huizhen::audit::export_jsonl(&entries, std::io::BufWriter::new(f))?;
            eprintln!("wrote {} entries to {}", entries.len(), file.display());
            Ok(())
        }
    }
}

/// Keys for reading the archive: the KEK (if any) and the pinned signers (empty when none is
/// known), with where the signers came from.
fn archive_keys(
    config: &Config,
    args: &ArchiveArgs,
) -> anyhow::Result<(
    Option<huizhen::vault::LocalKek>,
    Vec<huizhen::vault::VerifyingKey>,
    String,
)> {
    let data_dir = &config.storage.data_dir;
    let kek = match &args.key {
        Some(path) => Some(huizhen::vault::LocalKek::from_file(path)?),
        None => match config.recording.load_kek()? {
            Some(kek) => Some(kek),
            None => {
                let dev = data_dir.join("recording-kek");
                dev.exists()
                    .then(|| huizhen::vault::LocalKek::from_file(&dev))
                    .transpose()?
            }
        },
    };
    if !args.signers.is_empty() {
        let keys = args
            .signers
            .iter()
            .map(|text| match std::fs::read_to_string(text) {
                Ok(pem) => huizhen::vault::parse_verifying_key(&pem),
                Err(_) => huizhen::vault::parse_verifying_key(text),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((kek, keys, "--signer".into()));
    }
    let configured = config.recording.pinned_signers()?;
    if !configured.is_empty() {
        return Ok((kek, configured, "recording.signer_public_keys".into()));
    }
    let path = config.recording.signing_key_path(data_dir);
    if path.exists() {
        let key = huizhen::vault::load_signing_key(&path)?.verifying_key();
        return Ok((
            kek,
            vec![key],
            format!("the server's key {}", path.display()),
        ));
    }
    Ok((
        kek,
        Vec::new(),
        format!("none (no key at {})", path.display()),
    ))
}

/// Which signers a verification accepts: the pinned ones, or with `--any-signer` and nothing
/// pinned, any (said on standard error). Nothing pinned and no `--any-signer`: `None`.
fn signer_policy<'a>(
    pinned: &'a [huizhen::vault::VerifyingKey],
    from: &str,
    any_signer: bool,
) -> Option<huizhen::vault::Signers<'a>> {
    if !pinned.is_empty() {
        eprintln!("pinned signer: {from}");
        Some(huizhen::vault::Signers::Pinned(pinned))
    } else if any_signer {
        eprintln!("no pinned signer ({from}); --any-signer: the origin is NOT verified");
        Some(huizhen::vault::Signers::AnyKey)
    } else {
        None
    }
}

const NO_SIGNER: &str = "origin UNVERIFIED: no pinned signer; give --signer KEY, set \
recording.signer_public_keys, run where the server's signing key is, or accept any signer \
explicitly with --any-signer";

async fn recording(command: RecordingCommand) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = match &command {
        RecordingCommand::List { archive }
        | RecordingCommand::Verify { archive, .. }
        | RecordingCommand::Export { archive, .. } => archive,
    };
    let config = args.data.config()?;
    let store = huizhen::archive::build_store_read_only(&config.archive).with_context(|| {
        format!(
            "opening the archive (archive.local_dir {}; give the server's --config)",
            config.archive.local_dir.display()
        )
    })?;
    let (kek, pinned, signers_from) = archive_keys(&config, args)?;
    let policy = signer_policy(&pinned, &signers_from, args.any_signer);
    match &command {
        RecordingCommand::List { .. } => {
            for r in huizhen::recorder::tools::list(store.as_ref()).await? {
                let m = &r.manifest;
                let segments: usize = m.tracks.iter().map(|t| t.segments.len()).sum();
                println!(
                    "{}\tconsultation {}\tstarted {}\tended {}\t{} tracks, {} segments{}",
                    r.id,
                    m.consultation,
                    m.started_at_ms,
                    m.ended_at_ms.map_or("-".into(), |t| t.to_string()),
                    m.tracks.len(),
                    segments,
                    m.interrupted
                        .as_ref()
                        .map_or(String::new(), |w| format!("\tINTERRUPTED: {w}")),
                );
            }
            Ok(())
        }
        RecordingCommand::Verify { id, .. } => {
            let kek_ref = kek.as_ref().map(|k| k as &dyn huizhen::vault::KeyWrapper);
            if kek_ref.is_none() {
                eprintln!("no key-encryption key: checking signature and hashes only (use --key)");
            }
            // Without a pinned signer the recording is still checked (and the report says what
            // holds), but the answer is a failure unless any signer was accepted explicitly.
            let signers = policy.unwrap_or(huizhen::vault::Signers::AnyKey);
            let report =
                huizhen::recorder::tools::verify(store.as_ref(), id, signers, kek_ref).await?;
            println!("{report}");
            anyhow::ensure!(report.is_ok(), "recording {id} FAILED verification");
            anyhow::ensure!(policy.is_some(), "recording {id}: {NO_SIGNER}");
            Ok(())
        }
        RecordingCommand::Export {
            id, out, composite, ..
        } => {
            let signers = policy.with_context(|| format!("not exporting {id}: {NO_SIGNER}"))?;
            let kek = kek.context("export needs the key-encryption key (--key FILE)")?;
            let files = huizhen::recorder::tools::export(store, id, signers, &kek, out).await?;
            for (f, _) in &files {
                println!("{}", f.display());
            }
            if *composite {
                let path = out.join("composite.webm");
                huizhen::recorder::tools::composite(&files, &path)?;
                println!("{}", path.display());
            }
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
        Command::Recording { command } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(recording(command)),
        Command::Config {
            command: ConfigCommand::Check { path },
        } => {
            let config = Config::from_file(&path)?;
            println!("{} is valid:\n{config:#?}", path.display());
            Ok(())
        }
    }
}
