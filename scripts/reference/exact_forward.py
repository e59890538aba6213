#!/usr/bin/env python3
"""Exact-weights reference forward pass for SmolLM2-135M-Instruct (Q4_1 GGUF) in numpy.

Every tensor is dequantized to float32 with `gguf.quants.dequantize` (the gguf package's numpy port
of ggml's dequantize_row_*), and the Llama forward is computed in float32 (final log-softmax in
float64). Unlike llama.cpp, nothing is re-quantized on the way (no 8-bit activations, no f16 KV
cache), so this is what an engine computing the file's weights exactly should reproduce.

Writes test/fixtures/smollm2/logits-exact.json and the "exact" half of chat-greedy.json.
Prompt token ids come from llama.cpp's tokenizer (see common.py), so llama-cpp-python is needed
for tokenization only.

    python3 scripts/reference/exact_forward.py [--gguf PATH]
"""

import argparse
import time

import common  # sets BLAS thread limits before numpy is imported
from common import log

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def read_config(reader):
    """Model hyperparameters from the GGUF metadata (nothing hard-coded)."""
    f = reader.fields
    arch = f["general.architecture"].contents()

    def key(name, default=None):
        full = f"{arch}.{name}"
        if full in f:
            return f[full].contents()
        if default is None:
            common.fail(f"metadata key {full} missing")
        return default

    dim = key("embedding_length")
    n_head = key("attention.head_count")
    head_dim = key("attention.key_length", dim // n_head)
    cfg = {
        "n_layer": key("block_count"),
        "dim": dim,
        "ffn_dim": key("feed_forward_length"),
        "n_head": n_head,
        "n_kv_head": key("attention.head_count_kv", n_head),
        "head_dim": head_dim,
        "rope_base": float(key("rope.freq_base", 10000.0)),
        "rope_dim": key("rope.dimension_count", head_dim),
        # The f32 stored in the file (9.9999997e-06), used as float32 like llama.cpp does.
        "eps": np.float32(key("attention.layer_norm_rms_epsilon")),
        "vocab": len(f["tokenizer.ggml.tokens"].contents()),
    }
    if cfg["rope_dim"] != head_dim:
        common.fail("partial RoPE (rope.dimension_count != head size) is not implemented")
    return cfg


def load_weights(reader):
    """All tensors as float32 numpy arrays, shaped [out, in] (ggml's ne reversed)."""
    weights = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        # gguf reports shape in ggml order (ne[0] first); numpy rows are the last ne.
        w = w.reshape([int(d) for d in reversed(t.shape)])
        weights[t.name] = np.ascontiguousarray(w)
    # Tied head: without output.weight, the logits come from the token embedding (Q8_0).
    weights.setdefault("output.weight", weights["token_embd.weight"])
    return weights


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------

class KVCache:
    """Per-layer K and V for positions 0..n-1, stored in f32 (no f16 rounding, unlike llama.cpp)."""

    def __init__(self, cfg, max_len):
        shape = (cfg["n_kv_head"], max_len, cfg["head_dim"])
        self.k = [np.zeros(shape, np.float32) for _ in range(cfg["n_layer"])]
        self.v = [np.zeros(shape, np.float32) for _ in range(cfg["n_layer"])]
        self.n = 0


def rms_norm(x, w, eps):
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (x / np.sqrt(ms + eps)) * w


def rope_tables(cfg, positions):
    """cos/sin for angle pos * base^(-2j/d), j = 0..d/2-1 (angles computed in float64)."""
    d = cfg["head_dim"]
    inv_freq = cfg["rope_base"] ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def apply_rope(x, cos, sin):
    """Rotate ADJACENT pairs (x[2j], x[2j+1]): the GGUF conversion permuted Q/K for this layout
    (llama.cpp's "normal" RoPE). x is [heads, T, head_dim]; cos/sin are [T, head_dim/2]."""
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def attention(q, cache, layer, start, cfg):
    """Causal GQA attention of T new queries over the cache's keys 0..start+T-1.

    q: [n_head, T, hd]. Query head h reads KV head h // (n_head / n_kv_head), as in llama.cpp and
    HF's repeat_kv. Softmax in float32 with the max subtracted.
    """
    n_head, T, hd = q.shape
    group = n_head // cfg["n_kv_head"]
    S = start + T
    scale = np.float32(1.0 / np.sqrt(hd))
    # Query t (position start+t) may see keys s <= start+t.
    mask = np.arange(S)[None, :] > (start + np.arange(T))[:, None]
    out = np.empty_like(q)
    for kv in range(cfg["n_kv_head"]):  # one KV head at a time keeps the score matrix small
        k = cache.k[layer][kv, :S]
        v = cache.v[layer][kv, :S]
        qs = q[kv * group:(kv + 1) * group]               # [group, T, hd]
        scores = (qs @ k.T) * scale                        # [group, T, S]
        scores[:, mask] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out[kv * group:(kv + 1) * group] = scores @ v
    return out


def block(x, layer, cache, start, cos, sin, W, cfg):
    p = f"blk.{layer}."
    T = x.shape[0]
    hd = cfg["head_dim"]

    h = rms_norm(x, W[p + "attn_norm.weight"], cfg["eps"])
    q = (h @ W[p + "attn_q.weight"].T).reshape(T, cfg["n_head"], hd).transpose(1, 0, 2)
    k = (h @ W[p + "attn_k.weight"].T).reshape(T, cfg["n_kv_head"], hd).transpose(1, 0, 2)
    v = (h @ W[p + "attn_v.weight"].T).reshape(T, cfg["n_kv_head"], hd).transpose(1, 0, 2)
    q = apply_rope(q, cos, sin)
    cache.k[layer][:, start:start + T] = apply_rope(k, cos, sin)
    cache.v[layer][:, start:start + T] = v
    a = attention(q, cache, layer, start, cfg)
    x = x + a.transpose(1, 0, 2).reshape(T, -1) @ W[p + "attn_output.weight"].T

    h = rms_norm(x, W[p + "ffn_norm.weight"], cfg["eps"])
    gate = h @ W[p + "ffn_gate.weight"].T
    up = h @ W[p + "ffn_up.weight"].T
    silu = gate / (np.float32(1) + np.exp(-gate))           # SwiGLU: silu(gate) * up
    return x + (silu * up) @ W[p + "ffn_down.weight"].T


def forward(ids, cache, W, cfg, logits_at=None, progress=None):
    """Run tokens `ids` at positions cache.n.. and append them to the cache.

    Returns float32 logits [len(logits_at), vocab] for the chunk-relative rows in logits_at
    (default: the last row only). Computing the 49152-wide head only where needed saves most of
    the time on long prompts.
    """
    ids = np.asarray(ids, dtype=np.int64)
    start, T = cache.n, len(ids)
    cos, sin = rope_tables(cfg, range(start, start + T))
    x = W["token_embd.weight"][ids].astype(np.float32)
    for layer in range(cfg["n_layer"]):
        x = block(x, layer, cache, start, cos, sin, W, cfg)
        if progress:
            progress(layer)
    cache.n += T
    rows = [T - 1] if logits_at is None else list(logits_at)
    h = rms_norm(x[rows], W["output_norm.weight"], cfg["eps"])
    return h @ W["output.weight"].T


# ---------------------------------------------------------------------------------------------
# Fixture jobs
# ---------------------------------------------------------------------------------------------

def check_paris(W, cfg):
    """NOTES.md: the exact forward predicts " Paris" after "The capital of France is"."""
    logits = forward(common.FRANCE_IDS, KVCache(cfg, 8), W, cfg)[0]
    top = int(np.argmax(logits))
    if top != common.PARIS_ID:
        common.fail(f"argmax after 'The capital of France is' is {top}, expected {common.PARIS_ID}")
    log(f"check: argmax after 'The capital of France is' = {top} (' Paris'), margin {common.topk_row(logits)['margin']}")


def prose_logits(prompts, W, cfg):
    entries = []
    for prompt in prompts:
        ids = prompt["ids"]
        positions = common.stored_positions(prompt["name"], len(ids))
        t0 = time.time()
        log(f"{prompt['name']}: forward over {len(ids)} tokens ...")

        def progress(layer, name=prompt["name"], t0=t0):
            if len(ids) >= 512 and layer % 5 == 4:
                log(f"  {name} layer {layer + 1}/{cfg['n_layer']} ({time.time() - t0:.0f}s)")

        rows = forward(ids, KVCache(cfg, len(ids)), W, cfg, logits_at=positions, progress=progress)
        entries.append(common.logits_prompt_entry(prompt, positions, rows))
        log(f"  done in {time.time() - t0:.1f}s; argmax at last position {entries[-1]['top_ids'][-1][0]}")
    return entries


def greedy(prompt_ids, end_ids, W, cfg, max_tokens=common.MAX_CHAT_TOKENS):
    """Argmax decoding with the KV cache: prefill the prompt once, then one token a step."""
    cache = KVCache(cfg, len(prompt_ids) + max_tokens)
    logits = forward(prompt_ids, cache, W, cfg)[0]
    ids, margins = [], []
    for _ in range(max_tokens):
        summary = common.topk_row(logits, k=2)
        tok = summary["ids"][0]
        ids.append(tok)
        margins.append(summary["margin"])
        if tok in end_ids or len(ids) == max_tokens:
            break
        logits = forward([tok], cache, W, cfg)[0]
    return ids, margins


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="model path (default: $LAZY_EDGE_GGUF or the shared copy)")
    ap.add_argument("--skip-prose", action="store_true", help="only the chat fixture")
    ap.add_argument("--skip-chat", action="store_true", help="only the logits fixture")
    args = ap.parse_args()

    path = common.gguf_path(args.gguf)
    sha = common.sha256_file(path)
    log(f"gguf {path} sha256 {sha}")

    t0 = time.time()
    reader = GGUFReader(path)
    cfg = read_config(reader)
    log(f"config {cfg}")
    W = load_weights(reader)
    log(f"dequantized {len(W) - 1} tensors to f32 in {time.time() - t0:.1f}s")
    check_paris(W, cfg)

    tok = common.Tokenizer(path)
    if not args.skip_prose:
        entries = prose_logits(common.text_prompts(tok), W, cfg)
        common.write_fixture("logits-exact.json", {
            "source": "exact_forward.py: numpy f32 forward over gguf.quants.dequantize weights",
            "gguf_sha256": sha,
            "top_k": common.TOP_K,
            "prompts": entries,
        })

    if not args.skip_chat:
        chat_info = common.read_gguf_chat_info(path)
        prompts = common.chat_prompts(tok, chat_info)
        results = []
        for p in prompts:
            t1 = time.time()
            ids, margins = greedy(p["prompt_ids"], chat_info["end_ids"], W, cfg)
            text = tok.decode(ids)
            results.append({"ids": ids, "margins": margins, "text": text})
            log(f"chat {p['messages'][0]['content']!r} -> {text!r} ({len(ids)} tokens, {time.time() - t1:.1f}s, min margin {min(margins):.4f})")
        common.update_chat_fixture(sha, chat_info["end_ids"], prompts, "exact", results)


if __name__ == "__main__":
    main()
