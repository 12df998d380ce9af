"""Demo pipelines on the shipped sample data, every step a cache node.

``cachetree demo`` runs the quick demo (``cachetree.demo.quick``, :func:`run_demo`) on the
512 x 512 sample image in seconds. ``cachetree demo --size N`` runs the whole-slide demo
(:func:`cachetree.demo.wsi.run_wsi`) on a synthetic N x N slide built from it
(:mod:`cachetree.demo.slide`), at the scale cachetree is made for.
"""

from .quick import (
    SAMPLE_DATA_DIR,
    DemoParams,
    Progress,
    count_nuclei,
    density_figure,
    density_worker,
    label_nuclei,
    load_sample_image,
    patch_boxes,
    patch_model,
    run_demo,
)

__all__ = [
    "SAMPLE_DATA_DIR",
    "DemoParams",
    "Progress",
    "count_nuclei",
    "density_figure",
    "density_worker",
    "label_nuclei",
    "load_sample_image",
    "patch_boxes",
    "patch_model",
    "run_demo",
]
