"""Published single-view reconstruction numbers, as data; docs/published.md lists them with the
paper or release each comes from.

These are THEIR numbers, on THEIR data and protocol: ShapeNet's 13 categories with 3D-R2N2's
views and test splits, their ground-truth meshes (Occupancy Networks: watertight re-meshes), their
point counts and normalisation. They are printed beside ours to give a sense of scale, never as a
like-for-like comparison: our runs use other splits, other ground truth (see ``eval.run``) and often
other data altogether.

Values are stored as the papers print them, which is also the unit of the matching column of our
tables (``TABLE_SCALES`` in ``eval.report``): IoU and normal consistency as is, ONet's Chamfer-L1 x10,
IM-NET's Chamfer x1000.
"""

from __future__ import annotations

from dataclasses import dataclass

ONET_UPDATED = "ONet, updated table"
ONET_PAPER = "ONet, CVPR 2019 Table 1"
IMNET_IMPROVED = "IM-NET improved release"
IMNET_ORIGINAL = "IM-NET original, first 100 test shapes"

CITATIONS = {
    ONET_UPDATED: "Mescheder et al., Occupancy Networks: Learning 3D Reconstruction in Function Space, CVPR 2019; "
    "the updated single-view table of their code release (github.com/autonomousvision/occupancy_networks, README), "
    "a model trained without image augmentation",
    ONET_PAPER: "Mescheder et al., Occupancy Networks: Learning 3D Reconstruction in Function Space, CVPR 2019, Table 1 "
    "(3D-R2N2, Pixel2Mesh and AtlasNet as measured there)",
    IMNET_IMPROVED: "Chen & Zhang, the improved IM-NET release (github.com/czq142857/IM-NET, README evaluation table): "
    "one model for 13 categories, IM-NET's Chamfer protocol, with Occupancy Networks and AtlasNet measured the same way",
    IMNET_ORIGINAL: "Chen & Zhang, Learning Implicit Fields for Generative Shape Modeling, CVPR 2019, single-view "
    "reconstruction table (first 100 test shapes of each category)",
}
"""Where each table of published numbers was printed (docs/published.md)."""

CATEGORY_MEAN = "mean"
"""The ``category`` of a number averaged over the 13 categories."""


@dataclass(frozen=True)
class PublishedResult:
    """One published number.

    Attributes:
        method: the system measured, e.g. "Pixel2Mesh".
        source: where the number was printed (one of the ``ONET_*`` / ``IMNET_*`` tables).
        protocol: "onet" (100k points, longest side 1, CD-L1) or "imnet" (4096 points, squared L2
            summed over both directions, the shapes' own frame).
        category: ShapeNet synset id, or ``CATEGORY_MEAN``.
        metric: the key of our per-shape metric it corresponds to: "iou", "chamfer_l1",
            "normal_consistency" or "chamfer_imnet".
        value: as printed (CD-L1 x10, IM-NET Chamfer x1000).
    """

    method: str
    source: str
    protocol: str
    category: str
    metric: str
    value: float


def _rows(method: str, source: str, protocol: str, table: dict[str, dict[str, float]]) -> list[PublishedResult]:
    return [
        PublishedResult(method, source, protocol, category, metric, value)
        for category, metrics in table.items()
        for metric, value in metrics.items()
    ]


_AIRPLANE, _CAR, _CHAIR, _TABLE = "02691156", "02958343", "03001627", "04379243"

PUBLISHED: tuple[PublishedResult, ...] = tuple(
    _rows("Occupancy Networks", ONET_UPDATED, "onet", {
        CATEGORY_MEAN: {"iou": 0.593, "chamfer_l1": 0.194, "normal_consistency": 0.840},
        _AIRPLANE: {"iou": 0.591, "chamfer_l1": 0.134},
        _CAR: {"iou": 0.746, "chamfer_l1": 0.149},
        _CHAIR: {"iou": 0.530, "chamfer_l1": 0.206},
        _TABLE: {"iou": 0.542, "chamfer_l1": 0.182},
    })
    + _rows("Occupancy Networks", ONET_PAPER, "onet", {
        CATEGORY_MEAN: {"iou": 0.571, "chamfer_l1": 0.215, "normal_consistency": 0.834},
    })
    + _rows("3D-R2N2", ONET_PAPER, "onet", {CATEGORY_MEAN: {"iou": 0.493}})
    + _rows("Pixel2Mesh", ONET_PAPER, "onet", {CATEGORY_MEAN: {"iou": 0.480}})
    + _rows("AtlasNet", ONET_PAPER, "onet", {CATEGORY_MEAN: {"chamfer_l1": 0.175}})
    + _rows("IM-NET", IMNET_IMPROVED, "imnet", {
        CATEGORY_MEAN: {"chamfer_imnet": 1.524, "normal_consistency": 0.807},
        _AIRPLANE: {"chamfer_imnet": 0.691},
        _CAR: {"chamfer_imnet": 0.746},
        _CHAIR: {"chamfer_imnet": 1.183},
        _TABLE: {"chamfer_imnet": 1.638},
    })
    + _rows("Occupancy Networks", IMNET_IMPROVED, "imnet", {CATEGORY_MEAN: {"chamfer_imnet": 2.262}})
    + _rows("AtlasNet (25 patches)", IMNET_IMPROVED, "imnet", {CATEGORY_MEAN: {"chamfer_imnet": 1.246}})
    + _rows("IM-SVR", IMNET_ORIGINAL, "imnet", {
        _AIRPLANE: {"chamfer_imnet": 0.974},
        _CAR: {"chamfer_imnet": 0.968},
        _CHAIR: {"chamfer_imnet": 2.209},
        _TABLE: {"chamfer_imnet": 1.897},
    })
)


def published_results(categories: list[str] | None = None) -> list[PublishedResult]:
    """Published numbers for the given synset ids (and always the 13-category means).

    Args:
        categories: synset ids such as "03001627"; None for all.

    Returns:
        The matching ``PublishedResult`` rows, in table order.
    """
    wanted = None if categories is None else {*categories, CATEGORY_MEAN}
    return [row for row in PUBLISHED if wanted is None or row.category in wanted]
