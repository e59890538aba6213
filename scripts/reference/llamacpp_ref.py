#!/usr/bin/env python3
"""llama.cpp reference outputs for SmolLM2-135M-Instruct (Q4_1 GGUF) via llama-cpp-python 0.3.36.

Writes, under test/fixtures/smollm2/:
  tokenize-llamacpp.json  llama.cpp's token ids for ~35 strings (NOTES.md vectors checked)
  logits-llamacpp.json    top-32 logprobs at the same prompts/positions as logits-exact.json,
                          plus "vs_exact" (mean KL and argmax agreement against logits-exact.json)
  chat-greedy.json        the "llamacpp" half (greedy replies) and llamacpp_departs_at

llama.cpp is a second, independent implementation, not the exact reference: it quantizes
activations to 8 bits inside its quantized dot products and keeps an f16 KV cache (NOTES.md).
Run exact_forward.py first so that vs_exact and llamacpp_departs_at can be computed.

    python3 scripts/reference/llamacpp_ref.py [--gguf PATH]
"""

import argparse
import math
import time

import common  # sets BLAS thread limits before numpy is imported
from common import log

import numpy as np

N_CTX = 4096
N_THREADS = 2

# Strings for tokenize-llamacpp.json; the NOTES.md vectors are added (and checked) after these.
TOKENIZE_CASES = [
    # ASCII prose
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "SmolLM2 runs inside a Cloudflare Worker.",
    # digits (the pre-tokenizer splits digits one by one)
    "12345678901234",
    "3.14159",
    "2026-12-01",
    "$1,299.99 or 1e-5",
    # whitespace runs, newlines, tabs, CRLF
    "a  b   c",
    "\n\n\n",
    "  leading",
    "trailing   ",
    "tab\there\r\nCRLF",
    "line one\nline two\n\n  indented",
    " ",
    # accents and other scripts
    "café naïve",
    "Ærøskøbing",
    "über",
    "Привет, мир",
    "你好，世界",
    "日本語のテキスト",
    # emoji (multi-codepoint: skin tone modifier, regional-indicator flag, variation selector)
    "👍🏽 ok",
    "🇫🇷",
    "I ❤️ NY",
    # apostrophes and quotes
    "don't it's we'll",
    "I'M SHE'S 'quoted' “curly”",
    # code
    "def f(x):\n    return x**2",
    "const o = {a: [1, 2]};",
    # control tokens (special=True parses them as single ids)
    "<|im_start|>user\nhi<|im_end|>\n",
    "<|endoftext|>",
    "<|im_start|>assistant\n",
    "before<|im_end|>after",
]


def load_llama(path):
    """One context large enough for p2048 in a single batch (logits for every position)."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=path,
        n_ctx=N_CTX,
        n_batch=2048,   # eval a whole prose prompt in one go
        n_ubatch=2048,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        verbose=False,
    )


# ---------------------------------------------------------------------------------------------
# tokenize-llamacpp.json
# ---------------------------------------------------------------------------------------------

def tokenize_fixture(tok, sha):
    cases = []
    seen = set()
    for text in TOKENIZE_CASES + [t for t, _ in common.NOTES_VECTORS]:
        if text not in seen:
            seen.add(text)
            cases.append({"text": text, "ids": [int(i) for i in tok.encode(text)]})
    by_text = {c["text"]: c["ids"] for c in cases}
    for text, expected in common.NOTES_VECTORS:
        if by_text[text] != expected:
            common.fail(f"llama.cpp tokenizes {text!r} as {by_text[text]}, NOTES.md says {expected}")
    log(f"tokenize: {len(cases)} cases, NOTES.md vectors match")
    common.write_fixture("tokenize-llamacpp.json", {
        "source": f"llama.cpp via llama-cpp-python {common.LLAMA_CPP_VERSION}, tokenize(add_bos=False, special=True)",
        "gguf_sha256": sha,
        "cases": cases,
    })


# ---------------------------------------------------------------------------------------------
# logits-llamacpp.json
# ---------------------------------------------------------------------------------------------

def all_logits(llm, ids):
    """Logits at every position of `ids`, evaluated from an empty cache in one call."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def kl_top_bucket(exact_ids, exact_logprobs, q_logits):
    """KL(exact || llama.cpp) over the exact top-k ids plus one bucket for all other tokens.

    P is the exact distribution (known only on its top-k from the fixture), Q is llama.cpp's full
    softmax. Merging the tail into one bucket can only lower KL (log-sum inequality), so this is a
    slight underestimate; with top-32 the tail usually carries little mass.
    """
    row = np.asarray(q_logits, dtype=np.float64)
    m = row.max()
    q_log = row - (m + math.log(np.exp(row - m).sum()))
    p_log = np.asarray(exact_logprobs, dtype=np.float64)
    q_top = q_log[np.asarray(exact_ids)]
    p = np.exp(p_log)
    kl = float(np.sum(p * (p_log - q_top)))
    p_rest = max(0.0, 1.0 - p.sum())
    q_rest = max(1e-300, 1.0 - np.exp(q_top).sum())
    if p_rest > 0:
        kl += p_rest * math.log(p_rest / q_rest)
    return kl


def compare(exact_entry, positions, rows):
    kls, agree = [], 0
    for i, pos in enumerate(positions):
        j = exact_entry["positions"].index(pos)
        e_ids = exact_entry["top_ids"][j]
        kls.append(kl_top_bucket(e_ids, exact_entry["top_logprobs"][j], rows[i]))
        agree += int(np.argmax(rows[i])) == e_ids[0]
    return {
        "n_positions": len(positions),
        "mean_kl": common.r5(np.mean(kls)),
        "max_kl": common.r5(np.max(kls)),
        "argmax_agreement": common.r5(agree / len(positions)),
    }


def logits_fixture(llm, tok, sha, names):
    exact = common.read_fixture("logits-exact.json")
    exact_by_name = {}
    if exact is None:
        log("logits-exact.json missing: run exact_forward.py first for vs_exact")
    elif exact["gguf_sha256"] != sha:
        log("logits-exact.json is for another GGUF: vs_exact skipped")
    else:
        exact_by_name = {p["name"]: p for p in exact["prompts"]}

    entries, vs_exact = [], {}
    for prompt in common.text_prompts(tok):
        if prompt["name"] not in names:
            continue
        t0 = time.time()
        log(f"{prompt['name']}: llama.cpp eval of {len(prompt['ids'])} tokens ...")
        logits = all_logits(llm, prompt["ids"])
        positions = common.stored_positions(prompt["name"], len(prompt["ids"]))
        rows = logits[positions]
        entries.append(common.logits_prompt_entry(prompt, positions, rows))
        e = exact_by_name.get(prompt["name"])
        if e is not None and e["ids"] == entries[-1]["ids"]:
            vs_exact[prompt["name"]] = compare(e, positions, rows)
            log(f"  vs exact: {vs_exact[prompt['name']]}")
        log(f"  done in {time.time() - t0:.1f}s")

    common.write_fixture("logits-llamacpp.json", {
        "source": f"llama.cpp via llama-cpp-python {common.LLAMA_CPP_VERSION} (n_ctx {N_CTX}, logits_all, "
        "each prompt evaluated in one batch from an empty cache)",
        "gguf_sha256": sha,
        "top_k": common.TOP_K,
        "prompts": entries,
        "vs_exact": vs_exact,
        "kl_note": "mean_kl is KL(exact || llama.cpp) averaged over the stored positions, with P known only on "
        "the exact top-32 (from logits-exact.json, logprobs rounded to 5 decimals) and all other tokens "
        "merged into one bucket (P: 1 - sum of top-32, Q: llama.cpp's mass outside those ids). Merging "
        "can only lower KL, so this slightly underestimates the full-vocab KL. argmax_agreement: the share "
        "of stored positions where llama.cpp's argmax equals the exact top-1.",
    })
    return vs_exact


# ---------------------------------------------------------------------------------------------
# chat-greedy.json
# ---------------------------------------------------------------------------------------------

def greedy(llm, prompt_ids, end_ids, max_tokens=common.MAX_CHAT_TOKENS):
    """Argmax of llama.cpp's logits step by step (no sampler, so no repeat penalty)."""
    llm.reset()
    llm.eval(prompt_ids)
    ids = []
    for _ in range(max_tokens):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        ids.append(tok)
        if tok in end_ids or len(ids) == max_tokens:
            break
        llm.eval([tok])
    return ids


def chat_fixture(llm, tok, sha, path):
    chat_info = common.read_gguf_chat_info(path)
    prompts = common.chat_prompts(tok, chat_info)
    results = []
    for p in prompts:
        ids = greedy(llm, p["prompt_ids"], chat_info["end_ids"])
        results.append({"ids": ids, "text": tok.decode(ids)})
        log(f"chat {p['messages'][0]['content']!r} -> {results[-1]['text']!r}")
    fixture = common.update_chat_fixture(sha, chat_info["end_ids"], prompts, "llamacpp", results)
    for e in fixture["prompts"]:
        log(f"  {e['messages'][0]['content']!r}: first_near_tie {e['first_near_tie']}, llamacpp_departs_at {e['llamacpp_departs_at']}")


def check_paris(llm):
    """Sanity check before writing anything: llama.cpp also predicts " Paris" here."""
    logits = all_logits(llm, common.FRANCE_IDS)[-1]
    top = int(np.argmax(logits))
    if top != common.PARIS_ID:
        common.fail(f"llama.cpp argmax after 'The capital of France is' is {top}, expected {common.PARIS_ID}")
    log(f"check: llama.cpp argmax after 'The capital of France is' = {top} (' Paris')")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="model path (default: $LAZY_EDGE_GGUF or the shared copy)")
    ap.add_argument("--prompts", default="p16,p512,p2048", help="prose prompts for logits-llamacpp.json")
    ap.add_argument("--skip-logits", action="store_true")
    ap.add_argument("--skip-chat", action="store_true")
    args = ap.parse_args()

    path = common.gguf_path(args.gguf)
    sha = common.sha256_file(path)
    log(f"gguf {path} sha256 {sha}")
    tok = common.Tokenizer(path)
    tokenize_fixture(tok, sha)

    llm = load_llama(path)
    check_paris(llm)
    if not args.skip_logits:
        logits_fixture(llm, tok, sha, set(args.prompts.split(",")))
    if not args.skip_chat:
        chat_fixture(llm, tok, sha, path)


if __name__ == "__main__":
    main()
