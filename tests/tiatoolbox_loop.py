"""TIAToolbox 2.1.3's own ``MultiTaskSegmentor.infer_wsi``, with a tiny fake model and data.

The engine module is imported for real. Its import chain also loads unrelated model
architectures, slide readers and tools whose dependencies are heavy native packages or
model zoos; exactly these modules are replaced by inert stubs in ``sys.modules`` while
TIAToolbox is imported, when they are not installed (``infer_wsi`` uses none of them): see
:data:`STUBBED`.

``run_infer_wsi(..., functions=cachetree.compat)`` rebinds the four merge functions in the
engine module's namespace (nothing else changes) for the duration of the run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Modules stubbed when missing: model zoos / architectures (timm, torchvision,
#: transformers), UMAP for graph tools, and native image / slide I/O (OpenCV, OpenSlide,
#: SimpleITK). No module outside TIAToolbox keeps a reference to one of them.
STUBBED = {
    "timm": ("timm.layers",),
    "torchvision": ("torchvision.models",),
    "transformers": (),
    "umap": (),
    "cv2": (),
    "openslide": (),
    "SimpleITK": (),
}

FUNCTIONS = (
    "prepare_multitask_full_batch",
    "merge_multitask_horizontal",
    "save_multitask_to_cache",
    "merge_multitask_vertical_chunkwise",
)


class _Stub(types.ModuleType):
    """Any attribute is another stub; stubs can be called and subclassed."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _Stub(f"{self.__name__}()")

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (object,)


def stubbed_modules() -> list[str]:
    """Install the stubs for the modules of :data:`STUBBED` that are not installed."""
    names = []
    for top, subs in STUBBED.items():
        if top in sys.modules or importlib.util.find_spec(top) is not None:
            continue
        for name in (top, *subs):
            module = _Stub(name)
            module.__path__ = []
            sys.modules[name] = module
            names.append(name)
    return names


def engine_module() -> types.ModuleType:
    """``tiatoolbox.models.engine.multi_task_segmentor`` of TIAToolbox 2.1.3.

    The stubs are in ``sys.modules`` only while TIAToolbox is imported (its modules keep
    their references), so that nothing imported later picks them up.
    """
    stubbed = [] if "tiatoolbox.models" in sys.modules else stubbed_modules()
    try:
        import tiatoolbox
        from tiatoolbox.models.engine import multi_task_segmentor
    finally:
        for name in stubbed:
            del sys.modules[name]
    assert tiatoolbox.__version__ == "2.1.3", tiatoolbox.__version__
    tiatoolbox.rcParam["torch_compile_mode"] = "disable"
    return multi_task_segmentor


def grid(shape: tuple[int, int], patch: int, stride: int) -> np.ndarray:
    """Row-major output boxes ``[x0, y0, x1, y1]``; the last row and column overhang."""
    height, width = shape
    return np.array(
        [
            [x, y, x + patch, y + patch]
            for y in range(0, height, stride)
            for x in range(0, width, stride)
        ],
        np.int64,
    )


def make_model(predict: Callable[[np.ndarray], Sequence[np.ndarray]]) -> Any:
    """A torch module whose ``infer_batch`` returns ``predict(location indices)``."""
    import torch

    class FakeModel(torch.nn.Module):
        @staticmethod
        def infer_batch(model: Any, batch_data: Any, *, device: str) -> tuple[np.ndarray, ...]:
            index = np.asarray(batch_data).reshape(len(batch_data), -1)[:, 0].astype(np.int64)
            return tuple(predict(index))

    return FakeModel()


def make_dataloader(
    locs: np.ndarray, sent: np.ndarray, shape: tuple[int, int], batch_size: int
) -> Any:
    """A DataLoader over the sent locations; ``full_outputs`` is the whole grid."""
    import torch

    class FakeDataset(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.index = np.flatnonzero(sent)
            self.outputs = locs[self.index]
            self.full_outputs = locs
            self.wsi_shape = np.array([shape[1], shape[0]])  # (width, height)

        def __len__(self) -> int:
            return len(self.index)

        def __getitem__(self, i: int) -> dict[str, np.ndarray]:
            return {
                "image": np.array([self.index[i]], np.int64),
                "output_locs": self.outputs[i].copy(),
                "coords": self.outputs[i].copy(),
            }

    return torch.utils.data.DataLoader(FakeDataset(), batch_size=batch_size, shuffle=False)


@contextlib.contextmanager
def functions_of(module: types.ModuleType, source: Any) -> Iterator[None]:
    """Rebind the four merge functions of ``module`` to those of ``source`` meanwhile."""
    saved = {name: getattr(module, name) for name in FUNCTIONS}
    try:
        for name in FUNCTIONS:
            setattr(module, name, getattr(source, name))
        yield
    finally:
        for name, function in saved.items():
            setattr(module, name, function)


def run_infer_wsi(
    predict: Callable[[np.ndarray], Sequence[np.ndarray]],
    locs: np.ndarray,
    sent: np.ndarray,
    shape: tuple[int, int],
    save_path: Path,
    *,
    batch_size: int,
    memory_threshold: int,
    functions: Any = None,
    mask_bounds: tuple[int, int, int, int] | None = None,
) -> dict[str, Any]:
    """Run TIAToolbox's ``infer_wsi`` once; ``functions``: a module with the four merge
    functions to use instead of TIAToolbox's (None: TIAToolbox's own)."""
    module = engine_module()
    engine = module.MultiTaskSegmentor(model=make_model(predict), verbose=False)
    engine.mask_bounds = mask_bounds
    loader = make_dataloader(locs, sent, shape, batch_size)
    context = functions_of(module, functions) if functions is not None else contextlib.nullcontext()
    with context:
        return engine.infer_wsi(loader, save_path, memory_threshold=memory_threshold)
