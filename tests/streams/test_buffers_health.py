import threading
import time

import numpy as np
import pytest

from streams.buffers import LosslessBuffer, NewestFrameBuffer
from streams.frame import Frame
from streams.health import Health, State


def frame(i):
    return Frame("s", i, i, time.time_ns(), np.zeros((2, 2, 3), np.uint8))


def test_newest_frame_policy_keeps_only_the_newest_and_counts_drops():
    buf = NewestFrameBuffer()
    for i in range(5):
        buf.put(frame(i))
    assert buf.get(0.1).seq == 4 and buf.drops == 4
    assert buf.get(0.05) is None
    buf.close()
    assert buf.put(frame(9)) is False and buf.get(0.05) is None


def test_lossless_policy_blocks_instead_of_dropping():
    buf = LosslessBuffer(capacity=2)
    got = []

    def producer():
        for i in range(10):
            assert buf.put(frame(i))
        buf.close()

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.1)
    assert len(buf) == 2  # the producer is blocked, not dropping
    while (f := buf.get(1.0)) is not None:
        got.append(f.seq)
    t.join(2)
    assert got == list(range(10)) and buf.drops == 0


def test_lossless_put_gives_up_on_stop():
    buf = LosslessBuffer(capacity=1)
    stop = threading.Event()
    buf.put(frame(0))
    stop.set()
    assert buf.put(frame(1), stop) is False


def test_state_machine_allows_the_documented_path_only():
    h = Health()
    for s in (State.STREAMING, State.STALLED, State.RECONNECTING, State.CONNECTING, State.STREAMING, State.STOPPED):
        h.to(s)
    assert [s for _, s in h.history][-1] == State.STOPPED and h.state.final
    with pytest.raises(RuntimeError, match="illegal"):
        h.to(State.STREAMING)
    h2 = Health()
    with pytest.raises(RuntimeError, match="connecting -> connecting|illegal"):
        h2.to(State.STREAMING)
        h2.to(State.CONNECTING)
