"""A real PyTorch target on the CPU: an OpenAI-compatible completions server over a
random-weight tiny LlamaForCausalLM (transformers), with continuous batching.

Runs in the PyTorch environment `make torch-env` builds (CPython 3.12, so that
`prism record --py-step` can switch exact function boundaries on), not in
prismkit's own:

    ~/.cache/prismkit/torch-py312/bin/python prismkit/target/torch_server.py --port 18310
    ~/.cache/prismkit/torch-py312/bin/python prismkit/target/torch_server.py --write-model DIR

The model is written locally (config + save_pretrained, seed 0; no hub) into
~/.cache/prismkit/models/tiny-llama-hf the first time, and loaded from there.
Tokens are bytes (vocabulary 256 + 2). The engine thread runs one
`Engine.step(batch, n_tokens, n_prefill_tokens, n_decode_tokens)` per
iteration: a forward of every active sequence (left-padded; no KV cache, so a
step's n_tokens is the sum of its sequences' lengths), greedy next tokens;
requests join and leave between steps. The main thread serves HTTP
(ThreadingHTTPServer): POST /v1/completions {prompt, max_tokens, stream},
GET /health.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
VOCAB = 258
EOS = 257


def default_model_dir() -> Path:
    return Path(os.environ.get("PRISM_CACHE", Path.home() / ".cache" / "prismkit")) / "models" / "tiny-llama-hf"


def write_model(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=256, eos_token_id=EOS, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    return path


class Seq:
    def __init__(self, prompt: list[int], max_tokens: int):
        self.tokens = list(prompt)
        self.n_prompt = len(prompt)
        self.max_tokens = max_tokens
        self.out: list[int] = []
        self.started = False
        self.done = threading.Event()
        self.cond = threading.Condition()


class Engine:
    def __init__(self, model, max_batch: int = 8):
        self.model = model
        self.max_batch = max_batch
        self.waiting: list[Seq] = []
        self.running: list[Seq] = []
        self.lock = threading.Condition()
        self.steps = 0

    def submit(self, seq: Seq) -> None:
        with self.lock:
            self.waiting.append(seq)
            self.lock.notify()

    def loop(self) -> None:
        import torch

        torch.set_num_threads(1)
        while True:
            with self.lock:
                while not self.waiting and not self.running:
                    self.lock.wait(0.5)
                while self.waiting and len(self.running) < self.max_batch:
                    self.running.append(self.waiting.pop(0))
                batch = list(self.running)
            n_prefill = sum(len(s.tokens) for s in batch if not s.started)
            n_decode = sum(len(s.tokens) for s in batch if s.started)
            self.step(batch, n_prefill + n_decode, n_prefill, n_decode)
            with self.lock:
                self.running = [s for s in self.running if not s.done.is_set()]

    def step(self, batch: list, n_tokens: int, n_prefill_tokens: int, n_decode_tokens: int) -> None:
        """One engine step: a forward over the batch, one greedy token per sequence."""
        import torch

        width = max(len(s.tokens) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, width - len(s.tokens):] = torch.tensor(s.tokens)
            mask[i, width - len(s.tokens):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1, :]
            logits[:, EOS] = float("-inf")  # exact output lengths: EOS is banned
            nxt = logits.argmax(-1).tolist()
        self.steps += 1
        for s, tok in zip(batch, nxt):
            s.started = True
            s.tokens.append(tok)
            with s.cond:
                s.out.append(tok)
                s.cond.notify()
            if len(s.out) >= s.max_tokens:
                s.done.set()
                with s.cond:
                    s.cond.notify()


def piece(tok: int) -> str:
    return chr(32 + tok % 95)


def make_handler(engine: Engine, model_name: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _json(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                return self._json(200, {"status": "ok", "steps": engine.steps})
            if self.path == "/v1/models":
                return self._json(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            self._json(404, {"error": "not found"})

        def do_POST(self):
            if self.path != "/v1/completions":
                return self._json(404, {"error": "not found"})
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                prompt = req.get("prompt", "")
                max_tokens = int(req.get("max_tokens", 16))
                if not isinstance(prompt, str) or not 0 < max_tokens <= 512:
                    raise ValueError("prompt must be a string, 0 < max_tokens <= 512")
            except (ValueError, TypeError) as exc:
                return self._json(400, {"error": str(exc)})
            seq = Seq([256] + list(prompt.encode()[:400]), max_tokens)
            engine.submit(seq)
            if not req.get("stream"):
                seq.done.wait()
                text = "".join(piece(t) for t in seq.out)
                return self._json(200, {"id": f"cmpl-{id(seq)}", "object": "text_completion", "model": model_name,
                                        "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                                        "usage": {"prompt_tokens": seq.n_prompt, "completion_tokens": len(seq.out)}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            while sent < max_tokens:
                with seq.cond:
                    while len(seq.out) <= sent:
                        seq.cond.wait(1.0)
                    new = seq.out[sent:]
                for tok in new:
                    sent += 1
                    chunk = {"object": "text_completion", "model": model_name,
                             "choices": [{"index": 0, "text": piece(tok),
                                          "finish_reason": "length" if sent == max_tokens else None}]}
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18310)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the cached tiny llama)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--write-model", type=Path, metavar="DIR", help="write the random-weight model and exit")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
        from transformers import LlamaForCausalLM
    except ImportError as exc:
        print(f"torch_server: error: {exc} (run `make torch-env` and use its python)", file=sys.stderr)
        return 2
    if args.write_model:
        print(write_model(args.write_model))
        return 0
    path = args.model or default_model_dir()
    if not (path / "config.json").exists():
        if args.model:
            print(f"torch_server: error: no model in {path}", file=sys.stderr)
            return 2
        write_model(path)
    model = LlamaForCausalLM.from_pretrained(str(path), local_files_only=True).eval()
    engine = Engine(model, args.max_batch)
    threading.Thread(target=engine.loop, name="engine", daemon=True).start()
    try:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(engine, path.name))
    except OSError as exc:
        print(f"torch_server: error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    server.daemon_threads = True
    print(json.dumps({"ready": os.getpid(), "port": args.port, "model": str(path)}), flush=True)
    try:
        server.serve_forever(poll_interval=0.05)  # the main thread runs Python often: pending calls run soon
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
