"""The Anthropic Messages API surface (`/v1/messages`, count_tokens), translated into the generation pipeline."""
