//! Splitting documents into passages, the units that are retrieved and read.
//!
//! A passage is a contiguous slice of its document, so that an answer's offsets in the passage
//! plus the passage's start are its offsets in the document. Documents are cut at blank lines
//! into paragraphs; consecutive short paragraphs (a Markdown heading and its text, a list) are
//! merged up to [`PASSAGE_WORDS`] words; a longer paragraph is cut at sentence ends into pieces
//! of at most [`PASSAGE_WORDS`] words (a sentence longer than that at word boundaries).
//!
//! Whatever the text, a passage is what one window of the reader takes in beside a question:
//! no passage is over [`MAX_PASSAGE_CHARS`] characters or [`MAX_PASSAGE_PIECES`] pieces, where
//! pieces estimate the tokens the reader's tokenizers make: a run of letters and digits is a
//! piece per [`RUN_UNITS`] units begun (an ASCII character is one unit, any other letter
//! [`NON_ASCII_UNITS`]: words of other scripts are cut into more tokens), and every CJK
//! ideograph and every other non-space character is a piece of its own. A passage over either bound is cut at its last
//! sentence end within them; text without one (a "word" of a million letters, a line of commas,
//! a long list of figures) at its last whitespace, or at the bounds when there is none, and
//! those cuts are counted ([`split_passages_counted`]) so that indexing warns about them.
//!
//! The sizes follow the reader: a window of 384 tokens holds about 280 English words next to
//! a question, so a passage of 200 words (about 260 tokens) is read in one window.

use std::ops::Range;

/// Consecutive paragraphs are merged while the passage stays within this many words; longer
/// paragraphs are cut into pieces of at most this many.
pub const PASSAGE_WORDS: usize = 200;

/// Most characters in a passage (200 English words take about 1,300).
pub const MAX_PASSAGE_CHARS: usize = 1_600;

/// Most pieces in a passage (see the module docs): with the question and the three special
/// tokens, one window of 384 tokens.
pub const MAX_PASSAGE_PIECES: usize = 300;

/// A run of letters and digits counts a piece per this many units begun: a long word is
/// several tokens to the reader (about one per 5–8 ASCII letters in English).
pub const RUN_UNITS: usize = 8;

/// Units of a letter or digit outside ASCII (see [`RUN_UNITS`]).
pub const NON_ASCII_UNITS: usize = 3;

/// Where a passage lies in its document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassageSpan {
    /// Byte range in the document's text.
    pub bytes: Range<usize>,
    /// Character (Unicode scalar value) range in the document's text.
    pub chars: Range<usize>,
}

/// Cuts `text` into passages (see the module docs). Whitespace-only text has none.
pub fn split_passages(text: &str) -> Vec<PassageSpan> {
    split_passages_counted(text).0
}

/// [`split_passages`], with the number of cuts made to keep passages within
/// [`MAX_PASSAGE_CHARS`] and [`MAX_PASSAGE_PIECES`].
pub fn split_passages_counted(text: &str) -> (Vec<PassageSpan>, usize) {
    let mut pieces: Vec<(Range<usize>, usize)> = Vec::new();
    for paragraph in paragraphs(text) {
        let words = count_words(&text[paragraph.clone()]);
        if words <= PASSAGE_WORDS {
            pieces.push((paragraph, words));
        } else {
            pieces.extend(cut_long(text, paragraph));
        }
    }
    let mut merged: Vec<Range<usize>> = Vec::new();
    let mut words_in_last = usize::MAX;
    for (range, words) in pieces {
        match merged.last_mut() {
            Some(last) if words_in_last + words <= PASSAGE_WORDS => {
                last.end = range.end;
                words_in_last += words;
            }
            _ => {
                merged.push(range);
                words_in_last = words;
            }
        }
    }
    let mut bounded = Vec::with_capacity(merged.len());
    let mut cuts = 0;
    for range in merged {
        cuts += bound(text, range, &mut bounded);
    }
    (with_char_offsets(text, bounded), cuts)
}

/// Cuts `range` into pieces within the passage bounds, pushed onto `out`; returns the number
/// of cuts made at a space or inside text (not at a sentence end).
fn bound(text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>) -> usize {
    let mut cuts = 0;
    let mut start = range.start;
    while let Some(cut) = over_bounds_at(&text[start..range.end]) {
        out.extend(trimmed(text, start..start + cut.at));
        cuts += usize::from(!cut.sentence_end);
        start += cut.at;
    }
    out.extend(trimmed(text, start..range.end));
    cuts
}

/// The part of a passage that is read: all of it, or for a passage over the bounds (from an
/// index written before passages were bounded as they are now) its beginning within them.
pub fn readable_part(text: &str) -> &str {
    match over_bounds_at(text) {
        Some(cut) => text[..cut.at].trim_end(),
        None => text,
    }
}

/// Where to cut a passage over the bounds.
struct Cut {
    /// Byte offset, never 0.
    at: usize,
    /// Whether it is after a sentence end.
    sentence_end: bool,
}

/// `None` when `slice` is within the passage bounds; otherwise where to cut it: after its last
/// sentence end within the bounds, else at its last whitespace, else at the bounds themselves.
fn over_bounds_at(slice: &str) -> Option<Cut> {
    let mut pieces = 0;
    let mut run = 0;
    let mut last_space = None;
    let mut last_sentence_end = None;
    let mut previous = ' ';
    for (chars, (i, c)) in slice.char_indices().enumerate() {
        let new_piece = if is_ideograph(c) {
            run = 0;
            true
        } else if c.is_alphanumeric() {
            let before = run;
            run += if c.is_ascii() { 1 } else { NON_ASCII_UNITS };
            before == 0 || (before - 1) / RUN_UNITS != (run - 1) / RUN_UNITS
        } else {
            run = 0;
            !c.is_whitespace()
        };
        if chars == MAX_PASSAGE_CHARS || (new_piece && pieces == MAX_PASSAGE_PIECES) {
            return Some(match (last_sentence_end, last_space) {
                (Some(at), _) => Cut {
                    at,
                    sentence_end: true,
                },
                (None, Some(at)) => Cut {
                    at,
                    sentence_end: false,
                },
                (None, None) => Cut {
                    at: i,
                    sentence_end: false,
                },
            });
        }
        pieces += usize::from(new_piece);
        if c.is_whitespace() && i > 0 {
            last_space = Some(i);
            if matches!(previous, '.' | '!' | '?') {
                last_sentence_end = Some(i);
            }
        }
        previous = c;
    }
    None
}

/// CJK ideographs: BERT's tokenizer makes a token of each, with no spaces between them.
fn is_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// `range` of `text` without leading and trailing whitespace (`None` if nothing is left).
fn trimmed(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let slice = &text[range.clone()];
    let start = range.start + (slice.len() - slice.trim_start().len());
    let end = range.end - (slice.len() - slice.trim_end().len());
    (start < end).then_some(start..end)
}

/// Blocks of text separated by blank (whitespace-only) lines, trimmed.
fn paragraphs(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() {
            out.extend(trimmed(text, start..offset));
            start = offset + line.len();
        }
        offset += line.len();
    }
    out.extend(trimmed(text, start..text.len()));
    out
}

/// Cuts a long paragraph at sentence ends into pieces of at most [`PASSAGE_WORDS`] words,
/// with their word counts.
fn cut_long(text: &str, paragraph: Range<usize>) -> Vec<(Range<usize>, usize)> {
    let mut pieces: Vec<(Range<usize>, usize)> = Vec::new();
    for sentence in sentences(text, paragraph) {
        let words = count_words(&text[sentence.clone()]);
        let sentence_pieces = if words > PASSAGE_WORDS {
            cut_at_words(text, sentence)
        } else {
            vec![(sentence, words)]
        };
        for (range, words) in sentence_pieces {
            match pieces.last_mut() {
                Some((last, n)) if *n + words <= PASSAGE_WORDS => {
                    last.end = range.end;
                    *n += words;
                }
                _ => pieces.push((range, words)),
            }
        }
    }
    pieces
}

/// Sentences of `range`: cut after `.`, `!` or `?` followed by whitespace, trimmed.
fn sentences(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    let slice = &text[range.clone()];
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = slice.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_is_space = chars.peek().is_some_and(|(_, n)| n.is_whitespace());
        if matches!(c, '.' | '!' | '?') && next_is_space {
            let end = i + c.len_utf8();
            out.extend(trimmed(text, range.start + start..range.start + end));
            start = end;
        }
    }
    out.extend(trimmed(text, range.start + start..range.end));
    out
}

/// Cuts `range` at word boundaries into pieces of [`PASSAGE_WORDS`] words.
fn cut_at_words(text: &str, range: Range<usize>) -> Vec<(Range<usize>, usize)> {
    let slice = &text[range.clone()];
    let mut out = Vec::new();
    let mut piece_start: Option<usize> = None;
    let mut piece_end = 0;
    let mut words = 0;
    let mut in_word = false;
    for (i, c) in slice.char_indices() {
        if c.is_whitespace() {
            if in_word {
                piece_end = i;
                in_word = false;
                if words == PASSAGE_WORDS {
                    if let Some(s) = piece_start.take() {
                        out.push((range.start + s..range.start + piece_end, words));
                    }
                    words = 0;
                }
            }
        } else if !in_word {
            in_word = true;
            words += 1;
            piece_start.get_or_insert(i);
        }
    }
    if in_word {
        piece_end = slice.len();
    }
    if let Some(s) = piece_start {
        out.push((range.start + s..range.start + piece_end, words));
    }
    out
}

/// Adds character offsets to byte ranges given in document order.
fn with_char_offsets(text: &str, ranges: Vec<Range<usize>>) -> Vec<PassageSpan> {
    let mut byte = 0;
    let mut chars = 0;
    let mut to_chars = |b: usize| {
        chars += text[byte..b].chars().count();
        byte = b;
        chars
    };
    ranges
        .into_iter()
        .map(|bytes| {
            let start = to_chars(bytes.start);
            let end = to_chars(bytes.end);
            PassageSpan {
                bytes,
                chars: start..end,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(text: &'a str, spans: &[PassageSpan]) -> Vec<&'a str> {
        spans.iter().map(|s| &text[s.bytes.clone()]).collect()
    }

    /// Every passage's char range selects the same text as its byte range.
    fn check_offsets(text: &str, spans: &[PassageSpan]) {
        let chars: Vec<char> = text.chars().collect();
        for s in spans {
            let by_chars: String = chars[s.chars.clone()].iter().collect();
            assert_eq!(by_chars, &text[s.bytes.clone()]);
        }
    }

    #[test]
    fn short_paragraphs_merge_into_one_passage() {
        let text = "# Título\n\nÜber 😀 alles.\r\n  \r\nSecond paragraph.\n";
        let spans = split_passages(text);
        assert_eq!(
            texts(text, &spans),
            ["# Título\n\nÜber 😀 alles.\r\n  \r\nSecond paragraph."]
        );
        check_offsets(text, &spans);
        assert_eq!(spans[0].chars.start, 0);
    }

    #[test]
    fn paragraphs_past_the_passage_size_stay_apart() {
        let long = vec!["word"; 150].join(" ");
        let text = format!("{long}\n\n{long}\n\n\nshort tail");
        let spans = split_passages(&text);
        assert_eq!(spans.len(), 2);
        assert_eq!(&text[spans[0].bytes.clone()], long);
        assert_eq!(
            &text[spans[1].bytes.clone()],
            format!("{long}\n\n\nshort tail")
        );
        check_offsets(&text, &spans);
    }

    #[test]
    fn a_paragraph_up_to_the_limit_stays_whole() {
        let text = vec!["mot"; PASSAGE_WORDS].join(" ");
        assert_eq!(split_passages(&text).len(), 1);
        let text = vec!["mot"; PASSAGE_WORDS + 1].join(" ");
        let spans = split_passages(&text);
        assert_eq!(texts(&text, &spans), [&text[..text.len() - 4], "mot"]);
    }

    #[test]
    fn pieces_estimate_tokens() {
        // Counted through the bound: `n` pieces fit, `n + 1` do not.
        let fits = |t: &str| over_bounds_at(t).is_none();
        let words = |w: &str, n: usize| vec![w; n].join(" ");
        assert!(fits(&words("ab", MAX_PASSAGE_PIECES)));
        assert!(!fits(&words("ab", MAX_PASSAGE_PIECES + 1)));
        // A word of up to 8 ASCII letters is one piece; 9 to 16 letters are two.
        assert!(fits(&words("abcdefgh", MAX_PASSAGE_PIECES / 2 + 1)));
        assert!(fits(&words("abcdefghi", MAX_PASSAGE_PIECES / 2)));
        assert!(!fits(&words("abcdefghi", MAX_PASSAGE_PIECES / 2 + 1)));
        // Signs are a piece each; so is a CJK ideograph, with or without spaces.
        assert!(fits(&",".repeat(MAX_PASSAGE_PIECES)));
        assert!(!fits(&",".repeat(MAX_PASSAGE_PIECES + 1)));
        assert!(fits(&"字".repeat(MAX_PASSAGE_PIECES)));
        assert!(!fits(&"字".repeat(MAX_PASSAGE_PIECES + 1)));
        // A letter outside ASCII is 3 units: "мы" (6 units) is one piece, "мир" (9) two.
        assert!(fits(&words("мы", MAX_PASSAGE_PIECES)));
        assert!(fits(&words("мир", MAX_PASSAGE_PIECES / 2)));
        assert!(!fits(&words("мир", MAX_PASSAGE_PIECES / 2 + 1)));
    }

    #[test]
    fn a_passage_over_the_pieces_is_cut_at_a_sentence_end_without_a_warning() {
        // Sentences of figures: 20 words and 101 pieces each (three runs and two commas a
        // figure, and the full stop); 9 of them are 180 words, one paragraph, cut two sentences
        // a passage.
        let sentence = format!("{}.", vec!["1,234,567"; 20].join(" "));
        let text = [sentence.as_str(); 9].join(" ");
        let (spans, cuts) = split_passages_counted(&text);
        assert_eq!(cuts, 0);
        assert_eq!(spans.len(), 5);
        for t in texts(&text, &spans) {
            assert!(t.ends_with("567."), "…{}", &t[t.len() - 8..]);
            assert!(over_bounds_at(t).is_none());
        }
        check_offsets(&text, &spans);
    }

    #[test]
    fn long_paragraphs_are_cut_at_sentence_ends() {
        let sentence = format!("{} é.", vec!["ça"; 49].join(" ")); // 50 words
        let text = vec![sentence.clone(); 9].join(" "); // 450 words, one paragraph
        let spans = split_passages(&text);
        let words: Vec<usize> = texts(&text, &spans)
            .iter()
            .map(|t| count_words(t))
            .collect();
        assert_eq!(words, [200, 200, 50]);
        for t in texts(&text, &spans) {
            assert!(
                t.ends_with("é."),
                "cut inside a sentence: …{}",
                &t[t.len() - 8..]
            );
        }
        check_offsets(&text, &spans);
    }

    #[test]
    fn a_sentence_longer_than_a_passage_is_cut_at_words() {
        let text = format!("  {}  ", vec!["ab"; 450].join(" \n "));
        let spans = split_passages(&text);
        let words: Vec<usize> = texts(&text, &spans)
            .iter()
            .map(|t| count_words(t))
            .collect();
        assert_eq!(words, [200, 200, 50]);
        check_offsets(&text, &spans);
        // Nothing is lost between pieces.
        let total: usize = words.iter().sum();
        assert_eq!(total, 450);
    }

    #[test]
    fn text_without_spaces_or_sentence_ends_is_cut_within_the_bounds() {
        // A "word" of 1.2 million letters, a line of commas, long words between spaces.
        let word = "é".repeat(1_200_000);
        let commas = ",".repeat(300_000);
        let long_words = vec!["x".repeat(90); 150].join(" ");
        for text in [word.as_str(), commas.as_str(), long_words.as_str()] {
            let (spans, cuts) = split_passages_counted(text);
            assert!(cuts > 0);
            assert_eq!(cuts + 1, spans.len());
            check_offsets(text, &spans);
            for t in texts(text, &spans) {
                assert!(t.chars().count() <= MAX_PASSAGE_CHARS);
                assert!(over_bounds_at(t).is_none());
            }
            // Nothing is lost but the whitespace between pieces.
            let kept: String = texts(text, &spans).concat();
            assert_eq!(
                kept.split_whitespace().collect::<String>(),
                text.split_whitespace().collect::<String>()
            );
        }
        assert_eq!(
            split_passages_counted(&commas).0.len(),
            300_000 / MAX_PASSAGE_PIECES
        );
        // Long words are cut at spaces, not inside a word.
        for t in texts(&long_words, &split_passages(&long_words)) {
            assert!(t.split(' ').all(|w| w.len() == 90));
        }
        // Ordinary text is not cut.
        let prose = vec!["Some words, here."; 100].join(" ");
        assert_eq!(split_passages_counted(&prose).1, 0);
    }

    #[test]
    fn whitespace_has_no_passages() {
        assert!(split_passages("").is_empty());
        assert!(split_passages(" \n\n\t\r\n ").is_empty());
    }
}
