"""Load progress: steps only grow, every step of 1 % or new stage is kept, and a transformers load reports its
weights one by one through the wrapped tqdm (the tiny random checkpoint, loaded through the real code path)."""

import asyncio

from backends.load_progress import LoadProgress, current_load, report, tracking


def test_steps_only_grow_and_small_moves_are_not_each_a_step():
    progress = LoadProgress()
    for value in (0.001, 0.002, 0.5, 0.4, 0.505, 0.52):
        progress.report(value, "weights")
    progress.report(0.52, "context")
    assert progress.steps == [(0.001, "weights"), (0.5, "weights"), (0.52, "weights"), (0.52, "context")]
    assert progress.fraction == 0.52


def test_the_tracked_load_is_seen_in_worker_threads_and_nowhere_else():
    progress = LoadProgress()

    async def load() -> None:
        with tracking(progress):
            await asyncio.to_thread(report, 0.3, "weights")
        assert current_load() is None

    asyncio.run(load())
    report(0.9)  # outside any load: no effect
    assert progress.steps == [(0.3, "weights")]


def test_a_transformers_load_reports_weight_by_weight(tmp_path):
    from backends.catalog import ModelEntry
    from backends.hf.loading import load_checkpoint
    from tests.tiny_hf_model import build_tiny_llama

    folder = build_tiny_llama(tmp_path / "tiny")
    entry = ModelEntry(id="tiny", engine="transformers", path=folder)
    progress = LoadProgress()
    with tracking(progress):
        load_checkpoint(entry, trust_remote_code=False)
    stages = [stage for _, stage in progress.steps]
    assert stages[0] == "tokenizer" and "device" in stages
    weights = [fraction for fraction, stage in progress.steps if stage == "weights"]
    assert len(weights) > 3 and weights == sorted(weights)  # one step per weight group, not one jump
