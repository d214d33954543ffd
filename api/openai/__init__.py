"""The OpenAI API surface: chat and text completions, embeddings, tokenize / detokenize."""
