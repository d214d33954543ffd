"""The gauges routers scrape to pick a replica, under the names they read by default: vLLM's, which llm-d's and
the Gateway API Inference Extension's endpoint picker (its "model server protocol"), Dynamo's and vllm-router's
load-aware policies look for. Our own names for the same figures (`llm_queue_depth`, `llm_active_sequences`,
`llm_kv_cache_usage`) are beside them in observability.py.

Per loaded model, labelled `model_name` as vLLM labels them:
- `vllm:num_requests_waiting`, `vllm:num_requests_running`: requests queued for a slot, sequences generating;
- `vllm:kv_cache_usage_perc` (0..1; also as `vllm:gpu_cache_usage_perc`, its name before vLLM V1, which older
  pickers read): cells holding sequences' tokens over all cells. An idle slot keeps its last conversation's
  tokens for the next turn, so they count, as vLLM's cached blocks do;
- `vllm:cache_config_info` (value 1): `block_size` (the KV-event block size) and `num_gpu_blocks` (cells / block);
- `vllm:lora_requests_info` (value: when it was read, as vLLM's): `max_lora` (the adapter entries the catalog
  lists over the model: all of them can be attached, none waits for room), `running_lora_adapters` (those loaded),
  `waiting_lora_adapters` (those loading).
"""

from __future__ import annotations

import time

from prometheus_client.core import GaugeMetricFamily

CONTRACT = {  # name -> what it means; tests check the scrape against this list
    "vllm:num_requests_waiting": "Requests waiting for a free sequence slot",
    "vllm:num_requests_running": "Sequences generating",
    "vllm:kv_cache_usage_perc": "KV-cache usage, 0..1 (cells holding sequences' tokens over all)",
    "vllm:gpu_cache_usage_perc": "KV-cache usage, 0..1 (vllm:kv_cache_usage_perc under its name before vLLM V1)",
    "vllm:cache_config_info": "KV-cache layout: block_size, num_gpu_blocks",
    "vllm:lora_requests_info": "LoRA adapters: max_lora, running_lora_adapters, waiting_lora_adapters",
}


class RouterMetricsCollector:
    """Reads the registry's loaded models when Prometheus scrapes (nothing is kept in step by hand)."""

    def __init__(self, registry, block_size: int) -> None:
        self.model_registry = registry
        self.block_size = block_size

    def collect(self):
        families = {name: GaugeMetricFamily(name, help_text, labels=["model_name"])
                    for name, help_text in CONTRACT.items() if not name.endswith("_info")}
        layout = GaugeMetricFamily("vllm:cache_config_info", CONTRACT["vllm:cache_config_info"],
                                   labels=["model_name", "block_size", "num_gpu_blocks"])
        lora = GaugeMetricFamily("vllm:lora_requests_info", CONTRACT["vllm:lora_requests_info"],
                                 labels=["model_name", "max_lora", "running_lora_adapters", "waiting_lora_adapters"])
        loaded = self.model_registry.loaded_models
        catalog = self.model_registry.catalog()
        loading = set(self.model_registry.loading_ids)
        for model in loaded:
            if model.base_id is not None:  # an adapter model: its requests are its base's figures
                continue
            name = model.model_id
            families["vllm:num_requests_waiting"].add_metric([name], model.engine.queued_requests())
            families["vllm:num_requests_running"].add_metric([name], model.engine.active_sequences())
            usage = model.engine.kv_cache_usage()
            if usage is not None:
                for gauge in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
                    families[gauge].add_metric([name], usage.fraction)
                layout.add_metric([name, str(self.block_size), str(usage.total // self.block_size)], 1)
            adapters = sorted(entry.id for entry in catalog if entry.base == name)
            if adapters:
                running = [m.model_id for m in loaded if m.base_id == name]
                waiting = [adapter for adapter in adapters if adapter in loading]
                lora.add_metric([name, str(len(adapters)), ",".join(running), ",".join(waiting)], time.time())
        yield from families.values()
        yield layout
        yield lora
