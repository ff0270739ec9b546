//! Document indexes against hostile inputs: concurrent `bertqa index` runs, questions and
//! documents past the bounds, read-only indexes, files that are not regular files, escape
//! codes in names and titles, host paths in answers.

use crate::common::{self, TempDir};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bertqa::index::{AskOptions, Hit, Index, IndexSettings, Passage, Retrieval};
use bertqa::Error;
use serde_json::Value;

fn model_dir() -> PathBuf {
    common::shared().join("models/minilm-xquad-qa")
}

fn bertqa_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bertqa"));
    command.args(args);
    command
}

fn bertqa(args: &[&str]) -> Output {
    bertqa_command(args).output().expect("run bertqa")
}

fn spawn(args: &[&str]) -> Child {
    bertqa_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bertqa")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Waits for `child` at most `limit`; kills it (and fails) past that.
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("bertqa ran past {limit:?} (hangs?): {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn concurrent_index_runs_keep_every_file_once() {
    let work = TempDir::new("index-race");
    let many = work.join("many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..1500 {
        std::fs::write(
            many.join(format!("f{i:04}.txt")),
            format!("Note number{i} here."),
        )
        .unwrap();
    }
    let small = work.join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("a.txt"), "The zebracorn lives here.").unwrap();
    let init = work.join("init");
    std::fs::create_dir_all(&init).unwrap();
    std::fs::write(init.join("i.txt"), "First file.").unwrap();

    // With and without an index already there (two runs creating the same index), the second
    // run started at several delays after the first.
    for (round, delay_ms) in [0u64, 0, 20, 60, 120].into_iter().enumerate() {
        let create_together = round % 2 == 0;
        let dir = work.join(format!("index{round}"));
        if !create_together {
            let out = bertqa(&["index", "--index", s(&dir), s(&init)]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let first = spawn(&["index", "--index", s(&dir), s(&many), "--json"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let second = spawn(&["index", "--index", s(&dir), s(&small), "--json"]);
        let first = wait_bounded(first, Duration::from_secs(60));
        let second = wait_bounded(second, Duration::from_secs(60));
        assert!(first.status.success(), "round {round}: {}", stderr(&first));
        assert!(
            second.status.success(),
            "round {round}: {}",
            stderr(&second)
        );
        let report: Value = serde_json::from_slice(&second.stdout).unwrap();
        assert_eq!(report["report"]["added"], 1, "round {round}");

        let mut index = Index::open(&dir).unwrap();
        let expected = 1500 + 1 + usize::from(!create_together);
        assert_eq!(index.stats().files, expected, "round {round}");
        assert_eq!(index.stats().passages, expected as u64, "round {round}");
        // The second run's file is listed, and its passage is there once.
        let hits = index.search("zebracorn", 10).unwrap().hits;
        assert_eq!(hits.len(), 1, "round {round}");
        assert_eq!(index.search("number1499", 10).unwrap().hits.len(), 1);
        let removed = index.remove(&[small.join("a.txt")]).unwrap();
        assert_eq!((removed.files, removed.passages), (1, 1), "round {round}");
        assert!(index.search("zebracorn", 10).unwrap().hits.is_empty());
    }
}

#[test]
fn questions_over_the_bounds_are_refused_naming_the_limit() {
    let work = TempDir::new("index-question-bounds");
    let file = work.join("a.txt");
    std::fs::write(&file, "Paris is the capital of France.").unwrap();
    let dir = work.join("index");
    let mut index = Index::open_or_create(&dir, &IndexSettings::default()).unwrap();
    index.add(&[&file], |_| {}).unwrap();

    let words: Vec<String> = (0..160_000).map(|i| format!("w{i}")).collect();
    let huge = words.join(" ");
    let started = Instant::now();
    match index.search(&huge, 3) {
        Err(Error::InvalidInput(m)) => assert!(m.contains("over the 2000"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let many = words[..300].join(" ");
    match index.search(&many, 3) {
        Err(Error::InvalidInput(m)) => assert!(m.contains("over the 256"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(index.search("capital of France", 3).unwrap().hits.len(), 1);

    // The CLI refuses it before loading the model, as it refuses --top-k 0.
    let model = model_dir();
    for (args, expected) in [
        (vec!["-q", many.as_str()], "over the 256"),
        (
            vec!["-q", "Capital?", "--top-k", "0"],
            "--top-k must be at least 1",
        ),
    ] {
        let mut all = vec!["ask", "--model", s(&model), "--index", s(&dir)];
        all.extend(args);
        let out = bertqa(&all);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    let out = bertqa(&[
        "eval",
        "--model",
        s(&model),
        "--index",
        s(&dir),
        "--data",
        s(&file),
        "--top-k",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--top-k has no effect with --index"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn odd_documents_are_cut_when_indexed_and_never_fail_a_question() {
    let work = TempDir::new("index-odd-documents");
    let docs = work.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("word.txt"), "capital".repeat(170_000)).unwrap();
    std::fs::write(
        docs.join("commas.txt"),
        format!("capital of France{}", ",".repeat(300_000)),
    )
    .unwrap();
    std::fs::write(docs.join("france.txt"), "Paris is the capital of France.").unwrap();
    let dir = work.join("index");
    let mut index = Index::open_or_create(&dir, &IndexSettings::default()).unwrap();
    let report = index.add(&[&docs], |_| {}).unwrap();
    assert_eq!(report.added, 3);
    assert!(report.passages_cut >= 500, "{report:?}");
    assert_eq!(report.warnings.len(), 2, "{report:?}");
    assert!(
        report.warnings[0].reason.contains("passages cut"),
        "{report:?}"
    );

    let qa = common::load_pipeline(&model_dir());
    let options = AskOptions {
        passages: 5,
        ..AskOptions::default()
    };
    let found = qa
        .answer_over(&index, &["What is the capital of France?"], &options)
        .unwrap();
    let best = &found[0].answers[0];
    assert!(best.answer.contains("Paris"), "{:?}", found[0]);
    assert!(best.path.ends_with("france.txt"), "{:?}", found[0]);

    // A passage over the bounds (as an index written before they existed holds) is read up
    // to them, with a warning, and the others are read as they are.
    let retrieval = Retrieval {
        terms: vec!["capit".into()],
        hits: vec![
            whole_file_hit("x".repeat(1_200_000), "huge.txt"),
            whole_file_hit("Paris is the capital of France.".into(), "france.txt"),
        ],
    };
    let found = qa
        .answer_retrieved(&["What is the capital of France?"], &[retrieval], &options)
        .unwrap();
    assert!(
        found[0].answers[0].answer.contains("Paris"),
        "{:?}",
        found[0]
    );
    assert_eq!(found[0].warnings.len(), 1, "{:?}", found[0].warnings);
    assert!(found[0].warnings[0].contains("huge.txt"));
}

/// A retrieved passage that is all of the file at `path`.
fn whole_file_hit(text: String, path: &str) -> Hit {
    Hit {
        score: 1.0,
        passage: Passage {
            end: text.chars().count(),
            text,
            doc_id: path.into(),
            title: String::new(),
            path: path.into(),
            start: 0,
        },
    }
}

/// Every entry of `dir` (recursively) with its size and modification time, and the folders'
/// own modification times (which change when a file is created or deleted in them).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        out.insert(
            entry.path().to_path_buf(),
            (meta.len(), meta.modified().unwrap()),
        );
    }
    out
}

fn set_read_only(dir: &Path, read_only: bool) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        let mode = std::fs::metadata(entry.path())
            .unwrap()
            .permissions()
            .mode();
        let mode = if read_only {
            mode & !0o222
        } else {
            mode | 0o200
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Readers need no write access. As root, where permissions do not stop writes, the test
/// still fails if a reader creates, deletes or changes any file in the index folder: the
/// snapshot holds every entry's size and modification time and the folder's own.
#[test]
fn a_read_only_index_answers_and_readers_write_nothing() {
    let work = TempDir::new("index-read-only");
    let file = work.join("a.md");
    std::fs::write(&file, "# Geography\n\nParis is the capital of France.").unwrap();
    let dir = work.join("index");
    let mut index = Index::open_or_create(&dir, &IndexSettings::default()).unwrap();
    index.add(&[&file], |_| {}).unwrap();
    drop(index);

    set_read_only(&dir, true);
    let before = snapshot(&dir);
    std::thread::sleep(Duration::from_millis(20));
    let index = Index::open(&dir);
    let model = model_dir();
    let out = bertqa(&[
        "ask",
        "--model",
        s(&model),
        "--index",
        s(&dir),
        "-q",
        "What is the capital of France?",
        "--json",
    ]);
    let after = snapshot(&dir);
    set_read_only(&dir, false);
    let index = index.unwrap();
    assert_eq!(index.search("capital", 3).unwrap().hits.len(), 1);
    assert!(out.status.success(), "{}", stderr(&out));
    let answers: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        answers[0]["answer"].as_str().unwrap().contains("Paris"),
        "{answers}"
    );
    assert_eq!(before, after, "a reader changed the index folder");
}

#[test]
fn odd_files_are_reported_and_names_reach_no_terminal_raw() {
    use std::os::unix::ffi::OsStrExt;
    let work = TempDir::new("index-odd-files");
    let docs = work.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let escape_name = "evil\u{1b}[31mred\u{7}.md";
    std::fs::write(
        docs.join(escape_name),
        "# \u{1b}]0;pwned\u{7}Title\n\nThe zebracorn lives in Quuxland.",
    )
    .unwrap();
    std::fs::write(work.join("target.txt"), "Linked text.").unwrap();
    std::os::unix::fs::symlink(work.join("target.txt"), docs.join("link.txt")).unwrap();
    let fifo = docs.join("pipe.txt");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let latin1 = work.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir_all(&latin1).unwrap();
    std::fs::write(latin1.join("x.txt"), "Hidden text.").unwrap();
    let dir = work.join("index");

    let child = bertqa_command(&["index", "--index", s(&dir), s(&docs), "/dev/zero"])
        .arg(&latin1)
        .arg(&fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("link.txt: is a symbolic link"), "{err}");
    assert!(err.contains("pipe.txt: is a named pipe (FIFO)"), "{err}");
    assert!(err.contains("/dev/zero: is a device"), "{err}");
    assert!(err.contains("its path is not UTF-8"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 files added"), "{stdout}");
    assert!(stdout.contains("4 skipped"), "{stdout}");

    // Answers name files relative to the folder indexed; titles and names are escaped.
    let model = model_dir();
    let ask = |extra: &[&str]| {
        let mut args = vec![
            "ask",
            "--model",
            s(&model),
            "--index",
            s(&dir),
            "-q",
            "Where does the zebracorn live?",
        ];
        args.extend(extra);
        let out = bertqa(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let human = ask(&[]);
    assert!(!human.stdout.contains(&0x1b) && !human.stdout.contains(&0x07));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("\\u{1b}]0;pwned\\u{7}Title"), "{text}");
    assert!(!text.contains(s(&work)), "{text}");
    let json: Value = serde_json::from_slice(&ask(&["--json"]).stdout).unwrap();
    assert_eq!(json[0]["path"], format!("docs/{escape_name}"));
    assert_eq!(json[0]["doc_id"], format!("docs/{escape_name}"));
    let json: Value = serde_json::from_slice(&ask(&["--json", "--absolute-paths"]).stdout).unwrap();
    let absolute = std::fs::canonicalize(&docs).unwrap().join(escape_name);
    assert_eq!(json[0]["path"], s(&absolute));
}

#[test]
fn a_passage_is_read_in_one_window_whatever_its_tokens() {
    use bertqa::index::passages::readable_part;
    use bertqa::QaParams;

    // Words of random letters: within the passage bounds (a piece each), but the reader's
    // vocabulary cuts each into several tokens, more than one window holds.
    let mut seed = 7u32;
    let mut letter = || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        char::from(b'a' + ((seed >> 16) % 26) as u8)
    };
    let words: Vec<String> = (0..170)
        .map(|_| (0..8).map(|_| letter()).collect())
        .collect();
    let text = format!("Paris is the capital of France. {}", words.join(" "));
    assert_eq!(readable_part(&text), text, "the text is within the bounds");
    let hit = whole_file_hit(text.clone(), "letters.txt");
    let qa = common::load_pipeline(&model_dir());
    let question = "What is the capital of France?";
    let tokens = qa
        .tokenizer()
        .tokenizer()
        .encode(text.as_str(), false)
        .unwrap();
    let (room, _) = qa.tokenizer().context_room(question, 384).unwrap();
    assert!(tokens.len() > room, "{} tokens", tokens.len());

    let prepared = qa
        .prepare_hits(question, std::slice::from_ref(&hit), &QaParams::default())
        .unwrap();
    let read = prepared[0].context.clone();
    assert_eq!(prepared[0].windows.len(), 1);
    assert!(text.starts_with(&read) && read.len() < text.len());
    assert!(text[read.len()..].starts_with(' '), "cut inside a word");
    let read_tokens = qa
        .tokenizer()
        .tokenizer()
        .encode(read.as_str(), false)
        .unwrap();
    assert!(read_tokens.len() <= room && read_tokens.len() + 8 > room);

    // A shorter window reads the same text, in more windows.
    let short = QaParams {
        max_seq_len: Some(128),
        doc_stride: Some(32),
        ..QaParams::default()
    };
    let prepared = qa
        .prepare_hits(question, std::slice::from_ref(&hit), &short)
        .unwrap();
    assert_eq!(prepared[0].context, read);
    assert!(prepared[0].windows.len() > 1);

    // The answer in the part read is found, and the cut is said.
    let retrieval = Retrieval {
        terms: vec!["capit".into()],
        hits: vec![hit],
    };
    let found = qa
        .answer_retrieved(&[question], &[retrieval], &AskOptions::default())
        .unwrap();
    assert!(
        found[0].answers[0].answer.contains("Paris"),
        "{:?}",
        found[0]
    );
    assert_eq!(found[0].warnings.len(), 1, "{:?}", found[0].warnings);
    let warning = &found[0].warnings[0];
    assert!(
        warning.contains("letters.txt")
            && warning.contains("more tokens than one window holds")
            && warning.contains(&format!("first {} characters", read.chars().count())),
        "{warning}"
    );
}
