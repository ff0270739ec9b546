"""PyTorch reference figures on a GPU for bench/gpu.sh (python3 with torch and transformers).

Each subcommand prints one JSON object:

  forward SIZE TOKENIZER WORK [--batches 1,8,64] [--iters N]
      forward latency at 384 tokens of a BERT-base/large-sized QA model with random weights
      (saved as safetensors in WORK/bert-SIZE-random, so that bertqa runs the very same
      weights): fp32 with TF32 off, and the model in bf16
  eval MODEL DATA [--batch 64] [--dtype fp32|bf16]
      every question of a SQuAD file: tokenized as the question-answering pipeline does
      (384 tokens, stride 128), windows batched by length, forward, best span of at most 15
      tokens by start + end logit; questions/s end to end. A lighter loop than the pipeline
      (no per-question calls), so a ratio against it flatters PyTorch, if anything.
  train BASE [--batch-size 16] [--max-seq-len 384] [--dtype fp32|bf16]
      one fine-tuning step (forward, backward, clipping, AdamW) of a BertForQuestionAnswering
      from BASE on random windows; bf16 is autocast (fp32 master weights)

Timings wait for the GPU (torch.cuda.synchronize) before reading the clock.
"""
import argparse
import json
import os
import sys
import time

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DEVICE = "cuda"

SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def log(message):
    print(message, file=sys.stderr, flush=True)


def timed(run, iters):
    """Two untimed calls, then the mean of `iters` calls in milliseconds."""
    run()
    run()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        run()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1000 / iters


def random_qa_model(size, out_dir, tokenizer_dir):
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**SIZES[size])).eval()
    if not os.path.exists(os.path.join(out_dir, "model.safetensors")):
        model.save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    return model


def windows(batch, seq):
    """The token ids bertqa's device_check times (same pattern, same values)."""
    ids = [[1000 + ((b * seq + i) * 7919) % 20000 for i in range(seq)] for b in range(batch)]
    return torch.tensor(ids, device=DEVICE)


def forward_latency(args):
    out_dir = os.path.join(args.work, f"bert-{args.size}-random")
    model = random_qa_model(args.size, out_dir, args.tokenizer).to(DEVICE)
    results = {"model_dir": out_dir, "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    for dtype_name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        m = model.to(dtype)
        for batch in [int(b) for b in args.batches.split(",")]:
            ids = windows(batch, 384)
            mask, types = torch.ones_like(ids), torch.zeros_like(ids)
            with torch.inference_mode():
                ms = timed(lambda: m(input_ids=ids, attention_mask=mask, token_type_ids=types), args.iters)
            results[f"{dtype_name}_b{batch}_ms"] = ms
            log(f"torch {args.size} {dtype_name} batch {batch}: {ms:.2f} ms")
    return results


def eval_speed(args):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model).to(DEVICE, dtype).eval()
    data = json.load(open(args.data))
    items = [(q["question"], p["context"]) for a in data["data"] for p in a["paragraphs"] for q in p["qas"]]

    def run():
        enc = tokenizer(
            [q.lstrip() for q, _ in items],
            [c for _, c in items],
            truncation="only_second",
            max_length=384,
            stride=128,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        order = sorted(range(len(enc["input_ids"])), key=lambda i: -len(enc["input_ids"][i]))
        best = {}
        for start in range(0, len(order), args.batch):
            rows = order[start : start + args.batch]
            length = len(enc["input_ids"][rows[0]])
            ids = torch.zeros((len(rows), length), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(rows):
                n = len(enc["input_ids"][i])
                ids[r, :n] = torch.tensor(enc["input_ids"][i])
                mask[r, :n] = 1
            with torch.inference_mode():
                out = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE))
            s, e = out.start_logits.float(), out.end_logits.float()
            # Best span j - i < 15 per window: scores[i, j] = s[i] + e[j] on the band.
            scores = s[:, :, None] + e[:, None, :]
            band = torch.triu(torch.ones(length, length, device=DEVICE, dtype=torch.bool))
            band &= ~torch.triu(band, diagonal=15)
            scores = scores.masked_fill(~band, float("-inf"))
            flat = scores.flatten(1).max(dim=1)
            for r, i in enumerate(rows):
                q = enc["overflow_to_sample_mapping"][i]
                value = flat.values[r].item()
                if q not in best or value > best[q][0]:
                    best[q] = (value, flat.indices[r].item(), i)
        return best

    run()  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    t = time.perf_counter()
    run()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return {
        "torch": torch.__version__,
        "dtype": args.dtype,
        "questions": len(items),
        "seconds": seconds,
        "questions_per_s": len(items) / seconds,
    }


def train_step_speed(args):
    from transformers import BertForQuestionAnswering
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = BertForQuestionAnswering.from_pretrained(args.base).to(DEVICE)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    b, s = args.batch_size, args.max_seq_len
    ids = windows(b, s)
    types = torch.zeros_like(ids)
    types[:, s // 4 :] = 1
    mask = torch.ones_like(ids)
    starts = torch.tensor([s // 4 + (i * 37) % (s // 2) for i in range(b)], device=DEVICE)
    ends = starts + 5
    bf16 = args.dtype == "bf16"

    def step():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = model(
                input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=starts, end_positions=ends
            ).loss
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        loss.backward()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for _ in range(2):
        step()
    times = [step() for _ in range(args.steps)]
    mean = [sum(t[i] for t in times) / len(times) for i in range(3)]
    step_s = sum(mean)
    return {
        "torch": torch.__version__,
        "dtype": args.dtype,
        "base": args.base,
        "batch_size": b,
        "max_seq_len": s,
        "forward_s": mean[0],
        "backward_s": mean[1],
        "optimizer_s": mean[2],
        "step_s": step_s,
        "examples_per_s": b / step_s,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("forward")
    p.add_argument("size", choices=sorted(SIZES))
    p.add_argument("tokenizer")
    p.add_argument("work")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--iters", type=int, default=20)
    p.set_defaults(run=forward_latency)
    p = sub.add_parser("eval")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.set_defaults(run=eval_speed)
    p = sub.add_parser("train")
    p.add_argument("base")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-seq-len", type=int, default=384)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.set_defaults(run=train_step_speed)
    args = parser.parse_args()
    print(json.dumps(args.run(args)))


if __name__ == "__main__":
    main()
