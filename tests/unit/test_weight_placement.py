"""Weight placement (`--repack`): what each choice offers on which CPU, and that editing llama.cpp's extra buffer
type list really changes where a real model's weights go."""

from __future__ import annotations

import llama_cpp
import pytest

from backends.embedded_model import ensure_embedded_model
from backends.llamacpp import weight_placement
from backends.llamacpp.log_routing import lines_logged_by_this_thread, route_llama_logs_to_python
from backends.llamacpp.model import ContextConfig, LlamaContext, LlamaModel, add_to_batch
from backends.llamacpp.weight_placement import cpu_has_amx, extra_buffer_types, placed, plan, weight_buffers
from settings import PROJECT_ROOT

GEMMA = "gemma-3-270m-q4_k_m.gguf"


class Listed:
    """What a machine's llama.cpp registered (as ExtraBufferTypes shows it)."""

    def __init__(self, *names: str, reachable: bool = True) -> None:
        self.names, self.reachable = names, reachable


def test_auto_offers_everything_but_amx_on_an_amx_xeon():
    placement = plan("auto", Listed("AMX", "CPU_REPACK"), has_amx=True)
    assert placement.offered == ("CPU_REPACK",)
    assert "kill the process" in placement.skipped["AMX"] and "--repack on" in placement.skipped["AMX"]
    assert "AMX skipped" in placement.summary()


def test_on_offers_all_of_them_and_off_none():
    assert plan("on", Listed("AMX", "CPU_REPACK"), has_amx=True).offered == ("AMX", "CPU_REPACK")
    assert plan("off", Listed("AMX", "CPU_REPACK"), has_amx=True).offered == ()


def test_auto_changes_nothing_where_nothing_is_unsafe():
    assert plan("auto", Listed("CPU_REPACK"), has_amx=False).offered == ("CPU_REPACK",)
    assert plan("auto", Listed("CPU_KLEIDIAI", "CPU_REPACK"), has_amx=False).skipped == {}


def test_a_list_that_cannot_be_edited_means_plain_memory_on_an_amx_cpu_only():
    unreadable = Listed("AMX", "CPU_REPACK", reachable=False)
    assert plan("auto", unreadable, has_amx=True).offered == ()
    assert plan("auto", Listed("CPU_REPACK", reachable=False), has_amx=False).offered == ("CPU_REPACK",)


def test_cpu_has_amx_reads_the_flags_line(tmp_path):
    xeon, epyc = tmp_path / "xeon", tmp_path / "epyc"
    xeon.write_text("processor : 0\nflags : fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    epyc.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_amx(xeon) and not cpu_has_amx(epyc) and not cpu_has_amx(tmp_path / "missing")


def test_weight_buffers_are_read_from_the_load_report():
    report = ["load_tensors: loading model tensors, this can take a while... (mmap = true)",
              "load_tensors:   CPU_REPACK model buffer size =    12.66 MiB",
              "load_tensors:   CPU_Mapped model buffer size =   235.16 MiB"]
    assert weight_buffers(report) == {"CPU_REPACK": round(12.66 * 2**20), "CPU_Mapped": round(235.16 * 2**20)}


@pytest.fixture(scope="module")
def gemma_path():
    models_dir = PROJECT_ROOT / "models"
    ensure_embedded_model(models_dir, GEMMA)
    return models_dir / GEMMA


def _raw_load_buffers(path, params) -> dict[str, int]:
    route_llama_logs_to_python()  # the load report reaches Python (LlamaModel does this itself)
    with lines_logged_by_this_thread() as report:
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model
    llama_cpp.llama_model_free(model)
    return weight_buffers(report)


def test_the_list_llama_cpp_reads_is_what_a_load_is_offered(gemma_path):
    """The mechanism behind `auto` on an AMX host, shown on any host: with the list edited down (here to nothing), a
    load that asks for extra buffer types gets only what is left; the list is whole again afterwards. (Loading
    into AMX is harmless; its kernels crash when they decode, which no test here does.)"""
    extra = extra_buffer_types()
    assert extra.reachable and "CPU_REPACK" in extra.names  # every x86 host here has AVX2 kernels to repack for
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = True
    with extra.offering(()):
        edited = _raw_load_buffers(gemma_path, params)
    whole = _raw_load_buffers(gemma_path, params)
    assert edited.keys() == {"CPU_Mapped"}
    assert sum(size for name, size in whole.items() if name in extra.names) > 0  # gemma's Q4_K layers, repacked


def test_an_edited_list_keeps_weights_out_of_the_skipped_type(gemma_path, monkeypatch):
    """`auto` with CPU_REPACK marked unsafe (standing in for AMX): the model loads and decodes, nothing of it is
    in CPU_REPACK, and the placement says why."""
    monkeypatch.setitem(weight_placement.UNSAFE_BUFFER_TYPES, "CPU_REPACK", "stands in for AMX in this test")
    model = LlamaModel(gemma_path, repack="auto")
    try:
        assert "CPU_REPACK" not in model.placement.offered and "CPU_REPACK" not in model.placement.buffers
        assert model.placement.skipped["CPU_REPACK"] == "stands in for AMX in this test"
        context = LlamaContext(model, ContextConfig(256, 1, 64, 64, 2, 2, flash_attn=True))
        batch = llama_cpp.llama_batch_init(64, 0, 1)
        for position, token in enumerate(model.tokenize("The lighthouse")):
            add_to_batch(batch, token, position, 0, logits=True)
        assert context.decode(batch) == 0
        llama_cpp.llama_batch_free(batch)
        context.free()
    finally:
        model.free()


def test_placed_sets_use_extra_bufts_as_planned():
    for repack, expected in (("off", False), ("on", True)):
        params = llama_cpp.llama_model_default_params()
        with placed(repack, params) as placement:
            assert params.use_extra_bufts is expected and placement.repack == repack
