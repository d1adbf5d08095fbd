"""A Python stand-in engine: vLLM v1 / SGLang-shaped step loops in plain
Python, calling the stand-in GPU libraries through ctypes (so it runs on any
CPython 3.10+ with no dependencies).

    python3.X py_driver.py LIBDIR --mode vllm|sglang --steps N

Prints {"ready": pid}, waits for a line on stdin, runs, prints one JSON line
with what each step did: the expected batch sizes and token counts, the
attributes the recorder should read, and the Python stack at the device-to-
host copy that closes each step.
"""
import argparse
import ctypes as ct
import json
import os
import sys

H2D, D2H = 1, 2
STREAM = 0x5A000


class dim3(ct.Structure):
    _fields_ = [("x", ct.c_uint), ("y", ct.c_uint), ("z", ct.c_uint)]


class Gpu:
    """The stand-in runtime, as torch.cuda would call it."""

    def __init__(self, libdir):
        self.rt = ct.CDLL(os.path.join(libdir, "libcudart.so.12"))
        self.rt.cudaLaunchKernel.argtypes = [ct.c_void_p, dim3, dim3, ct.c_void_p, ct.c_size_t, ct.c_void_p]
        self.rt.cudaGraphLaunch.argtypes = [ct.c_void_p, ct.c_void_p]
        self.rt.cudaMemcpyAsync.argtypes = [ct.c_void_p, ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_void_p]
        self.rt.cudaEventRecord.argtypes = [ct.c_void_p, ct.c_void_p]
        self.rt.cudaEventSynchronize.argtypes = [ct.c_void_p]
        kernels = ct.CDLL(os.path.join(libdir, "libstandin_kernels.so.0"))
        self.stubs = (ct.c_void_p * 4).in_dll(kernels, "standin_kernel_stubs")
        self.buf = ct.create_string_buffer(1 << 16)
        self.grid = dim3(128, 1, 1)

    def launch(self, k):
        self.rt.cudaLaunchKernel(self.stubs[k % 4], self.grid, self.grid, None, 0, STREAM)

    def copy(self, n, kind):
        self.rt.cudaMemcpyAsync(self.buf, self.buf, n, kind, STREAM)


# --- vLLM v1 shape -----------------------------------------------------------
class SchedulerOutput:
    def __init__(self, step, reqs, prompt_len, prefill):
        self.scheduled_new_reqs = [] if not prefill else list(reqs)
        self.scheduled_cached_reqs = list(reqs) if not prefill else []
        self.num_scheduled_tokens = {r: (prompt_len if prefill else 1) for r in reqs}
        self.total_num_scheduled_tokens = sum(self.num_scheduled_tokens.values())
        self.scheduled_spec_decode_tokens = {}
        self.num_common_prefix_blocks = [0]
        self.finished_req_ids = set()
        self.step_id = step


class GPUModelRunner:
    def __init__(self, gpu, layers):
        self.gpu = gpu
        self.layers = layers
        self.event = 0xE0000

    def _prepare_inputs(self, so):
        self.gpu.copy(so.total_num_scheduled_tokens * 8, H2D)
        self.gpu.copy(len(so.num_scheduled_tokens) * 4, H2D)

    def _model_forward(self, so, prefill):
        if prefill:
            for _ in range(self.layers):
                for k in range(4):
                    self.gpu.launch(k)
        else:
            self.gpu.rt.cudaGraphLaunch(0x6000 + len(so.num_scheduled_tokens), STREAM)

    def _copy_sampled_to_host(self, n_reqs):
        self.gpu.copy(n_reqs * 8, D2H)

    def execute_model(self, scheduler_output):
        prefill = bool(scheduler_output.scheduled_new_reqs)
        self._prepare_inputs(scheduler_output)
        self._model_forward(scheduler_output, prefill)
        self.gpu.launch(2)  # sampler
        self._copy_sampled_to_host(len(scheduler_output.num_scheduled_tokens))
        self.gpu.rt.cudaEventRecord(self.event, STREAM)
        self.gpu.rt.cudaEventSynchronize(self.event)
        return prefill


class Worker:
    def __init__(self, runner):
        self.model_runner = runner

    def execute_model(self, scheduler_output):
        return self.model_runner.execute_model(scheduler_output)


class EngineCore:
    def __init__(self, worker, args):
        self.worker = worker
        self.args = args
        self.expected = []

    def schedule(self, k):
        n = 1 + (k * 3) % self.args.max_batch
        prefill = k % self.args.prefill_every == 0
        so = SchedulerOutput(k, [f"req-{k}-{i}" for i in range(n)], self.args.prompt_len, prefill)
        if k % 2:
            vars(so)  # a materialized __dict__ (instead of inline / shared-key values) on odd steps
        return so

    def step(self, k):
        so = self.schedule(k)
        prefill = self.worker.execute_model(so)
        self.expected.append({"phase": "prefill" if prefill else "decode",
                              "n_sampled": len(so.num_scheduled_tokens),
                              "n_tokens": so.total_num_scheduled_tokens,
                              "n_seqs": len(so.num_scheduled_tokens)})

    def run_busy_loop(self):
        for k in range(self.args.steps):
            self.step(k)


class BenchRunner:
    """Copies issued from a GPUModelRunner.execute_model frame: each D2H copy walks the stack."""

    def __init__(self, gpu):
        self.gpu = gpu

    def execute_model(self, scheduler_output, n):
        """ns per call: the median over chunks of 100 calls (robust to preemption on a busy machine)."""
        import statistics
        import time

        out = {}
        for name, kind in (("memcpy_h2d", H2D), ("memcpy_d2h", D2H)):
            for _ in range(100):
                self.gpu.copy(8, kind)  # warm up
            chunks = []
            for _ in range(max(n // 100, 1)):
                t0 = time.perf_counter_ns()
                for _ in range(100):
                    self.gpu.copy(8, kind)
                chunks.append((time.perf_counter_ns() - t0) / 100)
            out[name] = statistics.median(chunks)
        return out


VLLM_STACK = ["Gpu.copy", "GPUModelRunner._copy_sampled_to_host", "GPUModelRunner.execute_model", "Worker.execute_model",
              "EngineCore.step", "EngineCore.run_busy_loop", "main", "<module>"]


# --- SGLang shape (overlap loop) ---------------------------------------------
class SamplingBatchInfo:
    def __init__(self, top_k):
        self.temperatures = None
        self.top_k = top_k
        self.is_all_greedy = top_k == 1


class ScheduleBatch:
    def __init__(self, k, n, prompt_len, prefill):
        self.reqs = [f"rid-{k}-{i}" for i in range(n)]
        self.forward_mode = "EXTEND" if prefill else "DECODE"
        self.batch_is_full = False
        # SGLang's ScheduleBatch has ~60 fields: past CPython's 30 shared keys the
        # instance dict is a combined table, which the recorder must read too.
        for i in range(40):
            setattr(self, f"field_{i}", i)
        self.seq_lens_sum = n * (prompt_len + k)
        self.extend_num_tokens = n * prompt_len if prefill else None
        self.sampling_info = SamplingBatchInfo(top_k=1 + k % 7)  # entry ~45 of the combined table
        self.return_logprob = False


class TpModelWorker:
    def __init__(self, gpu, layers):
        self.gpu = gpu
        self.layers = layers

    def forward_batch_generation(self, batch, event):
        n = len(batch.reqs)
        self.gpu.copy(n * 8, H2D)
        if batch.forward_mode == "EXTEND":
            for _ in range(self.layers):
                for k in range(4):
                    self.gpu.launch(k)
        else:
            self.gpu.rt.cudaGraphLaunch(0x6000 + n, STREAM)
        self.gpu.launch(2)
        self.gpu.copy(n * 8, D2H)  # next_token_ids.to("cpu", non_blocking=True)
        self.gpu.rt.cudaEventRecord(event, STREAM)  # copy_done.record()
        return event


class Scheduler:
    def __init__(self, worker, args):
        self.tp_worker = worker
        self.args = args
        self.expected = []

    def get_next_batch_to_run(self, k):
        n = 1 + (k * 3) % self.args.max_batch
        return ScheduleBatch(k, n, self.args.prompt_len, k % self.args.prefill_every == 0)

    def run_batch(self, batch, k):
        return self.tp_worker.forward_batch_generation(batch, 0xE1000 + 16 * k)

    def process_batch_result(self, batch, event):
        self.tp_worker.gpu.rt.cudaEventSynchronize(event)  # copy_done.synchronize()

    def event_loop_overlap(self):
        last = None
        for k in range(self.args.steps):
            batch = self.get_next_batch_to_run(k)
            event = self.run_batch(batch, k)
            self.expected.append({"phase": "prefill" if batch.forward_mode == "EXTEND" else "decode",
                                  "n_sampled": len(batch.reqs), "n_seqs": len(batch.reqs),
                                  "seq_lens_sum": batch.seq_lens_sum, "top_k": batch.sampling_info.top_k})
            if last is not None:
                self.process_batch_result(*last)
            last = (batch, event)
        self.process_batch_result(*last)


SGLANG_STACK = ["Gpu.copy", "TpModelWorker.forward_batch_generation", "Scheduler.run_batch", "Scheduler.event_loop_overlap",
                "main", "<module>"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("libdir")
    ap.add_argument("--mode", choices=("vllm", "sglang", "both"), default="vllm")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--max-batch", type=int, default=6)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--prefill-every", type=int, default=4)
    ap.add_argument("--bench", type=int, default=0, help="ns per D2H / H2D copy call from execute_model")
    args = ap.parse_args()
    gpu = Gpu(args.libdir)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    sys.stdin.readline()
    if args.bench:
        print(json.dumps({"bench": BenchRunner(gpu).execute_model(SchedulerOutput(0, ["a", "b"], 4, False),
                                                                  args.bench)}), flush=True)
        return
    steps = []
    if args.mode in ("vllm", "both"):
        engine = EngineCore(Worker(GPUModelRunner(gpu, args.layers)), args)
        engine.run_busy_loop()
        steps += [{**e, "engine": "vllm", "stack": VLLM_STACK} for e in engine.expected]
    if args.mode in ("sglang", "both"):
        engine = Scheduler(TpModelWorker(gpu, args.layers), args)
        engine.event_loop_overlap()
        steps += [{**e, "engine": "sglang", "stack": SGLANG_STACK} for e in engine.expected]
    print(json.dumps({"mode": args.mode, "python": "%d.%d" % sys.version_info[:2], "steps": steps,
                      "launches_per_prefill": 4 * args.layers + 1}), flush=True)


if __name__ == "__main__":
    main()
