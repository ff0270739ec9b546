"""OpenVINO figures for bench/compare.sh and bench/archs.sh (run inside bench/.venv).

OpenVINO is what CPU users pick on Intel Xeons with AMX (Sapphire / Emerald Rapids): its CPU
plugin runs bf16 by itself on CPUs with AMX or AVX512-BF16 and f32 elsewhere. Every engine here
runs on THREADS threads (INFERENCE_NUM_THREADS, default 2) with PERFORMANCE_HINT LATENCY, at one
of three precisions: `default` (the plugin's own pick, read back from the compiled model's
INFERENCE_PRECISION_HINT), `f32` (INFERENCE_PRECISION_HINT forced to f32), and `int8` (NNCF
post-training quantization of the f32 model, model_type TRANSFORMER, random calibration windows).

Each subcommand prints one JSON object:

  prepare CHECKPOINT OUT     the checkpoint (a BertForQuestionAnswering, e.g. compare.sh's random
                             BERT-base) converted to OpenVINO IR (OUT/model.xml, f32 weights) and
                             quantized by NNCF (OUT/model.int8.xml); both kept when already there
  time IR PRECISION BATCH ITERS
                             ms per sequence at 384 tokens of one compiled IR: one untimed call,
                             then the mean of ITERS calls (bench/reference.py's convention)

bench/reference.py imports `qa_pipeline` from here for its `pipeline --openvino PRECISION`
(optimum-intel's OVModelForQuestionAnswering, export=True, inside transformers' pipeline). This
file is not named openvino.py: it would shadow the openvino package for the scripts in bench/.
"""
import argparse
import json
import os
import re
import sys
import time

THREADS = int(os.environ.get("THREADS", "2"))
PRECISIONS = ("default", "f32")
OV_WHERE = re.compile(r"Exception from \S+:\d+:\s*$")
SEQ = 384


def short_error(error, limit=140):
    """One line of an error (an exception, or a process's stderr) for a table cell: the last line
    that names an error (a traceback's last line, OpenVINO's `Check '...' failed`), else the
    first, shortened to `limit` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [i for i, line in enumerate(lines) if "Error" in line or "error:" in line or "failed" in line]
    at = named[-1] if named else 0
    line = lines[at] if lines else "no output"
    # OpenVINO chains its messages: "Exception from src/...cpp:132:" lines, then what went wrong.
    if OV_WHERE.search(line):
        cause = next((later for later in lines[at + 1 :] if not OV_WHERE.match(later)), None)
        if cause:
            line = OV_WHERE.sub(cause, line, count=1)
    if isinstance(error, BaseException) and not isinstance(error, ProcessFailed):
        line = f"{type(error).__name__}: {line}"
    line = " ".join(line.replace("|", "/").split())  # one markdown table cell
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ProcessFailed(RuntimeError):
    """A helper process that failed; its message is the line of its stderr that says why."""


def run_failure(json_path, log_path):
    """Why a run that should have written a JSON report did not: its `error` (with `stage`
    "export" for optimum-intel's export), else the last error line of its log."""
    try:
        report = json.load(open(json_path))
        if report.get("error"):
            prefix = "export failed" if report.get("stage") == "export" else "failed"
            return f"{prefix}: {short_error(report['error'])}"
        return None
    except (OSError, ValueError):
        pass
    try:
        log = open(log_path, encoding="utf-8", errors="replace").read()
    except OSError:
        log = "no report and no log"
    return f"failed: {short_error(log)}"


def config(precision):
    cfg = {"INFERENCE_NUM_THREADS": str(THREADS), "PERFORMANCE_HINT": "LATENCY"}
    if precision == "f32":
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    elif precision != "default":
        raise SystemExit(f"unknown OpenVINO precision {precision!r} (default or f32)")
    return cfg


def chosen_precision(compiled):
    """The compiled model's INFERENCE_PRECISION_HINT as OpenVINO names it: f32, bf16, f16."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)


def versions():
    from importlib import metadata

    found = {}
    for package in ("openvino", "optimum-intel", "nncf"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def capabilities():
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


# ---------------------------------------------------------------- pipeline (optimum-intel)


def qa_pipeline(model_dir, precision):
    """transformers' question-answering pipeline around optimum-intel's
    OVModelForQuestionAnswering exported from `model_dir`, and what OpenVINO compiled it at."""
    from optimum.intel import OVModelForQuestionAnswering
    from transformers import AutoTokenizer, pipeline

    model = OVModelForQuestionAnswering.from_pretrained(
        model_dir, export=True, ov_config=config(precision), compile=True
    )
    qa = pipeline("question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir))
    info = dict(versions(), requested=precision, precision=chosen_precision(model.request), threads=THREADS)
    return qa, info


# ---------------------------------------------------------------- forward latency


def random_feed(batch, seed=None):
    """Random token ids (as bench/reference.py's random_inputs: 1000..20000, mask of ones, one
    segment) as the numpy arrays OpenVINO takes."""
    import numpy as np

    rng = np.random.default_rng(batch if seed is None else seed)
    ids = rng.integers(1000, 20000, (batch, SEQ), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def prepare(args):
    import openvino as ov

    os.makedirs(args.out, exist_ok=True)
    f32_path, int8_path = os.path.join(args.out, "model.xml"), os.path.join(args.out, "model.int8.xml")
    out = dict(versions(), f32_ir=None, int8_ir=None, errors={}, capabilities=capabilities())
    try:
        if not os.path.exists(f32_path):
            import torch
            from transformers import AutoModelForQuestionAnswering

            torch.set_num_threads(THREADS)
            model = AutoModelForQuestionAnswering.from_pretrained(args.checkpoint).eval()
            example = {k: torch.from_numpy(v) for k, v in random_feed(1).items()}
            with torch.no_grad():
                converted = ov.convert_model(model, example_input=example)
            # save_model would store f16 weights by default; f32 is what the f32 case must run.
            ov.save_model(converted, f32_path + ".tmp.xml", compress_to_fp16=False)
            os.replace(f32_path + ".tmp.bin", f32_path[:-4] + ".bin")
            os.replace(f32_path + ".tmp.xml", f32_path)
        out["f32_ir"] = f32_path
    except Exception as e:  # reported in the rows of every OpenVINO engine
        out["errors"]["convert"] = short_error(e)
        return out
    try:
        if not os.path.exists(int8_path):
            import nncf

            model = ov.Core().read_model(f32_path)
            # A small random calibration set: random weights have no data that fits them better.
            calibration = [random_feed(1, seed=100 + i) for i in range(args.calibration)]
            quantized = nncf.quantize(
                model,
                nncf.Dataset(calibration),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(calibration),
            )
            ov.save_model(quantized, int8_path + ".tmp.xml", compress_to_fp16=False)
            os.replace(int8_path + ".tmp.bin", int8_path[:-4] + ".bin")
            os.replace(int8_path + ".tmp.xml", int8_path)
        out["int8_ir"] = int8_path
    except Exception as e:
        out["errors"]["int8"] = short_error(e)
    return out


def time_ir(args):
    import openvino as ov

    compiled = ov.Core().compile_model(args.ir, "CPU", config(args.precision))
    request = compiled.create_infer_request()
    feed = random_feed(args.batch)
    request.infer(feed)  # untimed
    t = time.perf_counter()
    for _ in range(args.iters):
        request.infer(feed)
    ms = (time.perf_counter() - t) * 1000 / args.iters / args.batch
    return {"ms_per_seq": ms, "precision": chosen_precision(compiled), "openvino": versions()["openvino"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--calibration", type=int, default=8, help="random calibration windows for NNCF")
    p.set_defaults(run=prepare)
    p = sub.add_parser("time")
    p.add_argument("ir")
    p.add_argument("precision", choices=PRECISIONS)
    p.add_argument("batch", type=int)
    p.add_argument("iters", type=int)
    p.set_defaults(run=time_ir)
    args = parser.parse_args()
    print(json.dumps(args.run(args)))


if __name__ == "__main__":
    sys.exit(main())
