//! Creating and reading small secret files (the dev-path signing key and KEK).
//!
//! Secrets are created owner-only from the first byte (never chmod-ed after the fact) and
//! published atomically with a hard link, so a crash leaves either no file or a whole one, and two
//! processes racing to create the same key end up sharing the one that won.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// What [`create_secret_file`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Created {
    /// The file was written with our contents.
    New,
    /// A file already existed at the path; it was left alone.
    AlreadyExists,
}

/// Write `contents` to a new owner-only (0600) file at `path` unless one exists.
pub(crate) fn create_secret_file(path: &Path, contents: &[u8]) -> io::Result<Created> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = file_name.to_owned();
    tmp_name.push(format!(
        ".tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let tmp = path.with_file_name(tmp_name);

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let published = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(Created::New),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::AlreadyExists),
        // Filesystems without hard links: rename is still atomic, only not race-free.
        Err(_) => fs::rename(&tmp, path).map(|()| Created::New),
    };
    let _ = fs::remove_file(&tmp);
    if let (Ok(Created::New), Some(parent)) = (&published, path.parent()) {
        // Make the new directory entry durable; best effort (not all platforms allow it).
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    published
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Warn when a secret file is readable by group or others. A warning, not an error: container
/// secret mounts are often 0644 inside a private namespace.
pub(crate) fn warn_if_shared(path: &Path, what: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "{what} file is readable by other users; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_owner_only_once() {
        let dir = std::env::temp_dir().join(format!("hz-secret-{}", std::process::id()));
        let path = dir.join("nested").join("key");
        assert_eq!(create_secret_file(&path, b"one").unwrap(), Created::New);
        assert_eq!(
            create_secret_file(&path, b"two").unwrap(),
            Created::AlreadyExists
        );
        assert_eq!(fs::read(&path).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
