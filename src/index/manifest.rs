//! What an index records about itself: its settings and every indexed file's fingerprint.
//!
//! The manifest travels as the payload of each tantivy commit, so it changes atomically with
//! the passages it describes: after an interrupted run, the index and its manifest are both
//! those of the last commit.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::analyzer::Analyzer;

/// The manifest's format; an index written with another format is refused with a hint.
pub const FORMAT: u32 = 1;

/// Settings and files of an index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// How text is cut into terms.
    pub analyzer: Analyzer,
    /// Every indexed file by its absolute path.
    pub files: BTreeMap<String, FileEntry>,
    /// The folders and files given to `bertqa index` (absolute): answers name files relative
    /// to them. Absent from indexes written before it was recorded.
    #[serde(default)]
    pub roots: BTreeSet<String>,
}

/// What was indexed from one file, and how to tell whether it changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, in nanoseconds since the Unix epoch (0 when unknown).
    pub modified_ns: u128,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Documents read from it.
    pub documents: u64,
    /// Passages indexed from it.
    pub passages: u64,
}

impl Manifest {
    /// An empty index's manifest.
    pub fn new(analyzer: Analyzer) -> Self {
        Self {
            format: FORMAT,
            analyzer,
            files: BTreeMap::new(),
            roots: BTreeSet::new(),
        }
    }

    /// Reads a commit payload; `Err` says what is wrong.
    pub fn from_payload(payload: &str) -> Result<Self, String> {
        let manifest: Manifest = serde_json::from_str(payload)
            .map_err(|e| format!("its manifest (commit payload) is unreadable: {e}"))?;
        if manifest.format != FORMAT {
            return Err(format!(
                "it was written in format {} and this bertqa reads format {FORMAT}; rebuild it",
                manifest.format
            ));
        }
        Ok(manifest)
    }

    /// The commit payload.
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Total documents and passages over all files.
    pub fn totals(&self) -> (u64, u64) {
        self.files
            .values()
            .fold((0, 0), |(d, p), f| (d + f.documents, p + f.passages))
    }

    /// `key` (an indexed file) relative to the parent of the longest root that holds it, so
    /// that it starts with the root's own name (`docs/guide/a.md`); a file under no recorded
    /// root is named by its file name.
    pub fn relative_path(&self, key: &str) -> String {
        let root = self
            .roots
            .iter()
            .filter(|r| {
                let r = r.trim_end_matches('/');
                key == r || key.starts_with(&format!("{r}/"))
            })
            .max_by_key(|r| r.len());
        let path = std::path::Path::new(key);
        let shown = root
            .and_then(|r| std::path::Path::new(r).parent())
            .and_then(|parent| path.strip_prefix(parent).ok())
            .or_else(|| path.file_name().map(std::path::Path::new));
        shown.map_or_else(|| key.to_string(), |p| p.to_string_lossy().into_owned())
    }

    /// Indexed files at `path` or under it (when it is a folder).
    pub fn files_under(&self, path: &str) -> Vec<String> {
        let base = path.trim_end_matches('/');
        let folder = format!("{base}/");
        self.files
            .keys()
            .filter(|f| f.as_str() == base || f.starts_with(&folder))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> FileEntry {
        FileEntry {
            size: 3,
            modified_ns: 1,
            sha256: "ab".into(),
            documents: 2,
            passages: 5,
        }
    }

    #[test]
    fn payload_round_trips_and_other_formats_are_refused() {
        let mut m = Manifest::new(Analyzer::Plain);
        m.files.insert("/d/a.txt".into(), entry());
        let back = Manifest::from_payload(&m.to_payload()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.totals(), (2, 5));
        let future = m.to_payload().replace("\"format\":1", "\"format\":9");
        assert!(Manifest::from_payload(&future)
            .unwrap_err()
            .contains("format 9"));
        assert!(Manifest::from_payload("{").is_err());
    }

    #[test]
    fn files_under_a_folder_do_not_include_its_namesakes() {
        let mut m = Manifest::new(Analyzer::English);
        for f in ["/d/a.txt", "/d/sub/b.md", "/dx/c.txt", "/d"] {
            m.files.insert(f.into(), entry());
        }
        assert_eq!(m.files_under("/d/"), ["/d", "/d/a.txt", "/d/sub/b.md"]);
        assert_eq!(m.files_under("/d/a.txt"), ["/d/a.txt"]);
    }

    #[test]
    fn paths_are_shown_relative_to_their_root() {
        let mut m = Manifest::new(Analyzer::English);
        m.roots.insert("/home/u/docs".into());
        m.roots.insert("/home/u/docs/sub".into());
        m.roots.insert("/srv/one.txt".into());
        assert_eq!(m.relative_path("/home/u/docs/a.txt"), "docs/a.txt");
        assert_eq!(m.relative_path("/home/u/docs/sub/b.md"), "sub/b.md");
        assert_eq!(m.relative_path("/srv/one.txt"), "one.txt");
        assert_eq!(m.relative_path("/elsewhere/c.txt"), "c.txt");
        assert_eq!(m.relative_path("/home/u/docsx/c.txt"), "c.txt");
        // Manifests written before roots were recorded still read.
        let old = r#"{"format":1,"analyzer":"english","files":{}}"#;
        assert!(Manifest::from_payload(old).unwrap().roots.is_empty());
    }
}
