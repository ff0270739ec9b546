//! The SQuAD JSON format: the file as it is written ([`SquadFile`], read with serde), and the
//! flat questions bertqa works on ([`SquadDataset`], [`SquadExample`]).

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Which official evaluation applies to a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SquadVersion {
    /// SQuAD v1.1: every question has an answer.
    #[serde(rename = "1.1")]
    V1,
    /// SQuAD v2.0: some questions have none (`is_impossible`, empty `answers`).
    #[serde(rename = "v2.0")]
    V2,
}

/// One gold answer: its text and where it starts in the context.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(expecting = "an answer object with `text` and `answer_start`")]
pub struct SquadAnswer {
    /// The answer text.
    pub text: String,
    /// Start in the context, in characters (Unicode scalar values, as Python's `str` indices).
    #[serde(deserialize_with = "char_index")]
    pub answer_start: usize,
}

impl SquadAnswer {
    /// The answer's character range in the context (end exclusive).
    pub fn char_range(&self) -> Range<usize> {
        self.answer_start..self.answer_start + self.text.chars().count()
    }
}

/// A SQuAD file as written: `version` and `data[].paragraphs[].qas[]`. Keys bertqa does not
/// read (`plausible_answers`, …) are ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(expecting = "an object with `data`")]
pub struct SquadFile {
    /// `"1.1"`, `"v2.0"`, or absent.
    #[serde(default)]
    pub version: Option<String>,
    /// The articles.
    pub data: Vec<SquadArticle>,
}

/// One article: its title and paragraphs.
#[derive(Clone, Debug, Deserialize)]
#[serde(expecting = "an article object with `paragraphs`")]
pub struct SquadArticle {
    /// The title (empty when absent).
    #[serde(default)]
    pub title: String,
    /// The paragraphs.
    pub paragraphs: Vec<SquadParagraph>,
}

/// One paragraph: its context and the questions about it.
#[derive(Clone, Debug, Deserialize)]
#[serde(expecting = "a paragraph object with `context` and `qas`")]
pub struct SquadParagraph {
    /// The context.
    pub context: String,
    /// The questions; required by [`SquadDataset`], optional for a file that is only indexed.
    #[serde(default)]
    pub qas: Option<Vec<SquadQuestion>>,
}

/// One question as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(expecting = "a question object with `id`, `question` and `answers`")]
pub struct SquadQuestion {
    /// The id: a string, or an integer (kept as its digits).
    #[serde(deserialize_with = "question_id")]
    pub id: String,
    /// The question.
    pub question: String,
    /// SQuAD v2.0: the question has no answer.
    #[serde(default)]
    pub is_impossible: Option<bool>,
    /// Gold answers.
    pub answers: Vec<SquadAnswer>,
}

/// One question with its context and gold answers.
#[derive(Clone, Debug, PartialEq)]
pub struct SquadExample {
    /// The question id (`qas[].id`), the key of prediction files.
    pub id: String,
    /// Title of the article the paragraph comes from.
    pub title: String,
    /// The paragraph; shared by all questions about it.
    pub context: Arc<str>,
    /// The question.
    pub question: String,
    /// Gold answers (several annotators in dev sets; empty for unanswerable v2 questions).
    pub answers: Vec<SquadAnswer>,
    /// SQuAD v2: the question has no answer in the context.
    pub is_impossible: bool,
    /// Index of the article in `data`.
    pub article_index: usize,
    /// Index of the paragraph in the article's `paragraphs`.
    pub paragraph_index: usize,
}

impl SquadExample {
    /// True when the question has gold answers (the official v2 script's `has_ans`).
    pub fn has_answer(&self) -> bool {
        !self.answers.is_empty()
    }
}

/// A SQuAD file: its `version` and its questions in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct SquadDataset {
    /// The file's `version` field (`"1.1"`, `"v2.0"`; empty when absent).
    pub version: String,
    /// Every question, in file order.
    pub examples: Vec<SquadExample>,
    /// v2.0 when `version` says so or any question carries `is_impossible`.
    pub format: SquadVersion,
}

impl SquadDataset {
    /// Reads a SQuAD JSON file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| Error::Data {
            location: path.display().to_string(),
            message: format!(
                "not valid UTF-8 (invalid byte at offset {}); SQuAD files are UTF-8 JSON",
                e.utf8_error().valid_up_to()
            ),
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses SQuAD JSON; `source` names the input in error messages (e.g. the file name).
    pub fn from_json_str(text: &str, source: &str) -> Result<Self> {
        let file = SquadFile::from_json_str(text, source)?;
        let version = file.version.unwrap_or_default();
        let mut examples = Vec::new();
        let mut any_impossible_field = false;
        for (a, article) in file.data.into_iter().enumerate() {
            for (p, paragraph) in article.paragraphs.into_iter().enumerate() {
                let scope = Scope {
                    source,
                    title: &article.title,
                    article_index: a,
                    paragraph_index: p,
                };
                let Some(qas) = paragraph.qas else {
                    return Err(Error::Data {
                        location: scope.paragraph(),
                        message: "field `qas` is missing".into(),
                    });
                };
                let context: Arc<str> = paragraph.context.into();
                let context_chars = context.chars().count();
                for (q, qa) in qas.into_iter().enumerate() {
                    any_impossible_field |= qa.is_impossible.is_some();
                    check_question(&qa, &scope.question(q, &qa.id), context_chars)?;
                    examples.push(SquadExample {
                        is_impossible: qa.is_impossible.unwrap_or(qa.answers.is_empty()),
                        id: qa.id,
                        title: article.title.clone(),
                        context: context.clone(),
                        question: qa.question,
                        answers: qa.answers,
                        article_index: a,
                        paragraph_index: p,
                    });
                }
            }
        }
        let format =
            if version.starts_with("v2") || version.starts_with('2') || any_impossible_field {
                SquadVersion::V2
            } else {
                SquadVersion::V1
            };
        if format == SquadVersion::V1 {
            require_v1_answers(&examples, source)?;
        }
        Ok(Self {
            version,
            examples,
            format,
        })
    }

    /// Number of questions.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// True when the file has no questions.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}

impl SquadFile {
    /// Parses SQuAD JSON; an error names `source`, then the place in the file (article with
    /// its title, paragraph, question with its id) and the field.
    pub fn from_json_str(text: &str, source: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text).map_err(|e| Error::Data {
            location: source.to_string(),
            message: format!("not valid JSON: {e}"),
        })?;
        serde_path_to_error::deserialize(&root).map_err(|e| {
            let (location, field) = locate(&root, source, e.path());
            Error::Data {
                location,
                message: field_message(field.as_deref(), &e.into_inner().to_string()),
            }
        })
    }
}

/// Where a question sits, for error messages.
struct Scope<'a> {
    source: &'a str,
    title: &'a str,
    article_index: usize,
    paragraph_index: usize,
}

impl Scope<'_> {
    fn paragraph(&self) -> String {
        let mut at = format!("{}: data[{}]", self.source, self.article_index);
        if !self.title.is_empty() {
            at.push_str(&format!(" ({:?})", self.title));
        }
        format!("{at}, paragraphs[{}]", self.paragraph_index)
    }

    fn question(&self, q: usize, id: &str) -> String {
        format!("{}, qas[{q}] (id {id:?})", self.paragraph())
    }
}

/// The checks serde cannot make: answers within the context, and none on a question marked
/// impossible.
fn check_question(qa: &SquadQuestion, location: &str, context_chars: usize) -> Result<()> {
    let error = |message: String| Error::Data {
        location: location.to_string(),
        message,
    };
    if qa.is_impossible == Some(true) && !qa.answers.is_empty() {
        return Err(error(
            "field `answers` must be empty when is_impossible is true (put candidate answers \
             in plausible_answers)"
                .into(),
        ));
    }
    for (k, answer) in qa.answers.iter().enumerate() {
        if answer.char_range().end > context_chars {
            return Err(error(format!(
                "field `answers[{k}].answer_start`: answer {:?} at character {} runs past the \
                 end of the context ({context_chars} characters)",
                answer.text, answer.answer_start
            )));
        }
    }
    Ok(())
}

/// SQuAD v1.1 has no unanswerable questions: the first question without answers is an error.
fn require_v1_answers(examples: &[SquadExample], source: &str) -> Result<()> {
    if let Some(e) = examples.iter().find(|e| e.answers.is_empty()) {
        let scope = Scope {
            source,
            title: &e.title,
            article_index: e.article_index,
            paragraph_index: e.paragraph_index,
        };
        return Err(Error::Data {
            location: format!("{}, question id {:?}", scope.paragraph(), e.id),
            message: "field `answers` is empty; SQuAD v1.1 questions need at least one \
                      answer (mark unanswerable questions with \"is_impossible\": true \
                      and \"version\": \"v2.0\")"
                .into(),
        });
    }
    Ok(())
}

/// Splits serde's path to an error into the place (`source: data[0] ("Title"), paragraphs[1],
/// qas[2] (id "x")`, titles and ids looked up in `root`) and the field below it
/// (`answers[0].answer_start`), if any.
fn locate(
    root: &Value,
    source: &str,
    path: &serde_path_to_error::Path,
) -> (String, Option<String>) {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let mut location = source.to_string();
    let mut node = root;
    let mut rest = &segments[..];
    // Walk data[i] / paragraphs[j] / qas[k] as long as the path does.
    for (level, key) in ["data", "paragraphs", "qas"].into_iter().enumerate() {
        let [Segment::Map { key: k }, Segment::Seq { index }, tail @ ..] = rest else {
            break;
        };
        if k != key {
            break;
        }
        node = &node[key][*index];
        location.push_str(if level == 0 { ": " } else { ", " });
        location.push_str(&format!("{key}[{index}]"));
        let label = match level {
            0 => node["title"].as_str().map(|t| format!(" ({t:?})")),
            2 => match &node["id"] {
                Value::String(id) => Some(format!(" (id {id:?})")),
                Value::Number(id) => Some(format!(" (id {:?})", id.to_string())),
                _ => None,
            },
            _ => None,
        };
        location.push_str(&label.unwrap_or_default());
        rest = tail;
    }
    let mut field = String::new();
    for segment in rest {
        match segment {
            Segment::Map { key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    (location, (!field.is_empty()).then_some(field))
}

/// serde's message in the words of the other errors: "field `x` is missing", "field `x`:
/// invalid type: …".
fn field_message(field: Option<&str>, serde_message: &str) -> String {
    // serde names a missing field at the object that lacks it.
    if let Some(missing) = serde_message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        return match field {
            Some(parent) => format!("field `{parent}.{missing}` is missing"),
            None => format!("field `{missing}` is missing"),
        };
    }
    match field {
        Some(field) => format!("field `{field}`: {serde_message}"),
        None => serde_message.to_string(),
    }
}

/// `answer_start`: a non-negative integer that fits in `usize`.
fn char_index<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<usize, D::Error> {
    struct CharIndex;
    impl Visitor<'_> for CharIndex {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<usize, E> {
            usize::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<usize, E> {
            usize::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }
    }
    deserializer.deserialize_any(CharIndex)
}

/// A question's `id`: a string, or an integer kept as its digits.
fn question_id<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<String, D::Error> {
    struct QuestionId;
    impl Visitor<'_> for QuestionId {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(QuestionId)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_FILE: &str = r#"{"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Zürich is in Switzerland.", "qas": [
            {"id": "a", "question": "Where is Zürich?",
             "answers": [{"text": "Switzerland", "answer_start": 13},
                         {"text": "in Switzerland", "answer_start": 10}]}]}]}]}"#;

    #[test]
    fn parses_flat_examples_with_all_fields() {
        let d = SquadDataset::from_json_str(V1_FILE, "mem").unwrap();
        assert_eq!(d.format, SquadVersion::V1);
        assert_eq!(d.version, "1.1");
        assert_eq!(d.len(), 1);
        let e = &d.examples[0];
        assert_eq!((e.id.as_str(), e.title.as_str()), ("a", "T"));
        assert_eq!(e.question, "Where is Zürich?");
        assert!(!e.is_impossible && e.has_answer());
        assert_eq!(e.answers.len(), 2);
        // Character offsets: "ü" is one character.
        let chars: Vec<char> = e.context.chars().collect();
        let a = &e.answers[0];
        assert_eq!(chars[a.char_range()].iter().collect::<String>(), a.text);
    }

    #[test]
    fn integer_ids_keep_their_digits_and_negative_starts_are_refused() {
        let d =
            SquadDataset::from_json_str(&V1_FILE.replace("\"a\"", "18446744073709551615"), "mem")
                .unwrap();
        assert_eq!(d.examples[0].id, "18446744073709551615");
        let e = parse_error(&V1_FILE.replace("13}", "-13}"));
        assert!(
            e.contains("qas[0] (id \"a\"): field `answers[0].answer_start`: invalid value")
                && e.contains("expected a non-negative integer"),
            "{e}"
        );
        // A file of contexts alone reads as a file (the index takes it) but not as a dataset.
        let contexts = r#"{"data": [{"title": "T", "paragraphs": [{"context": "c"}]}]}"#;
        assert_eq!(
            SquadFile::from_json_str(contexts, "mem")
                .unwrap()
                .data
                .len(),
            1
        );
        let e = parse_error(contexts);
        assert!(e.contains("paragraphs[0]: field `qas` is missing"), "{e}");
    }

    #[test]
    fn v2_is_detected_from_version_or_is_impossible() {
        let v2 = r#"{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [
            {"id": "x", "question": "q?", "answers": [], "is_impossible": true,
             "plausible_answers": [{"text": "c", "answer_start": 0}]}]}]}]}"#;
        let d = SquadDataset::from_json_str(v2, "mem").unwrap();
        assert_eq!(d.format, SquadVersion::V2);
        assert!(d.examples[0].is_impossible && !d.examples[0].has_answer());
        let tagged = V1_FILE.replace("\"1.1\"", "\"v2.0\"");
        let d = SquadDataset::from_json_str(&tagged, "mem").unwrap();
        assert_eq!(d.format, SquadVersion::V2);
    }

    fn parse_error(text: &str) -> String {
        match SquadDataset::from_json_str(text, "f.json") {
            Err(e @ Error::Data { .. }) => e.to_string(),
            other => panic!("expected a data error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_files_name_the_place_and_field() {
        let e = parse_error(&V1_FILE.replace("\"question\"", "\"query\""));
        assert!(
            e.contains("data[0] (\"T\"), paragraphs[0], qas[0] (id \"a\")")
                && e.contains("`question` is missing"),
            "{e}"
        );
        let e = parse_error(&V1_FILE.replace("13}", "\"13\"}"));
        assert!(
            e.contains(
                "field `answers[0].answer_start`: invalid type: string \"13\", expected a \
                 non-negative integer"
            ),
            "{e}"
        );
        let e = parse_error(&V1_FILE.replace("10}", "20}"));
        assert!(
            e.contains("answers[1].answer_start") && e.contains("past the end"),
            "{e}"
        );
        let e = parse_error(&V1_FILE.replace("\"context\"", "\"text\""));
        assert!(
            e.contains("paragraphs[0]: field `context` is missing"),
            "{e}"
        );
        let e = parse_error(r#"{"version": "1.1"}"#);
        assert!(e.contains("f.json: field `data` is missing"), "{e}");
        let e = parse_error("{\"data\": [");
        assert!(e.contains("f.json: not valid JSON"), "{e}");
        let no_answers = r#"{"version": "1.1", "data": [{"paragraphs": [{"context": "c",
            "qas": [{"id": "x", "question": "q?", "answers": []}]}]}]}"#;
        let e = parse_error(no_answers);
        assert!(
            e.contains("id \"x\"") && e.contains("`answers` is empty"),
            "{e}"
        );
        let e =
            parse_error(&V1_FILE.replace("\"answers\"", "\"is_impossible\": true, \"answers\""));
        assert!(
            e.contains("must be empty when is_impossible is true"),
            "{e}"
        );
    }
}
