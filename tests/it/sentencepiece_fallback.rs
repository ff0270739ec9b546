//! Checkpoints that ship only a SentencePiece model (no tokenizer.json): the tokenizer bertqa
//! converts must give transformers' windows, logits and answers, and encode like the
//! tokenizer.json that transformers saved for the same checkpoint.

use crate::common;

use std::path::{Path, PathBuf};

use bertqa::checkpoint::{locate, HubOptions};
use bertqa::features::QaTokenizer;
use bertqa::Error;

const SPM_FIXTURES: [(&str, &str); 3] = [
    ("albert", "spiece.model"),
    ("xlm-roberta", "sentencepiece.bpe.model"),
    ("deberta-v3", "spm.model"),
];

/// A scratch copy of a fixture without tokenizer.json (and without its golden file).
struct Scratch(PathBuf);

impl Scratch {
    fn of(arch: &str, tag: &str) -> Self {
        let src = common::fixture(arch);
        let dir =
            std::env::temp_dir().join(format!("bertqa-spm-{arch}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name == "tokenizer.json" || name == "golden.json" || !entry.path().is_file() {
                continue;
            }
            std::fs::copy(entry.path(), dir.join(&name)).unwrap();
            // Copies of read-only fixtures are read-only too; tests edit some of them.
            let mut perms = std::fs::metadata(dir.join(&name)).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(dir.join(&name), perms).unwrap();
        }
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn edit_json(&self, name: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.0.join(name);
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut value);
        std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tokenizer_of(dir: &Path) -> bertqa::Result<QaTokenizer> {
    let files = locate(dir.to_str().unwrap(), &HubOptions::default())?;
    let spec = bertqa::models::ModelSpec::parse(&bertqa::checkpoint::read_json(&files.config)?)?;
    QaTokenizer::from_checkpoint(&files, &spec)
}

fn check_golden(arch: &str, dir: &Path, model_file: &str) {
    let qa = common::load_pipeline(dir);
    assert!(qa.files().tokenizer_json.is_none());
    assert_eq!(
        qa.files().spm_model.as_deref(),
        Some(dir.join(model_file).as_path())
    );
    let golden = common::load_golden(&common::fixture(arch).join("golden.json"));
    assert!(!golden.cases.is_empty());
    let errors: Vec<String> = golden
        .cases
        .iter()
        .flat_map(|c| common::check_case(&qa, c))
        .collect();
    assert!(
        errors.is_empty(),
        "{arch}: {} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn albert_from_spiece_model_matches_transformers() {
    let dir = Scratch::of("albert", "golden");
    check_golden("albert", dir.path(), "spiece.model");
}

#[test]
fn xlm_roberta_from_sentencepiece_bpe_model_matches_transformers() {
    let dir = Scratch::of("xlm-roberta", "golden");
    check_golden("xlm-roberta", dir.path(), "sentencepiece.bpe.model");
}

#[test]
fn deberta_v3_from_spm_model_matches_transformers() {
    let dir = Scratch::of("deberta-v3", "golden");
    check_golden("deberta-v3", dir.path(), "spm.model");
}

/// Older checkpoints have no `added_tokens_decoder` in tokenizer_config.json: the special tokens
/// come from special_tokens_map.json and the extra ids from added_tokens.json.
#[test]
fn legacy_token_files_give_the_same_windows() {
    for (arch, model_file) in SPM_FIXTURES {
        let dir = Scratch::of(arch, "legacy");
        dir.edit_json("tokenizer_config.json", |config| {
            let map = config.as_object_mut().unwrap();
            assert!(map.remove("added_tokens_decoder").is_some());
        });
        check_golden(arch, dir.path(), model_file);
    }
}

const TRICKY: [&str; 14] = [
    "Café naïve façade — résumé, Ærø, straße, ﬁne",
    "two  spaces,   three and\ttab\nnewline",
    "   leading and trailing spaces   ",
    "北京是中国的首都。東京タワー 서울",
    "emoji 🤗🚀 and skin tone 👍🏽 mixed😀text",
    "numbers 1,234,567.89 and 3.14 or 1,5 and 2nd ½ ²",
    "``quoted'' text and \"plain\" 'single'",
    "UPPER lower MiXeD",
    "full-width ＡＢＣ１２３ and ligature ﬃ",
    "",
    " ",
    "a",
    "tabs\t\tand\u{00a0}nbsp\u{2003}em space",
    "Zürich's Ångström — ‘curly’ “quotes”",
];

fn assert_same_encodings(arch: &str, converted: &QaTokenizer, reference: &QaTokenizer) {
    let (ours, theirs) = (converted.tokenizer(), reference.tokenizer());
    assert_eq!(
        ours.get_vocab(true),
        theirs.get_vocab(true),
        "{arch}: vocabularies (with added tokens) differ"
    );
    for text in TRICKY {
        let a = ours.encode_char_offsets(text, true).unwrap();
        let b = theirs.encode_char_offsets(text, true).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{arch}: ids of {text:?}");
        assert_eq!(
            a.get_offsets(),
            b.get_offsets(),
            "{arch}: offsets of {text:?}"
        );
        assert_eq!(a.get_tokens(), b.get_tokens(), "{arch}: tokens of {text:?}");
    }
    for (question, context) in TRICKY.iter().zip(TRICKY.iter().rev()) {
        let a = ours
            .encode_char_offsets((*question, *context), true)
            .unwrap();
        let b = theirs
            .encode_char_offsets((*question, *context), true)
            .unwrap();
        assert_eq!(
            a.get_ids(),
            b.get_ids(),
            "{arch}: ids of {question:?} + {context:?}"
        );
        assert_eq!(a.get_type_ids(), b.get_type_ids(), "{arch}: type ids");
        assert_eq!(a.get_offsets(), b.get_offsets(), "{arch}: offsets");
        assert_eq!(
            a.get_sequence_ids(),
            b.get_sequence_ids(),
            "{arch}: sequence ids"
        );
    }
}

#[test]
fn converted_tokenizers_encode_like_tokenizer_json() {
    for (arch, _) in SPM_FIXTURES {
        let dir = Scratch::of(arch, "encode");
        let converted = tokenizer_of(dir.path()).unwrap();
        let reference = tokenizer_of(&common::fixture(arch)).unwrap();
        assert!(converted.tokenizer().get_vocab_size(true) > 2000);
        assert_same_encodings(arch, &converted, &reference);
        assert_eq!(converted.pad_token_id(), reference.pad_token_id(), "{arch}");
    }
}

/// ALBERT without accent stripping or lower-casing (keep_accents, do_lower_case: false) must
/// still encode like the tokenizer that transformers converts with those settings; here the
/// reference is the fixture's tokenizer.json with the same normalizer steps removed.
#[test]
fn albert_normalizer_follows_tokenizer_config() {
    let dir = Scratch::of("albert", "cased");
    dir.edit_json("tokenizer_config.json", |config| {
        config["keep_accents"] = true.into();
        config["do_lower_case"] = false.into();
    });
    let converted = tokenizer_of(dir.path()).unwrap();

    let reference_dir = Scratch::of("albert", "cased-reference");
    let mut tokenizer_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("albert").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let steps = tokenizer_json["normalizer"]["normalizers"]
        .as_array_mut()
        .unwrap();
    let before = steps.len();
    steps.retain(|s| {
        !matches!(
            s["type"].as_str(),
            Some("NFKD" | "StripAccents" | "Lowercase")
        )
    });
    assert_eq!(steps.len(), before - 3);
    std::fs::write(
        reference_dir.path().join("tokenizer.json"),
        tokenizer_json.to_string(),
    )
    .unwrap();
    let reference = tokenizer_of(reference_dir.path()).unwrap();
    assert_same_encodings("albert (cased)", &converted, &reference);

    let lowered = tokenizer_of(&common::fixture("albert")).unwrap();
    let text = "Café";
    let ids = |t: &QaTokenizer| {
        t.tokenizer()
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec()
    };
    assert_ne!(ids(&converted), ids(&lowered), "settings had no effect");
}

#[test]
fn bpe_sentencepiece_model_is_refused_with_advice() {
    use prost::Message;
    let dir = Scratch::of("deberta-v3", "bpe");
    let path = dir.path().join("spm.model");
    let mut proto =
        bertqa::sentencepiece::ModelProto::decode(std::fs::read(&path).unwrap().as_slice())
            .unwrap();
    proto.trainer_spec.as_mut().unwrap().model_type = Some(2);
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    let err = tokenizer_of(dir.path())
        .err()
        .expect("a BPE model must be refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::Checkpoint { .. }), "{msg}");
    assert!(
        msg.contains("BPE") && msg.contains("tokenizer.json"),
        "{msg}"
    );
}

#[test]
fn truncated_model_file_is_a_checkpoint_error() {
    let dir = Scratch::of("albert", "truncated");
    let path = dir.path().join("spiece.model");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = tokenizer_of(dir.path()).err().expect("truncated file");
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("download it again"), "{err}");
}

#[test]
fn unknown_tokenizer_class_is_refused_with_advice() {
    let dir = Scratch::of("albert", "t5");
    dir.edit_json("tokenizer_config.json", |config| {
        config["tokenizer_class"] = "T5Tokenizer".into();
    });
    let err = tokenizer_of(dir.path()).err().expect("T5 is not supported");
    let msg = err.to_string();
    assert!(
        msg.contains("T5Tokenizer") && msg.contains("save_pretrained"),
        "{msg}"
    );
}

#[test]
fn model_type_picks_the_converter_without_tokenizer_class() {
    for (arch, _) in SPM_FIXTURES {
        let dir = Scratch::of(arch, "no-class");
        dir.edit_json("tokenizer_config.json", |config| {
            config.as_object_mut().unwrap().remove("tokenizer_class");
        });
        let converted = tokenizer_of(dir.path()).unwrap();
        let reference = tokenizer_of(&common::fixture(arch)).unwrap();
        assert_same_encodings(arch, &converted, &reference);
    }
}
