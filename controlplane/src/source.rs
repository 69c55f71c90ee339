//! Where a config document comes from: a TOML file, or a folder of them (usually a git
//! checkout), read into one document with the data plane's own [`sluice::config::assemble`],
//! and the git commit it was read at.
//!
//! A folder's `*.toml` files are read in name order, not recursively; hidden files (a leading
//! `.`) are skipped. The commit is `git rev-parse HEAD` in the folder, with `-dirty` appended
//! when `git status --porcelain` lists a change under the config path — the version then says
//! its document is not exactly that commit. Outside a git checkout (or without `git` on the
//! machine) the commit is empty.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice::config::ConfigErrors;

/// The largest document accepted, in bytes (1 MiB): far above any real gateway's config, and
/// well under gRPC's default 4 MiB message limit for the snapshot that carries it.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// One config document read from a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The TOML text: the file's, or the folder's files assembled.
    pub toml: String,
    /// The path it was read from, as given.
    pub source: String,
    /// The git commit it was read at (`-dirty` when the tree differs); empty outside git.
    pub git_commit: String,
}

/// Why a path could not be read as a document.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path, a folder, or one of its files could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A folder with no `*.toml` file in it.
    #[error("{} holds no *.toml file", .0.display())]
    Empty(PathBuf),
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("{path} is {size} bytes: more than the {MAX_DOCUMENT_BYTES} a config document may hold", path = .0.display(), size = .1)]
    TooLarge(PathBuf, usize),
    /// The folder's files do not assemble into one document (each error located).
    #[error("{0}")]
    Assemble(ConfigErrors),
}

/// Reads `path`: a file as it is, or a folder's `*.toml` files assembled in name order.
pub fn read(path: &Path) -> Result<Document, SourceError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |error| SourceError::Read { path, error }
    };
    let meta = std::fs::metadata(path).map_err(read_error(path))?;
    let toml = if meta.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(read_error(path))? {
            let entry = entry.map_err(read_error(path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let file = entry.path();
            if name.starts_with('.') || !name.ends_with(".toml") || !file.is_file() {
                continue;
            }
            files.push(name);
        }
        if files.is_empty() {
            return Err(SourceError::Empty(path.to_path_buf()));
        }
        files.sort();
        let mut texts = Vec::with_capacity(files.len());
        let mut total = 0;
        for name in &files {
            let file = path.join(name);
            let text = std::fs::read_to_string(&file).map_err(read_error(&file))?;
            total += text.len();
            if total > MAX_DOCUMENT_BYTES {
                return Err(SourceError::TooLarge(path.to_path_buf(), total));
            }
            texts.push(text);
        }
        sluice::config::assemble(
            files
                .iter()
                .map(String::as_str)
                .zip(texts.iter().map(String::as_str)),
        )
        .map_err(SourceError::Assemble)?
    } else {
        let text = std::fs::read_to_string(path).map_err(read_error(path))?;
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(SourceError::TooLarge(path.to_path_buf(), text.len()));
        }
        text
    };
    Ok(Document {
        toml,
        source: path.display().to_string(),
        git_commit: git_commit(path).unwrap_or_default(),
    })
}

/// The commit of the checkout holding `path`, `-dirty` when the tree differs under `path`;
/// `None` outside a checkout or without `git`.
pub fn git_commit(path: &Path) -> Option<String> {
    let folder = if path.is_dir() {
        path
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(folder)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--verify", "HEAD"])?;
    if commit.is_empty() {
        return None;
    }
    // Untracked files count: a new file in a config folder changes the document.
    let target = if path.is_dir() {
        ".".to_string()
    } else {
        path.file_name()?.to_string_lossy().into_owned()
    };
    let status = git(&[
        "status",
        "--porcelain",
        "--untracked-files=all",
        "--",
        &target,
    ])?;
    Some(if status.is_empty() {
        commit
    } else {
        format!("{commit}-dirty")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_folder_is_its_toml_files_in_name_order() {
        let dir = temp_dir("order");
        std::fs::write(
            dir.join("b.toml"),
            "[[deployment]]\nname = \"d\"\nbackends = [{ backend = \"m\" }]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("a.toml"),
            "[[backend]]\nname = \"m\"\nkind = \"mock\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.md"), "not config").unwrap();
        std::fs::write(dir.join(".hidden.toml"), "not = config").unwrap();
        let doc = read(&dir).unwrap();
        let a = doc.toml.find("[[backend]]").unwrap();
        let b = doc.toml.find("[[deployment]]").unwrap();
        assert!(a < b, "{}", doc.toml);
        assert!(!doc.toml.contains("not"));
        sluice::config::check_document(Path::new(&doc.source), &doc.toml).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_folders_and_huge_files_are_refused() {
        let dir = temp_dir("empty");
        assert!(matches!(read(&dir), Err(SourceError::Empty(_))));
        let big = dir.join("big.toml");
        std::fs::write(&big, "#".repeat(MAX_DOCUMENT_BYTES + 1)).unwrap();
        assert!(matches!(read(&big), Err(SourceError::TooLarge(_, _))));
        assert!(matches!(
            read(&dir.join("absent.toml")),
            Err(SourceError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
