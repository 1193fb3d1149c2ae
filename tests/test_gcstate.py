"""ehrfm.gcstate.shared_setting: the first user in applies, the last one out restores, across threads."""

from __future__ import annotations

import threading

import pytest

from ehrfm.gcstate import shared_setting


def test_first_in_applies_last_out_restores_across_threads_and_errors() -> None:
    log: list[str] = []
    held = shared_setting(lambda: log.append("apply") or "saved",
                          lambda saved: log.append(f"restore {saved}"))
    inside, release = threading.Barrier(4), threading.Event()

    def user() -> None:
        with held():
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=user) for _ in range(3)]
    for t in threads:
        t.start()
    inside.wait()
    assert log == ["apply"]  # three users in, one apply
    release.set()
    for t in threads:
        t.join()
    assert log == ["apply", "restore saved"]
    with pytest.raises(RuntimeError), held(), held():
        raise RuntimeError("boom")
    assert log == ["apply", "restore saved", "apply", "restore saved"]
