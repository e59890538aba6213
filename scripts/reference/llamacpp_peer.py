"""llama.cpp native as a benchmark peer (npm run bench runs this; it is not a fixture script).

    python3 scripts/reference/llamacpp_peer.py --gguf PATH [--threads 1] [--n-ctx 4200] [--n-batch 512]

A line protocol, so that the benchmark can interleave this peer with its other rows:
- first line on stdout: {"ready": true, "version", "system_info", "n_vocab", "threads"} or
  {"ready": false, "reason"} (then exit 0: a peer that cannot run is reported, not fatal);
- then one JSON request per stdin line, one JSON answer per stdout line:
  {"cmd": "run", "prompt": [ids], "decode": N, "stop": [ids]?} ->
  {"ttftMs", "ttftCpuMs", "decodeMs", "decodeCpuMs", "tokens", "promptTokens", "peakRssMb"}
  {"cmd": "quit"} -> exits.

What is timed mirrors our engine rows (scripts/bench/child.ts): TTFT is the prompt's eval from
an empty cache plus the argmax of the last position's logits (only that position's logits are
computed: logits_all=False); decode is N steps of argmax + eval of that one token, so `tokens` holds
N greedy ids and the logits after the last one are timed too. With "stop", decoding ends after a stop
id has been produced (included), as in test/fixtures/smollm2/chat-greedy.json. No sampler, no repeat
penalty. `promptTokens` is llama.cpp's own count of tokens in its context after the prompt.
CPU time is the process's (time.process_time); with one thread llama.cpp computes on this thread.
"""

import argparse
import json
import resource
import sys
import time


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(msg):
    print(f"llama.cpp peer: {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-ctx", type=int, default=4200)
    ap.add_argument("--n-batch", type=int, default=512, help="llama.cpp's default n_batch = n_ubatch")
    args = ap.parse_args()

    try:
        import numpy as np
        import llama_cpp
    except ImportError as e:
        reply({"ready": False, "reason": f"python module missing: {e.name} ({e})"})
        return
    try:
        llm = llama_cpp.Llama(
            model_path=args.gguf,
            n_ctx=args.n_ctx,
            n_batch=args.n_batch,
            n_ubatch=args.n_batch,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            logits_all=False,
            n_gpu_layers=0,
            verbose=False,
        )
    except Exception as e:  # a missing or unreadable GGUF: report, do not crash the benchmark
        reply({"ready": False, "reason": f"llama.cpp could not load {args.gguf}: {e}"})
        return
    n_vocab = llm.n_vocab()
    ctx = llm._ctx.ctx

    def last_logits():
        # [n_vocab] float32 of the last evaluated position (the only one with logits).
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    def argmax():
        return int(np.argmax(last_logits()))

    reply({
        "ready": True,
        "version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "n_vocab": n_vocab,
        "threads": args.threads,
        "n_batch": args.n_batch,
    })

    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "quit":
            break
        if req.get("cmd") != "run":
            reply({"error": f"unknown command {req.get('cmd')!r}"})
            continue
        prompt, decode, stop = req["prompt"], int(req["decode"]), set(req.get("stop") or [])
        if len(prompt) + decode > args.n_ctx:
            reply({"error": f"{len(prompt)} prompt + {decode} decode tokens exceed n_ctx {args.n_ctx}"})
            continue
        llm.reset()
        c0, t0 = time.process_time(), time.perf_counter()
        llm.eval(prompt)
        first = argmax()
        ttft_ms, ttft_cpu_ms = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        prompt_tokens = llm.n_tokens
        tokens = [first]
        c1, t1 = time.process_time(), time.perf_counter()
        for i in range(decode):
            if i > 0:
                tokens.append(argmax())
            if tokens[-1] in stop:
                break
            llm.eval([tokens[-1]])
        decode_ms, decode_cpu_ms = (time.perf_counter() - t1) * 1000, (time.process_time() - c1) * 1000
        reply({
            "ttftMs": ttft_ms,
            "ttftCpuMs": ttft_cpu_ms,
            "decodeMs": decode_ms,
            "decodeCpuMs": decode_cpu_ms,
            "tokens": tokens[:decode] if decode > 0 else [],
            "promptTokens": prompt_tokens,
            "peakRssMb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })


if __name__ == "__main__":
    main()
