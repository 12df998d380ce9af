"""Run blocking work off the GUI thread, report progress in napari, and show errors.

Every listing, metadata read, commit, combine and clean goes through :func:`run_in_thread`
(or :func:`run_task` when it deserves a progress bar), so the Qt event loop never waits on
storage. Results come back on the GUI thread through the worker's signals; a callback whose
widget was deleted meanwhile is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.utils import progress
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal
from superqt.utils import WorkerBase, create_worker

Report = Callable[..., None]
"""``report(done, total=None, description=None)``: callable from any thread."""


def qt_alive(obj: Any) -> bool:
    """Whether the C++ side of a Qt object still exists."""
    try:
        obj.objectName()
    except RuntimeError:
        return False
    return True


def _guarded(owner: QObject, callback: Callable[..., Any] | None) -> Callable[..., Any]:
    def call(*args: Any) -> None:
        if callback is not None and qt_alive(owner):
            callback(*args)

    return call


def run_in_thread(
    owner: QObject,
    func: Callable[..., Any],
    *args: Any,
    on_return: Callable[[Any], None] | None = None,
    on_yield: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    **kwargs: Any,
) -> WorkerBase:
    """Start ``func(*args, **kwargs)`` (a function or generator) in napari's thread pool.

    The callbacks run on the GUI thread, and only while ``owner`` exists. Without
    ``on_error`` a failure is shown as a napari error notification carrying its message.
    The worker is kept referenced by ``owner`` until it finishes.
    """
    worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    workers: set[WorkerBase] = owner.__dict__.setdefault("_cachetree_workers", set())
    workers.add(worker)
    if on_return is not None:
        worker.returned.connect(_guarded(owner, on_return))
    if on_yield is not None:
        worker.yielded.connect(_guarded(owner, on_yield))
    worker.errored.connect(_guarded(owner, on_error or (lambda exc: show_error(str(exc)))))
    worker.finished.connect(_guarded(owner, on_finish))
    worker.finished.connect(lambda: workers.discard(worker))
    worker.start()
    return worker


def busy(owner: QObject) -> bool:
    """Whether ``owner`` has workers still running."""
    return bool(owner.__dict__.get("_cachetree_workers"))


class _Relay(QObject):
    """Carries progress reports from a worker thread to the GUI thread (queued signal)."""

    progressed = Signal(object, object, object)


def run_task(
    owner: QObject,
    description: str,
    func: Callable[..., Any],
    *args: Any,
    on_return: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[], None] | None = None,
) -> WorkerBase:
    """Like :func:`run_in_thread` with a napari progress bar named ``description``.

    ``func`` is called as ``func(*args, report=report)``; ``report(done, total, text)`` may
    be called from the worker thread any number of times. The bar is indeterminate until a
    total is reported and closes when the work ends, whatever the outcome.
    """
    bar = progress(total=0, desc=description)
    relay = _Relay()

    def update(done: Any, total: Any, text: Any) -> None:
        if total is not None and total != bar.total:
            bar.total = int(total)
        if done is not None:
            bar.update(int(done) - bar.n)
        if text:
            bar.set_description(f"{description}: {text}")

    def finish() -> None:
        relay.progressed.disconnect(update)
        bar.close()
        if on_finish is not None and qt_alive(owner):
            on_finish()

    relay.progressed.connect(update)

    def report(done: Any = None, total: Any = None, text: Any = None) -> None:
        relay.progressed.emit(done, total, text)

    worker = run_in_thread(
        owner, func, *args, report=report, on_return=on_return, on_error=on_error
    )
    worker.finished.connect(finish)
    worker._cachetree_relay = relay  # keep the relay alive as long as the worker
    return worker


def build_layers(layers: list[Any]) -> list[Any]:
    """napari layers made from layer data tuples, in the calling (worker) thread.

    Making a layer reads the chunks of its thumbnail and, the first time, initialises parts
    of napari; doing it here leaves only showing it (controls and visuals) to the GUI
    thread. A ``channel_axis`` gives one layer per channel, as ``viewer.add_image`` does.
    """
    from napari.layers import Layer
    from napari.layers.utils.stack_utils import split_channels

    built = []
    for data, kwargs, layer_type in layers:
        if layer_type == "image" and kwargs.get("channel_axis") is not None:
            rest = {k: v for k, v in kwargs.items() if k != "channel_axis"}
            built += [
                Layer.create(*item) for item in split_channels(data, kwargs["channel_axis"], **rest)
            ]
        else:
            built.append(Layer.create(data, kwargs, layer_type))
    return built


def add_in_steps(
    viewer: Any, layers: list[Any], then: Callable[[list[Any]], None] | None = None
) -> None:
    """Add layers (napari layers, or layer data tuples) to ``viewer`` one per event loop
    turn, then call ``then`` with the layers shown (new or reused).

    Adding a layer builds its controls and visuals, and reads the chunks it shows first, on
    the GUI thread; adding a dozen in one go would freeze the viewer for that long.
    """
    from qtpy.QtCore import QTimer

    from ._layers import add_layers, layer_key

    pending = list(layers)
    shown: list[Any] = []

    def add(item: Any) -> list[Any]:
        if isinstance(item, tuple):
            return add_layers(viewer, [item])
        existing = {layer_key(layer): layer for layer in viewer.layers}.get(layer_key(item))
        if existing is not None:
            viewer.layers.selection.add(existing)
            return [existing]
        viewer.layers.append(item)
        return [item]

    def step() -> None:
        if pending:
            shown.extend(add(pending.pop(0)))
            QTimer.singleShot(0, step)
        elif then is not None:
            then(shown)

    step()
