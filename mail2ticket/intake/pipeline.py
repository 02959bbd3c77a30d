"""Parse in worker processes while the main process fetches the next batch and commits in order.

The import of one poll is a pipeline of batches: a thread of the main process fetches batch k+2
from IMAP (prefetch) while worker processes parse batch k+1 (and write its attachment files) and
the main thread commits batch k in one transaction and only then changes the server. What exactly-once rests on
is unchanged: batches commit in UID order, each message in its own savepoint, the server action
runs after the commit, and a message the parser cannot read goes to the quarantine.

A worker handles one message at a time, so a message that crashes or hangs its worker is known:
it is quarantined (a hard per-message timeout ends a hang), the worker is replaced, and the rest
of the batch goes on. Workers are forked once per poll, only when there is mail to parse.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import multiprocessing
import os
import queue
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mail2ticket.errors import TempFailError
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.intake.importer import (
    ImportContext,
    Incoming,
    PreparedItem,
    known_items,
    prepare_item,
)
from mail2ticket.parse.parsed import ParsedMessage, Prepared, StoredAttachment
from mail2ticket.parse.prepare import prepare

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # seconds one message may take to parse before it is quarantined
BATCH_BYTES = 24 * 1024 * 1024  # raw bytes one fetched batch may hold (a larger message is alone)
MAX_RESPAWNS = 20  # workers that die without a message in hand before the pool gives up


def default_workers() -> int:
    """Worker processes for parsing: one per core, at most four; 0 (parse in-process) on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores < 2 else min(cores, 4)


def size_batches(uids: Sequence[int], sizes: dict[int, int], count: int, max_bytes: int = BATCH_BYTES,
                 limit: int | None = None) -> Iterator[list[int]]:
    """UIDs in order, in batches of at most ``count`` messages and ``max_bytes`` announced bytes.

    Messages over ``limit`` are never downloaded, so they weigh nothing here."""
    batch: list[int] = []
    held = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if limit is not None and size > limit:
            size = 0
        if batch and (len(batch) >= count or held + size > max_bytes):
            yield batch
            batch, held = [], 0
        batch.append(uid)
        held += size
    if batch:
        yield batch


# ----------------------------------------------------------------------------- the worker side


def _die_with_parent() -> None:
    """Have the kernel kill this worker when the main process dies, even by SIGKILL.

    Waiting for EOF is not enough (see _serve): after a SIGKILL of `poll` the workers would wait
    for each other forever. Linux only (prctl PR_SET_PDEATHSIG); elsewhere EOF is all there is."""
    parent = multiprocessing.parent_process()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl took effect
        os._exit(0)


def _serve(conn, parse: Callable[[bytes], Any], root: Path, limits: Any = None, deferred: bool = False,
           monitoring: Any = None) -> None:
    """A worker's loop: read one message, answer with parse_and_store's result.

    Each message is two frames: its kind (b"r": the raw bytes follow; b"f": the path of a spool
    file follows, parsed in bounded memory by bigmessage.parse_file). An empty frame, or EOF,
    ends it (EOF alone is not enough: workers forked later hold copies
    of the main process's ends of the earlier workers' pipes)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    store = AttachmentStore(root)
    parent = multiprocessing.parent_process()
    # deferred: the main process (the parent) makes the attachment files durable, once per batch
    owner = parent.pid if deferred and parent is not None else None
    while True:
        try:
            kind = conn.recv_bytes()
            if not kind:
                return
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            if kind == b"f":
                result = prepare(parse, store, path=raw.decode("utf-8", "surrogateescape"), limits=limits,
                                 monitoring=monitoring)
            else:
                result = prepare(parse, store, raw, limits=limits, owner=owner, monitoring=monitoring)
        except TempFailError as exc:  # raised in the main process, as if prepared there
            result = exc
        del raw
        for att in result.parsed.attachments if isinstance(result, Prepared) and result.parsed is not None else ():
            if isinstance(att, StoredAttachment):
                att.source = None  # the main process's own store reads it back (PreparedBatch)
        try:
            conn.send(_compact(result))
        except (EOFError, OSError):
            return
        except Exception as exc:  # the result could not be pickled: say so, the message is quarantined
            conn.send(Prepared(error=f"internal parser error: result not transferable: {exc.__class__.__name__}: {exc}"))
        del result


_FIELDS = tuple(f.name for f in fields(ParsedMessage))


def _compact(result: Any) -> Any:
    """A worker's answer as the dispatcher thread receives it most cheaply: a parsed message as a
    tuple of its fields (unpickling a tuple costs about half of unpickling the object). Anything
    else (a parser's own class, an error) goes as it is."""
    if isinstance(result, Prepared) and type(result.parsed) is ParsedMessage and len(vars(result.parsed)) == len(_FIELDS):
        values = vars(result.parsed)
        return (tuple(values[name] for name in _FIELDS), result.stored, result.error)
    return result


def _expand(answer: Any) -> Any:
    """The Prepared a worker's answer stands for (see _compact)."""
    if type(answer) is tuple:
        values, stored, error = answer
        return Prepared(ParsedMessage(*values), stored, error)
    return answer


# ----------------------------------------------------------------------------- the pool


@dataclass
class _Task:
    raw: bytes | None
    future: Future
    deadline: float = 0.0
    path: str | None = None  # a spool file to parse instead of ``raw``
    running: bool = False  # its future is set running (it is, or was, at the head of a worker's line)
    discard: bool = False  # cancelled while it waited in a worker's line: its answer is dropped

    @property
    def size(self) -> int:
        return len(self.raw or b"") + len(self.path or "")


class _Worker:
    def __init__(self, proc, conn):
        self.proc = proc
        self.conn = conn
        # The messages sent to it, in order: it parses the first; the others wait in its pipe.
        self.tasks: deque[_Task] = deque()
        self.watched = False  # its pipe and sentinel are registered with the dispatcher's poll

    @property
    def task(self) -> _Task | None:
        return self.tasks[0] if self.tasks else None


# Messages a worker may have waiting in its pipe behind the one it parses, and their bytes at most:
# the next one is there when it answers, instead of after the dispatcher thread has had the GIL.
# Small enough that sending them never blocks (a socket pair's buffer holds far more), so the
# dispatcher never waits on a worker that waits on it.
WAITING = 2
WAITING_BYTES = 64 * 1024


class ParsePool:
    """A few forked worker processes that parse messages one at a time, each with a hard timeout.

    ``submit(raw)`` returns a Future of parse_and_store's result. A worker that dies or overruns
    ``timeout`` seconds on a message is killed and replaced; that message's result is an
    ("error", ...) that sends it to the quarantine, and the messages waiting behind it go to
    another worker. Use as a context manager, or call close().

    ``deferred``: the workers write attachment files as temp files without fsync (each stored
    attachment's ``pending``), for the caller to make durable with AttachmentStore.make_durable
    before it commits (Pipeline does, once per batch); by default each file is durable at once."""

    def __init__(self, parse: Callable[[bytes], Any], attachments_root: Path, workers: int,
                 timeout: float = DEFAULT_TIMEOUT, limits: Any = None, deferred: bool = False,
                 monitoring: Any = None):
        self._limits = limits
        self._monitoring = monitoring  # the custom formats when monitoring mail is recognised (prepare)
        self._deferred = deferred
        self._mp = multiprocessing.get_context("fork")
        self._parse = parse
        self._root = Path(attachments_root)
        self._size = max(1, workers)
        self.timeout = timeout
        self._queue: deque[_Task] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._poll = select.poll()  # the dispatcher's: the wake pipe, and busy workers' pipes and sentinels
        self._poll.register(self._wake_r, select.POLLIN)
        self._closed = False
        self._failed: BaseException | None = None
        self._respawns = 0
        self._workers: list[_Worker] = []
        self.crashed = 0  # messages whose worker died or timed out
        for _ in range(self._size):
            self._workers.append(self._spawn())
        self._thread = threading.Thread(target=self._run, name="mail2ticket-parse", daemon=True)
        self._thread.start()

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def _spawn(self) -> _Worker:
        ours, theirs = self._mp.Pipe(duplex=True)
        proc = self._mp.Process(target=_serve, args=(theirs, self._parse, self._root, self._limits, self._deferred,
                                                     self._monitoring),
                                name="mail2ticket-parser", daemon=True)
        proc.start()
        theirs.close()
        return _Worker(proc, ours)

    def submit(self, raw: bytes | None, path: str | None = None) -> Future:
        """Parse ``raw``, or the message in the spool file ``path`` (bounded memory)."""
        return self.submit_many([(raw, path)])[0]

    def submit_many(self, messages: Sequence[tuple[bytes | None, str | None]]) -> list[Future]:
        """submit() of each (raw, path), in order, waking the dispatcher once."""
        futures: list[Future] = [Future() for _ in messages]
        with self._lock:
            if self._closed:
                raise RuntimeError("the parse pool is closed")
            if self._failed is not None:
                for future in futures:
                    future.set_exception(self._failed)
                return futures
            self._queue.extend(_Task(raw, future, path=path) for (raw, path), future in zip(messages, futures, strict=True))
        self._wake()
        return futures

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # already woken (pipe full) or closing

    # --- the dispatcher thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                self._dispatch()
                fds: dict[int, _Worker] = {}
                for w in self._workers:
                    self._watch(w, bool(w.tasks))
                    if w.tasks:
                        fds[w.conn.fileno()] = fds[w.proc.sentinel] = w
                now = time.monotonic()
                timeout = min((w.tasks[0].deadline - now for w in self._workers if w.tasks), default=None)
                ready = self._poll.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
                collect: list[_Worker] = []
                for fd, _event in ready:
                    if fd == self._wake_r:
                        os.read(self._wake_r, 4096)
                    elif fds.get(fd) is not None and fds[fd] not in collect:
                        collect.append(fds[fd])
                for w in collect:
                    self._collect(w, readable=any(fd == w.conn.fileno() for fd, _ in ready))
                now = time.monotonic()
                for w in list(self._workers):
                    if w.tasks and now >= w.tasks[0].deadline:
                        self._replace(w, f"parsing took longer than {self.timeout:g} s: the parser was stopped")
        except BaseException as exc:  # never leave a Future unresolved: the poll would wait forever
            log.exception("the parse pool failed")
            self._fail(TempFailError(f"the parser processes failed: {exc}", "the next poll tries again"))

    def _watch(self, w: _Worker, on: bool) -> None:
        if on and not w.watched:
            self._poll.register(w.conn.fileno(), select.POLLIN)
            self._poll.register(w.proc.sentinel, select.POLLIN)
        elif w.watched and not on:
            self._poll.unregister(w.conn.fileno())
            self._poll.unregister(w.proc.sentinel)
        w.watched = on

    def _dispatch(self) -> None:
        """Hand queued messages out in order: first one to each idle worker, then small ones to
        wait in busy workers' pipes (WAITING, WAITING_BYTES)."""
        for line in (1, 1 + WAITING):
            for w in self._workers:
                while len(w.tasks) < line:
                    with self._lock:
                        if not self._queue:
                            return
                        task = self._queue[0]
                        if w.tasks and (task.size + sum(t.size for t in list(w.tasks)[1:]) > WAITING_BYTES):
                            break  # too large to wait in a pipe: it goes to the next idle worker
                        self._queue.popleft()
                    if not w.tasks and not self._start(task):
                        continue  # cancelled
                    if not self._send(w, task):
                        break

    def _start(self, task: _Task) -> bool:
        """``task`` is now at the head of a worker's line: its future runs and its time counts."""
        task.deadline = time.monotonic() + self.timeout
        if not task.running:
            task.running = True
            if not task.future.set_running_or_notify_cancel():
                task.discard = True
                return False
        return True

    def _send(self, w: _Worker, task: _Task) -> bool:
        try:
            if task.path is not None:
                w.conn.send_bytes(b"f")
                w.conn.send_bytes(task.path.encode("utf-8", "surrogateescape"))
            else:
                w.conn.send_bytes(b"r")
                w.conn.send_bytes(task.raw or b"")
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            # The worker died before this message reached it: the message goes to another worker.
            with self._lock:
                self._queue.appendleft(task)
            self._replace(w, self._death_reason(w))
            self._wake()  # the new worker gets it in the next round
            return False
        w.tasks.append(task)
        return True

    def _collect(self, w: _Worker, readable: bool) -> None:
        task = w.task
        assert task is not None
        try:
            if not readable:
                if w.proc.is_alive():
                    return
                raise EOFError
            result = _expand(w.conn.recv())
        except (EOFError, OSError):
            self._replace(w, self._death_reason(w))
            return
        except Exception as exc:  # an answer that cannot be read: treat the message as unreadable
            self._replace(w, f"internal parser error: unreadable answer: {exc.__class__.__name__}: {exc}")
            return
        w.tasks.popleft()
        if w.tasks:
            self._start(w.tasks[0])  # if cancelled while it waited, its answer comes and is dropped
        if task.discard:
            return
        if isinstance(result, TempFailError):
            task.future.set_exception(result)
        else:
            task.future.set_result(result)

    def _death_reason(self, w: _Worker) -> str:
        w.proc.join(1)
        code = w.proc.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the parser process was killed by {name} while reading this message"
        return f"the parser process died (exit code {code}) while reading this message"

    def _replace(self, w: _Worker, reason: str) -> None:
        """Stop worker ``w`` (dead or overrunning), fail its message with ``reason``, start another;
        the messages that waited in its pipe go back to the front of the queue."""
        self._watch(w, False)
        tasks, w.tasks = list(w.tasks), deque()
        task = tasks.pop(0) if tasks else None
        if tasks:
            with self._lock:
                self._queue.extendleft(reversed(tasks))
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(5)
        w.conn.close()
        if task is not None:
            self.crashed += 1
            log.warning("%s; the message goes to the quarantine", reason)
            if not task.discard:
                task.future.set_result(Prepared(error=reason))
        else:
            self._respawns += 1
            if self._respawns > MAX_RESPAWNS:
                raise RuntimeError("parser processes keep dying without a message in hand")
        index = self._workers.index(w)
        self._workers[index] = self._spawn()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._failed = exc
            tasks = list(self._queue)
            self._queue.clear()
        for w in self._workers:
            tasks += w.tasks
            w.tasks = deque()
        for task in tasks:
            if not task.future.done():
                task.future.set_exception(exc)

    # --- shutting down ------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers (what is still queued is cancelled) and wait for them to exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
        self._wake()
        self._thread.join(timeout)
        for w in self._workers:
            queued += list(w.tasks)[1:]  # waiting in its pipe, not started: cancelled like the queued
        for task in queued:
            # One that was at the head of a worker that died before it got it is running: it
            # cannot be cancelled, and nobody would ever complete it.
            if not task.future.cancel() and not task.future.done():
                try:
                    task.future.set_exception(TempFailError("the parser was stopped before this message was parsed",
                                                            "the next poll parses it again"))
                except InvalidStateError:
                    pass
        for w in self._workers:
            if w.task is not None and not w.task.future.done() and not w.task.future.cancel():
                # Already running: cancel() cannot stop it, and nobody would ever complete it.
                try:
                    w.task.future.set_exception(
                        TempFailError("the parser was stopped before this message was parsed",
                                      "the next poll parses it again")
                    )
                except InvalidStateError:
                    pass  # the answer arrived meanwhile
            try:
                w.conn.send_bytes(b"")  # the worker finishes its loop and exits
            except OSError:
                pass
            w.conn.close()
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(1)
        os.close(self._wake_r)
        os.close(self._wake_w)


# ----------------------------------------------------------------------------- batches


class PreparedBatch:
    """One batch on its way: known and over-size messages settled at once, the others being parsed.

    When the workers are done with it, a thread of its own makes the attachment files they wrote
    durable (AttachmentStore.make_durable; for a bucket, ObjectStore.make_durable uploads them),
    so that waiting on the disk (or the bucket) for batch k+1 overlaps the main thread's commit
    of batch k."""

    def __init__(self, items: Sequence[Incoming], parts: list[PreparedItem | tuple[str, Future]],
                 store: AttachmentStore | None = None):
        self.items = list(items)
        self._parts = parts
        self._store = store
        self._out: list[PreparedItem] | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if store is not None and any(not isinstance(part, PreparedItem) for part in parts):
            self._thread = threading.Thread(target=self._finish, name="mail2ticket-durable", daemon=True)
            self._thread.start()

    def result(self) -> list[PreparedItem]:
        """Wait for the workers; one PreparedItem per item, in order. Raises TempFailError (disk full).

        The attachment files the workers wrote without fsync are durable and at their content
        addresses when this returns: the batch may commit."""
        if self._thread is not None:
            self._thread.join()
        elif self._out is None and self._error is None:
            self._finish()
        if self._error is not None:
            raise self._error
        assert self._out is not None
        return self._out

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the batch's thread to end (the pool being closed ends it)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _finish(self) -> None:
        out: list[PreparedItem] = []
        pending: list[tuple[Path, str]] = []
        stored: list[tuple[Path, str]] = []  # written at their address by a worker (large messages, known files)
        try:
            for item, part in zip(self.items, self._parts, strict=True):
                if isinstance(part, PreparedItem):
                    out.append(part)
                    continue
                digest, future = part
                answer = future.result()
                out.append(PreparedItem(item, digest, answer.parsed, answer.error, answer.stored))
                for att in answer.parsed.attachments if answer.parsed is not None else ():
                    if getattr(att, "pending", None) is not None:
                        pending.append((att.pending, att.sha256))
                    elif getattr(att, "path", None) is not None:
                        stored.append((att.path, att.sha256))
            if pending or stored:
                assert self._store is not None
                self._store.make_durable(pending, stored=stored)
        except BaseException as exc:  # handed to result(), in the main thread
            for tmp, _sha in pending:  # this batch is not committed: its temp files are no use
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
            self._error = exc
            return
        finally:
            self._parts = []
        for prep in out:
            if prep.parsed is not None:
                for att in prep.parsed.attachments:
                    if getattr(att, "pending", None) is not None:
                        att.pending = None
                    if isinstance(att, StoredAttachment):
                        att.source = self._store  # the main process's store reads it back
        self._out = out


class Pipeline:
    """The parsing side of one poll: hand batches to the workers, or parse in-process (workers=0)."""

    def __init__(self, ctx: ImportContext, workers: int | None = None, timeout: float | None = None):
        self.ctx = ctx
        self.workers = default_workers() if workers is None else max(0, workers)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self._pool: ParsePool | None = None
        self._batches: list[PreparedBatch] = []  # batches whose thread may still run

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()  # resolves every batch's futures: their threads end
            self._pool = None
        for batch in self._batches:
            batch.wait(10)
        self._batches = []

    def submit(self, items: Sequence[Incoming]) -> PreparedBatch:
        """Start preparing ``items``: the result is collected with PreparedBatch.result()."""
        if self.workers == 0:
            return PreparedBatch(items, [prepare_item(self.ctx, item) for item in items])
        digests = [
            it.spool.sha256 if it.spool is not None
            else hashlib.sha256(it.raw).hexdigest() if it.raw is not None else None
            for it in items
        ]
        known = known_items(self.ctx.db, items, digests)
        parts: list[PreparedItem | tuple[str, Future] | None] = []
        to_parse: list[tuple[bytes | None, str | None]] = []
        for i, item in enumerate(items):
            if not item.raw and item.spool is None:
                parts.append(prepare_item(self.ctx, item))  # over the size limit, or empty: nothing to parse
            elif i in known:
                parts.append(PreparedItem(item, digests[i], None, None, []))  # nothing to parse
            else:  # a large one is parsed from its spool file
                parts.append(None)
                to_parse.append((None, item.spool.path) if item.spool is not None else (item.raw, None))
        if to_parse:
            futures = iter(self._ensure_pool(len(items)).submit_many(to_parse))
            parts = [part if part is not None else (digests[i], next(futures)) for i, part in enumerate(parts)]
        batch = PreparedBatch(items, parts, self.ctx.attachments)
        self._batches = [b for b in self._batches if b._thread is not None and b._thread.is_alive()] + [batch]
        return batch

    def _ensure_pool(self, wanted: int) -> ParsePool:
        if self._pool is None:
            parse = self.ctx.parse
            assert parse is not None
            self._pool = ParsePool(parse, self.ctx.attachments.root, min(self.workers, max(1, wanted)),
                                   self.timeout, getattr(self.ctx, "limits", None), deferred=True,
                                   monitoring=self.ctx.monitoring_formats)
        return self._pool


def ahead(batches: Iterable[Any], submit: Callable[[Any], Any]) -> Iterator[tuple[Any, Any]]:
    """Yield (batch, submit(batch)) one step late: batch k+1 is fetched and submitted before batch k
    is handed over for its commit, so fetching and parsing overlap committing.

    If fetching batch k+1 fails, batch k is still handed over (and can be committed) before the
    error is raised."""
    pending = None
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        except BaseException:
            if pending is not None:
                yield pending
            raise
        job = submit(batch)
        if pending is not None:
            yield pending
        pending = (batch, job)
    if pending is not None:
        yield pending


class _Failed:
    """An exception of the producer thread, handed over in order (see prefetch)."""

    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def prefetch(produce: Iterable[Any], name: str = "mail2ticket-fetch") -> Iterator[Any]:
    """Run the iterator ``produce`` in a thread, one item ahead of the consumer: the item after
    the one just taken is being made while the consumer works on it (for a poll: the next batch
    is fetched from IMAP while the main thread commits). Items come out in order; an exception of
    the producer is raised here, after the items made before it.

    At most one item is made but not yet taken, so the memory held stays bounded. Closing the
    generator (the consumer stops early) stops the producer before its next item and waits for
    the item in the making to finish, so nothing runs on after the caller moves on."""

    handoff: queue.Queue = queue.Queue()
    permit = threading.Semaphore(1)  # one item in the making or made and not yet taken
    cancel = threading.Event()

    def run() -> None:
        try:
            iterator = iter(produce)
            while True:
                while not permit.acquire(timeout=0.5):
                    if cancel.is_set():
                        return
                if cancel.is_set():
                    return
                try:
                    item = next(iterator)
                except StopIteration:
                    handoff.put(_DONE)
                    return
                handoff.put(item)
        except BaseException as exc:  # handed to the consumer, raised in its thread
            handoff.put(_Failed(exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            permit.release()  # the next item may be made while this one is used
            yield item
    finally:
        cancel.set()
        permit.release()
        thread.join()
