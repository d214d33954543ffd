"""The rerank API surface (`/v1/rerank`, Cohere / Jina / llama-server shaped)."""
