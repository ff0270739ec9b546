"""PyTorch / transformers / ONNX Runtime / OpenVINO reference figures for bench/compare.sh (run
inside bench/.venv).

Each subcommand prints one JSON object:

  pipeline MODEL DATA WORK   transformers' question-answering pipeline on a SQuAD file, one question
                             per call (questions/s, SQuAD EM / F1); its answers go to
                             WORK/torch_predictions.json (or --predictions). With --openvino
                             default|f32 the pipeline runs optimum-intel's OVModelForQuestionAnswering
                             (export=True) instead of PyTorch; a failure is reported as
                             {"error", "stage": "export"|"run"} and the exit status is still 0
  split DATA N OUT           the articles of a SQuAD file dealt round-robin into OUT/part-0..N-1.json
  forward SIZE TOKENIZER WORK
                             forward latency at 384 tokens of a BERT-base/large-sized QA model with
                             random weights (saved as safetensors in WORK/bert-SIZE-random so that
                             bertqa runs the very same weights): PyTorch fp32 and bf16 autocast,
                             ONNX Runtime fp32 and dynamic int8; with --bertqa FORWARD_TIMING, bertqa
                             f32 and int8 too; with --openvino, OpenVINO at its default precision,
                             forced f32 and NNCF int8 (bench/openvino_engines.py, one process per
                             timing as bertqa's); the engines taking turns over --rounds rounds
  train BASE                 one fine-tuning step (forward + backward + clipping + AdamW) of a
                             BertForQuestionAnswering built from BASE, on random windows

THREADS (default 2) sets the threads of PyTorch, ONNX Runtime and OpenVINO alike.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch

THREADS = int(os.environ.get("THREADS", "2"))
torch.set_num_threads(THREADS)
OPENVINO_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openvino_engines.py")


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- pipeline


# The official SQuAD v1.1 metric's normalization and scores, as the other benches use them.
SHARED_REFERENCE = os.path.join(
    os.environ.get("BERTQA_SHARED", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")),
    "reference",
)


def squad_scores(data, answers):
    """SQuAD v1.1 exact match and F1 (0-100) of `answers` {id: text} over the questions of `data`
    that were answered (../shared/reference/squad_metric.py)."""
    sys.path.insert(0, SHARED_REFERENCE)
    from squad_metric import score

    answered = [
        {"paragraphs": [{"qas": [q for q in p["qas"] if q["id"] in answers]} for p in a["paragraphs"]]}
        for a in data["data"]
    ]
    if not any(p["qas"] for a in answered for p in a["paragraphs"]):
        return None, None
    em, f1, _ = score(answered, answers)
    return em, f1


def pipeline_speed(args):
    from transformers import pipeline

    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    stage = "export"
    try:
        if args.openvino:
            from openvino_engines import qa_pipeline

            qa, out["openvino"] = qa_pipeline(args.model, args.openvino)
        else:
            qa = pipeline("question-answering", model=args.model, device="cpu")
        stage = "run"
        data = json.load(open(args.data))
        items = [
            (q["id"], q["question"], p["context"])
            for a in data["data"]
            for p in a["paragraphs"]
            for q in p["qas"]
        ]
        if args.limit:
            items = items[: args.limit]
        answers = {}
        t = time.perf_counter()
        for qid, question, context in items:
            answers[qid] = qa(question=question, context=context)["answer"]
        seconds = time.perf_counter() - t
    except Exception as e:
        if not args.openvino:
            raise
        # An OpenVINO case that fails is reported in its row; the benchmark goes on.
        from openvino_engines import short_error

        log(f"OpenVINO pipeline ({args.openvino}) failed at {stage}: {e}")
        return dict(out, error=short_error(e), stage=stage)
    json.dump(answers, open(args.predictions or os.path.join(args.work, "torch_predictions.json"), "w"))
    em, f1 = squad_scores(data, answers)
    out["pipeline"] = {
        "questions": len(items),
        "seconds": seconds,
        "questions_per_s": len(items) / seconds,
        "exact_match": em,
        "f1": f1,
    }
    return out


def split_data(args):
    """Deals the articles of a SQuAD file round-robin into N files OUT/part-I.json."""
    data = json.load(open(args.data))
    os.makedirs(args.out, exist_ok=True)
    parts = [[] for _ in range(args.parts)]
    for i, article in enumerate(data["data"]):
        parts[i % args.parts].append(article)
    paths = []
    for i, articles in enumerate(parts):
        path = os.path.join(args.out, f"part-{i}.json")
        json.dump({"version": data.get("version", "1.1"), "data": articles}, open(path, "w"))
        paths.append(path)
    return {"parts": paths}


# ---------------------------------------------------------------- forward latency

SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def random_qa_model(size, out_dir, tokenizer_dir, layers=None):
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    shape = dict(SIZES[size])
    if layers:
        shape["num_hidden_layers"] = layers
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**shape)).eval()
    # Same seed, same weights: an existing directory holds this very model.
    if not os.path.exists(os.path.join(out_dir, "model.safetensors")):
        model.save_pretrained(out_dir, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    return model


def random_inputs(batch, seq):
    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(1000, 20000, (batch, seq), generator=generator)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def ms_per_sequence(run, batch, iters):
    """One untimed warm-up call, then the mean of `iters` calls, in milliseconds per sequence."""
    run()
    t = time.perf_counter()
    for _ in range(iters):
        run()
    return (time.perf_counter() - t) * 1000 / iters / batch


def torch_latency(model, batch, iters, bf16=False):
    ids, mask, types = random_inputs(batch, 384)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return ms_per_sequence(
            lambda: model(input_ids=ids, attention_mask=mask, token_type_ids=types), batch, iters
        )


def export_onnx(model, path):
    """TorchScript exporter (dynamo=False: no onnxscript needed), dynamic batch and sequence axes."""
    if os.path.exists(path):
        return
    ids, mask, types = random_inputs(1, 384)
    model.config.return_dict = False
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask, types),
            path + ".tmp",
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["start_logits", "end_logits"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
            opset_version=17,
            dynamo=False,
        )
    os.replace(path + ".tmp", path)
    model.config.return_dict = True


def optimize_onnx(exported_path, optimized_path, size):
    """ONNX Runtime's transformer optimizer (fused attention, SkipLayerNorm, BiasGelu), as its docs
    recommend for BERT before running or quantizing it."""
    from onnxruntime.transformers.optimizer import optimize_model

    if os.path.exists(optimized_path):
        return
    shape = SIZES[size]
    model = optimize_model(
        exported_path, model_type="bert", num_heads=shape["num_attention_heads"], hidden_size=shape["hidden_size"]
    )
    model.save_model_to_file(optimized_path + ".tmp")
    os.replace(optimized_path + ".tmp", optimized_path)


def quantize_onnx(fp32_path, int8_path):
    """Dynamic quantization as ONNX Runtime's docs recommend on CPU: per-channel int8 (QInt8)
    weights, uint8 (QUInt8) activations quantized at run time."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if os.path.exists(int8_path):
        return
    quantize_dynamic(
        fp32_path,
        int8_path + ".tmp",
        per_channel=True,
        weight_type=QuantType.QInt8,
        # Shape inference does not type the outputs of ORT's fused (contrib) operators.
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    os.replace(int8_path + ".tmp", int8_path)


def ort_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_latency(session, batch, iters):
    ids, mask, types = random_inputs(batch, 384)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    return ms_per_sequence(lambda: session.run(None, feed), batch, iters)


def bertqa_latency(binary, model_dir, batch, iters, int8):
    """ms per sequence of bertqa's forward pass, from a forward_timing process (load not timed)."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS), BERTQA_QUANTIZE="int8" if int8 else "")
    out = subprocess.run(
        [binary, model_dir, "384", str(batch), str(iters)], env=env, check=True, capture_output=True, text=True
    ).stdout
    match = re.search(r"\(([\d.]+) ms per sequence", out)
    if not match:
        raise SystemExit(f"unexpected forward_timing output: {out!r}")
    return float(match.group(1))


def openvino_helper(*args):
    """Runs bench/openvino_engines.py with `args` in a process of its own: (its JSON report, None),
    or (None, its error shortened) where it failed."""
    from openvino_engines import short_error

    done = subprocess.run(
        [sys.executable, OPENVINO_HELPER, *args],
        env=dict(os.environ, THREADS=str(THREADS)),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None, short_error(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def openvino_prepare(checkpoint, out_dir):
    """OpenVINO IR (f32) and its NNCF int8 copy of `checkpoint`, made in a process of their own
    (bench/openvino_engines.py prepare): {"f32_ir", "int8_ir", "errors", versions...}."""
    result, error = openvino_helper("prepare", checkpoint, out_dir)
    return result or {"f32_ir": None, "int8_ir": None, "errors": {"convert": error}}


def openvino_latency(ir, precision, batch, iters, chosen):
    """ms per sequence of one OpenVINO IR in a process of its own (load and compilation not
    timed, as bertqa's); the precision the CPU plugin compiled it at goes to `chosen`."""
    result, error = openvino_helper("time", ir, precision, str(batch), str(iters))
    if error is not None:
        from openvino_engines import ProcessFailed

        raise ProcessFailed(error)
    chosen.update(openvino=result["openvino"], precision=result["precision"])
    return result["ms_per_seq"]


def forward_latency(args):
    import onnxruntime

    name = f"bert-{args.size}" + (f"-{args.layers}layers" if args.layers else "")
    d = os.path.join(args.work, f"{name}-random")
    os.makedirs(d, exist_ok=True)
    model = random_qa_model(args.size, d, args.tokenizer, args.layers)
    out = {"dir": d, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": THREADS}
    iters = {1: args.iters_b1, 8: args.iters_b8}
    # bf16 autocast has no bf16 hardware to run on here and is many times slower than fp32: one
    # round, one timed call at batch 8.
    log(f"   PyTorch bf16 autocast ({args.size})")
    out["bf16_b1_ms"] = torch_latency(model, 1, iters[1], bf16=True)
    out["bf16_b8_ms_per_seq"] = torch_latency(model, 8, 1, bf16=True)
    # The ONNX files stay out of the bertqa model directory, which holds the checkpoint alone.
    onnx_dir = os.path.join(args.work, f"{name}-onnx")
    os.makedirs(onnx_dir, exist_ok=True)
    exported = os.path.join(onnx_dir, "model.onnx")
    fp32_path, int8_path = os.path.join(onnx_dir, "model.opt.onnx"), os.path.join(onnx_dir, "model.opt.int8.onnx")
    log(f"   ONNX export, optimization and dynamic int8 quantization ({args.size})")
    export_onnx(model, exported)
    optimize_onnx(exported, fp32_path, args.size)
    quantize_onnx(fp32_path, int8_path)
    sessions = {"ort_fp32": ort_session(fp32_path), "ort_int8": ort_session(int8_path)}
    # The machine's speed drifts over minutes, so the engines take turns: every round times
    # each engine once per batch size, and a ratio is taken within a round.
    engines = {
        "fp32": lambda batch: torch_latency(model, batch, iters[batch]),
        "ort_fp32": lambda batch: ort_latency(sessions["ort_fp32"], batch, iters[batch]),
        "ort_int8": lambda batch: ort_latency(sessions["ort_int8"], batch, iters[batch]),
    }
    if args.bertqa:
        engines["bertqa_f32"] = lambda batch: bertqa_latency(args.bertqa, d, batch, iters[batch], False)
        engines["bertqa_int8"] = lambda batch: bertqa_latency(args.bertqa, d, batch, iters[batch], True)
    # OpenVINO: the same checkpoint converted to IR, at the CPU plugin's own precision, forced
    # f32 and NNCF int8. A failing OpenVINO engine is left out with its error (out["openvino"]
    # ["errors"]), the other engines go on.
    openvino_engines = []
    if args.openvino:
        from openvino_engines import short_error

        log(f"   OpenVINO conversion and NNCF int8 quantization ({args.size})")
        prepared = openvino_prepare(d, os.path.join(args.work, f"{name}-openvino"))
        ov = {key: prepared.get(key) for key in ("openvino", "optimum-intel", "nncf", "capabilities")}
        ov.update(precision={}, errors={})
        out["openvino"] = ov
        for engine, ir_key, precision in [
            ("ov_default", "f32_ir", "default"),
            ("ov_f32", "f32_ir", "f32"),
            ("ov_int8", "int8_ir", "default"),
        ]:
            ir = prepared.get(ir_key)
            if not ir:
                errors = prepared.get("errors", {})
                ov["errors"][engine] = errors.get("int8" if ir_key == "int8_ir" else "convert") or errors.get("convert", "?")
                continue
            chosen = ov["precision"].setdefault(engine, {})
            engines[engine] = (
                lambda batch, ir=ir, precision=precision, chosen=chosen: openvino_latency(
                    ir, precision, batch, iters[batch], chosen
                )
            )
            openvino_engines.append(engine)
    rounds = {f"{engine}_b{batch}": [] for batch in iters for engine in engines}
    for r in range(args.rounds):
        log(f"   round {r + 1}/{args.rounds}: {', '.join(engines)} ({args.size})")
        for batch in iters:
            for engine, run in list(engines.items()):
                try:
                    rounds[f"{engine}_b{batch}"].append(run(batch))
                except Exception as e:
                    if engine not in openvino_engines:
                        raise
                    log(f"   {engine} failed: {short_error(e)}")
                    out["openvino"]["errors"][engine] = short_error(e)
                    del engines[engine]
                    for b in iters:
                        rounds.pop(f"{engine}_b{b}", None)
    if args.openvino:
        # {"ov_default": "bf16", ...}: what the CPU plugin compiled each engine at.
        ov["precision"] = {engine: chosen["precision"] for engine, chosen in ov["precision"].items() if chosen}
    out["rounds"] = rounds
    for key, values in rounds.items():
        engine, batch = key.rsplit("_b", 1)
        out[f"{engine}_b1_ms" if batch == "1" else f"{engine}_b8_ms_per_seq"] = statistics.median(values)
    return out


# ---------------------------------------------------------------- training step


def train_step_speed(args):
    from transformers import BertForQuestionAnswering
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized: qa_outputs" is expected
    torch.manual_seed(0)
    model = BertForQuestionAnswering.from_pretrained(args.base)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    b, s = args.batch_size, args.max_seq_len
    ids = torch.randint(1000, 20000, (b, s))
    types = torch.zeros_like(ids)
    types[:, s // 4 :] = 1  # question, then context
    mask = torch.ones_like(ids)
    starts = torch.randint(s // 4, s - 32, (b,))
    ends = starts + torch.randint(0, 30, (b,))

    def step():
        t0 = time.perf_counter()
        loss = model(
            input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=starts, end_positions=ends
        ).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        # Clipping at 1.0 as the Trainer (and bertqa train) do by default.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    mean = [sum(t[i] for t in times) / len(times) for i in range(3)]
    step_s = sum(mean)
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "base": args.base,
        "batch_size": b,
        "max_seq_len": s,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "forward_s": mean[0],
        "backward_s": mean[1],
        "optimizer_s": mean[2],
        "step_s": step_s,
        "examples_per_s": b / step_s,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("work")
    p.add_argument("--limit", type=int, default=0, help="only the first N questions (quick checks)")
    p.add_argument("--predictions", help="where the answers go (default WORK/torch_predictions.json)")
    p.add_argument("--openvino", choices=["default", "f32"], help="optimum-intel's OpenVINO model in the pipeline, at this precision")
    p.set_defaults(run=pipeline_speed)
    p = sub.add_parser("split")
    p.add_argument("data")
    p.add_argument("parts", type=int)
    p.add_argument("out")
    p.set_defaults(run=split_data)
    p = sub.add_parser("forward")
    p.add_argument("size", choices=sorted(SIZES))
    p.add_argument("tokenizer", help="a checkpoint whose tokenizer the random model gets")
    p.add_argument("work")
    p.add_argument("--iters-b1", type=int, default=5)
    p.add_argument("--iters-b8", type=int, default=2)
    p.add_argument("--layers", type=int, default=0, help="fewer layers (quick checks)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of turns between the engines")
    p.add_argument("--bertqa", help="bertqa's forward_timing binary: time bertqa f32/int8 in the same rounds")
    p.add_argument("--openvino", action="store_true", help="time OpenVINO default / f32 / NNCF int8 in the same rounds")
    p.set_defaults(run=forward_latency)
    p = sub.add_parser("train")
    p.add_argument("base")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-seq-len", type=int, default=384)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.set_defaults(run=train_step_speed)
    args = parser.parse_args()
    print(json.dumps(args.run(args)))


if __name__ == "__main__":
    main()
