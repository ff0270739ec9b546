//! Property tests on random Unicode contexts: answers are slices of the context at their
//! offsets, windows cover every context token, and nothing panics.

use crate::common;

use std::sync::OnceLock;

use bertqa::{QaParams, QaPipeline, QaRequest};
use proptest::prelude::*;

fn pipeline() -> &'static QaPipeline {
    static QA: OnceLock<QaPipeline> = OnceLock::new();
    QA.get_or_init(|| common::load_pipeline(&common::fixture("bert-uncased")))
}

/// Text mixing ASCII, accents, CJK, emoji, combining marks and odd whitespace.
fn context() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 àéîõüßÅ中文日本語한국어😀🤗\u{301}\u{200b}\u{a0}.,;:!?()'\"\n\t-]{1,400}"
}

fn params() -> impl Strategy<Value = QaParams> {
    (
        1usize..6,
        1usize..20,
        24usize..80,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(top_k, max_answer_len, max_seq_len, impossible, align)| QaParams {
                top_k: Some(top_k),
                max_answer_len: Some(max_answer_len),
                max_seq_len: Some(max_seq_len),
                doc_stride: Some(max_seq_len / 4),
                handle_impossible_answer: Some(impossible),
                align_to_words: Some(align),
                ..QaParams::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn answers_are_context_slices(context in context(), question in "[a-z ]{1,20}[a-z]", params in params()) {
        let qa = pipeline();
        let request = QaRequest { question, context: context.clone(), params };
        match qa.answer_one(&request) {
            Ok(answers) => {
                let chars: Vec<char> = context.chars().collect();
                for a in &answers {
                    prop_assert!(a.start <= a.end && a.end <= chars.len(), "{a:?}");
                    let expected: String = chars[a.start..a.end].iter().collect();
                    prop_assert_eq!(&a.answer, &expected);
                    prop_assert_eq!(&context[a.byte_range(&context)], expected.as_str());
                    prop_assert!(a.score.is_finite() && a.score >= 0.0);
                }
                prop_assert!(answers.len() <= request.params.top_k.unwrap_or(1));
            }
            // Contexts of only whitespace/zero-width characters are refused, never a panic.
            Err(e) => prop_assert!(matches!(e, bertqa::Error::InvalidInput(_)), "{e}"),
        }
    }

    #[test]
    fn windows_cover_every_context_token(context in context(), max_seq_len in 24usize..64, stride_div in 2usize..6) {
        prop_assume!(!context.trim().is_empty());
        let qa = pipeline();
        let doc_stride = max_seq_len / stride_div;
        let windows = qa.tokenizer().windows("who is it?", &context, max_seq_len, doc_stride).unwrap();
        let whole = qa.tokenizer().tokenizer().encode_char_offsets(context.as_str(), false).unwrap();
        let mut covered = std::collections::HashSet::new();
        for w in &windows {
            prop_assert!(w.len() <= max_seq_len);
            let seq = w.encoding.get_sequence_ids();
            for (i, off) in w.offsets().iter().enumerate() {
                if seq[i] == Some(1) {
                    prop_assert!(!w.p_mask[i]);
                    covered.insert(*off);
                }
            }
        }
        for off in whole.get_offsets() {
            prop_assert!(covered.contains(off), "token at {off:?} is in no window");
        }
    }
}

/// The three kinds of tokenizer: WordPiece, byte-level BPE, SentencePiece unigram.
fn pipelines() -> &'static [QaPipeline; 3] {
    static QA: OnceLock<[QaPipeline; 3]> = OnceLock::new();
    QA.get_or_init(|| {
        ["bert-uncased", "roberta", "xlm-roberta"]
            .map(|f| common::load_pipeline(&common::fixture(f)))
    })
}

/// Any parameters, including nonsense: zero, tiny, huge and past the model's limits.
fn any_params() -> impl Strategy<Value = QaParams> {
    let size = prop_oneof![0usize..4, 4usize..96, Just(512), Just(usize::MAX)];
    (
        prop_oneof![0usize..4, Just(usize::MAX)],
        size.clone(),
        prop_oneof![0usize..96, Just(384), Just(100_000)],
        proptest::option::of(size),
        any::<bool>(),
    )
        .prop_map(
            |(top_k, max_answer_len, max_seq_len, doc_stride, impossible)| QaParams {
                top_k: Some(top_k),
                max_answer_len: Some(max_answer_len),
                max_seq_len: Some(max_seq_len),
                doc_stride,
                handle_impossible_answer: Some(impossible),
                ..QaParams::default()
            },
        )
}

/// Questions from one word to several hundred tokens, of any script.
fn question() -> impl Strategy<Value = String> {
    ("[a-zA-Z àé中文😀?]{1,40}", 1usize..30).prop_map(|(q, n)| q.repeat(n))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever the question, context and parameters, on every kind of tokenizer: a clear
    /// error about the input or its parameters, or answers that are exact slices of the context.
    /// Never a panic.
    #[test]
    fn any_input_gets_an_error_or_exact_answers(
        kind in 0usize..3,
        question in question(),
        context in context(),
        params in any_params(),
    ) {
        let qa = &pipelines()[kind];
        let request = QaRequest { question, context: context.clone(), params };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| qa.answer_one(&request)));
        let Ok(result) = outcome else {
            return Err(TestCaseError::fail(format!("panicked on {request:?}")));
        };
        match result {
            Ok(answers) => {
                let chars: Vec<char> = context.chars().collect();
                for a in &answers {
                    prop_assert!(a.start <= a.end && a.end <= chars.len(), "{a:?}");
                    let expected: String = chars[a.start..a.end].iter().collect();
                    prop_assert_eq!(&a.answer, &expected);
                }
                prop_assert!(answers.len() <= request.params.top_k.unwrap_or(1));
            }
            Err(e) => prop_assert!(
                matches!(e, bertqa::Error::InvalidInput(_) | bertqa::Error::InvalidParameter { .. }),
                "not an input error: {e}"
            ),
        }
    }
}
