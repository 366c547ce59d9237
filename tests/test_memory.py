"""Memory: the command's allocator choice (re-executed once with tcmalloc/jemalloc preloaded when one is
installed), freed memory given back under every allocator, messages read without np.load's chunked
copies, a received state never copied whole, and a
round's messages gone before the next round trains. The peaks themselves are measured by
``benchmarks/memory.py``, not asserted here."""

from __future__ import annotations

import gc
import io
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
from flwr.app import Array, Message

from fedp2eft.config import RoundSettings
from fedp2eft.fl.inprocess import InProcessGrid
from fedp2eft.fl.records import RecordState, array_tensor, array_view, from_arrays, to_array, to_arrays, train_reply
from fedp2eft.fl.server_loop import LoopSettings, run_rounds
from fedp2eft.memory import find_allocator
from fedp2eft.setup.jobs import Job
from fl_helpers import REPO
from test_fl_runtime import seen_clients_app

PROBE = ("from fedp2eft.memory import preload_allocator, allocator_in_use, trim_freed_memory; "
         "preload_allocator(); trim_freed_memory(); print(allocator_in_use())")


def allocator_of(choice: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if k != "LD_PRELOAD"}
    env["FEDP2EFT_ALLOCATOR"] = choice
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD: Linux")
def test_the_command_preloads_an_installed_allocator_and_frees_memory_under_each():
    expected = "tcmalloc" if find_allocator("tcmalloc") else "jemalloc" if find_allocator("jemalloc") else "system"
    auto = allocator_of("auto")
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.strip() == expected
    system = allocator_of("system")
    assert system.returncode == 0 and system.stdout.strip() == "system"  # trim_freed_memory ran on glibc
    for name in ("tcmalloc", "jemalloc"):
        if find_allocator(name):
            chosen = allocator_of(name)
            assert chosen.returncode == 0 and chosen.stdout.strip() == name, chosen.stderr
    bad = allocator_of("hoard")
    assert bad.returncode != 0 and "FEDP2EFT_ALLOCATOR='hoard'" in bad.stderr and "\n" not in bad.stderr.strip()


def test_the_reexecuted_command_keeps_its_arguments():
    proc = subprocess.run([sys.executable, "-m", "fedp2eft", "--version"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("fedp2eft "), proc.stderr


@pytest.mark.parametrize("tensor", [torch.randn(3, 4), torch.arange(7, dtype=torch.int64), torch.tensor(2.5),
                                    torch.zeros(0, 3), torch.randn(4, 6).t(), torch.rand(5) > 0.5,
                                    torch.randn(2, 3, 4, dtype=torch.float64).half()])
def test_messages_hold_the_bytes_np_save_writes_and_read_back_without_np_load(tensor):
    """``to_array`` writes what Flower's ``Array(tensor)`` writes, byte for byte (so Flower's strategies and
    transports read it as their own); ``array_view`` reads it, and a Flower-made Array, without a copy."""
    ours, flowers = to_array(tensor), Array(tensor.contiguous())
    assert (ours.dtype, ours.shape, ours.stype, ours.data) == (flowers.dtype, flowers.shape, flowers.stype,
                                                                 flowers.data)
    for array in (ours, flowers):
        view = array_view(array)
        assert not view.flags.writeable and view.dtype == array.numpy().dtype
        assert torch.equal(torch.from_numpy(view.copy()), tensor)
        own = array_tensor(array)
        own.add_(1) if own.dtype != torch.bool else own.logical_not_()
        assert torch.equal(torch.from_numpy(array.numpy()), tensor)  # the copy is the caller's own
    fortran = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=_npy(np.asfortranarray(
        np.arange(6, dtype=np.float32).reshape(2, 3))))
    assert np.array_equal(array_view(fortran), np.arange(6, dtype=np.float32).reshape(2, 3))  # Flower's path


def _npy(ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, ndarray, allow_pickle=False)
    return buffer.getvalue()


def test_a_received_state_reads_like_the_state_and_is_read_only():
    state = {"w": torch.randn(3, 4), "b": torch.arange(5.0)}
    record = to_arrays(state)
    view = RecordState(record)
    assert list(view) == ["w", "b"] and len(view) == 2 and "w" in view
    for k, v in from_arrays(record).items():
        torch.testing.assert_close(view[k], v)
    with pytest.raises(TypeError):
        view["w"] = torch.zeros(3, 4)  # type: ignore[index]
    model = torch.nn.Linear(4, 3)
    model.load_state_dict(RecordState(to_arrays({"weight": state["w"], "bias": state["b"][:3]})))
    torch.testing.assert_close(model.weight.detach(), state["w"])


def test_a_rounds_messages_are_gone_before_the_next_round_trains(tmp_path):
    """The server loop used to keep round k's message and replies (a copy of the state each) alive while
    round k+1 trained; and the initial state, made by a function, is made once and only without a
    checkpoint."""
    app = seen_clients_app()
    replies: list[weakref.ref] = []
    alive_when_training: list[int] = []

    @app.train()
    def train(msg: Message, ctx) -> Message:
        gc.collect()
        alive_when_training.append(sum(r() is not None for r in replies))
        state = RecordState(msg.content.array_records["arrays"])
        reply = Message(train_reply({k: v + 1 for k, v in state.items()}, 1, {}), reply_to=msg)
        replies.append(weakref.ref(reply))
        return reply

    made = []

    def initial_state():
        made.append(1)
        return {"w": torch.zeros(8)}

    job = Job(stage="test", experiment="{}", base_spec="off-the-shelf", seed=0, settings={}, num_clients=2)
    settings = LoopSettings(rounds=3, round=RoundSettings(fraction=1.0, min_clients=2, checkpoint_every=1))
    out = run_rounds(InProcessGrid(app, 2), job, initial_state, settings, tmp_path)
    torch.testing.assert_close(out["w"], torch.full((8,), 3.0))
    assert made == [1]
    # per round: client 1 sees no reply alive, client 2 sees client 1's (needed for FedAvg), never older ones
    assert alive_when_training == [0, 1] * 3
    resumed = run_rounds(InProcessGrid(app, 2), job, initial_state, LoopSettings(rounds=3, round=RoundSettings(fraction=1.0, min_clients=2, checkpoint_every=1)),
                         tmp_path, resume=True)
    assert made == [1] and torch.equal(resumed["w"], out["w"])  # resumed from round 3: nothing made again
