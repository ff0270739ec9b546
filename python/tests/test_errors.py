"""Bad inputs raise ValueError (or TypeError for a wrong type), missing or broken
files OSError, each with a message that says what is wrong; nothing crashes the interpreter,
and the pipeline keeps answering afterwards."""

from __future__ import annotations

import json
import shutil

import pytest

import bertqa
from conftest import FIXTURES, SEED_CONTEXT, load_pipeline

Q = "What does Transformers provide?"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(question="", context=SEED_CONTEXT), "`question` cannot be empty"),
        (dict(question=Q, context=""), "`context` cannot be empty"),
        (dict(question="  \n\t", context=SEED_CONTEXT), "the question is empty"),
        (dict(question=Q, context=" \u3000 "), "the context is empty"),
        (dict(question=[Q, Q], context=[SEED_CONTEXT]), "don't have the same lengths"),
        (dict(question=[Q, None], context=SEED_CONTEXT), "`question` cannot be None"),
        (dict(question=[Q, 3], context=SEED_CONTEXT), "`question` must be a string"),
        (dict(question=Q, context=None), "Arguments can't be understood"),
        (dict(question=Q, context=SEED_CONTEXT, top_k=0), "top_k parameter should be >= 1 (got 0)"),
        (dict(question=Q, context=SEED_CONTEXT, top_k=-2), "top_k parameter should be >= 1 (got -2)"),
        (dict(question=Q, context=SEED_CONTEXT, top_k=-(10**30)), "top_k parameter should be >= 1"),
        # bool is an int: False is 0 (and True is 1, see test_arguments).
        (dict(question=Q, context=SEED_CONTEXT, top_k=False), "top_k parameter should be >= 1 (got False)"),
        (dict(question=Q, context=SEED_CONTEXT, max_answer_len=0), "max_answer_len parameter should be >= 1"),
        (dict(question=Q, context=SEED_CONTEXT, doc_stride=-1), "`doc_stride`: must be at least 0"),
        (dict(question=Q, context=SEED_CONTEXT, max_seq_len=64, doc_stride=65), "`doc_stride`"),
        (dict(question=Q, context=SEED_CONTEXT, max_seq_len=10**6), "`max_seq_len`"),
        (dict(question=Q, context=SEED_CONTEXT, max_seq_len=10**40), "`max_seq_len`"),
    ],
)
def test_bad_input_raises_value_error(tiny_bert, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_bert(**kwargs)


def test_the_failing_input_is_named(tiny_bert):
    with pytest.raises(ValueError, match=r"inputs\[2\]: the question is empty"):
        tiny_bert(question=[Q, Q, "   "], context=SEED_CONTEXT)
    # In a later model round too.
    with pytest.raises(ValueError, match=r"inputs\[70\]: the context is empty"):
        tiny_bert(question=[Q] * 71, context=[SEED_CONTEXT] * 70 + ["\n"])


def test_missing_key_is_a_key_error_and_a_value_error(tiny_bert):
    with pytest.raises(KeyError):
        tiny_bert({"question": Q})
    with pytest.raises(ValueError, match="keys {question:..., context:...}"):
        tiny_bert([{"question": Q, "context": SEED_CONTEXT}, {"context": SEED_CONTEXT}])


@pytest.mark.parametrize("inputs", [5, "a question", [{"question": Q, "context": SEED_CONTEXT}, 3], None])
def test_inputs_that_are_not_dicts(tiny_bert, inputs):
    with pytest.raises(ValueError):
        tiny_bert(inputs)


def test_no_inputs_at_all(tiny_bert):
    with pytest.raises(ValueError, match="give question= and context="):
        tiny_bert(top_k=2)
    with pytest.raises(ValueError):
        tiny_bert(question=Q)
    # As transformers' argument handler: a keyword that carries no input is "Unknown arguments",
    # a ValueError (not Python's TypeError for an unexpected keyword).
    with pytest.raises(ValueError, match=r"Unknown arguments \['Y'\]"):
        tiny_bert(Y=None)


def test_unknown_keywords_are_ignored_with_a_warning(tiny_bert):
    one = tiny_bert(question=Q, context=SEED_CONTEXT)
    with pytest.warns(UserWarning, match="'top_kk' ignored"):
        assert tiny_bert(question=Q, context=SEED_CONTEXT, top_kk=2) == one
    with pytest.warns(UserWarning, match="'bogus' ignored"):
        qa = bertqa.pipeline("question-answering", model=str(FIXTURES / "bert-uncased"), bogus=1)
    assert qa(question=Q, context=SEED_CONTEXT) == one


def test_wrong_types_raise_type_error(tiny_bert):
    with pytest.raises(TypeError, match="`top_k`: must be an int, got str"):
        tiny_bert(question=Q, context=SEED_CONTEXT, top_k="2")
    with pytest.raises(TypeError, match="`max_seq_len`: must be an int, got float"):
        tiny_bert(question=Q, context=SEED_CONTEXT, max_seq_len=128.0)
    with pytest.raises(TypeError, match="unexpected input keys"):
        tiny_bert({"question": Q, "context": SEED_CONTEXT, "answers": []})


def test_text_that_is_not_unicode_raises_value_error(tiny_bert):
    # A lone surrogate cannot be encoded as UTF-8 (UnicodeEncodeError is a ValueError).
    with pytest.raises(ValueError):
        tiny_bert(question="Who\ud800?", context=SEED_CONTEXT)


def test_odd_unicode_is_answered_with_character_offsets(tiny_bert):
    context = "Zürich\u0301 😀👩‍👩‍👧 est\u00a0la ville — naïve\u200b. مرحبا בעולם \x00 null. 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \r\n end"
    for a in tiny_bert(question="Which city?", context=context, top_k=20):
        assert a["answer"] == context[a["start"]:a["end"]]


def test_context_over_the_limit():
    qa = bertqa.pipeline("question-answering", model=str(FIXTURES / "bert-uncased"), max_context_chars=100)
    with pytest.raises(ValueError, match="over the limit of 100"):
        qa(question=Q, context=SEED_CONTEXT)
    assert qa(question=Q, context=SEED_CONTEXT[:100])["answer"]


def test_a_question_that_fills_the_window_raises_value_error(tiny_bert):
    long_question = "What is the name of the thing that this whole long sentence is asking about?"
    with pytest.raises(ValueError, match="no context fits into max_seq_len 12"):
        tiny_bert(question=long_question, context=SEED_CONTEXT, max_seq_len=12, doc_stride=8)


def test_a_stride_wider_than_the_room_left_raises_an_exception_and_the_pipeline_goes_on(tiny_bert):
    # The question leaves 3 tokens of a 12-token window for the context, fewer than the stride:
    # the tokenizer panics (transformers' too); here it is an exception that `except Exception`
    # catches, and the pipeline keeps answering.
    with pytest.raises(Exception) as caught:
        tiny_bert(question="What is this thing here?", context=SEED_CONTEXT, max_seq_len=12, doc_stride=10)
    assert isinstance(caught.value, (ValueError, RuntimeError))
    assert "stride" in str(caught.value)
    assert tiny_bert(question=Q, context=SEED_CONTEXT)["answer"]


# ---- loading ----


def test_missing_model_raises_os_error(tmp_path):
    with pytest.raises(OSError, match="not found"):
        bertqa.pipeline("question-answering", model=str(tmp_path / "nowhere"), offline=True)
    with pytest.raises(OSError, match="config.json"):
        bertqa.pipeline("question-answering", model=str(tmp_path))
    with pytest.raises(OSError, match="not found"):
        bertqa.pipeline("question-answering", model="no-such-owner/no-such-model", offline=True)


def copy_fixture(tmp_path, name="bert-uncased"):
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def test_broken_checkpoint_files_raise_os_error(tmp_path):
    model = copy_fixture(tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(OSError, match="model.safetensors"):
        bertqa.pipeline("question-answering", model=str(model))
    (model / "config.json").write_text("{ not json", encoding="utf-8")
    with pytest.raises(OSError, match="config.json"):
        bertqa.pipeline("question-answering", model=str(model))


def test_unsupported_model_type_raises_value_error(tmp_path):
    model = copy_fixture(tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "gpt2"
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model_type `gpt2`"):
        bertqa.pipeline("question-answering", model=str(model))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(task="text-generation"), "'question-answering' task only"),
        (dict(quantize="int4"), "quantize='int4' is not supported"),
        (dict(device="cuda"), "runs on the CPU"),
        (dict(device=0), "runs on the CPU"),
        (dict(threads=0), "threads must be"),
        (dict(threads=-3), "threads must be"),
        (dict(batch_size=0), "batch_size must be"),
        (dict(tokenizer="bert-base-uncased"), "own tokenizer"),
    ],
)
def test_bad_pipeline_options_raise_value_error(kwargs, message):
    kwargs = {"task": "question-answering", "model": str(FIXTURES / "bert-uncased"), **kwargs}
    with pytest.raises(ValueError, match=message):
        bertqa.pipeline(**kwargs)


def test_answers_after_errors_are_unchanged():
    qa = load_pipeline(str(FIXTURES / "bert-uncased"))
    before = qa(question=Q, context=SEED_CONTEXT, top_k=3)
    for bad in (dict(top_k=0), dict(question="")):
        with pytest.raises(ValueError):
            qa(**{"question": Q, "context": SEED_CONTEXT, **bad})
    assert qa(question=Q, context=SEED_CONTEXT, top_k=3) == before
