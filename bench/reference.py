"""PyTorch / transformers reference figures for bench/compare.sh (run inside bench/.venv).

Prints one JSON object: pipeline questions/s on a SQuAD file, cold start, and forward latency of
BERT-base/large-sized QA models with random weights (saved as safetensors so that bertqa runs the
very same weights)."""
import json
import os
import sys
import time

import torch

torch.set_num_threads(int(os.environ.get("THREADS", "2")))


def pipeline_speed(model_dir, data_path):
    from transformers import pipeline

    qa = pipeline("question-answering", model=model_dir, device="cpu")
    data = json.load(open(data_path))
    items = [
        (q["id"], q["question"], p["context"])
        for a in data["data"]
        for p in a["paragraphs"]
        for q in p["qas"]
    ]
    answers = {}
    t = time.perf_counter()
    for qid, question, context in items:
        answers[qid] = qa(question=question, context=context)["answer"]
    seconds = time.perf_counter() - t
    return {"questions": len(items), "seconds": seconds, "questions_per_s": len(items) / seconds}, answers


def random_qa_model(size, out_dir, tokenizer_dir):
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    if size == "base":
        cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    else:
        cfg = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    torch.manual_seed(0)
    model = BertForQuestionAnswering(cfg).eval()
    if not os.path.exists(os.path.join(out_dir, "model.safetensors")):
        model.save_pretrained(out_dir, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    return model


def latency(model, batch, seq=384, iters=5, bf16=False):
    ids = torch.randint(1000, 20000, (batch, seq))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            model(input_ids=ids, attention_mask=mask)
            t = time.perf_counter()
            for _ in range(iters):
                model(input_ids=ids, attention_mask=mask)
    return (time.perf_counter() - t) * 1000 / iters / batch


def main():
    model_dir, data_path, work = sys.argv[1:4]
    skip_large = os.environ.get("SKIP_LARGE") == "1"
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    speed, answers = pipeline_speed(model_dir, data_path)
    out["pipeline"] = speed
    json.dump(answers, open(os.path.join(work, "torch_predictions.json"), "w"))
    for size in ["base"] + ([] if skip_large else ["large"]):
        d = os.path.join(work, f"bert-{size}-random")
        os.makedirs(d, exist_ok=True)
        m = random_qa_model(size, d, model_dir)
        out[f"bert_{size}"] = {
            "dir": d,
            "fp32_b1_ms": latency(m, 1),
            "fp32_b8_ms_per_seq": latency(m, 8, iters=2),
            "bf16_b1_ms": latency(m, 1, bf16=True),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
