"""The model-independent cases of transformers' question-answering pipeline tests, on bertqa.

transformers checks its pipeline's call conventions (which inputs are read, which errors come
back, the shapes of the results, parameters given at load time) on whatever model it has; the
same intents are checked here on the MiniLM checkpoint. Where transformers and torch are
installed, each call is also made on transformers' pipeline over the same checkpoint and the
results compared.
"""

from __future__ import annotations

import re
import warnings

import pytest

import bertqa
from conftest import MINILM, assert_same_answers

Q = "Where was HuggingFace founded ?"
C = "HuggingFace was founded in Paris."
LONDON = (
    "London is the capital and largest city of England and the United Kingdom. It stands on the River "
    "Thames in south-east England at the head of a 50-mile (80 km) estuary down to the North Sea, and has "
    "been a major settlement for two millennia. The City of London, its ancient core and financial centre, "
    "was founded by the Romans as Londinium and retains boundaries close to its medieval ones. "
) * 8
KEYS = {"score": float, "start": int, "end": int, "answer": str}


class Example:
    """What transformers' ``SquadExample`` carries for the pipeline: question and context."""

    def __init__(self, question_text, context_text):
        self.question_text = question_text
        self.context_text = context_text


def is_answer(result, context):
    assert isinstance(result, dict), result
    assert {k: type(v) for k, v in result.items()} == KEYS
    assert result["answer"] == context[result["start"]:result["end"]]


@pytest.fixture(scope="module")
def qa():
    return bertqa.pipeline("question-answering", model=str(MINILM))


@pytest.fixture(scope="module")
def reference():
    """transformers' pipeline on the same checkpoint, where it is installed."""
    transformers = pytest.importorskip("transformers", reason="compares with transformers when installed")
    pytest.importorskip("torch", reason="transformers' pipeline needs torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.pipeline("question-answering", model=str(MINILM), device="cpu")


# ---- results and their shapes ----

def test_one_input_gives_one_answer(qa):
    is_answer(qa(question=Q, context=C), C)
    is_answer(qa(question=Q, context=C, handle_impossible_answer=True), C)


def test_several_questions_give_one_answer_each(qa):
    one_context = qa(question=["In what field is HuggingFace working ?"] * 2, context=C)
    assert isinstance(one_context, list) and len(one_context) == 2
    for result in one_context:
        is_answer(result, C)
    contexts = ["HuggingFace is a startup based in New-York", "HuggingFace is a startup founded in Paris"]
    pairs = qa(question=["What field is HuggingFace working ?", "In what field is HuggingFace ?"], context=contexts)
    assert isinstance(pairs, list) and len(pairs) == 2
    for result, context in zip(pairs, contexts):
        is_answer(result, context)


def test_top_k_20_gives_20_answers(qa):
    results = qa(question=Q, context=C, top_k=20)
    assert isinstance(results, list) and len(results) == 20
    for result in results:
        is_answer(result, C)


def test_a_long_context_takes_several_windows_and_batch_size_changes_nothing(qa):
    long = qa(question=Q, context=C * 20)
    is_answer(long, C * 20)
    assert qa(question=Q, context=C * 20, batch_size=2) == long
    small = bertqa.pipeline("question-answering", model=str(MINILM), batch_size=2)
    assert small(question=Q, context=C * 20) == long


def test_a_generator_gives_one_answer_per_item(qa):
    pipe = bertqa.pipeline(model=str(MINILM), batch_size=16, framework="pt")
    expected = qa(question=Q, context=C)

    def data():
        for _ in range(10):
            yield {"question": Q, "context": C}

    outputs = list(pipe(data()))
    assert outputs == [expected] * 10


def test_load_time_parameters_and_ignored_keywords():
    # transformers' slow test loads its model with max_seq_length=512: transformers knows no such
    # parameter (it is max_seq_len) and ignores it; so does bertqa, and says so.
    with pytest.warns(UserWarning, match="'max_seq_length' ignored"):
        pipe = bertqa.pipeline(
            "question-answering", model=str(MINILM), handle_impossible_answer=True, max_seq_length=512
        )
    question = "What country is Paris the capital of?"
    result = pipe(question=question, context=LONDON)
    is_answer(result, LONDON)
    plain = bertqa.pipeline("question-answering", model=str(MINILM))
    assert result == plain(question=question, context=LONDON, handle_impossible_answer=True)


# ---- how inputs are read (transformers' QuestionAnsweringArgumentHandler) ----

def test_every_input_form_is_read(qa):
    one = qa(question=Q, context=C)
    assert qa(Q, C) == one
    assert qa({"question": Q, "context": C}) == one
    assert qa([{"question": Q, "context": C}]) == one
    assert qa([{"question": Q, "context": C}] * 2) == [one, one]
    assert qa(question=[Q, Q], context=C) == [one, one]
    assert qa(question=[Q, Q], context=[C, C]) == [one, one]
    with pytest.warns(FutureWarning):
        assert qa(X={"question": Q, "context": C}) == one
    with pytest.warns(FutureWarning):
        assert qa(X=[{"question": Q, "context": C}]) == one
    with pytest.warns(FutureWarning):
        assert qa(data={"question": Q, "context": C}) == one


def test_squad_examples_are_answered_each(qa):
    one = qa(question=Q, context=C)
    other = qa(question="What was founded?", context=C)
    examples = [Example(Q, C), Example("What was founded?", C)]
    assert qa(examples) == [one, other]
    assert qa(*examples) == [one, other]
    assert qa([Example(Q, C)]) == one
    with pytest.raises(ValueError, match="`question_text` cannot be empty"):
        qa([Example("", C)])
    with pytest.raises(ValueError, match="`context_text` cannot be None"):
        qa([Example(Q, None)])


def test_transformers_squad_example(qa):
    squad = pytest.importorskip("transformers.data.processors.squad", reason="transformers is not installed")
    example = squad.SquadExample(None, Q, C, None, None, None)
    assert qa([example, example]) == [qa(question=Q, context=C)] * 2


@pytest.mark.parametrize(
    "call",
    [
        lambda qa: qa({"context": C}),
        lambda qa: qa({"question": Q}),
        lambda qa: qa([{"context": C}]),
    ],
)
def test_a_missing_key_is_a_key_error(qa, call):
    with pytest.raises(KeyError):
        call(qa)


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((None, C), {}),
        (("", C), {}),
        ((Q, None), {}),
        ((Q, ""), {}),
        ((), dict(question=None, context=C)),
        ((), dict(question="", context=C)),
        ((), dict(question=Q, context=None)),
        ((), dict(question=Q, context="")),
        (({"question": None, "context": C},), {}),
        (({"question": "", "context": C},), {}),
        (({"question": Q, "context": None},), {}),
        (({"question": Q, "context": ""},), {}),
        (([{"question": Q, "context": C}, {"question": None, "context": C}],), {}),
        (([{"question": Q, "context": C}, {"question": "", "context": C}],), {}),
        (([{"question": Q, "context": C}, {"question": Q, "context": None}],), {}),
        (([{"question": Q, "context": C}, {"question": Q, "context": ""}],), {}),
        ((), dict(question={"This": "Is weird"}, context="This is a context")),
        ((), dict(question=[Q, Q], context=[C, C, C])),
        ((), dict(question=[Q, Q, Q], context=[C, C])),
        ((None,), {}),
        ((1,), {}),
        ((), dict(Y=None)),
    ],
)
def test_bad_inputs_are_value_errors(qa, args, kwargs):
    with pytest.raises(ValueError):
        qa(*args, **kwargs)


def test_unknown_arguments_message(qa):
    with pytest.raises(ValueError, match="Unknown arguments"):
        qa(Y=None)


# ---- keyword arguments (transformers' _sanitize_parameters) ----

def test_top_k_true_is_one(qa):
    assert qa(question=Q, context=C, top_k=True) == qa(question=Q, context=C, top_k=1)


@pytest.mark.parametrize("name", ["top_k", "max_answer_len"])
def test_counts_below_one_are_value_errors(qa, name):
    with pytest.raises(ValueError, match=f"{name} parameter should be >= 1"):
        qa(question=Q, context=C, **{name: 0})
    with pytest.raises(ValueError, match=f"{name} parameter should be >= 1"):
        bertqa.pipeline("question-answering", model=str(MINILM), **{name: 0})


def test_keywords_transformers_takes_are_accepted(qa):
    one = qa(question=Q, context=C)
    assert qa(question=Q, context=C, padding="max_length", num_workers=2, max_question_len=4) == one
    pipe = bertqa.pipeline(
        "question-answering",
        model=str(MINILM),
        framework="pt",
        device=-1,
        device_map="cpu",
        dtype="auto",
        use_fast=True,
        trust_remote_code=False,
        num_workers=0,
        binary_output=False,
    )
    assert pipe(question=Q, context=C) == one


def test_keywords_that_would_change_answers_are_refused():
    for kwargs in (dict(use_fast=False), dict(dtype="float16"), dict(framework="jax"), dict(device="cuda")):
        with pytest.raises(ValueError):
            bertqa.pipeline("question-answering", model=str(MINILM), **kwargs)


# ---- more answers than spans with a score ----

def words(text):
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def test_a_one_word_context_gets_the_empty_answer_after_it(qa):
    results = qa(question=Q, context="Paris", top_k=5)
    assert [r["answer"] for r in results] == ["Paris", ""]
    assert results[0]["score"] > 0.0
    assert results[1] == {"score": 0.0, "start": 0, "end": 0, "answer": ""}


def test_top_k_200_on_a_short_context_gives_every_span_then_the_score_0_ones(qa):
    # 2·200 + 10 picks exceed the window's whole span matrix: every cell is taken. The cells
    # with a score give every run of whole words (21 of them over 6 words); the others give the
    # empty answer (CLS, CLS) and, from CLS to the word piece "hugging", the prefix "Hugging".
    results = qa(question=Q, context=C, top_k=200)
    spans = words(C)
    runs = {C[spans[i][0]:spans[j][1]] for i in range(len(spans)) for j in range(i, len(spans))}
    scored = [r for r in results if r["score"] > 0.0]
    assert sorted(r["answer"] for r in scored) == sorted(runs)
    assert results[len(scored):] == [
        {"score": 0.0, "start": 0, "end": 0, "answer": ""},
        {"score": 0.0, "start": 0, "end": 7, "answer": "Hugging"},
    ]
    assert len(results) == 23


# ---- the same calls on transformers' pipeline ----

CALLS = {
    "single": ((), dict(question=Q, context=C)),
    "impossible": ((), dict(question=Q, context=C, handle_impossible_answer=True)),
    "top_k=20": ((), dict(question=Q, context=C, top_k=20)),
    "top_k=200": ((), dict(question=Q, context=C, top_k=200)),
    "one word, top_k=5": ((), dict(question=Q, context="Paris", top_k=5)),
    "top_k=True": ((), dict(question=Q, context=C, top_k=True)),
    "long context": ((), dict(question=Q, context=C * 20)),
    "two questions": ((), dict(question=[Q, "What was founded?"], context=C)),
    "positional": ((Q, C), {}),
    "dicts": (([{"question": Q, "context": C}] * 2,), {}),
    "London, impossible": ((), dict(question="What country is Paris the capital of?", context=LONDON,
                                     handle_impossible_answer=True)),
}


def same(got, expected, where):
    """Same shape and answers; answers of score 0.0 (ties, ordered by numpy's sort) as a set."""
    assert type(got) is type(expected), f"{where}: {got} vs {expected}"
    if isinstance(expected, dict):
        assert_same_answers([got], [expected], tol=1e-4, where=where)
        return
    if expected and isinstance(expected[0], list):
        for k, (g, e) in enumerate(zip(got, expected)):
            same(g, e, f"{where}[{k}]")
        assert len(got) == len(expected)
        return
    assert len(got) == len(expected), f"{where}: {len(got)} answers vs transformers' {len(expected)}"
    scored = [e for e in expected if e["score"] > 0.0]
    assert_same_answers(got[: len(scored)], scored, tol=1e-4, where=where)
    assert sorted(g["answer"] for g in got[len(scored):]) == sorted(e["answer"] for e in expected[len(scored):])


@pytest.mark.parametrize("name", list(CALLS))
def test_same_as_transformers(qa, reference, name):
    args, kwargs = CALLS[name]
    same(qa(*args, **kwargs), reference(*args, **kwargs), name)


def test_same_squad_examples_as_transformers(qa, reference):
    squad = pytest.importorskip("transformers.data.processors.squad")
    examples = [squad.SquadExample(None, Q, C, None, None, None)] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(examples)
    same(qa(examples), expected, "squad examples")


def test_same_errors_as_transformers(qa, reference):
    for args, kwargs, error in [
        ((), dict(Y=None), ValueError),
        (({"context": C},), {}, KeyError),
        ((), dict(question="", context=C), ValueError),
        ((), dict(question=Q, context=C, top_k=0), ValueError),
    ]:
        with pytest.raises(error):
            reference(*args, **kwargs)
        with pytest.raises(error):
            qa(*args, **kwargs)
    # An unknown keyword changes nothing in either (bertqa warns about it).
    with pytest.warns(UserWarning, match="bogus_keyword"):
        got = qa(question=Q, context=C, bogus_keyword=1)
    same(got, reference(question=Q, context=C, bogus_keyword=1), "unknown keyword")
