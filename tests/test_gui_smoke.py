"""A real napari viewer opens and renders under Xvfb with a Qt6 binding."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_qt_binding_is_qt6_on_a_real_x_server(qapp):
    from qtpy import API_NAME, QT6

    assert QT6, f"qtpy picked {API_NAME}, expected a Qt6 binding"
    assert API_NAME in {"PyQt6", "PySide6"}
    # xcb = a real X server (Xvfb); "offscreen" would not give napari's vispy canvas a GL context.
    assert qapp.platformName() == "xcb"


def test_viewer_opens_and_screenshots_an_image_layer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black screenshots
    data = np.zeros((64, 48), dtype=np.float32)
    data[16:48, 12:36] = 1.0  # bright rectangle in the middle, dark border
    layer = viewer.add_image(data, contrast_limits=(0.0, 1.0), colormap="gray")

    assert layer.data.shape == (64, 48)
    assert viewer.layers[0] is layer
    viewer.reset_view()

    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[2] == 4, shot.shape
    assert shot.shape[0] > 0 and shot.shape[1] > 0
    assert shot.dtype == np.uint8
    rgb = shot[..., :3].astype(int)
    h, w = rgb.shape[:2]
    center = rgb[h // 2, w // 2]
    assert center.min() > 200, f"centre of the bright rectangle rendered as {center}"
    assert rgb[0, 0].max() < 50, f"corner (background) rendered as {rgb[0, 0]}"
    bright = (rgb.min(axis=-1) > 200).mean()
    assert 0.01 < bright < 0.9, f"{bright:.1%} of the canvas is bright: not a framed rectangle"
