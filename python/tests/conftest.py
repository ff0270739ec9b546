"""Shared test setup: where the reference data lives, cached pipelines, the --skip-ray flag."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
#: python/: the package's sources. `python -m pytest` run from here puts it first on sys.path,
#: where `bertqa` has no compiled `_native` (unless `maturin develop` put one beside it).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _import_the_built_package() -> None:
    """Makes `import bertqa` find the built package (the installed wheel, or a `maturin
    develop` build), not the bare sources."""
    sources = PACKAGE_ROOT / "bertqa"
    built_in_place = any(sources.glob("_native*.so")) or any(sources.glob("_native*.pyd"))
    if not built_in_place:
        sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != PACKAGE_ROOT]
        sys.modules.pop("bertqa", None)


def _built_package_missing() -> bool:
    try:
        return importlib.util.find_spec("bertqa") is None or importlib.util.find_spec("bertqa._native") is None
    except ImportError:
        return True


_import_the_built_package()
#: Reference material (fixtures, models, data): ../shared beside the repository, or
#: $BERTQA_SHARED.
SHARED = Path(os.environ.get("BERTQA_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
MINILM = SHARED / "models" / "minilm-xquad-qa"
XQUAD = SHARED / "data" / "xquad-en-train.json"

#: Every fixture checkpoint with a golden.json (eight architectures, BERT also as .bin).
FIXTURE_NAMES = sorted(p.parent.name for p in FIXTURES.glob("*/golden.json"))

#: The context of the seed questions (README).
SEED_CONTEXT = (
    "🤗 Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
    "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet…) for Natural "
    "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
    "models in 100+ languages and deep interoperability between TensorFlow 2.0 and PyTorch."
)


def have(module: str) -> bool:
    """True when `module` can be imported (numpy, ray, transformers, torch are optional)."""
    return importlib.util.find_spec(module) is not None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-ray",
        action="store_true",
        help="skip the tests that start a Ray cluster (skipped anyway when Ray is not installed)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if config.getoption("--skip-ray"):
        skip = pytest.mark.skip(reason="--skip-ray given")
    elif not have("ray") and not os.environ.get("BERTQA_REQUIRE_RAY"):
        # CI sets BERTQA_REQUIRE_RAY=1: there a missing Ray is a failure, not a skip.
        skip = pytest.mark.skip(reason="Ray is not installed (pip install 'ray[data]'); BERTQA_REQUIRE_RAY=1 runs them anyway")
    else:
        return
    for item in items:
        if "ray" in item.keywords:
            item.add_marker(skip)


def pytest_sessionstart(session: pytest.Session) -> None:
    if _built_package_missing():
        raise pytest.UsageError(
            "bertqa is not built: build and install the wheel (`maturin build --profile dev -m "
            "python/Cargo.toml`, then `pip install target/wheels/bertqa-*.whl`), or run "
            "`maturin develop -m python/Cargo.toml` in a virtualenv; then run pytest again"
        )
    if not FIXTURE_NAMES:
        raise pytest.UsageError(
            f"no fixtures under {FIXTURES}: put the reference material in ../shared beside the "
            "repository, or set BERTQA_SHARED"
        )


@lru_cache(maxsize=None)
def load_pipeline(path: str, **options: Any) -> Any:
    """One pipeline per checkpoint and options for the whole session (loading is the slow
    part of the small tests)."""
    import bertqa

    return bertqa.pipeline("question-answering", model=path, **options)


def load_golden(name: str) -> Dict[str, Any]:
    return json.loads((FIXTURES / name / "golden.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def minilm() -> Any:
    return load_pipeline(str(MINILM))


@pytest.fixture(scope="session")
def tiny_bert() -> Any:
    return load_pipeline(str(FIXTURES / "bert-uncased"))


def as_list(result: Any) -> List[Dict[str, Any]]:
    """A call's result for one input as a list of answers."""
    return [result] if isinstance(result, dict) else result


def assert_same_answers(got: List[Dict[str, Any]], expected: List[Dict[str, Any]], tol: float = 1e-4,
                        where: str = "") -> None:
    """Same answers in the same order: text and offsets equal, scores within `tol`."""
    assert len(got) == len(expected), f"{where}: {len(got)} answers, expected {len(expected)}: {got}"
    for k, (g, e) in enumerate(zip(got, expected)):
        assert (g["answer"], g["start"], g["end"]) == (e["answer"], e["start"], e["end"]), (
            f"{where}: answer {k}: got {g}, expected {e}"
        )
        assert abs(g["score"] - e["score"]) <= tol, f"{where}: answer {k}: score {g['score']} vs {e['score']}"
