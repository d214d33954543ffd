"""The transformers engine: Hugging Face checkpoints on torch (CUDA when present, else CPU), one worker thread
per model running waiting requests as a left-padded batch. torch and transformers are imported on first use."""
