"""Display defaults that never hide data: which images are overlays, and how overlays look.

An image that is the picture itself (an RGB slide, a plain grey image) is drawn as napari
draws it. Everything derived from it (probability maps, model heads, heatmaps, multi-channel
stacks) is an *overlay*: each channel gets a colormap that is transparent at the bottom of
its display window and fully coloured at the top, with translucent blending, so that where
the overlay is low the layers under it show unchanged, and where it is high they still show
through. Overlays opened together get distinct colours. Spill parts of a canvas use a
multi-hue colormap no head uses, so a part can be told from the canvas under it.

Pure functions over layer data tuples; napari's colormap class is the only napari import.
"""

from __future__ import annotations

from typing import Any

OVERLAY_OPACITY = 0.6
OVERLAY_BLENDING = "translucent"
OVERLAY_HUES = ("#ff8c00", "#00bfff", "#ff1493", "#ffff00", "#7fff00", "#ffffff")
"""Colours of single-channel overlays, in the order they are opened together (channels of
multi-channel images keep their own colours: magenta, green, cyan, ... or their ``omero``
colours)."""
SPILL_COLORMAP = "viridis"
"""Colormap of canvas spill parts (ramped like the overlays)."""


def ramp(colour: str) -> Any:
    """A colormap from transparent to ``colour`` (a colour name or ``#rrggbb``)."""
    from napari.utils.colormaps import Colormap
    from napari.utils.colormaps.standardize_color import transform_color

    r, g, b, _ = transform_color(colour)[0]
    name = _ramp_name(colour)
    return Colormap([[r, g, b, 0.0], [r, g, b, 1.0]], name=name, display_name=name)


def ramped(colormap: str) -> Any:
    """The napari colormap ``colormap`` with its opacity rising from 0 to 1 along it."""
    import numpy as np
    from napari.utils.colormaps import Colormap, ensure_colormap

    base = ensure_colormap(colormap)
    controls = np.linspace(0, 1, 16)
    colours = base.map(controls)
    colours[:, 3] = controls
    name = _ramp_name(colormap)
    return Colormap(colours, controls=controls, name=name, display_name=name)


def overlay(kwargs: dict[str, Any], colours: list[str] | None = None) -> dict[str, Any]:
    """``kwargs`` of an image layer turned into an overlay.

    ``colours`` gives one colour per channel of a layer split along ``channel_axis``; a
    single-channel layer gets the first overlay colour (:func:`distinct_overlays` gives
    overlays opened together different ones).
    """
    colormap: Any = [ramp(c) for c in colours] if colours else ramp(OVERLAY_HUES[0])
    return {
        **kwargs,
        "colormap": colormap,
        "blending": OVERLAY_BLENDING,
        "opacity": OVERLAY_OPACITY,
    }


def probability_window(low: float, high: float) -> list[float]:
    """The display window of values from ``low`` to ``high``: 0..1 when they are within it
    (a probability shows as what it is, a constant map is not invisible), else the range."""
    if low >= 0 and high <= 1 + 1e-6:
        return [0.0, 1.0]
    return [float(low), float(high) if high > low else float(low) + 1]


def spill(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` of a spill part's layer: the spill colormap, translucent."""
    return {
        **kwargs,
        "colormap": ramped(SPILL_COLORMAP),
        "blending": OVERLAY_BLENDING,
        "opacity": OVERLAY_OPACITY,
    }


def _ramp_name(colour: str) -> str:
    return f"cachetree {colour} ramp"


def is_single_overlay(kwargs: dict[str, Any], layer_type: str) -> bool:
    """Whether layer data kwargs are those of a single-channel overlay (from :func:`overlay`)."""
    names = {_ramp_name(hue) for hue in OVERLAY_HUES}
    return layer_type == "image" and getattr(kwargs.get("colormap"), "name", None) in names


def distinct_overlays(layers: list[tuple[Any, dict[str, Any], str]]) -> None:
    """Give the single-channel overlays among ``layers`` different colours, in order."""
    index = 0
    for _, kwargs, layer_type in layers:
        if is_single_overlay(kwargs, layer_type):
            kwargs["colormap"] = ramp(OVERLAY_HUES[index % len(OVERLAY_HUES)])
            index += 1
