//! Adding files to an index and removing them: folder walks, change detection by content
//! hash, and commits that carry the manifest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};
use tantivy::{doc, IndexWriter, Term};

use super::documents::{read_documents, Document, FileKind};
use super::manifest::FileEntry;
use super::passages::{split_passages_counted, MAX_PASSAGE_CHARS, MAX_PASSAGE_PIECES};
use super::{index_error, write_error, Index, WriteLock};
use crate::error::{Error, Result};

/// Input read between two commits: an interrupted run loses at most this much work.
const COMMIT_BYTES: u64 = 256 << 20;

/// Memory the writer may use for its buffers, per thread.
const WRITER_BYTES_PER_THREAD: usize = 64 << 20;

/// Files larger than this are skipped (a file is read whole).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Where an indexing run is, for progress bars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddProgress {
    /// Files looked at so far.
    pub files_done: usize,
    /// Files to look at.
    pub files_total: usize,
    /// Bytes of those files looked at so far.
    pub bytes_done: u64,
    /// Bytes of all the files.
    pub bytes_total: u64,
    /// Passages added so far.
    pub passages: u64,
}

/// A file that was not indexed, and why (or, in [`AddReport::warnings`], one indexed with a
/// warning).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// The file.
    pub path: String,
    /// Why (binary, not UTF-8, malformed, unreadable, too large).
    pub reason: String,
}

/// What an indexing run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AddReport {
    /// Files indexed for the first time.
    pub added: usize,
    /// Files whose content changed, re-indexed.
    pub updated: usize,
    /// Files already indexed with the same content.
    pub unchanged: usize,
    /// Files indexed before that are gone from the folders given, removed from the index.
    pub removed: usize,
    /// Files in the folders given with an extension that is not indexed.
    pub ignored: usize,
    /// Files and folders refused (binary, not UTF-8, malformed, unreadable, too large, not a
    /// regular file, a symbolic link in a folder, a path that is not UTF-8), with the reasons.
    pub skipped: Vec<Skipped>,
    /// Passages cut to stay within the passage bounds ([`super::passages::MAX_PASSAGE_CHARS`],
    /// [`super::passages::MAX_PASSAGE_PIECES`]): text without spaces or sentence ends.
    pub passages_cut: u64,
    /// Files indexed with a warning (passages cut), with the warning.
    pub warnings: Vec<Skipped>,
    /// Passages added (of added and updated files).
    pub passages: u64,
    /// Bytes of the files read.
    pub bytes: u64,
}

/// What a removal did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RemoveReport {
    /// Files removed from the index.
    pub files: usize,
    /// Their passages.
    pub passages: u64,
}

/// A file to look at.
struct Candidate {
    path: PathBuf,
    /// The path as stored (absolute, UTF-8).
    key: String,
    kind: FileKind,
    size: u64,
    modified_ns: u128,
}

/// Files found under the given paths.
#[derive(Default)]
struct Found {
    files: Vec<Candidate>,
    /// Folders walked (their indexed files that were not found are removed).
    folders: Vec<String>,
    /// The folders and files given (absolute), recorded as the index's roots.
    roots: Vec<String>,
    ignored: usize,
    skipped: Vec<Skipped>,
}

/// Opens the index's writer; a held lock gives a clear error.
pub(super) fn writer(dir: &Path, index: &tantivy::Index) -> Result<IndexWriter> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    index
        .writer_with_num_threads(threads, threads * WRITER_BYTES_PER_THREAD)
        .map_err(|e| write_error(dir, e))
}

impl Index {
    /// Indexes the files and folders at `paths`: text (`.txt`), Markdown (`.md`), JSONL
    /// (`.jsonl`) and SQuAD JSON (`.json`); folders are walked (hidden entries and other
    /// extensions left out), a file named directly is read as text whatever its extension.
    /// Unchanged files (same size and time, or same content) are left as they are; changed
    /// ones replace their passages; files gone from a folder given are removed. Binary,
    /// non-UTF-8 and malformed files are skipped and reported. `on_progress` is called after
    /// each file.
    pub fn add<P: AsRef<Path>>(
        &mut self,
        paths: &[P],
        on_progress: impl Fn(&AddProgress),
    ) -> Result<AddReport> {
        let found = self.find_files(paths)?;
        // From here to the last commit, no other run writes the index, and the file list
        // is the last commit's.
        let _lock = WriteLock::acquire(&self.dir)?;
        let index = self.open_for_writing()?;
        self.manifest.roots.extend(found.roots.iter().cloned());
        let mut writer = writer(&self.dir, &index)?;
        let mut report = AddReport {
            ignored: found.ignored,
            skipped: found.skipped,
            ..AddReport::default()
        };
        let mut progress = AddProgress {
            files_total: found.files.len(),
            bytes_total: found.files.iter().map(|f| f.size).sum(),
            ..AddProgress::default()
        };
        let seen: BTreeSet<&str> = found.files.iter().map(|f| f.key.as_str()).collect();
        let mut gone = Vec::new();
        for folder in &found.folders {
            gone.extend(
                self.manifest
                    .files_under(folder)
                    .into_iter()
                    .filter(|f| !seen.contains(f.as_str())),
            );
        }
        for key in gone {
            writer.delete_term(Term::from_field_text(self.fields.source, &key));
            self.manifest.files.remove(&key);
            report.removed += 1;
        }
        let mut uncommitted = 0u64;
        for file in &found.files {
            if let Err(e) = self.add_file(&writer, file, &mut report) {
                return Err(self.writer_failure(&mut writer, e));
            }
            progress.files_done += 1;
            progress.bytes_done += file.size;
            progress.passages = report.passages;
            uncommitted += file.size;
            if uncommitted >= COMMIT_BYTES {
                self.commit(&mut writer)?;
                uncommitted = 0;
            }
            on_progress(&progress);
        }
        self.commit(&mut writer)?;
        drop(writer);
        self.reload()?;
        Ok(report)
    }

    /// The error to report when adding a document failed: when the writer's threads died,
    /// tantivy says only that; their own error (a full disk...) comes from joining them.
    fn writer_failure(&self, writer: &mut IndexWriter, e: Error) -> Error {
        match writer.prepare_commit() {
            Err(cause) => write_error(&self.dir, cause),
            // Nothing to learn: the prepared commit is dropped unapplied.
            Ok(_) => e,
        }
    }

    /// Removes the indexed files at `paths` (a file, or every file under a folder), whether
    /// they still exist or not. A path with nothing indexed is an error naming it.
    pub fn remove<P: AsRef<Path>>(&mut self, paths: &[P]) -> Result<RemoveReport> {
        let _lock = WriteLock::acquire(&self.dir)?;
        let index = self.open_for_writing()?;
        let mut keys = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let key = absolute_key(path)?;
            let under = self.manifest.files_under(&key);
            if under.is_empty() {
                return Err(index_error(
                    &self.dir,
                    &format!("nothing from {} is indexed", path.display()),
                ));
            }
            keys.extend(under);
        }
        let mut writer = writer(&self.dir, &index)?;
        let mut report = RemoveReport::default();
        for key in keys {
            if let Some(entry) = self.manifest.files.remove(&key) {
                writer.delete_term(Term::from_field_text(self.fields.source, &key));
                report.files += 1;
                report.passages += entry.passages;
            }
        }
        self.commit(&mut writer)?;
        drop(writer);
        self.reload()?;
        Ok(report)
    }

    /// Commits what the writer holds, with the manifest as payload.
    fn commit(&self, writer: &mut IndexWriter) -> Result<()> {
        let mut commit = writer
            .prepare_commit()
            .map_err(|e| write_error(&self.dir, e))?;
        commit.set_payload(&self.manifest.to_payload());
        commit.commit().map_err(|e| write_error(&self.dir, e))?;
        Ok(())
    }

    /// Reads one file and replaces its passages when its content is new.
    fn add_file(
        &mut self,
        writer: &IndexWriter,
        file: &Candidate,
        report: &mut AddReport,
    ) -> Result<()> {
        let previous = self.manifest.files.get(&file.key).cloned();
        if let Some(entry) = &previous {
            if entry.size == file.size && entry.modified_ns == file.modified_ns {
                report.unchanged += 1;
                return Ok(());
            }
        }
        let skip = |reason: String, report: &mut AddReport| {
            report.skipped.push(Skipped {
                path: file.key.clone(),
                reason,
            });
        };
        let bytes = match read_regular(&file.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Unreadable now: what was indexed from it stays.
                skip(format!("cannot be read: {e}"), report);
                return Ok(());
            }
        };
        report.bytes += bytes.len() as u64;
        let sha256 = hex(&Sha256::digest(&bytes));
        if let Some(entry) = &previous {
            if entry.sha256 == sha256 {
                report.unchanged += 1;
                let entry = FileEntry {
                    size: file.size,
                    modified_ns: file.modified_ns,
                    ..entry.clone()
                };
                self.manifest.files.insert(file.key.clone(), entry);
                return Ok(());
            }
        }
        let source = Term::from_field_text(self.fields.source, &file.key);
        let documents = match read_documents(&file.key, file.kind, &bytes) {
            Ok(documents) => documents,
            Err(refusal) => {
                let mut reason = refusal.to_string();
                if previous.is_some() {
                    // Its indexed passages no longer say what the file says.
                    writer.delete_term(source);
                    self.manifest.files.remove(&file.key);
                    reason.push_str("; its earlier passages were removed");
                }
                skip(reason, report);
                return Ok(());
            }
        };
        if previous.is_some() {
            writer.delete_term(source);
            report.updated += 1;
        } else {
            report.added += 1;
        }
        let (passages, cut) = self.write_passages(writer, &file.key, &documents)?;
        report.passages += passages;
        if cut > 0 {
            report.passages_cut += cut;
            report.warnings.push(Skipped {
                path: file.key.clone(),
                reason: format!(
                    "{cut} passages cut to stay within {MAX_PASSAGE_CHARS} characters and \
                     {MAX_PASSAGE_PIECES} pieces (text without spaces or sentence ends)"
                ),
            });
        }
        self.manifest.files.insert(
            file.key.clone(),
            FileEntry {
                size: file.size,
                modified_ns: file.modified_ns,
                sha256,
                documents: documents.len() as u64,
                passages,
            },
        );
        Ok(())
    }

    /// Adds the passages of `documents` (from the file `source`) to the index; returns how
    /// many, and how many cuts kept them within the passage bounds.
    fn write_passages(
        &self,
        writer: &IndexWriter,
        source: &str,
        documents: &[Document],
    ) -> Result<(u64, u64)> {
        let f = self.fields;
        let mut passages = 0u64;
        let mut cut = 0u64;
        for document in documents {
            let (spans, cuts) = split_passages_counted(&document.text);
            cut += cuts as u64;
            for span in spans {
                writer
                    .add_document(doc!(
                        f.source => source,
                        f.doc_id => document.id.as_str(),
                        f.title => document.title.as_str(),
                        f.text => &document.text[span.bytes],
                        f.start => span.chars.start as u64,
                        f.end => span.chars.end as u64,
                    ))
                    .map_err(|e| write_error(&self.dir, e))?;
                passages += 1;
            }
        }
        Ok((passages, cut))
    }

    /// The files at `paths`, folders walked in name order.
    fn find_files<P: AsRef<Path>>(&self, paths: &[P]) -> Result<Found> {
        let index_dir = std::fs::canonicalize(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut found = Found::default();
        let mut keys = BTreeSet::new();
        for path in paths {
            let path = path.as_ref();
            let meta = std::fs::metadata(path).map_err(|e| {
                Error::io(
                    path,
                    std::io::Error::new(e.kind(), format!("cannot index it: {e}")),
                )
            })?;
            let root = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
            if meta.is_file() {
                let kind = FileKind::from_extension(&root).unwrap_or(FileKind::Text);
                if let Some(key) = root.to_str() {
                    found.roots.push(key.to_string());
                }
                found.push(root, kind, &mut keys);
                continue;
            }
            if !meta.is_dir() {
                found.skipped.push(Skipped {
                    path: root.display().to_string(),
                    reason: not_regular(&meta.file_type()),
                });
                continue;
            }
            if root.starts_with(&index_dir) {
                found.skipped.push(Skipped {
                    path: root.display().to_string(),
                    reason: "is the index folder or inside it".into(),
                });
                continue;
            }
            match root.to_str() {
                Some(key) => {
                    found.folders.push(key.to_string());
                    found.roots.push(key.to_string());
                }
                None => {
                    found.skipped.push(Skipped {
                        path: root.display().to_string(),
                        reason: "its path is not UTF-8; rename it".into(),
                    });
                    continue;
                }
            }
            let walk = walkdir::WalkDir::new(&root)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| {
                    e.depth() == 0
                        || !(e.file_name().to_string_lossy().starts_with('.')
                            || e.path() == index_dir)
                });
            for entry in walk {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        found.skipped.push(Skipped {
                            path: e.path().map_or_else(
                                || root.display().to_string(),
                                |p| p.display().to_string(),
                            ),
                            reason: format!("cannot be listed: {e}"),
                        });
                        continue;
                    }
                };
                let file_type = entry.file_type();
                if file_type.is_dir() {
                    continue;
                }
                if file_type.is_symlink() {
                    found.skipped.push(Skipped {
                        path: entry.path().display().to_string(),
                        reason: "is a symbolic link; links in folders are not followed (give \
                                 its target to index it)"
                            .into(),
                    });
                    continue;
                }
                if !file_type.is_file() {
                    found.skipped.push(Skipped {
                        path: entry.path().display().to_string(),
                        reason: not_regular(&file_type),
                    });
                    continue;
                }
                match FileKind::from_extension(entry.path()) {
                    Some(kind) => found.push(entry.into_path(), kind, &mut keys),
                    None => found.ignored += 1,
                }
            }
        }
        // A path named directly and found in a folder walked is reported once.
        let mut reported = BTreeSet::new();
        found.skipped.retain(|s| reported.insert(s.path.clone()));
        Ok(found)
    }
}

impl Found {
    /// Adds a file (once), or records why it cannot be indexed.
    fn push(&mut self, path: PathBuf, kind: FileKind, keys: &mut BTreeSet<String>) {
        let Some(key) = path.to_str().map(str::to_string) else {
            self.skipped.push(Skipped {
                path: path.display().to_string(),
                reason: "its path is not UTF-8; rename it".into(),
            });
            return;
        };
        if !keys.insert(key.clone()) {
            return;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                self.skipped.push(Skipped {
                    path: key,
                    reason: format!("cannot be read: {e}"),
                });
                return;
            }
        };
        if meta.len() > MAX_FILE_BYTES {
            self.skipped.push(Skipped {
                path: key,
                reason: format!(
                    "is {} MB, over the {} MB a file may have; split it",
                    meta.len() >> 20,
                    MAX_FILE_BYTES >> 20
                ),
            });
            return;
        }
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        self.files.push(Candidate {
            path,
            key,
            kind,
            size: meta.len(),
            modified_ns,
        });
    }
}

/// Why a file of this type is not read.
fn not_regular(file_type: &std::fs::FileType) -> String {
    use std::os::unix::fs::FileTypeExt;
    let what = if file_type.is_fifo() {
        "a named pipe (FIFO)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else {
        "not a file or folder"
    };
    format!("is {what}, not a regular file; only files and folders are indexed")
}

/// The bytes of a regular file (at most [`MAX_FILE_BYTES`] + 1 of them): a path that became
/// something else since the walk (a pipe, a device) is refused rather than read forever.
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other(not_regular(&meta.file_type())));
    }
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "grew over the {} MB a file may have",
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(bytes)
}

/// The absolute form of `path` as the index stores it: canonical when it exists, otherwise
/// made absolute as written (a file removed from disk can still be removed from the index).
fn absolute_key(path: &Path) -> Result<String> {
    let absolute = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(_) => std::path::absolute(path).map_err(|e| Error::io(path, e))?,
    };
    absolute
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a UTF-8 path", path.display())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
