//! Readers that turn files into documents: plain text, Markdown, JSONL and SQuAD JSON.
//!
//! A file of text or Markdown is one document; a JSONL file holds one document per line
//! (`{"id"?, "title"?, "text"}`); a SQuAD JSON file one document per paragraph `context`.
//! Files that are not UTF-8, or that look binary (a NUL byte), are refused with a reason so
//! that they are skipped rather than indexed as garbage.

use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::squad::SquadFile;

/// One document read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Identifies the document within its collection: the file's path for text and Markdown,
    /// the `id` field (or `PATH:LINE`) for JSONL, `TITLE#PARAGRAPH` for SQuAD.
    pub id: String,
    /// Its title: the first Markdown heading or the file's stem, the JSONL `title`, the SQuAD
    /// article's title; may be empty.
    pub title: String,
    /// Its text. Character offsets of passages and answers are offsets into this string.
    pub text: String,
}

/// How a file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// Plain text: one document.
    Text,
    /// Markdown: one document, titled by its first heading.
    Markdown,
    /// One JSON object per line: `{"id"?, "title"?, "text"}`.
    Jsonl,
    /// SQuAD JSON: every paragraph's `context` is a document.
    Squad,
}

impl FileKind {
    /// The kind a file's extension names, or `None` for other extensions (files found in a
    /// folder walk with other extensions are not indexed).
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "text" => Some(FileKind::Text),
            "md" | "markdown" => Some(FileKind::Markdown),
            "jsonl" | "ndjson" => Some(FileKind::Jsonl),
            "json" => Some(FileKind::Squad),
            _ => None,
        }
    }
}

/// Why a file yields no documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A NUL byte: a binary file.
    Binary,
    /// Not UTF-8; `offset` is the first invalid byte.
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The content does not have the shape its kind needs (a malformed JSONL line, a JSON
    /// file that is not SQuAD).
    Malformed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Binary => write!(f, "looks binary (holds a NUL byte)"),
            Refusal::NotUtf8 { offset } => {
                write!(f, "is not UTF-8 (invalid byte at offset {offset})")
            }
            Refusal::Malformed(message) => write!(f, "{message}"),
        }
    }
}

/// The file's bytes as text, or why they are not text. A leading byte-order mark is dropped.
pub fn decode_text(bytes: &[u8]) -> Result<&str, Refusal> {
    if bytes.contains(&0) {
        return Err(Refusal::Binary);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Refusal::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Reads the documents of one file from its bytes. `path` names the file in ids and titles.
pub fn read_documents(path: &str, kind: FileKind, bytes: &[u8]) -> Result<Vec<Document>, Refusal> {
    let text = decode_text(bytes)?;
    match kind {
        FileKind::Text => Ok(vec![Document {
            id: path.to_string(),
            title: file_stem(path),
            text: text.to_string(),
        }]),
        FileKind::Markdown => Ok(vec![Document {
            id: path.to_string(),
            title: markdown_title(text).unwrap_or_else(|| file_stem(path)),
            text: text.to_string(),
        }]),
        FileKind::Jsonl => read_jsonl(path, text),
        FileKind::Squad => read_squad(text),
    }
}

fn file_stem(path: &str) -> String {
    Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The first ATX heading (`# Title`), without its marks.
fn markdown_title(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with('#'))
        .map(|line| line.trim_start_matches('#').trim().to_string())
        .filter(|title| !title.is_empty())
}

#[derive(Deserialize)]
struct JsonlRecord<'a> {
    /// As written, so that a number is its own text (a number past 2^64 read as a float
    /// would lose digits, and two ids would become one).
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    title: Option<String>,
    text: String,
}

fn read_jsonl(path: &str, text: &str) -> Result<Vec<Document>, Refusal> {
    let mut documents = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: JsonlRecord = serde_json::from_str(line).map_err(|e| {
            Refusal::Malformed(format!(
                "line {lineno}: {e} (each line must be {{\"id\"?, \"title\"?, \"text\"}})"
            ))
        })?;
        let id = match record.id.map(RawValue::get) {
            None | Some("null") => format!("{path}:{lineno}"),
            Some(raw) if raw.starts_with('"') => serde_json::from_str::<String>(raw)
                .map_err(|e| Refusal::Malformed(format!("line {lineno}: `id`: {e}")))?,
            Some(raw) if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                raw.to_string()
            }
            Some(other) => {
                return Err(Refusal::Malformed(format!(
                    "line {lineno}: `id` must be a string or a number, found {other}"
                )))
            }
        };
        if !seen.insert(id.clone()) {
            return Err(Refusal::Malformed(format!(
                "line {lineno}: id {id:?} is used twice in the file; ids must be unique"
            )));
        }
        documents.push(Document {
            id,
            title: record.title.unwrap_or_default(),
            text: record.text,
        });
    }
    Ok(documents)
}

/// A SQuAD file's paragraphs, read by the same reader as `eval`'s data ([`SquadFile`]; the
/// questions may be left out).
fn read_squad(text: &str) -> Result<Vec<Document>, Refusal> {
    let file = SquadFile::from_json_str(text, "the file").map_err(|e| {
        Refusal::Malformed(format!(
            "not a SQuAD file ({e}); .json files are read as SQuAD \
             (`data[].paragraphs[].context`), give other JSON as .jsonl lines"
        ))
    })?;
    Ok(file
        .data
        .into_iter()
        .flat_map(|article| {
            let title = article.title;
            article
                .paragraphs
                .into_iter()
                .enumerate()
                .map(move |(p, paragraph)| Document {
                    id: format!("{title}#{p}"),
                    title: title.clone(),
                    text: paragraph.context,
                })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_extensions() {
        let kind = |p: &str| FileKind::from_extension(Path::new(p));
        assert_eq!(kind("a/b.TXT"), Some(FileKind::Text));
        assert_eq!(kind("notes.md"), Some(FileKind::Markdown));
        assert_eq!(kind("docs.jsonl"), Some(FileKind::Jsonl));
        assert_eq!(kind("dev.json"), Some(FileKind::Squad));
        assert_eq!(kind("image.png"), None);
        assert_eq!(kind("README"), None);
    }

    #[test]
    fn binary_and_non_utf8_bytes_are_refused() {
        assert_eq!(decode_text(b"abc\0def"), Err(Refusal::Binary));
        assert_eq!(
            decode_text(b"caf\xe9 au lait"),
            Err(Refusal::NotUtf8 { offset: 3 })
        );
        assert_eq!(decode_text("\u{feff}Zürich".as_bytes()), Ok("Zürich"));
    }

    #[test]
    fn markdown_is_titled_by_its_first_heading() {
        let docs = read_documents(
            "/d/guide.md",
            FileKind::Markdown,
            b"Intro line\n\n## Setting up  \n\nText.",
        )
        .unwrap();
        assert_eq!(docs[0].title, "Setting up");
        assert_eq!(docs[0].id, "/d/guide.md");
        let plain = read_documents("/d/notes.txt", FileKind::Text, b"# not a title").unwrap();
        assert_eq!(plain[0].title, "notes");
        assert_eq!(plain[0].text, "# not a title");
    }

    #[test]
    fn jsonl_lines_become_documents_with_ids() {
        let text = "{\"id\": 7, \"title\": \"T\", \"text\": \"seven\"}\n\n{\"text\": \"no id\"}\n";
        let docs = read_documents("f.jsonl", FileKind::Jsonl, text.as_bytes()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].id.as_str(), docs[0].title.as_str()), ("7", "T"));
        assert_eq!(docs[1].id, "f.jsonl:3");
        assert_eq!(docs[1].text, "no id");
    }

    #[test]
    fn malformed_jsonl_names_the_line() {
        let text = "{\"text\": \"ok\"}\n{\"title\": \"no text\"}\n";
        match read_documents("f.jsonl", FileKind::Jsonl, text.as_bytes()) {
            Err(Refusal::Malformed(m)) => assert!(m.starts_with("line 2:"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let twice = "{\"id\": \"a\", \"text\": \"x\"}\n{\"id\": \"a\", \"text\": \"y\"}\n";
        // Integers past 2^64 are ids as written: they neither lose digits nor collide.
        let big = "{\"id\": 18446744073709551617, \"text\": \"x\"}\n\
                   {\"id\": 18446744073709551618, \"text\": \"y\"}\n\
                   {\"id\": -3, \"text\": \"z\"}\n{\"id\": \"s\\u00e9\", \"text\": \"w\"}\n";
        let docs = read_documents("f.jsonl", FileKind::Jsonl, big.as_bytes()).unwrap();
        let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            ["18446744073709551617", "18446744073709551618", "-3", "sé"]
        );
        assert!(matches!(
            read_documents("f.jsonl", FileKind::Jsonl, b"{\"id\": [1], \"text\": \"x\"}"),
            Err(Refusal::Malformed(m)) if m.contains("must be a string or a number")
        ));
        assert!(matches!(
            read_documents("f.jsonl", FileKind::Jsonl, twice.as_bytes()),
            Err(Refusal::Malformed(m)) if m.contains("used twice")
        ));
    }

    #[test]
    fn squad_contexts_become_documents() {
        let text = r#"{"version": "1.1", "data": [{"title": "Rhine", "paragraphs": [
            {"context": "The Rhine flows.", "qas": []},
            {"context": "It is long.", "qas": [{"id": "q", "question": "?", "answers": []}]}]}]}"#;
        let docs = read_documents("dev.json", FileKind::Squad, text.as_bytes()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].id, "Rhine#1");
        assert_eq!(docs[1].title, "Rhine");
        assert_eq!(docs[1].text, "It is long.");
        assert!(matches!(
            read_documents("x.json", FileKind::Squad, b"{\"rows\": []}"),
            Err(Refusal::Malformed(_))
        ));
    }
}
