"""Reads the raw results of bench/compare.sh and prints them as one markdown table.

  summary.py WORK                   the table (also written to WORK/summary.md)
  summary.py train-log LOG WARMUP   `bertqa train -v` log -> JSON per-step times, the first WARMUP
                                    steps left out

Ratios are bertqa / reference: above 1 is better for rates (q/s, examples/s), below 1 is better
for times (s, ms). An OpenVINO case that failed keeps its row, with its error in place of the
figures.
"""
import json
import os
import re
import statistics
import sys
from datetime import datetime

from openvino_engines import short_error  # bench/, beside this file; imports nothing heavy

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def field(line, name):
    m = re.search(rf"\b{name}=([0-9.eE+-]+)", line)
    return float(m.group(1)) if m else None


def parse_train_log(path, warmup):
    """Per-step forward/backward/optimizer seconds from the debug lines of `bertqa train -v`."""
    batches, steps = [], []
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = ANSI.sub("", raw)
        stamp = STAMP.match(line)
        when = datetime.fromisoformat(stamp.group(1)).timestamp() if stamp else None
        if "backward_s=" in line:
            rows = re.search(r"batch of (\d+)", line)
            batches.append((field(line, "forward_s"), field(line, "backward_s"), int(rows.group(1)) if rows else None))
        elif "optimizer_s=" in line:
            steps.append((field(line, "optimizer_s"), when))
    if len(batches) != len(steps):
        raise SystemExit(f"{path}: {len(batches)} batch lines but {len(steps)} optimizer lines (gradient accumulation?)")
    if len(steps) <= warmup:
        raise SystemExit(f"{path}: {len(steps)} steps logged, need more than the {warmup} warm-up steps (is -v on?)")
    timed = list(range(warmup, len(steps)))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    forward = mean([batches[i][0] for i in timed])
    backward = mean([batches[i][1] for i in timed])
    optimizer = mean([steps[i][0] for i in timed])
    batch_size = batches[timed[0]][2]
    # Wall time from one optimizer line to the next also counts batch assembly and logging.
    walls = [steps[i][1] - steps[i - 1][1] for i in timed if i > 0 and None not in (steps[i][1], steps[i - 1][1])]
    step_s = forward + backward + optimizer
    return {
        "batch_size": batch_size,
        "warmup_steps": warmup,
        "timed_steps": len(timed),
        "forward_s": forward,
        "backward_s": backward,
        "optimizer_s": optimizer,
        "step_s": step_s,
        "examples_per_s": batch_size / step_s,
        "step_wall_s": mean(walls) if walls else None,
    }


def load(work, name):
    path = os.path.join(work, name)
    return json.load(open(path)) if os.path.exists(path) else None


def turns(ref, ours, theirs, batch):
    """Median over the rounds of bertqa's time over the reference's, and the per-round ratios."""
    rounds = ref.get("rounds", {})
    a, b = rounds.get(f"{ours}_b{batch}"), rounds.get(f"{theirs}_b{batch}")
    if not a or not b:
        return None, ""
    ratios = [x / y for x, y in zip(a, b)]
    return statistics.median(ratios), "per round " + ", ".join(f"{r:.2f}" for r in ratios)


def load_run(directory, name):
    """A run's JSON report, or {"error": ...} where the run failed before writing one (the last
    error line of its .log beside it)."""
    try:
        return json.load(open(os.path.join(directory, name)))
    except (OSError, ValueError):
        log = os.path.join(directory, name[: -len(".json")] + ".log")
        try:
            text = open(log, encoding="utf-8", errors="replace").read()
        except OSError:
            text = "no report and no log"
        return {"error": short_error(text)}


def short(text, limit=140):
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def eval_parts(work):
    """The eval runs of compare.sh, part by part: {engine: [per-part JSON]}, engines being
    `torch` (the pipeline), `bertqa`, `bertqa_int8`, and the pipeline around OpenVINO
    `openvino` (default precision) and `openvino_f32`, plus merged predictions per engine."""
    parts = os.path.join(work, "eval-parts")
    runs, predictions = {}, {}
    for engine in ["torch", "bertqa", "bertqa_int8", "openvino", "openvino_f32"]:
        i = 0
        while os.path.exists(os.path.join(parts, f"{engine}-{i}.json")):
            runs.setdefault(engine, []).append(load_run(parts, f"{engine}-{i}.json"))
            predictions.setdefault(engine, {}).update(load(parts, f"{engine}-{i}.predictions.json") or {})
            i += 1
    return runs, predictions


def openvino_against(precision):
    """The bertqa variants an OpenVINO case at its default precision is set against: f32, and
    where OpenVINO picked less than f32 (bf16 on CPUs with AMX or AVX512-BF16) also int8,
    bertqa's own reduced-precision mode."""
    return ["f32"] if precision in (None, "f32") else ["f32", "int8"]


def table(work):
    rows = []

    def row(measure, ours, reference, unit, note="", rate=False, ratio=None):
        """`ratio` defaults to ours / reference (the forward cases pass the median per-round one)."""
        if ours is None or reference is None:
            return
        digits = 2 if unit in ("q/s", "s", "examples/s") else 0
        better = "higher" if rate else "lower"
        ratio = ours / reference if ratio is None else ratio
        rows.append(
            f"| {measure} | {ours:.{digits}f} {unit} | {reference:.{digits}f} {unit} | "
            f"**{ratio:.2f}x** ({better} is better) | {note} |"
        )

    # OpenVINO's versions, and its CPU plugin's own pick of precision per case (header lines).
    openvino_seen, picks = {}, {}

    def failed(measure, ours, unit, error):
        """The row of a case whose reference failed: bertqa's figure, the error, no ratio."""
        openvino_seen["failed"] = True
        digits = 2 if unit in ("q/s", "s", "examples/s") else 0
        figure = "–" if ours is None else f"{ours:.{digits}f} {unit}"
        rows.append(f"| {measure} | {figure} | failed | – | {short(error)} |")

    runs, predictions = eval_parts(work)
    pipe = runs.get("torch", [])
    for variant, engine in [("f32", "bertqa"), ("int8", "bertqa_int8")]:
        ours = runs.get(engine, [])
        if not pipe or len(ours) != len(pipe):
            continue
        # Rates over all parts; each part's pipeline and bertqa runs are adjacent in time.
        questions = sum(b["total"] for b in ours)
        ours_rate = questions / sum(b["seconds"] for b in ours)
        pipe_rate = sum(t["pipeline"]["questions"] for t in pipe) / sum(t["pipeline"]["seconds"] for t in pipe)
        per_part = [b["questions_per_second"] / t["pipeline"]["questions_per_s"] for b, t in zip(ours, pipe)]
        em = sum(b["exact_match"] * b["total"] for b in ours) / questions
        f1 = sum(b["f1"] * b["total"] for b in ours) / questions
        theirs, mine = predictions.get("torch", {}), predictions.get(engine, {})
        same = sum(theirs[k] == mine.get(k) for k in theirs)
        note = (
            f"EM {em:.2f} / F1 {f1:.2f}; {same}/{len(theirs)} answers identical to the pipeline's; "
            f"per part ({len(pipe)}) " + ", ".join(f"{r:.2f}" for r in per_part)
        )
        row(
            f"eval {os.path.basename(ours[0]['model'])}, {questions} questions, bertqa {variant} vs pipeline",
            ours_rate,
            pipe_rate,
            "q/s",
            note,
            rate=True,
        )
    # The pipeline around OpenVINO (optimum-intel), part by part beside the others.
    model_name = os.path.basename(runs["bertqa"][0].get("model", "model")) if runs.get("bertqa") else "model"
    for engine, label in [("openvino", "default"), ("openvino_f32", "f32")]:
        ov_runs = runs.get(engine, [])
        if not ov_runs or not pipe:
            continue
        errors = [r.get("error") or "no figures" for r in ov_runs if "pipeline" not in r]
        info = next((r["openvino"] for r in ov_runs if r.get("openvino")), {})
        precision = info.get("precision")
        if info:
            openvino_seen.setdefault("openvino", info.get("openvino"))
            openvino_seen.setdefault("optimum-intel", info.get("optimum-intel"))
            if label == "default":
                picks[f"eval {model_name}"] = precision
        for ours_variant in openvino_against(precision) if label == "default" else ["f32"]:
            ours = runs.get("bertqa" if ours_variant == "f32" else "bertqa_int8", [])
            ours_ok = bool(ours) and len(ours) == len(ov_runs)
            questions = sum(b["total"] for b in ours) if ours_ok else None
            ours_rate = questions / sum(b["seconds"] for b in ours) if ours_ok else None
            picked = f" ({precision})" if precision and label == "default" else ""
            measure = (
                f"eval {model_name}, {questions if questions is not None else '?'} questions, bertqa {ours_variant} "
                f"vs pipeline + OpenVINO {label}{picked}"
            )
            if errors:
                stage = next((r.get("stage") for r in ov_runs if r.get("error")), None)
                failed(measure, ours_rate, "q/s", ("export failed: " if stage == "export" else "") + errors[0])
                continue
            if not ours_ok:
                continue
            ov_questions = sum(r["pipeline"]["questions"] for r in ov_runs)
            ov_rate = ov_questions / sum(r["pipeline"]["seconds"] for r in ov_runs)
            per_part = [b["questions_per_second"] / r["pipeline"]["questions_per_s"] for b, r in zip(ours, ov_runs)]
            em = sum(r["pipeline"]["exact_match"] * r["pipeline"]["questions"] for r in ov_runs) / ov_questions
            f1 = sum(r["pipeline"]["f1"] * r["pipeline"]["questions"] for r in ov_runs) / ov_questions
            theirs, mine = predictions.get("torch", {}), predictions.get(engine, {})
            same = sum(theirs[k] == mine.get(k) for k in theirs)
            note = (
                f"OpenVINO {info.get('openvino', '?')} at {precision}: {ov_rate:.2f} q/s, EM {em:.2f} / F1 {f1:.2f}, "
                f"{same}/{len(theirs)} answers identical to the fp32 pipeline's; per part ({len(ov_runs)}) "
                + ", ".join(f"{r:.2f}" for r in per_part)
            )
            row(measure, ours_rate, ov_rate, "q/s", note, rate=True)
    cold = load(work, "cold.json")
    if cold:
        row("cold start (load + one answer), bertqa vs pipeline", cold["bertqa_cold_s"], cold["torch_cold_s"], "s")
    for size in ["base", "large"]:
        ref = load(work, f"torch_forward_{size}.json")
        if not ref:
            continue
        for batch, suffix in [(1, "b1_ms"), (8, "b8_ms_per_seq")]:
            f32, int8 = ref.get(f"bertqa_f32_{suffix}"), ref.get(f"bertqa_int8_{suffix}")
            what = f"bert-{size} 384 tokens batch {batch}, ms/sequence (median of {len(ref['rounds']['fp32_b1'])} rounds)"
            for theirs, name in [("fp32", "PyTorch fp32"), ("ort_fp32", "ORT fp32")]:
                ratio, note = turns(ref, "bertqa_f32", theirs, batch)
                row(f"{what}: bertqa f32 vs {name}", f32, ref[f"{theirs}_{suffix}"], "ms", note, ratio=ratio)
            # PyTorch bf16 is timed once (it is many times slower without bf16 hardware).
            if ref[f"bf16_{suffix}"] < ref[f"ort_int8_{suffix}"]:
                name, ratio, note = "PyTorch bf16 autocast", None, ""
                best = ref[f"bf16_{suffix}"]
            else:
                name, best = "ORT int8", ref[f"ort_int8_{suffix}"]
                ratio, note = turns(ref, "bertqa_int8", "ort_int8", batch)
            note = f"PyTorch bf16 {ref[f'bf16_{suffix}']:.0f} ms, ORT int8 {ref[f'ort_int8_{suffix}']:.0f} ms; {note}"
            row(f"{what}: bertqa int8 vs best of PyTorch bf16 / ORT int8 ({name})", int8, best, "ms", note, ratio=ratio)
            # OpenVINO: its own pick of precision, forced f32, NNCF int8.
            ov = ref.get("openvino")
            if not ov:
                continue
            openvino_seen.setdefault("openvino", ov.get("openvino"))
            openvino_seen.setdefault("nncf", ov.get("nncf"))
            openvino_seen.setdefault("capabilities", ov.get("capabilities"))
            picked = ov.get("precision", {}).get("ov_default")
            if picked:
                picks[f"bert-{size}"] = picked
            default = "OpenVINO default" + (f" ({picked})" if picked else "")
            for engine, label, ours_variant in [
                *(("ov_default", default, variant) for variant in openvino_against(picked)),
                ("ov_f32", "OpenVINO f32", "f32"),
                ("ov_int8", "OpenVINO NNCF int8", "int8"),
            ]:
                ours = int8 if ours_variant == "int8" else f32
                measure = f"{what}: bertqa {ours_variant} vs {label}"
                error = ov.get("errors", {}).get(engine)
                theirs = ref.get(f"{engine}_{suffix}")
                if error or theirs is None:
                    failed(measure, ours, "ms", error or "no figures")
                    continue
                ratio, note = turns(ref, f"bertqa_{ours_variant}", engine, batch)
                row(measure, ours, theirs, "ms", note, ratio=ratio)
    tt, bt = load(work, "torch_train.json"), load(work, "bertqa_train.json")
    if tt and bt:
        split = lambda t: f"{t['forward_s']:.2f}+{t['backward_s']:.2f}+{t['optimizer_s']:.2f} s"  # noqa: E731
        note = (
            f"batch {tt['batch_size']} x {tt['max_seq_len']}, {tt['timed_steps']} timed steps; "
            f"forward+backward+optimizer: bertqa {split(bt)}, PyTorch {split(tt)}"
        )
        row("training step MiniLM-L6 fp32, bertqa vs PyTorch", bt["examples_per_s"], tt["examples_per_s"], "examples/s", note, rate=True)
    threads = pipe[0].get("threads", "?") if pipe else "?"
    header = [f"bertqa vs reference on this machine (threads: {threads}); ratio = bertqa / reference", ""]
    cpu = open(os.path.join(work, "cpu.txt")).read().strip() if os.path.exists(os.path.join(work, "cpu.txt")) else None
    if cpu:
        header += [f"CPU: {cpu}", ""]
    if openvino_seen.get("failed") and not openvino_seen.get("openvino"):
        header += ["OpenVINO: no case ran (their rows say why)", ""]
    if openvino_seen.get("openvino"):
        versions = ", ".join(f"{k} {openvino_seen[k]}" for k in ("optimum-intel", "nncf") if openvino_seen.get(k))
        chosen = ", ".join(f"{precision} ({case})" for case, precision in picks.items())
        caps = openvino_seen.get("capabilities")
        header += [
            f"OpenVINO {openvino_seen['openvino']}" + (f" ({versions})" if versions else "")
            + f"; precision its CPU plugin chose by default: {chosen or '?'}"
            + (f"; CPU capabilities: {', '.join(caps)}" if caps else ""),
            "",
        ]
    header += [
        "| measure | bertqa | reference | ratio | notes |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(header + rows) + "\n"


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "train-log":
        print(json.dumps(parse_train_log(sys.argv[2], int(sys.argv[3]))))
    elif len(sys.argv) == 2:
        text = table(sys.argv[1])
        open(os.path.join(sys.argv[1], "summary.md"), "w").write(text)
        print(text, end="")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
