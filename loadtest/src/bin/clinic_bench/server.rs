//! The server under test: a real `huizhen serve` process with its own data directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The `huizhen` binary.
    pub bin: PathBuf,
    /// Pin the server to this CPU (`taskset -c`).
    pub cpu: Option<usize>,
    /// Longest wait for the server to print its address (a big store loads first).
    pub start_timeout: Duration,
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    /// `host:port` of HTTP and the WebSocket.
    pub http: String,
    /// The REST API key.
    pub api_key: String,
    /// Time from spawn to the address being printed (includes loading the store).
    pub startup: Duration,
}

/// The run directory of one server: config, data, archive, log.
pub struct ServerDir {
    /// The directory.
    pub root: PathBuf,
    /// The TOML config in it.
    pub config: PathBuf,
    /// `storage.data_dir`.
    pub data_dir: PathBuf,
    /// The API key written into the config.
    pub api_key: String,
}

impl ServerDir {
    /// Create `root` and a config in it: embedded defaults except loopback listeners with
    /// ephemeral ports, the directories, and a fixed API key (so nothing depends on it being
    /// printed).
    pub fn create(root: &Path) -> anyhow::Result<ServerDir> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let data_dir = root.join("data");
        let api_key = format!("bench-{:016x}{:016x}", random_u64(), random_u64());
        let config = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\
             [media]\nudp_listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n[turn]\nudp_listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n\
             [storage]\ndata_dir = \"{}\"\n\
             [archive]\nlocal_dir = \"{}\"\n\
             [api]\nkey = \"{api_key}\"\n",
            data_dir.display(),
            root.join("archive").display()
        );
        let path = root.join("huizhen.toml");
        std::fs::write(&path, config)?;
        Ok(ServerDir {
            root: root.to_owned(),
            config: path,
            data_dir,
            api_key,
        })
    }

    /// The SQLite database the server keeps.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("huizhen.db")
    }
}

impl Server {
    /// Start `huizhen serve` and wait until it printed its HTTP address.
    pub fn start(spec: &ServerSpec, dir: &ServerDir) -> anyhow::Result<Server> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.root.join("server.log"))?;
        let config = dir.config.to_str().context("config path is not UTF-8")?;
        let mut command = match spec.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&spec.bin);
                c
            }
            None => Command::new(&spec.bin),
        };
        command
            .args(["serve", "--config", config])
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        // Reads stdout to the end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("/room/demo") {
                    let addr = line
                        .split("http://")
                        .nth(1)
                        .and_then(|r| r.split('/').next())
                        .map(str::to_owned);
                    if let Some(addr) = addr {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            http: String::new(),
            api_key: dir.api_key.clone(),
            startup: Duration::ZERO,
        };
        match rx.recv_timeout(spec.start_timeout) {
            Ok(addr) => {
                server.http = addr;
                server.startup = spawned.elapsed();
                Ok(server)
            }
            Err(_) => {
                let status = server
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                bail!(
                    "the server printed no address within {:?} (exit status {status:?}; see {})",
                    spec.start_timeout,
                    dir.root.join("server.log").display()
                )
            }
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// CPU time and resident memory now.
    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        sample(self.pid())
    }

    /// SIGTERM, wait for the exit (a clean shutdown persists the clinic state); SIGKILL after
    /// `timeout`.
    pub fn stop(mut self, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not exit within {timeout:?} of SIGTERM (killed)");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User + system CPU time since the start.
    pub cpu: Duration,
    /// VmRSS, bytes.
    pub rss: u64,
}

/// `utime + stime` from `/proc/<pid>/stat` and `VmRSS` from `/proc/<pid>/status`.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat format")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    // USER_HZ is 100 on Linux's user-space interfaces.
    Ok(ProcSample {
        cpu: Duration::from_millis(ticks * 10),
        rss: kib * 1024,
    })
}

/// Some randomness without a dependency: the std hasher's per-process keys and the clock.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
