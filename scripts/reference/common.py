"""Shared helpers for the SmolLM2 reference scripts (exact_forward.py, llamacpp_ref.py).

Both scripts must build their prompts the same way, so prompt construction lives here:
token ids always come from llama.cpp's tokenizer (independent of the TypeScript code under test),
and chat prompts are rendered with the GGUF's own chat template through jinja2.

These scripts are run by hand to (re)generate committed fixtures; CI never runs them.
"""

import os

# Keep BLAS to two threads before numpy is imported anywhere: the machine is shared.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import hashlib
import json
import math
import sys
from pathlib import Path

DEFAULT_GGUF = "/work/shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA_DIR = Path("/work/shared/data")
REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO_ROOT / "test" / "fixtures" / "smollm2"

LLAMA_CPP_VERSION = "0.3.36"
TOP_K = 32
MAX_CHAT_TOKENS = 40
NEAR_TIE = 0.02  # a greedy step whose top1-top2 logit gap is below this may flip under rounding

# The 8 ordinary chat prompts (one user message each).
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for learning to code.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Name a famous painting by Leonardo da Vinci.",
    "How do I boil an egg?",
]

# Tokenizer vectors checked in NOTES.md (llama.cpp, add_bos=False, special=True).
NOTES_VECTORS = [
    ("The capital of France is", [504, 3575, 282, 4649, 314]),
    ("Hello world! 123", [19556, 905, 17, 216, 33, 34, 35]),
    ("\n", [198]),
    ("  multiple   spaces", [216, 2701, 256, 5600]),
    ("café naïve", [83, 1939, 2756, 15486, 46494]),
    ("12345678901234", [33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 33, 34, 35, 36]),
    ("tab\there\r\nCRLF", [15999, 197, 1531, 201, 198, 9088, 60, 54]),
    ("<|im_start|>user\nhi<|im_end|>\n", [1, 4093, 198, 6004, 2, 198]),
]

# NOTES.md: "What is the capital of France?" with the default system prompt and generation prompt.
FRANCE_CHAT_IDS = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
]

FRANCE_IDS = [504, 3575, 282, 4649, 314]  # "The capital of France is"
PARIS_ID = 7042  # " Paris"


def log(*args):
    """Progress goes to stderr so stdout stays clean."""
    print(*args, file=sys.stderr, flush=True)


def fail(message):
    """Stop loudly: a fixture built on a wrong assumption is worse than none."""
    raise SystemExit(f"FAILED: {message}")


def gguf_path(cli_value=None):
    """--gguf PATH wins, then $LAZY_EDGE_GGUF, then the shared copy."""
    path = cli_value or os.environ.get("LAZY_EDGE_GGUF") or DEFAULT_GGUF
    if not Path(path).is_file():
        fail(f"GGUF not found: {path}")
    return path


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Tokenization (llama.cpp) and prompt construction
# ---------------------------------------------------------------------------------------------

class Tokenizer:
    """llama.cpp's tokenizer for the GGUF (vocab only: no weights are loaded)."""

    def __init__(self, path):
        import llama_cpp  # imported lazily: only tokenization needs it in exact_forward.py

        if llama_cpp.__version__ != LLAMA_CPP_VERSION:
            log(f"warning: llama-cpp-python {llama_cpp.__version__}, fixtures expect {LLAMA_CPP_VERSION}")
        self.llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)

    def encode(self, text):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def decode(self, ids):
        return self.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")


def read_gguf_chat_info(path):
    """The chat template and the BOS/EOS token strings, straight from the GGUF metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    return {
        "template": fields["tokenizer.chat_template"].contents(),
        "bos_token": tokens[fields["tokenizer.ggml.bos_token_id"].contents()],
        "eos_token": tokens[fields["tokenizer.ggml.eos_token_id"].contents()],
        "end_ids": [tokens.index("<|im_end|>"), tokens.index("<|endoftext|>")],
    }


def render_chat(chat_info, messages):
    """Render like Hugging Face's apply_chat_template (sandboxed jinja2, trim/lstrip blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(chat_info["template"])
    return template.render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=chat_info["bos_token"],
        eos_token=chat_info["eos_token"],
    )


def text_prompts(tok):
    """The three prose prompts, each cut to an exact number of llama.cpp tokens.

    The ids are cut (not the text), so the last token may differ from tokenizing the cut text;
    that does not matter because the fixtures store ids and the TS tests feed ids.
    For p16 the Apache text's whitespace is collapsed to single spaces first: the file opens with
    blank lines and deep indentation, which would make 16 tokens mostly whitespace runs.
    """
    specs = [
        ("p16", "apache-2.0.txt", 16, True),
        ("p512", "mpl-2.0.txt", 512, False),
        ("p2048", "lgpl-2.1.txt", 2048, False),
    ]
    prompts = []
    for name, filename, n, collapse in specs:
        text = (DATA_DIR / filename).read_text(encoding="utf-8")
        if collapse:
            text = " ".join(text.split())
        ids = tok.encode(text)
        if len(ids) < n:
            fail(f"{filename} has only {len(ids)} tokens, need {n}")
        how = " with whitespace collapsed to single spaces" if collapse else " verbatim"
        prompts.append({"name": name, "source": f"first {n} llama.cpp tokens of {filename}{how}", "ids": ids[:n]})
    return prompts


def stored_positions(name, n):
    """Which positions get top-k rows in the logits fixtures (sorted, unique)."""
    if name == "p16":
        pos = set(range(n))
    elif name == "p512":
        pos = set(range(0, n, 8)) | set(range(n - 8, n))
    elif name == "p2048":
        pos = set(range(0, n, 32)) | set(range(n - 16, n))
    else:
        raise ValueError(name)
    return sorted(pos)


def chat_prompts(tok, chat_info):
    """The 8 chat prompts rendered with the GGUF template and tokenized by llama.cpp."""
    out = []
    for content in CHAT_PROMPTS:
        messages = [{"role": "user", "content": content}]
        ids = tok.encode(render_chat(chat_info, messages))
        out.append({"messages": messages, "prompt_ids": ids})
    france = out[0]
    if france["prompt_ids"] != FRANCE_CHAT_IDS:
        fail(f"chat prompt for {CHAT_PROMPTS[0]!r} gave {france['prompt_ids']}, NOTES.md says {FRANCE_CHAT_IDS}")
    return out


# ---------------------------------------------------------------------------------------------
# Logit summaries shared by both scripts
# ---------------------------------------------------------------------------------------------

def topk_row(logits_row, k=TOP_K):
    """Top-k ids, their natural-log softmax over the whole vocab, and the top1-top2 logit gap."""
    import numpy as np

    row = np.asarray(logits_row, dtype=np.float64)
    m = row.max()
    logsumexp = m + math.log(np.exp(row - m).sum())
    # Stable sort on -logit: equal logits keep id order, so ties resolve like argmax (lowest id).
    order = np.argsort(-row, kind="stable")[:k]
    return {
        "ids": [int(i) for i in order],
        "logprobs": [r5(row[i] - logsumexp) for i in order],
        "margin": r5(row[order[0]] - row[order[1]]),
    }


def logits_prompt_entry(prompt, positions, rows):
    """One prompt of logits-*.json; rows[i] are the full-vocab logits at positions[i]."""
    summaries = [topk_row(r) for r in rows]
    return {
        "name": prompt["name"],
        "source": prompt["source"],
        "ids": [int(i) for i in prompt["ids"]],
        "positions": positions,
        "top_ids": [s["ids"] for s in summaries],
        "top_logprobs": [s["logprobs"] for s in summaries],
        "margin": [s["margin"] for s in summaries],
    }


def first_index(values, predicate):
    for i, v in enumerate(values):
        if predicate(i, v):
            return i
    return None


def departs_at(exact_ids, other_ids):
    """First step where two greedy continuations differ (a length difference counts); None if equal."""
    for i in range(max(len(exact_ids), len(other_ids))):
        if i >= len(exact_ids) or i >= len(other_ids) or exact_ids[i] != other_ids[i]:
            return i
    return None


# ---------------------------------------------------------------------------------------------
# Fixture files
# ---------------------------------------------------------------------------------------------

def r5(x):
    """Floats in fixtures are rounded to 5 decimals (keeps files small and diffs readable)."""
    v = round(float(x), 5)
    return 0.0 if v == 0 else v


def _dump(value, indent):
    """JSON with lists of scalars kept on one line: readable and compact."""
    pad = " " * indent
    inner = " " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        items = [f"{inner}{_dump(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False)


def write_fixture(name, obj):
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    path = FIXTURE_DIR / name
    text = _dump(obj, 0) + "\n"
    path.write_text(text, encoding="utf-8")
    size = len(text.encode("utf-8"))
    if size > 1_000_000:
        fail(f"{path} is {size} bytes; fixtures must stay well under 1 MB")
    log(f"wrote {path} ({size} bytes)")
    return path


def read_fixture(name):
    path = FIXTURE_DIR / name
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def update_chat_fixture(gguf_sha256, end_ids, prompts, engine, results):
    """Write one engine's replies into chat-greedy.json, keeping the other engine's.

    exact_forward.py fills "exact", llamacpp_ref.py fills "llamacpp"; a previous part is kept only
    if it was made for the same GGUF and the same prompt ids. "llamacpp_departs_at" is recomputed
    whenever both parts are present.
    """
    old = read_fixture("chat-greedy.json")
    old_by_ids = {}
    if old and old.get("gguf_sha256") == gguf_sha256:
        old_by_ids = {tuple(p["prompt_ids"]): p for p in old["prompts"]}
    entries = []
    for prompt, result in zip(prompts, results):
        prev = old_by_ids.get(tuple(prompt["prompt_ids"]), {})
        entry = {
            "messages": prompt["messages"],
            "prompt_ids": [int(i) for i in prompt["prompt_ids"]],
            "exact": prev.get("exact"),
            "first_near_tie": prev.get("first_near_tie"),
            "llamacpp": prev.get("llamacpp"),
            "llamacpp_departs_at": None,
        }
        entry[engine] = result
        if engine == "exact":
            entry["first_near_tie"] = first_index(result["margins"], lambda i, m: m < NEAR_TIE)
        if entry["exact"] and entry["llamacpp"]:
            entry["llamacpp_departs_at"] = departs_at(entry["exact"]["ids"], entry["llamacpp"]["ids"])
        entries.append(entry)
    fixture = {
        "source": "exact: exact_forward.py (numpy f32, dequantized weights); llamacpp: llama-cpp-python "
        f"{LLAMA_CPP_VERSION}; greedy argmax, no repeat penalty, stop after an end id (included)",
        "gguf_sha256": gguf_sha256,
        "max_tokens": MAX_CHAT_TOKENS,
        "near_tie": NEAR_TIE,
        "end_ids": end_ids,
        "prompts": entries,
    }
    write_fixture("chat-greedy.json", fixture)
    return fixture
