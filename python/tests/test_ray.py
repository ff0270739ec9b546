"""examples/ray_batch.py on a local Ray cluster (2 CPUs, 2 actors) answers the 894 XQuAD
questions exactly as `bertqa ask --input` does on the same JSONL file, and as transformers does
(the MiniLM checkpoint's golden-train.json).

Needs Ray (`pip install "ray[data]"`): skipped when it is not installed (unless
BERTQA_REQUIRE_RAY=1, as CI sets: there a missing Ray fails), and by `pytest --skip-ray`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MINILM, REPO, XQUAD, assert_same_answers

pytestmark = pytest.mark.ray

#: Answers per question, so that the order of the runners-up is compared too.
TOP_K = 3


def bertqa_binary() -> Path:
    """The `bertqa` CLI: $BERTQA_BIN, else the newest of target/{release,debug}/bertqa, else
    one built now (dev profile, as `cargo test` builds it)."""
    if os.environ.get("BERTQA_BIN"):
        return Path(os.environ["BERTQA_BIN"])
    built = [p for p in (REPO / "target" / "release" / "bertqa", REPO / "target" / "debug" / "bertqa") if p.exists()]
    if built:
        return max(built, key=lambda p: p.stat().st_mtime)
    subprocess.run(["cargo", "build", "--bin", "bertqa"], cwd=REPO, check=True)
    return REPO / "target" / "debug" / "bertqa"


def write_questions(path: Path) -> int:
    """The SQuAD file as JSONL, one line per question, in the input format of both runners."""
    data = json.loads(XQUAD.read_text(encoding="utf-8"))
    lines = [
        {"id": qa["id"], "question": qa["question"], "context": paragraph["context"], "params": {"top_k": TOP_K}}
        for article in data["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def read_answers(lines):
    out = {}
    for line in lines:
        if line.strip():
            row = json.loads(line)
            assert row["id"] not in out, f"{row['id']} answered twice"
            out[row["id"]] = row["answers"]
    return out


def test_ray_batch_answers_equal_the_cli(tmp_path):
    questions = tmp_path / "questions.jsonl"
    n = write_questions(questions)
    assert n == 894

    cli = subprocess.run(
        [str(bertqa_binary()), "ask", "--model", str(MINILM), "--input", str(questions), "--threads", "2"],
        capture_output=True, text=True, check=True,
    )
    expected = read_answers(cli.stdout.splitlines())
    assert len(expected) == n

    output = tmp_path / "answers"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # Ray puts the driver's working directory on its workers' sys.path: run it from the scratch
    # folder, or the workers would import python/bertqa (the sources, without the built
    # extension) instead of the installed package.
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "ray_batch.py"), str(questions), str(output),
         "--model", str(MINILM), "--num-cpus", "2", "--actors", "2", "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    assert run.returncode == 0, f"ray_batch.py failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    files = sorted(output.glob("*.json"))
    assert files, f"no answer files in {output}"
    got = read_answers(line for f in files for line in f.read_text(encoding="utf-8").splitlines())

    assert got.keys() == expected.keys()
    differences = []
    for qid, answers in expected.items():
        mine = got[qid]
        same = len(mine) == len(answers) == TOP_K and all(
            (m["answer"], m["start"], m["end"]) == (a["answer"], a["start"], a["end"])
            # The CLI prints the f32 score in its shortest form, pandas with 15 decimals.
            and math.isclose(m["score"], a["score"], rel_tol=1e-6, abs_tol=1e-12)
            for m, a in zip(mine, answers)
        )
        if not same:
            differences.append(f"{qid}: ray {mine} vs cli {answers}")
    assert not differences, f"{len(differences)} of {n} differ:\n" + "\n".join(differences[:5])

    # And they are transformers' answers (golden-train.json: the same questions, top_k 3).
    golden = json.loads((MINILM / "golden-train.json").read_text(encoding="utf-8"))["cases"]
    assert {c["id"] for c in golden} == got.keys()
    for case in golden:
        assert case["params"] == {"top_k": TOP_K}
        assert_same_answers(got[case["id"]], case["expected"], where=case["id"])
