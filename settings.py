"""Server settings: one pydantic-settings class read from the environment, `.env` and the CLI.

Every field becomes an environment variable (`LLM_SERVER_<FIELD>`) and a command-line flag in both
spellings (`--model_name` and `--model-name`); `settings_cli.py` derives the flags from this class so they are
never written twice.
"""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent

# The models the server ships (backends/embedded_model.py places them into the models directory). Named here, not
# there, because the default model name is a setting and settings.py imports nothing from backends/.
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
EMBEDDED_MODEL_FILES = (SMOLLM2_FILE, GEMMA_FILE)


def _on_off(value):
    """A switch that was a boolean before it had `auto` (YAML `false`, LLM_SERVER_FLASH_ATTN=1) keeps working."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return "on" if value.lower() in ("true", "1", "yes") else "off"
    return value


OnOffAuto = Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLM_SERVER_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    model_name: str = Field(
        SMOLLM2_FILE,
        description="Model served when a request names none: a file name (or its stem) in the models directory.",
    )
    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    log_level: str = Field("info", description="Logging level: debug, info, warning, error.")
    models_dir: Path = Field(PROJECT_ROOT / "models", description="Directory holding model files.")
    cache_dir: Path = Field(PROJECT_ROOT / "cache", description="Directory for the persistent prompt cache.")
    prompt_cache: bool = Field(
        True, description="Persistent prompt cache: save finished sequences' KV state to --cache-dir and restore "
        "the longest stored prefix of a new prompt (also after a restart)."
    )
    cache_capacity_bytes: int = Field(
        2 << 30, ge=0, description="Disk space for the prompt cache per model; least recently used states go first."
    )
    cache_min_tokens: int = Field(
        256, ge=1, description="Shortest sequence worth saving to the prompt cache (shorter ones are cheap to redo)."
    )
    ctx_checkpoints: int = Field(
        32, ge=0, description="Models with recurrent layers (Qwen3.5, Granite 4, LFM2, Mamba...): recurrent-state "
        "checkpoints kept per sequence slot, so a new turn resumes from the last one its prompt shares instead of "
        "re-evaluating the whole prompt (0: none; each holds one copy of the model's recurrent state)"
    )
    checkpoint_every: int = Field(
        4096, ge=0, description="Also take a checkpoint every this many tokens of a long prompt (besides a few "
        "tokens before each prompt's end), so an edit deep in a conversation resumes near it (0: only at the end)"
    )
    models_file: Path | None = Field(
        None, description="Models file (YAML) with catalog entries: aliases, engine, settings, defaults. "
        "Default: models.yaml in the models directory."
    )
    scan_hf_cache: bool = Field(True, description="List models already in the local Hugging Face cache.")
    hf_cache_dir: Path | None = Field(None, description="Hugging Face hub cache (default: HF_HUB_CACHE / HF_HOME).")
    upstream: list[str] = Field(
        [], description="A remote OpenAI-compatible server: NAME=URL[,URL...][#KEY_ENV]; its models are served as "
        "NAME/<model>, its API key read from the variable KEY_ENV (repeatable; more options in models.yaml)."
    )
    api_key: list[str] = Field(
        [], description="A user API key (repeatable); also LLM_SERVER_API_KEY='[\"k1\",\"k2\"]'. No keys at all: "
        "open server."
    )
    admin_key: list[str] = Field(
        [], description="An administrator key (repeatable): the only keys allowed on /admin/*, /setModel and "
        "other operator endpoints."
    )
    api_key_file: Path | None = Field(
        None, description="File of API keys with role, label, models and limits (YAML, or lines KEY [MODELS] "
        "[role=admin|user label=NAME rpm=N tpm=N streams=N request_tokens=N]); reloaded on SIGHUP."
    )
    key_requests_per_minute: int = Field(0, ge=0, description="Default requests per minute per key; 0 = no limit.")
    key_tokens_per_minute: int = Field(
        0, ge=0, description="Default prompt + completion tokens per minute per key; 0 = no limit."
    )
    key_max_streams: int = Field(0, ge=0, description="Default requests in flight at once per key; 0 = no limit.")
    key_max_request_tokens: int = Field(
        0, ge=0, description="Default cap on one request's n x max_tokens per key; 0 = no limit."
    )
    rate_window_seconds: float = Field(
        60.0, gt=0, description="Length of the sliding window the per-minute limits count in (OpenAI's: 60)."
    )
    private_metrics: bool = Field(False, description="/metrics answers only administrator keys.")
    cors_origins: list[str] = Field([], description="Browser origins allowed to call the API (CORS); default none.")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="Largest request body; larger ones get 413.")
    body_timeout: float = Field(30.0, gt=0, description="Seconds a client may take to send its request body (408).")
    max_tokens_limit: int = Field(0, ge=0, description="Cap on a request's max_tokens; 0 = the model's context.")
    max_messages: int = Field(4096, ge=1, description="Most messages one chat request may carry.")
    request_timeout: float = Field(
        0, ge=0, description="Longest a chat generation may run, in seconds (then 504, or an error event in a "
        "stream); 0 = no limit."
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="On SIGTERM, seconds requests in flight may take to finish before the server stops."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or one JSON object each.")
    max_loaded_models: int = Field(3, ge=1, description="Models resident at once; the least recently used goes first.")
    memory_budget: int = Field(
        0, ge=0, description="Bytes of estimated weights + KV cache all resident models may use; 0 = 80% of RAM."
    )
    trust_remote_code: bool = Field(
        False, description="Let Hugging Face checkpoints run their own Python code (only for models you trust)."
    )
    templates_dir: Path = Field(
        PROJECT_ROOT / "templates",
        description="Directory of fallback Jinja chat templates, chosen by model architecture.",
    )
    n_ctx: int = Field(8192, ge=64, description="Total context size in tokens, shared by all parallel sequences.")
    n_threads: int = Field(0, ge=0, description="CPU threads for decoding; 0 = all cores.")
    n_threads_batch: int = Field(0, ge=0, description="CPU threads for prompt processing; 0 = same as --n-threads.")
    n_batch: int = Field(512, ge=1, description="Most tokens handed to one llama_decode call (prompt chunk size).")
    n_ubatch: int = Field(512, ge=1, description="Physical micro-batch size inside llama_decode.")
    n_gpu_layers: int = Field(0, description="Layers offloaded to a GPU when llama.cpp was built with one; -1 = all.")
    repack: Literal["auto", "on", "off"] = Field(
        "auto", description="Repacked weight layouts for llama.cpp's faster CPU kernels (its extra buffer types): "
        "`auto` uses every one this machine runs safely (not AMX, whose kernels crash this llama.cpp on Xeons "
        "with AMX), `on` all of them, AMX included, `off` none (llama-server's --no-repack). Per model in "
        "models.yaml."
    )
    flash_attn: OnOffAuto = Field(
        "auto",
        description="Flash attention (llama-server's -fa): `auto` = on where layers run on a GPU and for embedding "
        "models; for generation on the CPU, off for attention heads over 128 wide (gemma 3, Qwen 3.5: llama.cpp's "
        "CPU kernel measured 1.3-3x slower there for one sequence) unless --parallel is 8 or more (many sequences a "
        "step decoded 1.13-1.31x faster with it), on otherwise; `on` / `off` force it.",
    )
    kv_unified: bool = Field(
        True,
        description="One KV cache shared by all slots (llama-server's default): any mix of sequences decodes in one "
        "pass, and a new request can reuse a prefix cached by another slot (even one still generating), but every "
        "sequence's attention spans all slots' cells (10-20 % slower decoding at 8-16 long sequences, long prompts "
        "slower while other slots hold conversations). Off: one KV "
        "stream per slot (llama-server with --parallel), where llama.cpp decodes together only slots with "
        "consecutive ids holding the same number of new tokens: scattered slots or uneven drafts cost a pass each.",
    )
    swa_full: bool = Field(
        False,
        description="Full-size KV cache for sliding-window attention layers (gemma 2/3...): prompts that diverge "
        "early from a cached one can reuse it, at the cost of memory and slower long prompts.",
    )
    embedding: bool = Field(
        False,
        description="Serve GGUF models as embedding models (/v1/embeddings only) even when the file does not say "
        "so; set per model in models.yaml. GGUFs with a pooling type (BERT-style embedders) are detected anyway.",
    )
    pooling: Literal["model", "mean", "cls", "last", "rank"] = Field(
        "model", description="How a GGUF embedding model pools token vectors: as its file says, or mean/cls/last; "
        "`rank` serves a sequence classifier as a reranker (found by itself where the file has classifier labels)."
    )
    parallel: int = Field(4, ge=1, le=64, description="Sequences decoded together in one batch (slots) per model.")
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a free slot; more get 503 + Retry-After.")
    budget_closing: bool = Field(
        True, description="In the last tokens of a grammar-constrained answer's max_tokens (tools required/named, "
        "JSON schemas), favour tokens that close the JSON, so a budget-limited answer is still valid JSON "
        "(finish_reason length). llama.cpp engine."
    )
    loop_breaking: bool = Field(
        True, description="When a grammar-constrained answer repeats itself (the same array element or key again "
        "and again), favour closing that array or object where the model would start another element, so it ends "
        "with valid JSON instead of looping until max_tokens. llama.cpp engine."
    )
    spec: Literal["off", "ngram", "draft"] = Field(
        "ngram", description="Speculative decoding (llama.cpp engine): `ngram` drafts the next tokens from where the "
        "latest ones appeared before in the prompt or answer and checks them in the same decode step (exact: the "
        "output is what decoding without it gives); `draft` has --draft-model guess them; `off`. Per request: "
        "\"speculative\": false."
    )
    draft_model: str | None = Field(
        None, description="A small GGUF with the same vocabulary that drafts for the default model (file in "
        "--models-dir or a path; per model: `settings: {draft_model: ...}` in models.yaml); implies --spec draft "
        "unless --spec off"
    )
    spec_draft_max: int = Field(63, ge=1, le=64, description="Most tokens drafted for one sequence per step (drafts "
                                "start at 15 and double their rows, the token and the draft, after each fully "
                                "accepted one: 16, 32, 64 rows)")
    spec_draft_min: int = Field(1, ge=1, le=64, description="Shortest draft worth checking")
    spec_max_sequences: int = Field(
        8, ge=1, description="Drafts are checked only in steps where at most this many sequences decode: on CPU a "
        "step's cost grows with every row, so with more streams checking guesses costs more than it saves (above 2, "
        "only drafts from long matches by sequences whose drafts keep holding)"
    )
    spec_pool_tokens: int = Field(
        0, ge=0, description="Let drafts copy from other sequences too: the ones decoding beside it and the last "
        "finished ones, up to this many tokens of them (0: off). A repeated request then drafts from its earlier "
        "answer; llama.cpp rounds a step of several rows differently from a one-row step, so a greedy repeat may "
        "differ at near ties where, off, it gives the same answer every time"
    )
    engine_workers: bool = Field(
        True, description="Run each local model's engine in a worker process of its own: a native crash in one model "
        "fails only that model's requests (it restarts on the next), and unloading it gives its memory back to the "
        "system. Off (--no-engine-workers): engines run inside the server process."
    )
    kv_events: str | None = Field(
        None, description="Publish KV-cache events (vLLM's format: ZMQ PUB, msgpack BlockStored / BlockRemoved) on "
        "this endpoint, e.g. tcp://*:5557, for a KV-aware router (vllm-router --policy kv_aware --kv-event-source "
        "URL=tcp://HOST:5557): it then sends each conversation to the replica holding its prefix"
    )
    kv_event_block_size: int = Field(16, ge=1, le=4096, description="Tokens per block in KV events (the router's "
                                     "--kv-event-block-size)")
    kv_events_replay: str | None = Field(
        None, description="With --kv-events: answer replay requests on this endpoint (vLLM's ZMQ ROUTER socket, e.g. "
        "tcp://*:5558; vllm-router --kv-event-replay-source URL=tcp://HOST:5558), so a router that starts or "
        "reconnects after this replica catches up on the events it missed (the last 10,000 batches)"
    )
    worker_stall_seconds: float = Field(
        120.0, ge=0, description="End an engine worker that hangs (its crash path: its requests fail with "
        "engine_crashed, it restarts on the next): silent this long, or taking no step this long while requests wait "
        "on it. Longer than the slowest single step of your largest model (a batch of prompt tokens); 0: never"
    )
    otlp_traces_endpoint: str | None = Field(
        None, description="OpenTelemetry collector's OTLP/HTTP traces URL (e.g. http://127.0.0.1:4318/v1/traces): one "
        "trace per request, GenAI attributes, spans for admission, model load, queue, prompt evaluation, decoding "
        "(vLLM's flag). Off by default.",
    )
    mmproj: str | None = Field(
        None, description="The multimodal projector (mmproj GGUF) of the default model, for image/audio input (file in "
        "--models-dir or a path; per model: `mmproj:` in models.yaml; found by itself as mmproj-<model stem>*.gguf "
        "beside the model file)"
    )
    media_fetch: bool = Field(
        False, description="Fetch images given as http(s) URLs (off: only data: URLs; the server would otherwise "
        "reach any address a client names)"
    )
    media_fetch_timeout: float = Field(10.0, gt=0, description="Seconds one media URL may take to download")
    max_media_per_request: int = Field(8, ge=0, description="Most images and audio clips in one request")
    max_media_bytes: int = Field(20 << 20, ge=1, description="Largest image or audio file (bytes; larger: 413)")
    max_image_pixels: int = Field(
        16 << 20, ge=1, description="Largest image, width x height (larger: 400; the projector downsizes anyway)"
    )
    state_db: str | None = Field(
        None, description="Database of stored Responses (previous_response_id, GET /v1/responses/{id}): a SQLite "
        "file, or postgresql://user:password@host/db to share conversations between instances; default: "
        "responses.sqlite3 in --cache-dir."
    )
    compaction_key: str | None = Field(
        None, description="Key sealing the Responses compaction items this server writes (a Fernet key: 32 bytes, "
        "url-safe base64). Instances sharing --state-db must share it; default: compaction.key in --cache-dir, made "
        "at first use.", repr=False
    )
    compaction_summary_tokens: int = Field(
        1024, ge=64, description="Most tokens a compaction's summary of the conversation may take."
    )
    model_ttl: str | None = Field(
        None, description="How long an idle model stays loaded (\"10m\", \"1h\", seconds; unset: until evicted). "
        "Per model: `ttl` in models.yaml; per request: `keep_alive` (Ollama's extension, 0 = unload after it)."
    )
    reasoning_format: Literal["reasoning_content", "reasoning", "both", "none"] = Field(
        "reasoning_content", description="Where a thinking model's reasoning goes: message/delta "
        "`reasoning_content` (llama-server, LiteLLM, the AI SDK), `reasoning` (vLLM, Ollama, OpenRouter), both, or "
        "none (left in the content, markers included). A request's `reasoning_format` overrides it."
    )
    reasoning_budget: int = Field(
        -1, ge=-1, description="Reasoning tokens a thinking model may write before the server closes the block "
        "and lets the answer follow; -1 unlimited, 0 no thinking. Per model (`defaults.reasoning_budget` in "
        "models.yaml) and per request (`reasoning_budget`)."
    )
    default_max_tokens: int = Field(
        1024, ge=1, description="Completion length cap when a request sets no max_tokens (also bounded by context)."
    )
    chat_template: str | None = Field(
        None,
        description="Override the default model's chat template: a template name in templates/ or a file path.",
    )
    chat_template_tool_use: str | None = Field(
        None,
        description="The default model's template for requests with tools (a name in templates/ or a file path), "
        "as a model's named `tool_use` template is used; unset: the model's own, if it has one.",
    )
    install_embedded_models: bool = Field(
        True, description="Place the embedded models (SmolLM2-135M-Instruct, gemma-3-270m) into the models "
        "directory on start when they are missing."
    )
