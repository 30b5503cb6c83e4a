"""Evaluation of single-view reconstruction: ``python -m eval run ...`` and ``python -m eval metrics ...``.

    from eval import EvalConfig, evaluate
    result = evaluate(EvalConfig(data="chair_test.hdf5", out_dir="eval_out", checkpoint="svr.pt",
                                 train_data="chair_train.hdf5"))
    print(result.line())

- ``eval.run``: evaluation runs (ground truth, scoring, the loop over test shapes).
- ``eval.baseline``: the nearest-neighbour retrieval baseline every report shows beside the network.
- ``eval.report``: per_shape.csv/.json, summary.json/.md and the static report.html.
- ``eval.published``: the published numbers of IM-NET and Occupancy Networks, as data.
"""

from eval.baseline import retrieve
from eval.published import PUBLISHED, PublishedResult, published_results
from eval.run import EvalConfig, EvalResult, GroundTruth, evaluate, ground_truth, score_mesh

__all__ = [
    "EvalConfig",
    "EvalResult",
    "GroundTruth",
    "PUBLISHED",
    "PublishedResult",
    "evaluate",
    "ground_truth",
    "published_results",
    "retrieve",
    "score_mesh",
]
