"""Random-weight llama-architecture GGUF models, written with the `gguf` package.

The weights are noise, but the architecture, tensor shapes and vocabulary are
those of a real llama model, so llama.cpp does exactly the work it would do for
a trained model of the same size. The vocabulary is a byte-fallback SentencePiece
vocabulary in which every single-letter word (" a", " b", ...) is one token, so
a prompt of N such words is exactly N tokens (plus BOS): the load generator uses
that to send prompts of exact token lengths.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PrismError
from ..paths import cache_dir

SPIECE_SPACE = "\u2581"
MODEL_FORMAT_VERSION = 2
# Words the load generator builds prompts from: each is exactly one token.
PROMPT_WORDS = list(string.ascii_lowercase)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    context_length: int

    def n_params(self) -> int:
        head_dim = self.dim // self.n_heads
        per_layer = (
            2 * self.dim * self.dim  # q, o
            + 2 * self.dim * self.n_kv_heads * head_dim  # k, v
            + 3 * self.dim * self.ffn_dim  # gate, up, down
            + 2 * self.dim  # norms
        )
        return self.n_layers * per_layer + 2 * self.vocab_size * self.dim + self.dim


SPECS = {
    # Fast enough for tests: a decode step takes well under a millisecond.
    "tiny": ModelSpec("tiny", vocab_size=1024, dim=128, n_layers=2, n_heads=4, n_kv_heads=2,
                      ffn_dim=256, context_length=8192),
    # About 150M parameters: a realistic, CPU-bound demo target.
    "demo": ModelSpec("demo", vocab_size=32000, dim=768, n_layers=12, n_heads=12, n_kv_heads=12,
                      ffn_dim=2304, context_length=8192),
}


def build_vocab(vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """A byte-fallback SPM vocabulary: control tokens, 256 bytes, characters, words."""
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    pieces = [SPIECE_SPACE] + list(string.ascii_letters + string.digits + string.punctuation)
    pieces += [SPIECE_SPACE + c for c in string.ascii_letters + string.digits]
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    i = 0
    while len(tokens) < vocab_size:  # filler words so the output vocabulary is realistic
        tokens.append(f"{SPIECE_SPACE}w{i}")
        types.append(TokenType.NORMAL)
        i += 1
    if len(tokens) > vocab_size:
        raise PrismError(f"vocab_size {vocab_size} is too small for the base vocabulary ({len(tokens)})")
    # Scores decide SPM merges: single-letter words must win over anything else.
    scores = [0.0] * len(tokens)
    for idx, tok in enumerate(tokens):
        if tok.startswith(SPIECE_SPACE) and len(tok) == 2:
            scores[idx] = -1.0
        elif types[idx] == TokenType.NORMAL:
            scores[idx] = -10.0 - idx * 1e-4
    return tokens, scores, [int(t) for t in types]


def output_matrix(spec: ModelSpec, types: list[int], rng: np.random.Generator) -> np.ndarray:
    """The LM head: only NORMAL tokens can be generated.

    Byte tokens would produce invalid UTF-8 pieces that the server's output
    parser rejects, and control tokens would end generation. Their rows are
    zero (logit 0) while the other rows give logits with a standard deviation
    of about 10, so a non-NORMAL token is practically never sampled.
    """
    from gguf import TokenType

    out = rng.standard_normal((spec.vocab_size, spec.dim), dtype=np.float32) * (10.0 / np.sqrt(spec.dim))
    out[np.asarray(types) != int(TokenType.NORMAL)] = 0.0
    return out.astype(np.float16)


def write_random_llama_gguf(path: Path, spec: ModelSpec, seed: int = 0) -> Path:
    """Write a llama-architecture GGUF with random weights to `path`."""
    import gguf

    rng = np.random.default_rng(seed)
    head_dim = spec.dim // spec.n_heads
    kv_dim = spec.n_kv_heads * head_dim
    path = Path(path)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(f"prismkit-random-{spec.name}")
    w.add_context_length(spec.context_length)
    w.add_embedding_length(spec.dim)
    w.add_block_count(spec.n_layers)
    w.add_feed_forward_length(spec.ffn_dim)
    w.add_head_count(spec.n_heads)
    w.add_head_count_kv(spec.n_kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = build_vocab(spec.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(spec.dim, dtype=np.float32)

    w.add_tensor("token_embd.weight", mat(spec.vocab_size, spec.dim))
    for i in range(spec.n_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm())
        w.add_tensor(p + "attn_q.weight", mat(spec.dim, spec.dim))
        w.add_tensor(p + "attn_k.weight", mat(kv_dim, spec.dim))
        w.add_tensor(p + "attn_v.weight", mat(kv_dim, spec.dim))
        w.add_tensor(p + "attn_output.weight", mat(spec.dim, spec.dim))
        w.add_tensor(p + "ffn_norm.weight", norm())
        w.add_tensor(p + "ffn_gate.weight", mat(spec.ffn_dim, spec.dim))
        w.add_tensor(p + "ffn_up.weight", mat(spec.ffn_dim, spec.dim))
        w.add_tensor(p + "ffn_down.weight", mat(spec.dim, spec.ffn_dim))
    w.add_tensor("output_norm.weight", norm())
    w.add_tensor("output.weight", output_matrix(spec, types, rng))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(path)
    return path


def ensure_model(name: str = "tiny") -> Path:
    """Path of the cached random GGUF `name` ('tiny' or 'demo'), written on first use."""
    if name not in SPECS:
        raise PrismError(f"unknown bundled model {name!r}: choose one of {', '.join(SPECS)}")
    # The version in the name changes whenever the generator does, so a cache
    # written by an older prismkit is never reused.
    path = cache_dir() / "models" / f"random-llama-{name}-v{MODEL_FORMAT_VERSION}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = SPECS[name]
        print(f"[target] writing random-weight llama GGUF '{name}' "
              f"({spec.n_params() / 1e6:.0f}M parameters) to {path}", flush=True)
        write_random_llama_gguf(path, spec)
    return path
