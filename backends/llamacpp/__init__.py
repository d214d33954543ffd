"""The llama.cpp engine: GGUF models through llama-cpp-python's low-level API, one scheduler thread per model
batching every sequence into one `llama_decode` per step, with the persistent prompt cache."""
