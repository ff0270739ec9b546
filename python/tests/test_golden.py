"""Golden parity through the Python API: every case of every fixture (eight architectures),
and the real MiniLM checkpoint's top-3 answers to XQuAD questions, equal transformers'
answers as recorded in golden.json (answers and offsets exactly, scores within 1e-4)."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURE_NAMES, FIXTURES, MINILM, as_list, assert_same_answers, load_golden, load_pipeline

CASES = [
    pytest.param(name, case, id=f"{name}/{case['id']}")
    for name in FIXTURE_NAMES
    for case in load_golden(name)["cases"]
]


def test_every_architecture_is_covered():
    model_types = {
        json.loads((FIXTURES / name / "config.json").read_text())["model_type"] for name in FIXTURE_NAMES
    }
    from bertqa._native import SUPPORTED_MODEL_TYPES

    assert model_types == set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("name,case", CASES)
def test_golden_case(name, case):
    qa = load_pipeline(str(FIXTURES / name))
    result = qa(question=case["question"], context=case["context"], **case["params"])
    answers = as_list(result)
    assert_same_answers(answers, case["expected"], where=f"{name}/{case['id']}")
    for a in answers:
        assert a["answer"] == case["context"][a["start"]:a["end"]]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_golden_cases_in_one_call(name):
    """All cases of a fixture with the same parameters, answered in one list call (their windows
    batched together), give the same answers as one by one."""
    qa = load_pipeline(str(FIXTURES / name))
    by_params = {}
    for case in load_golden(name)["cases"]:
        by_params.setdefault(json.dumps(case["params"], sort_keys=True), []).append(case)
    for params, cases in by_params.items():
        answers = qa.answer_batch([c["question"] for c in cases], [c["context"] for c in cases],
                                  **json.loads(params))
        for case, got in zip(cases, answers):
            assert_same_answers(got, case["expected"], where=f"{name}/{case['id']} (batched)")


#: Questions of golden-train.json answered here, the first paragraphs' (about one in six); the
#: Ray test (test_ray.py) checks all 894 through the same Python API.
MINILM_QUESTIONS = 150


def test_minilm_answers_xquad_questions_as_transformers(minilm):
    golden = json.loads((MINILM / "golden-train.json").read_text(encoding="utf-8"))
    assert len(golden["cases"]) == 894
    cases = golden["cases"][:MINILM_QUESTIONS]
    params = cases[0]["params"]
    assert all(c["params"] == params for c in cases)
    results = minilm(question=[c["question"] for c in cases], context=[c["context"] for c in cases], **params)
    assert len(results) == len(cases)
    for case, result in zip(cases, results):
        assert_same_answers(as_list(result), case["expected"], where=case["id"])
