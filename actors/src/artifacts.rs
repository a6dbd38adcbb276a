//! A job's outputs: the files it leaves under `$GANTRY_OUTPUT_DIR`, stored when its attempt
//! ends (success or failure) in an [`ArtifactStore`], each recorded by an `artifact.stored`
//! event with its name, size, SHA-256 and where the bytes are.
//!
//! What may be collected is decided here, before anything is read: names are relative paths
//! of plain files inside the output directory (symbolic links and anything else are skipped,
//! never followed), bounded in length, depth, count and total size.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use gantry_events::Hash;

/// Where an artifact's bytes went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The store's key: `sha256/<hex>` (content-addressed: the same bytes are kept once).
    pub location: String,
    pub sha256: Hash,
    pub size_bytes: u64,
}

/// Why the artifact store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    /// No artifact at that location; 404.
    #[error("no artifact at {0}")]
    NotFound(String),
    /// The store cannot be reached, read or written; 503.
    #[error("artifact store: {0}")]
    Unavailable(String),
}

/// Where artifacts are kept. Implementations live in `gantry-nodes` (a local folder today).
pub trait ArtifactStore: Send + Sync + std::fmt::Debug + 'static {
    /// `local`, or the kind of remote store.
    fn kind(&self) -> &'static str;

    /// Streams the file at `path` into the store, hashing while it reads; durable before it
    /// answers.
    fn put_file<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<Stored, ArtifactError>>;

    /// The bytes `start..end` (end exclusive) of the artifact at `location`, as a stream.
    fn read<'a>(
        &'a self,
        location: &'a str,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, ArtifactError>>, ArtifactError>>;

    /// Deletes the bytes at `location` (retention); deleting what is not there is not an
    /// error.
    fn delete<'a>(&'a self, location: &'a str) -> BoxFuture<'a, Result<(), ArtifactError>>;
}

/// Bounds on what one attempt may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    pub max_files: usize,
    pub max_total_bytes: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_files: 1_000,
            max_total_bytes: 8 << 30,
        }
    }
}

/// Longest artifact name, and deepest folder nesting.
pub const MAX_NAME_BYTES: usize = 512;
const MAX_DEPTH: usize = 32;

/// Names under this prefix are gantry's own (the attempt's output is kept as
/// `.gantry/output.log`); a job's files there are not collected.
pub const RESERVED_PREFIX: &str = ".gantry/";

/// The name gantry keeps an attempt's stdout and stderr under.
pub const OUTPUT_LOG_NAME: &str = ".gantry/output.log";

/// Whether `name` is an acceptable artifact name: a relative path of `/`-separated
/// components, none empty, `.` or `..`, printable, at most 512 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with('/')
        && !name.chars().any(char::is_control)
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// What collecting an output directory found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Files to store, by name, within the limits.
    pub files: Vec<(String, PathBuf, u64)>,
    /// Entries not collected, with why (a symbolic link, a bad name, …).
    pub skipped: Vec<(String, &'static str)>,
    /// The limit the directory went past, if any: the files before it are still collected.
    pub over_limit: Option<String>,
}

/// Lists the plain files under `dir` without following any link, in name order, within
/// `limits`.
pub fn collect(dir: &Path, limits: &OutputLimits) -> std::io::Result<Collected> {
    let mut out = Collected::default();
    let mut total = 0u64;
    walk(dir, "", 0, limits, &mut total, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    limits: &OutputLimits,
    total: &mut u64,
    out: &mut Collected,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if out.over_limit.is_some() {
            return Ok(());
        }
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
            out.skipped
                .push((entry.file_name().to_string_lossy().into(), "name not UTF-8"));
            continue;
        };
        let name = format!("{prefix}{file_name}");
        // `symlink_metadata`: a link is seen as a link, never as what it points to.
        let meta = entry.path().symlink_metadata()?;
        if meta.file_type().is_symlink() {
            out.skipped.push((name, "symbolic link"));
        } else if meta.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                out.skipped.push((name, "nested too deep"));
            } else {
                walk(
                    &entry.path(),
                    &format!("{name}/"),
                    depth + 1,
                    limits,
                    total,
                    out,
                )?;
            }
        } else if !meta.is_file() {
            out.skipped.push((name, "not a plain file"));
        } else if !valid_name(&name) || name.starts_with(RESERVED_PREFIX) {
            out.skipped.push((name, "name not allowed"));
        } else if out.files.len() >= limits.max_files {
            out.over_limit = Some(format!("more than {} files", limits.max_files));
        } else if *total + meta.len() > limits.max_total_bytes {
            out.over_limit = Some(format!("more than {} bytes", limits.max_total_bytes));
        } else {
            *total += meta.len();
            out.files.push((name, entry.path(), meta.len()));
        }
    }
    Ok(())
}

/// Writes the artifact at `location` to `path`, hashing what it writes: an error names what
/// went wrong, including bytes that do not hash to `sha256`.
pub async fn fetch(
    store: &dyn ArtifactStore,
    location: &str,
    size: u64,
    sha256: Hash,
    path: &Path,
) -> Result<(), String> {
    use futures::StreamExt;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut stream = store
        .read(location, 0, size)
        .await
        .map_err(|e| e.to_string())?;
    let mut hasher = sha2::Sha256::new();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        hasher.update(&chunk);
        written += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    file.flush().await.map_err(|e| e.to_string())?;
    let got = Hash(hasher.finalize().into());
    if written != size || got != sha256 {
        return Err(format!(
            "{written} bytes hashing to {} (recorded: {size} bytes, {})",
            got.to_hex(),
            sha256.to_hex()
        ));
    }
    Ok(())
}

/// Makes a folder and everything in it readable by all and writable by none (a job reads its
/// inputs, never changes them).
pub fn make_read_only(dir: &Path) -> std::io::Result<()> {
    set_modes(dir, 0o555, 0o444)
}

/// Gives the owner write access back, so the folder can be removed.
pub fn make_writable(dir: &Path) -> std::io::Result<()> {
    set_modes(dir, 0o755, 0o644)
}

fn set_modes(dir: &Path, dirs: u32, files: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if meta.is_dir() {
            set_modes(&entry.path(), dirs, files)?;
        } else if meta.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(files))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dirs))
}

/// A media type from the name's extension (`application/octet-stream` when unknown).
pub fn media_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "log") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("csv") => "text/csv",
        Some("html") => "text/html",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("tar") => "application/x-tar",
        Some("gz") => "application/gzip",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_relative_paths_that_stay_inside() {
        for ok in ["model.pt", "ckpt/epoch-3/weights.bin", "a b.txt"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\nb",
            &"x".repeat(513),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn collecting_skips_links_and_stops_at_the_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        std::fs::create_dir_all(out.join("sub")).expect("mkdir");
        std::fs::write(out.join("a.txt"), b"aaaa").expect("write");
        std::fs::write(out.join("sub/b.bin"), b"bbbbbbbb").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", out.join("leak")).expect("symlink");
        std::os::unix::fs::symlink("/etc", out.join("sub/etc")).expect("symlink");
        std::fs::create_dir_all(out.join(".gantry")).expect("mkdir");
        std::fs::write(out.join(".gantry/output.log"), b"forged").expect("write");
        let all = collect(out, &OutputLimits::default()).expect("collect");
        let names: Vec<&str> = all.files.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["a.txt", "sub/b.bin"]);
        assert_eq!(
            all.skipped,
            vec![
                (".gantry/output.log".to_owned(), "name not allowed"),
                ("leak".to_owned(), "symbolic link"),
                ("sub/etc".to_owned(), "symbolic link"),
            ]
        );
        assert_eq!(all.over_limit, None);
        let small = OutputLimits {
            max_files: 10,
            max_total_bytes: 6,
        };
        let limited = collect(out, &small).expect("collect");
        assert_eq!(limited.files.len(), 1, "what fits before the limit is kept");
        assert!(limited.over_limit.is_some());
    }
}
