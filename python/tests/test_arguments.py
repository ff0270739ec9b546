"""The call takes transformers' arguments and returns transformers' shapes.

The expected shapes are transformers 4.57.6's (QuestionAnsweringPipeline.__call__ and
postprocess): one input gives its result alone — a dict when it has exactly one answer, else a
list — and several inputs give a list of those. Where transformers is importable, the same
calls are also made on transformers' pipeline over the same checkpoint and compared.
"""

from __future__ import annotations

import warnings

import pytest

import bertqa
from conftest import FIXTURE_NAMES, FIXTURES, MINILM, SEED_CONTEXT, as_list, assert_same_answers, load_pipeline

Q1 = "What does Transformers provide?"
Q2 = "How many pretrained models are there?"
KEYS = ["score", "start", "end", "answer"]


def check_answer(answer, context):
    assert list(answer) == KEYS
    assert type(answer["score"]) is float
    assert type(answer["start"]) is int and type(answer["end"]) is int
    assert type(answer["answer"]) is str
    assert answer["answer"] == context[answer["start"]:answer["end"]]


def test_one_question_gives_one_dict(tiny_bert):
    result = tiny_bert(question=Q1, context=SEED_CONTEXT)
    assert isinstance(result, dict)
    check_answer(result, SEED_CONTEXT)
    assert 0.0 < result["score"] <= 1.0


def test_top_k_gives_a_list_best_first(tiny_bert):
    result = tiny_bert(question=Q1, context=SEED_CONTEXT, top_k=3)
    assert isinstance(result, list) and len(result) == 3
    for a in result:
        check_answer(a, SEED_CONTEXT)
    scores = [a["score"] for a in result]
    assert scores == sorted(scores, reverse=True)
    assert result[0] == tiny_bert(question=Q1, context=SEED_CONTEXT)


def test_several_inputs_give_a_list_per_input(tiny_bert):
    one = tiny_bert(question=Q1, context=SEED_CONTEXT)
    two = tiny_bert(question=Q2, context=SEED_CONTEXT)
    assert tiny_bert(question=[Q1, Q2], context=SEED_CONTEXT) == [one, two]
    assert tiny_bert(question=[Q1, Q2], context=[SEED_CONTEXT, SEED_CONTEXT]) == [one, two]
    nested = tiny_bert(question=[Q1, Q2], context=SEED_CONTEXT, top_k=2)
    assert [len(r) for r in nested] == [2, 2]
    assert nested[0][0] == one and nested[1][0] == two


def test_a_list_of_one_input_is_answered_as_that_input(tiny_bert):
    one = tiny_bert(question=Q1, context=SEED_CONTEXT)
    assert tiny_bert(question=[Q1], context=SEED_CONTEXT) == one
    assert tiny_bert(question=[Q1], context=[SEED_CONTEXT]) == one
    assert tiny_bert([{"question": Q1, "context": SEED_CONTEXT}]) == one
    assert isinstance(tiny_bert(question=[Q1], context=SEED_CONTEXT, top_k=2), list)


def test_dicts_positional_strings_and_tuples(tiny_bert):
    one = tiny_bert(question=Q1, context=SEED_CONTEXT)
    two = tiny_bert(question=Q2, context=SEED_CONTEXT)
    assert tiny_bert({"question": Q1, "context": SEED_CONTEXT}) == one
    assert tiny_bert(Q1, SEED_CONTEXT) == one
    pair = ({"question": Q1, "context": SEED_CONTEXT}, {"question": Q2, "context": SEED_CONTEXT})
    assert tiny_bert(pair) == [one, two]
    assert tiny_bert(list(pair)) == [one, two]
    assert tiny_bert(*pair) == [one, two]


def test_no_inputs_give_an_empty_list(tiny_bert):
    assert tiny_bert([]) == []
    assert tiny_bert(question=[], context=[]) == []


def test_a_generator_is_answered_lazily_in_order(tiny_bert):
    # More items than one model round, so that rounds are chained.
    n = bertqa._pipeline.GENERATOR_ROUND + 6
    questions = [Q1 if i % 2 else Q2 for i in range(n)]
    pulled = []

    def items():
        for q in questions:
            pulled.append(q)
            yield {"question": q, "context": SEED_CONTEXT}

    results = tiny_bert(items())
    assert not pulled, "nothing is read before the first answer is asked for"
    first = next(results)
    assert len(pulled) == bertqa._pipeline.GENERATOR_ROUND
    rest = list(results)
    expected = tiny_bert(question=questions, context=SEED_CONTEXT)
    assert [first] + rest == expected


#: One word of many word pieces: every span inside it widens to the whole word.
LONG_WORD = "Pneumonoultramicroscopicsilicovolcanoconiosis"


def test_one_distinct_answer_is_a_dict_even_with_top_k(tiny_bert):
    # transformers merges spans with the same text and returns a lone answer as a dict,
    # whatever top_k is.
    result = tiny_bert(question=Q1, context=LONG_WORD, top_k=2)
    assert result == {"score": result["score"], "start": 0, "end": len(LONG_WORD), "answer": LONG_WORD}
    with_null = tiny_bert(question=Q1, context=LONG_WORD, top_k=2, handle_impossible_answer=True)
    assert sorted(a["answer"] for a in with_null) == ["", LONG_WORD]


def test_handle_impossible_answer_offers_the_empty_answer(tiny_bert):
    answers = tiny_bert(question=Q1, context=SEED_CONTEXT, top_k=5000, handle_impossible_answer=True)
    scored_empty = [a for a in answers if a["answer"] == "" and a["score"] > 0.0]
    assert len(scored_empty) == 1
    assert (scored_empty[0]["start"], scored_empty[0]["end"]) == (0, 0)
    assert scored_empty[0]["score"] < 1.0
    plain = tiny_bert(question=Q1, context=SEED_CONTEXT, top_k=5000)
    assert not any(a["answer"] == "" and a["score"] > 0.0 for a in plain)


def test_top_k_past_the_scored_spans_fills_up_with_score_0_answers(tiny_bert):
    # A window asks for 2·top_k + 10 spans; past the ones with a score, transformers takes
    # score-0 cells of the span matrix, first of all (CLS, CLS): the empty answer at 0..0.
    answers = tiny_bert(question=Q1, context=SEED_CONTEXT, top_k=5000, handle_impossible_answer=True)
    empty = [a for a in answers if a["answer"] == ""]
    assert [a["score"] > 0.0 for a in empty] == [True, False]
    assert empty[1] == {"score": 0.0, "start": 0, "end": 0, "answer": ""}
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True)
    assert len({a["answer"].lower() for a in answers if a["score"] > 0.0}) == len([s for s in scores if s > 0.0])


def test_parameters_change_answers_as_named(tiny_bert):
    short = tiny_bert(question=Q1, context=SEED_CONTEXT, top_k=10, max_answer_len=1, align_to_words=False)
    assert all(" " not in a["answer"] for a in short)
    long = tiny_bert(question=Q1, context=SEED_CONTEXT, top_k=10, max_answer_len=30)
    assert max(len(a["answer"]) for a in long) > max(len(a["answer"]) for a in short)
    # Small windows: several of them, the answers still slice the context.
    for a in tiny_bert(question=Q1, context=SEED_CONTEXT, top_k=5, max_seq_len=32, doc_stride=8):
        check_answer(a, SEED_CONTEXT)


def test_model_may_be_a_path(tiny_bert):
    qa = bertqa.pipeline("question-answering", FIXTURES / "bert-uncased")
    assert qa(question=Q1, context=SEED_CONTEXT) == tiny_bert(question=Q1, context=SEED_CONTEXT)


def test_pipeline_keyword_arguments_are_defaults_for_calls():
    qa = bertqa.pipeline("question-answering", model=str(FIXTURES / "bert-uncased"), top_k=3)
    assert len(qa(question=Q1, context=SEED_CONTEXT)) == 3
    assert isinstance(qa(question=Q1, context=SEED_CONTEXT, top_k=1), dict)


def test_compatibility_arguments_are_accepted(tiny_bert):
    one = tiny_bert(question=Q1, context=SEED_CONTEXT)
    assert tiny_bert(question=Q1, context=SEED_CONTEXT, max_question_len=3) == one
    assert tiny_bert(question=Q1, context=SEED_CONTEXT, padding="max_length", batch_size=4, num_workers=2) == one
    with pytest.warns(UserWarning, match="topk parameter is deprecated"):
        assert len(tiny_bert(question=Q1, context=SEED_CONTEXT, topk=2)) == 2
    with pytest.warns(FutureWarning):
        assert tiny_bert(X={"question": Q1, "context": SEED_CONTEXT}) == one
    # None means "the default", as in transformers.
    assert tiny_bert(question=Q1, context=SEED_CONTEXT, top_k=None, doc_stride=None) == one


def test_numpy_integers_are_counts(tiny_bert):
    np = pytest.importorskip("numpy", reason="numpy is not installed (pip install numpy)")
    assert tiny_bert(question=Q1, context=SEED_CONTEXT, top_k=np.int64(2)) == tiny_bert(
        question=Q1, context=SEED_CONTEXT, top_k=2
    )


def test_answer_batch_always_gives_lists(tiny_bert):
    lists = tiny_bert.answer_batch([Q1, Q2], [SEED_CONTEXT, SEED_CONTEXT])
    assert lists == [[tiny_bert(question=Q1, context=SEED_CONTEXT)], [tiny_bert(question=Q2, context=SEED_CONTEXT)]]
    assert tiny_bert.answer_batch([], []) == []


def test_pipeline_properties(tiny_bert):
    assert tiny_bert.model_type == "bert"
    assert tiny_bert.quantize is None
    assert tiny_bert.threads >= 1
    assert "bert-uncased" in repr(tiny_bert)
    assert bertqa.__version__


def test_threads_and_int8():
    qa = bertqa.pipeline("question-answering", model=str(FIXTURES / "bert-uncased"), threads=1)
    assert qa.threads == 1
    f32 = load_pipeline(str(FIXTURES / "bert-uncased"))
    assert qa(question=Q1, context=SEED_CONTEXT, top_k=3) == f32(question=Q1, context=SEED_CONTEXT, top_k=3)
    int8 = bertqa.pipeline("question-answering", model=str(FIXTURES / "bert-uncased"), quantize="int8")
    assert int8.quantize == "int8"
    for a in as_list(int8(question=Q1, context=SEED_CONTEXT, top_k=3)):
        check_answer(a, SEED_CONTEXT)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_int8_runs_every_architecture(name):
    """int8 linear layers move scores a little; on these checkpoints the best span stays."""
    f32 = load_pipeline(str(FIXTURES / name))
    int8 = bertqa.pipeline("question-answering", model=str(FIXTURES / name), quantize="int8")
    question = "What provides interoperability?"
    got = int8(question=question, context=SEED_CONTEXT, top_k=2)
    expected = f32(question=question, context=SEED_CONTEXT, top_k=2)
    for a in got:
        check_answer(a, SEED_CONTEXT)
    assert (got[0]["start"], got[0]["end"]) == (expected[0]["start"], expected[0]["end"])
    assert abs(got[0]["score"] - expected[0]["score"]) < 0.05


def test_int8_minilm_answers_the_seed_question():
    qa = bertqa.pipeline("question-answering", model=str(MINILM), quantize="int8")
    answer = qa(question="Transformers provide interoperability between which frameworks?", context=SEED_CONTEXT)
    assert (answer["answer"], answer["start"], answer["end"]) == ("TensorFlow 2", 334, 346)


# ---- the same calls on transformers' pipeline, when it is installed ----

CALLS = {
    "single": dict(question=Q1, context=SEED_CONTEXT),
    "single top_k=2": dict(question=Q1, context=SEED_CONTEXT, top_k=2),
    "list of 2": dict(question=[Q1, Q2], context=SEED_CONTEXT),
    "list of 2, top_k=2": dict(question=[Q1, Q2], context=[SEED_CONTEXT, SEED_CONTEXT], top_k=2),
    "list of 1": dict(question=[Q1], context=SEED_CONTEXT),
    "list of 1, top_k=2": dict(question=[Q1], context=[SEED_CONTEXT], top_k=2),
    "impossible": dict(question=Q1, context=SEED_CONTEXT, handle_impossible_answer=True),
    "impossible top_k=4": dict(question=Q1, context=SEED_CONTEXT, handle_impossible_answer=True, top_k=4),
    "no word alignment": dict(question=Q1, context=SEED_CONTEXT, top_k=3, align_to_words=False),
    "small windows": dict(question=Q1, context=SEED_CONTEXT, top_k=3, max_seq_len=32, doc_stride=8),
    "max_question_len": dict(question=Q1, context=SEED_CONTEXT, max_question_len=2),
    "empty lists": dict(question=[], context=[]),
    "one distinct answer, top_k=2": dict(question=Q1, context=LONG_WORD, top_k=2),
    "short context, top_k=3": dict(question=Q1, context="Marie Curie.", top_k=3),
}

#: Cases where the context has fewer scored spans than the pipeline asks each window for, so
#: that spans of score 0.0 fill the list (the empty answer, prefixes of the context).
ZERO_SCORE_SPANS = {
    "one-word context, top_k=3": dict(question=Q1, context="Berlin", top_k=3),
    "short context, top_k=200": dict(question=Q1, context="Marie Curie was born in Warsaw.", top_k=200),
    "short context, top_k=50, impossible": dict(
        question=Q1, context="Marie Curie was born in Warsaw.", top_k=50, handle_impossible_answer=True
    ),
}


@pytest.fixture(scope="module")
def transformers_qa():
    transformers = pytest.importorskip("transformers", reason="compares with transformers when installed")
    pytest.importorskip("torch", reason="transformers' pipeline needs torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.pipeline("question-answering", model=str(FIXTURES / "bert-uncased"), device="cpu")


def compare(got, expected, where):
    """Same shape (dict / list / list of lists), keys, value types and answers.

    Answers of score 0.0 tie: numpy's selection and sort leave their order (and which of the
    spans giving one text is kept) to the algorithm, so those are compared as a set of texts.
    """
    assert type(got) is type(expected), f"{where}: {type(got).__name__} vs transformers' {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(got) == list(expected)
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
        assert_same_answers([got], [expected], tol=1e-5, where=where)
        return
    assert len(got) == len(expected), f"{where}: {len(got)} items vs transformers' {len(expected)}"
    if expected and all(isinstance(e, dict) for e in expected):
        scored = [e for e in expected if e["score"] > 0.0]
        assert_same_answers(got[: len(scored)], scored, tol=1e-5, where=where)
        zeros = sorted(e["answer"] for e in expected[len(scored):])
        assert sorted(g["answer"] for g in got[len(scored):]) == zeros, where
        assert all(g["score"] == 0.0 for g in got[len(scored):]), where
        return
    for k, (g, e) in enumerate(zip(got, expected)):
        compare(g, e, f"{where}[{k}]")


@pytest.mark.parametrize("name", list(CALLS))
def test_same_result_as_transformers(name, tiny_bert, transformers_qa):
    compare(tiny_bert(**CALLS[name]), transformers_qa(**CALLS[name]), name)


@pytest.mark.parametrize("name", list(ZERO_SCORE_SPANS))
def test_zero_score_spans_as_transformers(name, tiny_bert, transformers_qa):
    compare(tiny_bert(**ZERO_SCORE_SPANS[name]), transformers_qa(**ZERO_SCORE_SPANS[name]), name)


def test_same_dict_and_generator_inputs_as_transformers(tiny_bert, transformers_qa):
    item = {"question": Q1, "context": SEED_CONTEXT}
    compare(tiny_bert(item), transformers_qa(item), "dict")
    compare(tiny_bert([item, item]), transformers_qa([item, item]), "list of dicts")
    compare(tiny_bert(Q1, SEED_CONTEXT), transformers_qa(Q1, SEED_CONTEXT), "positional")
    compare(list(tiny_bert(iter_items(item, 3))), list(transformers_qa(iter_items(item, 3))), "generator")


def iter_items(item, n):
    for _ in range(n):
        yield dict(item)
