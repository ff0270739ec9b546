//! How passages and questions are cut into BM25 terms.
//!
//! Words are runs of letters and digits (Unicode), lower-cased; words over 40 bytes are
//! dropped. [`Analyzer::English`] (the default) also reduces words to their Porter stem, so
//! that "flows" finds "flowed"; [`Analyzer::Plain`] keeps them as they are (for text that is
//! not English). On the XQuAD paragraphs, stemming raised BM25's recall (see the README's
//! table); stop words are not removed, BM25's inverse document frequency already gives them
//! little weight.

use serde::{Deserialize, Serialize};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer,
    TokenizerManager,
};

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

    /// The distinct terms of `text`, in order of first appearance.
    pub fn terms(self, text: &str) -> Vec<String> {
        let mut analyzer = self.build();
        let mut stream = analyzer.token_stream(text);
        let mut terms: Vec<String> = Vec::new();
        while let Some(token) = stream.next() {
            if !terms.contains(&token.text) {
                terms.push(token.text.clone());
            }
        }
        terms
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
}
