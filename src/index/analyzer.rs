//! How passages and questions are cut into BM25 terms.
//!
//! Words are runs of letters and digits (Unicode), lower-cased; words over 40 bytes are
//! dropped. [`Analyzer::English`] (the default) also reduces words to their Porter stem, so
//! that "flows" finds "flowed"; [`Analyzer::Plain`] keeps them as they are (for text that is
//! not English). On the XQuAD paragraphs, stemming raised BM25's recall (see the README's
//! table); stop words are not removed, BM25's inverse document frequency already gives them
//! little weight.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer,
    TokenizerManager,
};

use crate::error::{Error, Result};

/// Most characters a question over an index may have (the reader reads at most 64 tokens of a
/// question anyway).
pub const MAX_QUESTION_CHARS: usize = 2_000;

/// Most distinct terms a question over an index may have: each is a term of the BM25 query.
pub const MAX_QUESTION_TERMS: usize = 256;

/// The way text is cut into terms; fixed when an index is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Analyzer {
    /// Lower-cased words, reduced to their English stem.
    #[default]
    English,
    /// Lower-cased words.
    Plain,
}

impl Analyzer {
    /// Every analyzer, for registering them with an index.
    pub const ALL: [Analyzer; 2] = [Analyzer::English, Analyzer::Plain];

    /// The name the index's schema records for the text field.
    pub fn name(self) -> &'static str {
        match self {
            Analyzer::English => "bertqa-english",
            Analyzer::Plain => "bertqa-plain",
        }
    }

    /// The tantivy analyzer.
    pub fn build(self) -> TextAnalyzer {
        let words = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser);
        match self {
            Analyzer::English => words.filter(Stemmer::new(Language::English)).build(),
            Analyzer::Plain => words.build(),
        }
    }

    /// Registers every analyzer under its name.
    pub fn register_all(manager: &TokenizerManager) {
        for analyzer in Self::ALL {
            manager.register(analyzer.name(), analyzer.build());
        }
    }

    /// The distinct terms of `text`, in order of first appearance (linear in its length).
    pub fn terms(self, text: &str) -> Vec<String> {
        let mut analyzer = self.build();
        let mut stream = analyzer.token_stream(text);
        let mut seen: HashSet<String> = HashSet::new();
        let mut terms: Vec<String> = Vec::new();
        while let Some(token) = stream.next() {
            if seen.insert(token.text.clone()) {
                terms.push(token.text.clone());
            }
        }
        terms
    }

    /// The distinct terms of a question, refused ([`Error::InvalidInput`], naming the limit)
    /// when it has over [`MAX_QUESTION_CHARS`] characters or [`MAX_QUESTION_TERMS`] distinct
    /// terms.
    pub fn question_terms(self, question: &str) -> Result<Vec<String>> {
        let chars = question.chars().count();
        if chars > MAX_QUESTION_CHARS {
            return Err(Error::InvalidInput(format!(
                "the question has {chars} characters, over the {MAX_QUESTION_CHARS} a question \
                 over an index may have; shorten it"
            )));
        }
        let terms = self.terms(question);
        if terms.len() > MAX_QUESTION_TERMS {
            return Err(Error::InvalidInput(format!(
                "the question has {} distinct words, over the {MAX_QUESTION_TERMS} a question \
                 over an index may have; shorten it",
                terms.len()
            )));
        }
        Ok(terms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_terms_are_stemmed_lower_case_words() {
        assert_eq!(
            Analyzer::English.terms("Which rivers FLOWED into the Rhine? The rivers."),
            ["which", "river", "flow", "into", "the", "rhine"]
        );
        assert_eq!(
            Analyzer::Plain.terms("Zürich's ÉCOLE, 1903!"),
            ["zürich", "s", "école", "1903"]
        );
        assert!(Analyzer::English.terms("?? — !!").is_empty());
    }

    #[test]
    fn questions_are_bounded_by_characters_and_terms() {
        let words: Vec<String> = (0..MAX_QUESTION_TERMS + 1)
            .map(|i| format!("w{i}"))
            .collect();
        let many = words.join(" ");
        assert!(many.chars().count() <= MAX_QUESTION_CHARS);
        match Analyzer::Plain.question_terms(&many) {
            Err(Error::InvalidInput(m)) => {
                assert!(m.contains("257 distinct words, over the 256"), "{m}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let long = "a".repeat(MAX_QUESTION_CHARS + 1);
        match Analyzer::English.question_terms(&long) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("over the 2000"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Repeated words count once.
        let repeated = vec!["river"; 300].join(" ");
        assert_eq!(
            Analyzer::English.question_terms(&repeated).unwrap(),
            ["river"]
        );
    }

    #[test]
    fn distinct_terms_of_a_long_text_take_linear_time() {
        // 200k distinct words: quadratic deduplication takes minutes, a set milliseconds.
        let text: String = (0..200_000).map(|i| format!("w{i} ")).collect();
        let started = std::time::Instant::now();
        assert_eq!(Analyzer::Plain.terms(&text).len(), 200_000);
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    }
}
