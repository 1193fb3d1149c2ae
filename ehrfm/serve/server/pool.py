"""Supervised scoring workers: N processes, each with its own pipe; the front (asyncio) hands a job to an
idle worker and waits for the reply until the request's deadline.

- deadline passed -> the worker is killed (SIGKILL: the work really stops) and replaced; the client gets 504;
- worker died (``kill -9``, out of memory, a crash) -> its in-flight request gets 503 and it is replaced;
  a monitor also replaces idle workers that died, so the pool is always back to N;
- no idle worker before the deadline -> 503.

Workers are started with the ``spawn`` method: the front never imports torch, and a fresh interpreter per
worker avoids forking a process that holds threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ehrfm.serve.server.protocol import FAILED, READY, Job, Reply, WorkerInfo

log = logging.getLogger("ehrfm.serve")


class WorkerLost(RuntimeError):
    """The worker died while holding a request."""


class DeadlineExceeded(Exception):  # not TimeoutError: that is an OSError, which means "worker lost" here
    """No answer (or no idle worker) before the request's deadline; ``stage`` says which."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


@dataclass(eq=False)
class Slot:
    """One worker position: its current process and pipe, and its state."""

    index: int
    proc: BaseProcess | None = None
    conn: Connection | None = None
    state: str = "stopped"  # starting | idle | busy | stopped
    info: WorkerInfo | None = None
    started: float = field(default_factory=time.monotonic)


class WorkerPool:
    """``n`` supervised workers loading ``serving_dir``."""

    def __init__(self, serving_dir: str, n: int, *, strict: bool | None, cds: dict[str, Any],
                 startup_timeout_s: float = 300.0) -> None:
        """Nothing starts until :meth:`start`."""
        self.serving_dir, self.n, self.strict, self.cds = serving_dir, n, strict, cds
        self.startup_timeout_s = startup_timeout_s
        self.threads = max(1, (os.cpu_count() or 1) // n)
        self.slots = [Slot(i) for i in range(n)]
        self.idle: asyncio.Queue[Slot] = asyncio.Queue()
        self.restarts = 0
        self.info: WorkerInfo | None = None
        self._ctx = mp.get_context("spawn")
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> WorkerInfo:
        """Start ``slot``'s process and block until it reports ready (runs in a thread)."""
        from ehrfm.serve.server.worker import worker_main

        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, name=f"ehrfm-serve-worker-{slot.index}", daemon=True,
                                 args=(child, self.serving_dir, self.strict, self.threads, self.cds))
        proc.start()
        child.close()
        slot.proc, slot.conn, slot.state, slot.started = proc, parent, "starting", time.monotonic()
        if not parent.poll(self.startup_timeout_s):
            self._kill(slot)
            raise RuntimeError(f"worker {slot.index} did not load the model within "
                               f"{self.startup_timeout_s} s")
        try:
            status, payload = parent.recv()
        except EOFError:
            self._kill(slot)
            raise RuntimeError(f"worker {slot.index} exited while loading the model "
                               f"(exit code {proc.exitcode})") from None
        if status == FAILED:
            self._kill(slot)
            raise RuntimeError(f"worker {slot.index} could not load the model: {payload}")
        assert status == READY
        slot.info = payload
        return payload  # type: ignore[no-any-return]

    @staticmethod
    def _kill(slot: Slot) -> None:
        if slot.proc is not None and slot.proc.is_alive():
            slot.proc.kill()
        if slot.proc is not None:
            slot.proc.join(5)
        if slot.conn is not None:
            slot.conn.close()
        slot.proc, slot.conn, slot.state = None, None, "stopped"

    async def start(self) -> None:
        """Start every worker (in parallel) and the monitor; raises if a worker cannot load the model."""
        infos = await asyncio.gather(*(asyncio.to_thread(self._spawn, s) for s in self.slots))
        self.info = infos[0]
        for s in self.slots:
            s.state = "idle"
            self.idle.put_nowait(s)
        self._monitor = asyncio.create_task(self._watch())

    async def _replace(self, slot: Slot, why: str) -> None:
        """Kill (if needed) and restart ``slot``; it rejoins the idle queue when ready."""
        if self._closing:
            return
        self.restarts += 1
        old = slot.proc.pid if slot.proc is not None else None
        await asyncio.to_thread(self._kill, slot)
        slot.state = "starting"
        log.warning("worker replaced", extra={"fields": {"event": "worker_restart", "worker": slot.index,
                                                         "old_pid": old, "reason": why}})
        while not self._closing:
            try:
                await asyncio.to_thread(self._spawn, slot)
                break
            except RuntimeError as e:  # e.g. out of memory while loading: try again, slowly
                log.error("worker restart failed", extra={"fields": {"event": "worker_restart_failed",
                                                                     "worker": slot.index,
                                                                     "error": str(e)[:300]}})
                await asyncio.sleep(2.0)
        if self._closing:
            return
        slot.state = "idle"
        self.idle.put_nowait(slot)

    async def _watch(self) -> None:
        """Replace idle workers that died (a ``kill -9`` between requests)."""
        while not self._closing:
            await asyncio.sleep(0.5)
            for s in self.slots:
                if s.state == "idle" and (s.proc is None or not s.proc.is_alive()):
                    s.state = "dead"
                    asyncio.create_task(self._replace(s, "died while idle"))

    async def close(self) -> None:
        """Stop the monitor and every worker (bounded waits)."""
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
        for s in self.slots:
            if s.conn is not None and s.state == "idle":
                with contextlib.suppress(OSError, ValueError):
                    s.conn.send(None)
        deadline = time.monotonic() + 5
        for s in self.slots:
            if s.proc is not None:
                s.proc.join(max(0.0, deadline - time.monotonic()))
            self._kill(s)

    # -- requests --------------------------------------------------------------------------------------
    @property
    def ready(self) -> int:
        """Workers alive and able to take a job (idle or busy)."""
        return sum(1 for s in self.slots if s.state in ("idle", "busy")
                   and s.proc is not None and s.proc.is_alive())

    async def _acquire(self, deadline: float) -> Slot:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("queue")
            try:
                slot = await asyncio.wait_for(self.idle.get(), left)
            except asyncio.TimeoutError:
                raise DeadlineExceeded("queue") from None
            if slot.state == "idle" and slot.proc is not None and slot.proc.is_alive():
                slot.state = "busy"
                return slot
            if slot.state == "idle":  # died in the queue before the monitor saw it
                slot.state = "dead"
                asyncio.create_task(self._replace(slot, "died while idle"))

    async def submit(self, job: Job, deadline: float) -> tuple[Reply, int]:
        """Run ``job`` on a worker before ``deadline`` (``time.monotonic()``) -> (reply, worker index).

        Raises :class:`DeadlineExceeded` (the worker doing it was killed) or :class:`WorkerLost`."""
        slot = await self._acquire(deadline)
        conn = slot.conn
        assert conn is not None
        try:
            await asyncio.to_thread(conn.send, job)
            ready = await asyncio.to_thread(conn.poll, max(0.0, deadline - time.monotonic()))
            reply: Reply | None = await asyncio.to_thread(conn.recv) if ready else None
        except (EOFError, OSError):
            asyncio.create_task(self._replace(slot, "died during a request"))
            raise WorkerLost(f"worker {slot.index} died") from None
        except asyncio.CancelledError:  # the client went away: the worker's answer would be stale
            asyncio.create_task(self._replace(slot, "request cancelled"))
            raise
        if reply is None:
            asyncio.create_task(self._replace(slot, "deadline exceeded"))
            raise DeadlineExceeded("scoring")
        slot.state = "idle"
        self.idle.put_nowait(slot)
        return reply, slot.index

    def pids(self) -> list[int]:
        """Process ids of the current workers (for operators and tests)."""
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.pid is not None]
