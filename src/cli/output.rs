//! What the CLI shows on the terminal: answers in human-readable form, and progress bars.

use std::io::IsTerminal;
use std::time::Duration;

use bertqa::Answer;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// The sentence (or a ~160-character excerpt) around the answer, the answer marked with `[...]`.
pub fn excerpt(context: &str, answer: &Answer) -> String {
    if answer.is_impossible() {
        return "(no answer in the passage)".into();
    }
    let range = answer.byte_range(context);
    const REACH: usize = 120;
    let before = &context[..range.start];
    let after = &context[range.end..];
    // Back to the previous sentence end (". ", "! ", "? " or a newline), within reach.
    let mut from = 0;
    let mut clipped_left = false;
    for (i, c) in before.char_indices().rev() {
        if range.start - i > REACH {
            from = i + c.len_utf8();
            clipped_left = true;
            break;
        }
        if c == '\n'
            || (matches!(c, '.' | '!' | '?') && before[i + 1..].starts_with(char::is_whitespace))
        {
            from = i + c.len_utf8();
            break;
        }
    }
    let mut to = after.len();
    let mut clipped_right = false;
    for (i, c) in after.char_indices() {
        if i > REACH {
            to = i;
            clipped_right = true;
            break;
        }
        if c == '\n' {
            to = i;
            break;
        }
        let end = i + c.len_utf8();
        if matches!(c, '.' | '!' | '?')
            && (after[end..].is_empty() || after[end..].starts_with(char::is_whitespace))
        {
            to = end;
            break;
        }
    }
    format!(
        "{}{}[{}]{}{}",
        if clipped_left { "…" } else { "" },
        before[from..].trim_start(),
        &context[range.clone()],
        after[..to].trim_end(),
        if clipped_right { "…" } else { "" }
    )
    .replace('\n', " ")
}

/// Prints answers to one question for a person.
pub fn print_human(question: &str, context: &str, answers: &[Answer]) {
    println!("Q: {question}");
    for (k, a) in answers.iter().enumerate() {
        let label = if a.is_impossible() {
            "(no answer)".to_string()
        } else {
            format!("{:?}", a.answer)
        };
        println!(
            "  {}. {label}  score {:.4}  chars {}..{}",
            k + 1,
            a.score,
            a.start,
            a.end
        );
        println!("     {}", excerpt(context, a));
    }
}

/// A progress bar on stderr (questions done, rate, ETA), hidden when stderr is not a terminal.
pub fn progress_bar(questions: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(questions as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {pos}/{len} questions  {rate}  ETA {eta}  [{elapsed}]",
    ) {
        bar.set_style(style.with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1} q/s", state.per_sec());
            },
        ));
    }
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(context: &str, text: &str) -> Answer {
        let b = context.find(text).unwrap();
        let start = context[..b].chars().count();
        Answer {
            score: 0.5,
            start,
            end: start + text.chars().count(),
            answer: text.into(),
        }
    }

    #[test]
    fn excerpt_is_the_sentence_with_the_answer_marked() {
        let ctx = "First sentence. Marie Curie won in 1903. Last one.";
        assert_eq!(
            excerpt(ctx, &answer(ctx, "1903")),
            "Marie Curie won in [1903]."
        );
    }

    #[test]
    fn a_decimal_point_does_not_end_the_sentence() {
        let ctx = "It works with TensorFlow 2.0 and PyTorch. Next sentence.";
        assert_eq!(
            excerpt(ctx, &answer(ctx, "TensorFlow 2")),
            "It works with [TensorFlow 2].0 and PyTorch."
        );
    }

    #[test]
    fn excerpt_handles_multibyte_text() {
        let ctx = "Café 😀 opened in Zürich in 1923 — naïve.";
        assert_eq!(
            excerpt(ctx, &answer(ctx, "Zürich")),
            "Café 😀 opened in [Zürich] in 1923 — naïve."
        );
    }
}
