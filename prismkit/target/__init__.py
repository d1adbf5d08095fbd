"""The observed target: a real llama.cpp server, built, fed a model, started."""
