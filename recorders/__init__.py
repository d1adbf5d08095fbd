"""eBPF recorders: probe packs and the engine that records them into Perfetto traces.

Data flow: `engine.Recorder` loads the probe packs (`packs/`) that apply to the
target process, attaches them, polls their ring buffers and hands each event to
its pack, which writes slices, instants and counters through `TraceWriter`.
"""
