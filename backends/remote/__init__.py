"""The remote engine: models served by upstream OpenAI-compatible servers, relayed over pooled HTTP clients."""
