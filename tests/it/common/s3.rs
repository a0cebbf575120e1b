//! A real S3 server process (s3s-fs, which checks SigV4 signatures) for tests, on 127.0.0.1.
//!
//! The binary comes from `cargo install s3s-fs@0.14.1 --locked --features binary`
//! (tests/run-all.sh does it); `S3S_FS_BIN` overrides where it is looked for.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use huizhen::archive::{S3Settings, S3Store};

/// Access key the servers accept.
pub const ACCESS_KEY: &str = "huizhen-test";
/// Secret key the servers accept.
pub const SECRET_KEY: &str = "s3s-fs-test-secret-0123456789";
/// The bucket every server has.
pub const BUCKET: &str = "recordings";
/// The longest any single wait may take.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Where the s3s-fs binary is: `$S3S_FS_BIN`, then `PATH`, then `~/.cargo/bin`.
pub fn s3s_fs_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("S3S_FS_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "S3S_FS_BIN={} is not a file", bin.display());
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let in_cargo = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin").join("s3s-fs"));
    on_path
        .into_iter()
        .chain(in_cargo)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the s3s-fs S3 server is not installed (looked on PATH and in ~/.cargo/bin). \
                 Install it with `cargo install s3s-fs@0.14.1 --locked --features binary` \
                 (tests/run-all.sh does this), or point S3S_FS_BIN at the binary."
            )
        })
}

/// A running s3s-fs process; killed on drop.
pub struct S3sFs {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its root directory (buckets are subdirectories).
    pub root: PathBuf,
    log: PathBuf,
}

impl S3sFs {
    /// Start a server on a free loopback port, serving `root` (with the bucket created).
    pub fn start(root: &Path) -> S3sFs {
        fs::create_dir_all(root.join(BUCKET)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = S3sFs {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            root: root.to_path_buf(),
            log: root.with_extension("log"),
        };
        server.restart();
        server
    }

    /// (Re)start the process on the same port and root; returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap();
            let mut child = Command::new(s3s_fs_binary())
                .arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(self.addr.port().to_string())
                .arg("--access-key")
                .arg(ACCESS_KEY)
                .arg("--secret-key")
                .arg(SECRET_KEY)
                .arg(&self.root)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("cannot start s3s-fs");
            // Ready once it accepts a connection; retry the spawn if it exited (port still
            // held by a dying predecessor).
            loop {
                if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        Instant::now() < deadline,
                        "s3s-fs exited with {status}; log:\n{}",
                        fs::read_to_string(&self.log).unwrap_or_default()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "s3s-fs did not accept connections on {} within {MAX_WAIT:?}; log:\n{}",
                        self.addr,
                        fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    /// Kill the process (like a crashed or unplugged store) and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: self.endpoint(),
            region: "us-east-1".into(),
            bucket: BUCKET.into(),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            path_style: true,
            multipart_threshold: 8 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            object_lock: None,
            default_retention: None,
            timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }

    pub fn store(&self) -> S3Store {
        S3Store::new(self.settings()).unwrap()
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.kill();
    }
}
