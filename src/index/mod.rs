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

use std::path::{Path, PathBuf};

use tantivy::collector::TopDocs;
use tantivy::directory::error::LockError;
use tantivy::query::BooleanQuery;
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::{IndexReader, ReloadPolicy, TantivyDocument, TantivyError, Term};

pub use add::{AddProgress, AddReport, RemoveReport, Skipped};
pub use analyzer::Analyzer;
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
    /// The document's id (see [`documents::Document::id`]).
    pub doc_id: String,
    /// The document's title (may be empty).
    pub title: String,
    /// The file the document was read from (absolute path).
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
    index: tantivy::Index,
    reader: IndexReader,
    fields: Fields,
    manifest: Manifest,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Index {
    /// Opens the index in `dir`; fails with a hint when there is none or it is damaged.
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
        let index = tantivy::Index::open_in_dir(dir).map_err(|e| damaged(dir, e))?;
        let (fields, manifest) = Self::fields_and_manifest(dir, &index)?;
        let reader = reader_of(dir, &index)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            reader,
            fields,
            manifest,
        })
    }

    /// Creates an empty index in `dir`, which must be missing or an empty folder.
    pub fn create(dir: impl AsRef<Path>, settings: &IndexSettings) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            if entries.next().is_some() {
                return Err(index_error(
                    dir,
                    "the folder is not empty and holds no index; give a new or empty folder",
                ));
            }
        } else {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let schema = Fields::schema(settings.analyzer);
        let fields = Fields::of(&schema).map_err(|m| index_error(dir, &m))?;
        let index = tantivy::Index::create_in_dir(dir, schema).map_err(|e| write_error(dir, e))?;
        Analyzer::register_all(index.tokenizers());
        let manifest = Manifest::new(settings.analyzer);
        // The first commit records the manifest, so that every index on disk has one.
        let mut writer = add::writer(dir, &index)?;
        let mut commit = writer.prepare_commit().map_err(|e| write_error(dir, e))?;
        commit.set_payload(&manifest.to_payload());
        commit.commit().map_err(|e| write_error(dir, e))?;
        drop(writer);
        let reader = reader_of(dir, &index)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            reader,
            fields,
            manifest,
        })
    }

    /// Opens the index in `dir`, or creates it there (with `settings`) when the folder is
    /// missing or empty. The settings of an existing index are its own.
    pub fn open_or_create(dir: impl AsRef<Path>, settings: &IndexSettings) -> Result<Self> {
        let dir = dir.as_ref();
        let empty = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::io(dir, e)),
        };
        if empty {
            Self::create(dir, settings)
        } else {
            Self::open(dir)
        }
    }

    /// Registers the analyzers of an opened index and reads its fields and manifest.
    fn fields_and_manifest(dir: &Path, index: &tantivy::Index) -> Result<(Fields, Manifest)> {
        Analyzer::register_all(index.tokenizers());
        let fields = Fields::of(&index.schema())
            .map_err(|m| index_error(dir, &format!("not a bertqa index: {m}")))?;
        let metas = index.load_metas().map_err(|e| damaged(dir, e))?;
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
    /// no searchable word gives an empty [`Retrieval`] (no terms, no hits).
    pub fn search(&self, question: &str, limit: usize) -> Result<Retrieval> {
        let terms = self.manifest.analyzer.terms(question);
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
            .map_err(|e| damaged(&self.dir, e))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address).map_err(|e| damaged(&self.dir, e))?;
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
        Ok(Passage {
            text: text(f.text),
            doc_id: text(f.doc_id),
            title: text(f.title),
            path: text(f.source),
            start: number(f.start)?,
            end: number(f.end)?,
        })
    }

    /// Re-reads the index after a commit.
    fn reload(&mut self) -> Result<()> {
        self.reader.reload().map_err(|e| damaged(&self.dir, e))
    }
}

fn reader_of(dir: &Path, index: &tantivy::Index) -> Result<IndexReader> {
    index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(|e| damaged(dir, e))
}

fn index_error(dir: &Path, message: &str) -> Error {
    Error::Index {
        path: dir.to_path_buf(),
        message: message.to_string(),
    }
}

/// An error reading the index: damaged, or not an index.
fn damaged(dir: &Path, e: TantivyError) -> Error {
    index_error(
        dir,
        &format!(
            "cannot be read ({e}); it may be damaged: rebuild it with `bertqa index` into a \
             new folder"
        ),
    )
}

/// An error writing the index; a busy lock says who holds it.
fn write_error(dir: &Path, e: TantivyError) -> Error {
    match e {
        TantivyError::LockFailure(LockError::LockBusy, _) => index_error(
            dir,
            "another bertqa index is writing to it; wait until it finishes",
        ),
        other => index_error(dir, &format!("cannot be written: {other}")),
    }
}
