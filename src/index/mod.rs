//! A persistent BM25 index of documents, cut into passages, for answering questions over a
//! collection ([`crate::QaPipeline::answer_over`]).
//!
//! ```no_run
//! use bertqa::index::{AskOptions, Index, IndexSettings};
//! use bertqa::{LoadOptions, QaPipeline};
//!
//! let mut index = Index::open_or_create("my-index", &IndexSettings::default())?;
//! index.add(&["docs/"], |_| {})?;
//! let qa = QaPipeline::load("../shared/models/minilm-xquad-qa", &LoadOptions::default())?;
//! let found = qa.answer_over(&index, &["Who wrote the manual?"], &AskOptions::default())?;
//! for answer in &found[0].answers {
//!     println!("{:.3} {} ({}, chars {}..{})", answer.score, answer.answer, answer.path,
//!              answer.start, answer.end);
//! }
//! # Ok::<(), bertqa::Error>(())
//! ```
//!
//! The index is a tantivy index in one folder. Every passage keeps its document's id, title and
//! source file and its character offsets into the document. Each run of [`Index::add`] or
//! [`Index::remove`] ends in tantivy commits, which are atomic, and the list of indexed files
//! with their content hashes ([`manifest`]) is each commit's payload: a run that is killed
//! leaves the index as its last commit left it, and the next run picks up where it stopped.

mod add;
pub mod analyzer;
pub mod answer;
pub mod documents;
pub mod manifest;
pub mod passages;
mod readonly;

use std::path::{Path, PathBuf};

use tantivy::collector::TopDocs;
use tantivy::directory::error::{LockError, OpenReadError, OpenWriteError};
use tantivy::query::BooleanQuery;
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::{IndexReader, ReloadPolicy, TantivyDocument, TantivyError, Term};

pub use add::{AddProgress, AddReport, RemoveReport, Skipped};
pub use analyzer::{Analyzer, MAX_QUESTION_CHARS, MAX_QUESTION_TERMS};
pub use answer::{AskOptions, DocumentAnswer, DocumentAnswers, PassageText};
use manifest::Manifest;

use crate::error::{Error, Result};

/// Settings fixed when an index is created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSettings {
    /// How text is cut into BM25 terms.
    pub analyzer: Analyzer,
}

/// A passage as stored in the index.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Passage {
    /// The passage's text: `document[start..end]` by characters.
    pub text: String,
    /// The document's id (see [`documents::Document::id`]); an id made of the file's path
    /// names it as `path` does.
    pub doc_id: String,
    /// The document's title (may be empty).
    pub title: String,
    /// The file the document was read from: relative to the folder (or file) given to
    /// `bertqa index`, starting with that folder's name, unless [`Index::set_absolute_paths`].
    pub path: String,
    /// First character of the passage in the document (Unicode scalar values).
    pub start: usize,
    /// End (exclusive) of the passage in the document, in characters.
    pub end: usize,
}

/// A passage found for a question, with its BM25 score.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// BM25 score of the passage for the question.
    pub score: f32,
    /// The passage.
    pub passage: Passage,
}

/// What a search found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Retrieval {
    /// The question's distinct terms (after lower-casing and stemming); empty when it has no
    /// word to search for.
    pub terms: Vec<String>,
    /// The best passages, best first.
    pub hits: Vec<Hit>,
}

/// Counts of what an index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndexStats {
    /// Indexed files.
    pub files: usize,
    /// Documents read from them.
    pub documents: u64,
    /// Passages.
    pub passages: u64,
}

/// The schema's fields.
#[derive(Clone, Copy, Debug)]
struct Fields {
    source: Field,
    doc_id: Field,
    title: Field,
    text: Field,
    start: Field,
    end: Field,
}

impl Fields {
    fn schema(analyzer: Analyzer) -> Schema {
        let mut builder = Schema::builder();
        builder.add_text_field("source", STRING | STORED);
        builder.add_text_field("doc_id", STORED);
        builder.add_text_field("title", STORED);
        // Term frequencies only: questions are bags of words, no phrase queries.
        let indexing = TextFieldIndexing::default()
            .set_tokenizer(analyzer.name())
            .set_index_option(IndexRecordOption::WithFreqs);
        builder.add_text_field(
            "text",
            TextOptions::default()
                .set_indexing_options(indexing)
                .set_stored(),
        );
        builder.add_u64_field("start", STORED);
        builder.add_u64_field("end", STORED);
        builder.build()
    }

    fn of(schema: &Schema) -> std::result::Result<Self, String> {
        let get = |name: &str| {
            schema
                .get_field(name)
                .map_err(|_| format!("its schema has no `{name}` field"))
        };
        Ok(Self {
            source: get("source")?,
            doc_id: get("doc_id")?,
            title: get("title")?,
            text: get("text")?,
            start: get("start")?,
            end: get("end")?,
        })
    }
}

/// A document index in a folder: BM25 over passages (tantivy).
pub struct Index {
    dir: PathBuf,
    /// Of the index opened for reading only (see [`readonly`]); runs that write open the
    /// folder again.
    reader: IndexReader,
    fields: Fields,
    manifest: Manifest,
    absolute_paths: bool,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The file in an index folder whose lock makes runs that write the index (and the one that
/// creates it) take turns.
pub const WRITE_LOCK_FILE: &str = ".bertqa-write.lock";

/// Opens of a folder tried before giving up: a commit that lands while a reader opens the
/// index can delete the segment files it was about to read.
const OPEN_ATTEMPTS: usize = 3;

impl Index {
    /// Opens the index in `dir` for reading; fails with a hint when there is none or it is
    /// damaged. Reading needs no write access to the folder: nothing in it is created or
    /// changed (no lock files). [`Index::add`] and [`Index::remove`] open it for writing.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(index_error(
                dir,
                "no such folder; create the index with `bertqa index --index DIR PATH...`",
            ));
        }
        if !dir.join("meta.json").is_file() {
            return Err(index_error(
                dir,
                "the folder holds no index (no meta.json); create one with \
                 `bertqa index --index DIR PATH...`",
            ));
        }
        let mut attempt = 1;
        loop {
            match Self::open_once(dir) {
                Ok(index) => return Ok(index),
                Err(e) if attempt < OPEN_ATTEMPTS => {
                    tracing::debug!("opening {} again: {e}", dir.display());
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn open_once(dir: &Path) -> Result<Self> {
        let directory = readonly::ReadOnlyDirectory::open(dir).map_err(|e| read_error(dir, e))?;
        let index = tantivy::Index::open(directory).map_err(|e| read_error(dir, e))?;
        let (fields, manifest) = Self::fields_and_manifest(dir, &index)?;
        let reader = reader_of(dir, &index)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            reader,
            fields,
            manifest,
            absolute_paths: false,
        })
    }

    /// Creates an empty index in `dir`, which must be missing or an empty folder. When another
    /// run creates the same index at the same time, one creates it and the other opens it.
    pub fn create(dir: impl AsRef<Path>, settings: &IndexSettings) -> Result<Self> {
        let dir = dir.as_ref();
        let not_empty = || {
            index_error(
                dir,
                "the folder is not empty and holds no index; give a new or empty folder",
            )
        };
        // Checked before the lock file is made, and again once it is held.
        let others = |dir: &Path| -> Result<bool> {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    for entry in entries {
                        let entry = entry.map_err(|e| Error::io(dir, e))?;
                        if entry.file_name() != WRITE_LOCK_FILE {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io(dir, e)),
            }
        };
        // (A folder with the lock file may be another run's index in the making: it is
        // looked at again under the lock.)
        if others(dir)? && !dir.join(WRITE_LOCK_FILE).exists() && !dir.join("meta.json").is_file() {
            return Err(not_empty());
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = WriteLock::acquire(dir)?;
        if dir.join("meta.json").is_file() {
            // Another run created it while this one waited for the lock.
            drop(lock);
            return Self::open(dir);
        }
        if others(dir)? {
            return Err(not_empty());
        }
        let schema = Fields::schema(settings.analyzer);
        Fields::of(&schema).map_err(|m| index_error(dir, &m))?;
        let index = tantivy::Index::create_in_dir(dir, schema).map_err(|e| write_error(dir, e))?;
        Analyzer::register_all(index.tokenizers());
        let manifest = Manifest::new(settings.analyzer);
        // The first commit records the manifest, so that every index on disk has one.
        let mut writer = add::writer(dir, &index)?;
        let mut commit = writer.prepare_commit().map_err(|e| write_error(dir, e))?;
        commit.set_payload(&manifest.to_payload());
        commit.commit().map_err(|e| write_error(dir, e))?;
        drop(writer);
        drop(lock);
        Self::open(dir)
    }

    /// Opens the index in `dir`, or creates it there (with `settings`) when the folder is
    /// missing or empty. The settings of an existing index are its own.
    pub fn open_or_create(dir: impl AsRef<Path>, settings: &IndexSettings) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.join("meta.json").is_file() {
            // A run creating it writes meta.json before its first commit (with the
            // manifest): wait for that run, and any other writing it, to finish.
            drop(WriteLock::acquire(dir)?);
            Self::open(dir)
        } else {
            Self::create(dir, settings)
        }
    }

    /// Passages found by [`Index::search`] name their file by its absolute path when `yes`;
    /// by default they name it relative to the folder given to `bertqa index` (starting with
    /// that folder's own name), so that answers do not tell where the files lie on the host.
    pub fn set_absolute_paths(&mut self, yes: bool) {
        self.absolute_paths = yes;
    }

    /// Opens the folder for a run that writes: the caller holds the [`WriteLock`]. Returns the
    /// writable index; `self`'s manifest becomes that of the last commit, so that a run never
    /// writes a file list older than what another run committed before it.
    fn open_for_writing(&mut self) -> Result<tantivy::Index> {
        let index = tantivy::Index::open_in_dir(&self.dir).map_err(|e| read_error(&self.dir, e))?;
        let (_, manifest) = Self::fields_and_manifest(&self.dir, &index)?;
        self.manifest = manifest;
        Ok(index)
    }

    /// Registers the analyzers of an opened index and reads its fields and manifest.
    fn fields_and_manifest(dir: &Path, index: &tantivy::Index) -> Result<(Fields, Manifest)> {
        Analyzer::register_all(index.tokenizers());
        let fields = Fields::of(&index.schema())
            .map_err(|m| index_error(dir, &format!("not a bertqa index: {m}")))?;
        let metas = index.load_metas().map_err(|e| read_error(dir, e))?;
        let payload = metas.payload.ok_or_else(|| {
            index_error(
                dir,
                "not a bertqa index (its last commit has no manifest); rebuild it with \
                 `bertqa index` into a new folder",
            )
        })?;
        let manifest = Manifest::from_payload(&payload).map_err(|m| index_error(dir, &m))?;
        Ok((fields, manifest))
    }

    /// The index folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How text is cut into terms in this index.
    pub fn analyzer(&self) -> Analyzer {
        self.manifest.analyzer
    }

    /// Files, documents and passages indexed.
    pub fn stats(&self) -> IndexStats {
        let (documents, passages) = self.manifest.totals();
        IndexStats {
            files: self.manifest.files.len(),
            documents,
            passages,
        }
    }

    /// The indexed files (absolute paths), sorted.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.manifest.files.keys().map(String::as_str)
    }

    /// The `limit` passages that best match `question` by BM25, best first. A question with
    /// no searchable word gives an empty [`Retrieval`] (no terms, no hits). A question over
    /// [`MAX_QUESTION_CHARS`] characters or [`MAX_QUESTION_TERMS`] distinct terms is refused
    /// ([`Error::InvalidInput`]) before any search.
    pub fn search(&self, question: &str, limit: usize) -> Result<Retrieval> {
        let terms = self.manifest.analyzer.question_terms(question)?;
        if terms.is_empty() || limit == 0 {
            return Ok(Retrieval {
                terms,
                hits: Vec::new(),
            });
        }
        let query = BooleanQuery::new_multiterms_query(
            terms
                .iter()
                .map(|t| Term::from_field_text(self.fields.text, t))
                .collect(),
        );
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&query, &TopDocs::with_limit(limit).order_by_score())
            .map_err(|e| read_error(&self.dir, e))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher
                .doc(address)
                .map_err(|e| read_error(&self.dir, e))?;
            hits.push(Hit {
                score,
                passage: self.passage_of(&doc)?,
            });
        }
        Ok(Retrieval { terms, hits })
    }

    fn passage_of(&self, doc: &TantivyDocument) -> Result<Passage> {
        let f = &self.fields;
        let text = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let number = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_u64())
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| index_error(&self.dir, "a passage lacks its offsets; rebuild it"))
        };
        let source = text(f.source);
        Ok(Passage {
            text: text(f.text),
            doc_id: self.shown_id(&text(f.doc_id), &source),
            title: text(f.title),
            path: self.shown_path(&source),
            start: number(f.start)?,
            end: number(f.end)?,
        })
    }

    /// How a passage names its file: see [`Index::set_absolute_paths`].
    fn shown_path(&self, key: &str) -> String {
        if self.absolute_paths {
            return key.to_string();
        }
        self.manifest.relative_path(key)
    }

    /// A document id that holds its file's absolute path (text and Markdown files, JSONL
    /// lines without an id) names the file as [`Index::shown_path`] does.
    fn shown_id(&self, id: &str, key: &str) -> String {
        if self.absolute_paths || key.is_empty() {
            return id.to_string();
        }
        match id.strip_prefix(key) {
            Some(rest) if rest.is_empty() || rest.starts_with(':') => {
                format!("{}{rest}", self.shown_path(key))
            }
            _ => id.to_string(),
        }
    }

    /// Re-reads the index after a commit.
    fn reload(&mut self) -> Result<()> {
        self.reader.reload().map_err(|e| read_error(&self.dir, e))
    }
}

fn reader_of(dir: &Path, index: &tantivy::Index) -> Result<IndexReader> {
    index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(|e| read_error(dir, e))
}

fn index_error(dir: &Path, message: &str) -> Error {
    Error::Index {
        path: dir.to_path_buf(),
        message: message.to_string(),
    }
}

/// An error reading the index. Only a damaged index is worth rebuilding: an error of the file
/// system (permissions, a missing file) says so and no more.
fn read_error(dir: &Path, e: TantivyError) -> Error {
    match e {
        TantivyError::DataCorruption(_)
        | TantivyError::IncompatibleIndex(_)
        | TantivyError::SchemaError(_)
        | TantivyError::DeserializeError(_)
        | TantivyError::FieldNotFound(_)
        | TantivyError::OpenReadError(OpenReadError::FileDoesNotExist(_)) => index_error(
            dir,
            &format!(
                "cannot be read ({e}); it may be damaged: rebuild it with `bertqa index` into \
                 a new folder"
            ),
        ),
        other => index_error(dir, &format!("cannot be read: {}", io_cause(&other))),
    }
}

/// An error writing the index; a busy lock says who holds it, a full disk says so.
fn write_error(dir: &Path, e: TantivyError) -> Error {
    match e {
        TantivyError::LockFailure(LockError::LockBusy, _) => index_error(
            dir,
            "another program is writing to it (its tantivy writer lock is held); wait until it \
             finishes",
        ),
        other => {
            let cause = io_cause(&other);
            let hint = if cause.contains("os error 28") {
                "; the disk is full: free space and run again (the index keeps its last commit)"
            } else {
                ""
            };
            index_error(dir, &format!("cannot be written: {cause}{hint}"))
        }
    }
}

/// tantivy's error, with the operating system's own message for errors of the file system.
fn io_cause(e: &TantivyError) -> String {
    let io: Option<&std::io::Error> = match e {
        TantivyError::IoError(io) => Some(io),
        TantivyError::LockFailure(LockError::IoError(io), _) => Some(io),
        TantivyError::OpenWriteError(OpenWriteError::IoError { io_error, .. }) => Some(io_error),
        TantivyError::OpenReadError(OpenReadError::IoError { io_error, .. }) => Some(io_error),
        _ => None,
    };
    match io {
        Some(io) => format!("{io} ({e})"),
        None => e.to_string(),
    }
}

/// The lock that makes runs writing one index take turns: held from reading the index's file
/// list to the last commit, so that no run commits a list older than another run's. A run
/// that finds it held waits for it (the operating system releases it when a run dies).
pub(crate) struct WriteLock {
    _file: std::fs::File,
}

impl WriteLock {
    pub(crate) fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(WRITE_LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                index_error(dir, &format!("cannot be written: {e} ({})", path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(
                    "waiting for another bertqa index run on {} to finish",
                    dir.display()
                );
                file.lock().map_err(|e| {
                    index_error(dir, &format!("cannot lock {}: {e}", path.display()))
                })?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(index_error(
                    dir,
                    &format!("cannot lock {}: {e}", path.display()),
                ))
            }
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn only_damage_is_worth_a_rebuild() {
        let dir = Path::new("/idx");
        let message = |e: Error| match e {
            Error::Index { message, .. } => message,
            other => panic!("{other:?}"),
        };
        let read_only = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        let locked = TantivyError::LockFailure(LockError::IoError(Arc::new(read_only)), None);
        let m = message(read_error(dir, locked));
        assert!(m.to_lowercase().contains("read-only"), "{m}");
        assert!(!m.contains("rebuild"), "{m}");
        let corrupt = TantivyError::SchemaError("bad".into());
        assert!(message(read_error(dir, corrupt)).contains("rebuild it"));

        let full = std::io::Error::from_raw_os_error(28);
        let m = message(write_error(dir, TantivyError::IoError(Arc::new(full))));
        assert!(m.contains("No space left on device"), "{m}");
        assert!(m.contains("the disk is full"), "{m}");
    }
}
