"""Outputs of an evaluation run: tables (CSV, JSON, Markdown) and a static HTML report.

Files written into the output folder, each atomically (temporary file, then rename):

per_shape.csv
    One row per shape: ``name``, ``category``, ``view``, ``gt_kind`` (source_mesh / voxels64),
    ``prediction`` (ok / empty / missing / unreadable), the raw metrics of ``eval.run.METRICS``,
    ``evaluations`` and ``seconds`` (decoder evaluations and wall time of the reconstruction; empty
    for ``--meshes``); with the retrieval baseline also ``retrieved_name``, ``retrieval_distance``,
    ``retrieval_gt_kind`` and ``retrieval_<metric>`` for every metric.
per_shape.json
    The same rows as a JSON list (NaN and missing values as null).
summary.json
    ``run`` (settings and counts), ``conventions`` (sentences), ``methods`` -> ``network`` /
    ``retrieval`` -> ``categories`` / ``category_mean`` / ``shape_mean`` (raw means),
    ``network_better_fraction`` (share of shapes where the network beats retrieval, per metric), and
    ``published`` with ``--published``.
summary.md
    The conventions, then the tables, scaled as the papers print them (``TABLE_COLUMNS``).
report.html and images/
    Per shape: the input image, renders of the ground truth, the prediction and the retrieved shape
    from the input view's camera, and the metrics; tables sort by clicking a column header. Static:
    no server, nothing loaded from the network.

Metrics in the CSV and JSON files are raw; only the tables scale them (CD-L1 x10, CD-L2 x1000,
IM-NET Chamfer x1000) and say so in their headers.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from eval.published import CATEGORY_MEAN, CITATIONS, published_results
from imnet.atomic import write_atomic
from imnet.datafile import category_label
from imnet.images import VIEW_CROP, VIEW_SIZE
from imnet.metrics import IMNET_CD_SCALE, ONET_CD_SCALE
from imnet.render import View

RETRIEVAL_PREFIX = "retrieval_"

# (metric key, table header, factor applied in tables, higher is better)
TABLE_COLUMNS = (
    ("iou", "IoU", 1, True),
    ("chamfer_l1", f"CD-L1 ×{ONET_CD_SCALE}", ONET_CD_SCALE, False),
    ("chamfer_l2", "CD-L2 ×1000", 1000, False),
    ("normal_consistency", "NC", 1, True),
    ("fscore@1%", "F@1%", 1, True),
    ("fscore@2%", "F@2%", 1, True),
    ("chamfer_imnet", f"CD IM-NET ×{IMNET_CD_SCALE}", IMNET_CD_SCALE, False),
)
# The shorter set shown per shape in the HTML table, and in the one-line summary.
SHAPE_COLUMNS = ("iou", "chamfer_l1", "normal_consistency", "fscore@1%", "chamfer_imnet")
HEADLINE = ("iou", "chamfer_l1", "normal_consistency", "fscore@1%")

METHOD_LABELS = {"network": "IM-NET (this checkpoint)", "meshes": "given meshes", "retrieval": "retrieval baseline"}
PUBLISHED_LABEL = "published, their data/protocol (docs/published.md)"

RENDER_COLORS = {"gt": (0.7, 0.7, 0.7), "prediction": (0.55, 0.7, 0.95), "retrieved": (0.95, 0.7, 0.5)}

_COLUMNS = {key: (label, scale, higher) for key, label, scale, higher in TABLE_COLUMNS}
MEAN_KEYS = (*_COLUMNS, "accuracy", "completeness")  # metrics averaged in summary.json
MEAN_ROWS = ("category mean", "shape mean")
FIRST_HEADERS = ("category", "method", "shapes")
PUBLISHED_COLUMNS = ("iou", "chamfer_l1", "normal_consistency", "chamfer_imnet")  # what the papers report


# ---------------------------------------------------------------------------------------------
# Summary


def _means(rows: list[dict], prefix: str) -> dict:
    """Per-category means, their mean, and the mean over all shapes of the ``prefix`` metrics."""
    def mean(subset: list[dict]) -> dict:
        out = {"shapes": len(subset)}
        for key in MEAN_KEYS:
            values = np.array([row[prefix + key] for row in subset], dtype=np.float64)
            # nanmean: an IoU of 0/0 (both shapes empty in the box) is left out, as ONet does.
            out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else None
        return out

    categories = sorted({row["category"] for row in rows})
    per_category = {c: mean([row for row in rows if row["category"] == c]) for c in categories}
    category_mean = {"shapes": len(rows), "categories": len(categories)}
    for key in MEAN_KEYS:
        values = [m[key] for m in per_category.values() if m[key] is not None]
        category_mean[key] = float(np.mean(values)) if values else None
    return {"categories": per_category, "category_mean": category_mean, "shape_mean": mean(rows)}


def summarize(rows: list[dict], run: dict, *, published: bool = False) -> dict:
    """The content of ``summary.json``: run settings, conventions, means per method.

    Args:
        rows: per-shape rows of ``eval.run``.
        run: run settings (data, checkpoint, points, ...), stored as given.
        published: add the published numbers of the categories evaluated.
    """
    if not rows:
        raise ValueError("no shapes were evaluated")
    has_retrieval = "retrieved_name" in rows[0]
    run = {
        **run,
        "gt_kinds": dict(Counter(row["gt_kind"] for row in rows)),
        "predictions": dict(Counter(row["prediction"] for row in rows)),
    }
    methods = {"network": _means(rows, "")}
    summary = {"run": run, "conventions": conventions(run, has_retrieval), "methods": methods}
    if has_retrieval:
        methods["retrieval"] = _means(rows, RETRIEVAL_PREFIX)
        summary["network_better_fraction"] = {
            key: float(np.mean([_better(row[key], row[RETRIEVAL_PREFIX + key], higher) for row in rows]))
            for key, _, _, higher in TABLE_COLUMNS
        }
    if published:
        summary["published"] = {
            "label": PUBLISHED_LABEL,
            "results": [dataclasses.asdict(r) for r in published_results(sorted(methods["network"]["categories"]))],
        }
    return summary


def _better(ours: float, theirs: float, higher: bool) -> bool:
    return ours > theirs if higher else ours < theirs


def conventions(run: dict, has_retrieval: bool) -> list[str]:
    """The conventions of a run, in words, for the headers of summary.md and report.html."""
    lines = [
        f"Input: view {run['view']} of each test shape, the 128x128 crop [4:132, 4:132] of the stored 137x137 "
        "rendering (what the network was trained on). Conventions and metrics: docs/conventions.md."
        + (f" Reconstruction: coarse-to-fine marching cubes at {run['resolution']}^3, level {run.get('level') or 0.5:g} "
           "(the checkpoint's own iso-level)."
           if run.get("resolution") else f" Meshes read from {run['meshes']}."),
        "Ground truth: the source mesh of each shape normalised with the data file's centre/scale (source_mesh), "
        "else the marching-cubes surface of the stored 64^3 voxels (voxels64). Used here: "
        + ", ".join(f"{kind} x{count}" for kind, count in run["gt_kinds"].items()) + ".",
        f"IoU: {run['iou_points']} points uniform in [-0.55, 0.55]^3; ground-truth occupancy from the solid voxels "
        f"of the source mesh ({run['gt_resolution']}^3, imnet.voxelize) or the stored 64^3 voxels; predicted "
        "occupancy from the inside test on the predicted mesh (closed: marching cubes).",
        f"CD-L1, CD-L2, NC, F-score: Occupancy Networks' protocol, {run['surface_points']} points per surface, both "
        "scaled by the ground truth's bounding box to longest side 1. CD-L1 = mean of accuracy and completeness "
        f"(L1 = plain distances), printed x{ONET_CD_SCALE}; CD-L2 (squared distances) printed x1000; NC = mean |cos| of "
        "nearest-neighbour normals; F@1%/F@2%: threshold 1%/2% of the longest side. "
        "The per-shape CSV/JSON hold raw values.",
        f"CD IM-NET: IM-NET's protocol, {run['imnet_points']} points per surface, squared distances, both "
        f"directions' means summed, in object space (bounding-box diagonal 1), printed x{IMNET_CD_SCALE}.",
        "Empty, missing or unreadable predictions get worst-case values (IoU 0, CD-L1 sqrt(3), CD-L2 3, NC -1, "
        "F 0, CD IM-NET 6) and count in every mean.",
        "Means: 'category mean' is the mean of the per-category means (the papers' convention); 'shape mean' "
        "is the mean over all shapes.",
    ]
    if has_retrieval:
        lines.append(
            f"Retrieval baseline (Tatarchenko et al. 2019): the training shape of {run['train_data']} whose views "
            f"are nearest to the input image ({run['retrieval_features']} features, L2, best of its views) is the prediction; its "
            "ground truth (same rules) is scored like a reconstruction, with its solid voxels as predicted occupancy. "
            "A useful network beats it."
        )
    return lines


def headline(means: dict) -> str:
    """'IoU 0.512, CD-L1 ×10 0.321, ...' of a mean dict (raw values, scaled here)."""
    return ", ".join(f"{_COLUMNS[key][0]} {_format(means.get(key), _COLUMNS[key][1])}" for key in HEADLINE)


def _format(value: float | None, scale: float = 1) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value * scale:.3f}"


# ---------------------------------------------------------------------------------------------
# Tables


def _plain(value):
    """JSON-safe value: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _csv_text(rows: list[dict]) -> str:
    columns = [key for key in rows[0] if key != "images"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def markdown(summary: dict) -> str:
    """summary.md: conventions and the per-category table of every method (+ published numbers)."""
    run = summary["run"]
    lines = [f"# Evaluation of {run['checkpoint'] or run['meshes']} on {run['data']}", ""]
    lines += [f"{run['shapes']} shapes, predictions: "
              + ", ".join(f"{status} x{count}" for status, count in run["predictions"].items()) + ".", ""]
    lines += ["## Conventions", ""] + [f"- {line}" for line in summary["conventions"]] + [""]
    lines += ["## Results", "", "Arrows: ↑ higher is better, ↓ lower is better.", ""]
    lines += _markdown_table(_table_rows(summary))
    lines += identification_lines(summary)
    if "network_better_fraction" in summary:
        better = summary["network_better_fraction"]
        lines += ["", "Shapes where the network beats the retrieval baseline: "
                  + ", ".join(f"{_COLUMNS[key][0]} {100 * better[key]:.0f}%" for key in HEADLINE) + "."]
    if "published" in summary:
        lines += ["", "## Published numbers", "",
                  f"Labelled '{summary['published']['label']}': measured by their authors on ShapeNet's 13 categories "
                  "with 3D-R2N2's views and splits, their ground truth and sampling; not directly comparable with "
                  "the table above.", ""]
        lines += _markdown_table(_published_rows(summary), PUBLISHED_COLUMNS, first=("category", "method [table]"))
        sources = sorted({result["source"] for result in summary["published"]["results"]})
        lines += ["", "Sources:", ""] + [f"- [{source}] {CITATIONS[source]}" for source in sources]
    return "\n".join(lines) + "\n"



IDENTIFICATION_GRID = 32  # eval.run.IDENTIFICATION_RESOLUTION


def identification_lines(summary: dict) -> list[str]:
    """The identification table of summary.md (self-match, pred-pred vs gt-gt), or nothing."""
    found = summary["run"].get("identification")
    if not found:
        return []
    labels = {"network": METHOD_LABELS["meshes" if summary["run"].get("meshes") else "network"],
              "retrieval": METHOD_LABELS["retrieval"]}
    lines = ["", "## Identification: does each reconstruction follow its own input?", "",
             f"On the cell centres of a {IDENTIFICATION_GRID}^3 grid. Self-match: the share of shapes whose "
             "reconstruction has a higher IoU with its own ground truth than with every other test shape's (one "
             "answer for every input scores at most 1/N). Pred-pred / gt-gt: mean IoU between the reconstructions / "
             "the ground truths of different shapes; outputs more alike than the inputs mean an average shape.", "",
             f"| method | self-match ↑ | pred-pred IoU | gt-gt IoU | IoU at {IDENTIFICATION_GRID}^3 ↑ |",
             "|---|---:|---:|---:|---:|"]
    for method, values in found.items():
        lines.append(f"| {labels[method]} | {values['self_match']:.3f} | {values['pred_pred']:.3f} | "
                     f"{values['gt_gt']:.3f} | {values['iou']:.3f} |")
    return lines


def _headers(columns: tuple[str, ...] = tuple(_COLUMNS), first: tuple[str, ...] = FIRST_HEADERS) -> list[str]:
    return [*first] + [f"{_COLUMNS[key][0]} {'↑' if _COLUMNS[key][2] else '↓'}" for key in columns]


def _table_rows(summary: dict) -> list[list[str]]:
    """Rows of the results table: each category with every method, then the two means."""
    run, methods = summary["run"], summary["methods"]
    labels = {
        "network": METHOD_LABELS["meshes" if run.get("meshes") else "network"],
        "retrieval": METHOD_LABELS["retrieval"],
    }

    def row(first: str, method: str, means: dict) -> list[str]:
        values = [_format(means.get(key), scale) for key, _, scale, _ in TABLE_COLUMNS]
        return [first, labels[method], str(means["shapes"]), *values]

    rows = []
    for category in methods["network"]["categories"]:
        for method, means in methods.items():
            rows.append(row(category_label(category), method, means["categories"][category]))
    for which, label in zip(("category_mean", "shape_mean"), MEAN_ROWS):
        for method, means in methods.items():
            rows.append(row(label, method, means[which]))
    return rows


def _published_rows(summary: dict) -> list[list[str]]:
    grouped: dict[tuple[str, str, str], dict[str, float]] = {}
    for result in summary["published"]["results"]:
        grouped.setdefault((result["category"], result["method"], result["source"]), {})[result["metric"]] = result["value"]
    rows = []
    for (category, method, source), values in grouped.items():
        first = "13-category mean" if category == CATEGORY_MEAN else category_label(category)
        # Published values are stored as printed, i.e. already in the units of our columns.
        rows.append([first, f"published: {method} [{source}]"] + [
            f"{values[key]:.3f}" if key in values else "" for key in PUBLISHED_COLUMNS
        ])
    return rows


def _markdown_table(
    rows: list[list[str]], columns: tuple[str, ...] = tuple(_COLUMNS), first: tuple[str, ...] = FIRST_HEADERS
) -> list[str]:
    headers = _headers(columns, first)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|"]
    # Bold labels set the mean rows apart from the categories.
    rows = [[f"**{row[0]}**" if row[0] in MEAN_ROWS else row[0], *row[1:]] for row in rows]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write_tables(out_dir: Path, rows: list[dict], summary: dict) -> dict[str, Path]:
    """Write per_shape.csv, per_shape.json, summary.json and summary.md; returns name -> path."""
    out_dir = Path(out_dir)
    shape_rows = [{key: value for key, value in row.items() if key != "images"} for row in rows]
    contents = {
        "per_shape.csv": _csv_text(rows),
        "per_shape.json": json.dumps(_plain(shape_rows), indent=1, allow_nan=False) + "\n",
        "summary.json": json.dumps(_plain(summary), indent=1, allow_nan=False, ensure_ascii=False) + "\n",
        "summary.md": markdown(summary),
    }
    return {name: write_atomic(out_dir / name, text) for name, text in contents.items()}


# ---------------------------------------------------------------------------------------------
# HTML report


class ImageWriter:
    """Writes the pictures of the HTML report: ``<out>/images/NNNNN_<kind>.png``.

    Renders use ``imnet.render.render_rgb`` from the camera of the input view, at the stored views'
    size and with the network input's crop, so every picture of a row has the input's framing.
    Should OpenGL be unavailable, one warning is given and the report goes on without renders.
    """

    def __init__(self, out_dir: Path):
        self.folder = Path(out_dir) / "images"
        self.rendering = True
        self._renderer = None  # one OpenGL context for the whole report: making one costs more than a render

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def write(
        self,
        index: int,
        name: str,
        image: np.ndarray | None,
        meshes: dict[str, trimesh.Trimesh],
        camera: View,
    ) -> dict[str, str | None]:
        """Save the input image and renders of ``meshes`` (keys: gt, prediction, retrieved).

        Returns:
            kind -> path relative to the output folder, or None where there is no picture (no
            views in the data, an empty mesh, no OpenGL).
        """
        paths: dict[str, str | None] = {"input": None}
        if image is not None:
            paths["input"] = self._save(index, "input", np.asarray(image))
        for kind, mesh in meshes.items():
            paths[kind] = None
            if self.rendering and len(mesh.faces) > 0:
                picture = self._render(mesh, camera, RENDER_COLORS[kind], name)
                if picture is not None:
                    paths[kind] = self._save(index, kind, picture)
        return paths

    def _render(self, mesh: trimesh.Trimesh, camera: View, color, name: str) -> np.ndarray | None:
        from imnet.render import Renderer

        try:
            if self._renderer is None:
                self._renderer = Renderer(VIEW_SIZE)
            picture = self._renderer.shaded(mesh, camera.camera()[None], color=color)[0]
        except Exception as e:  # no EGL / OpenGL here: still worth a report with the numbers
            warnings.warn(f"rendering failed ({type(e).__name__}: {e}) at {name}; report.html has no renders", stacklevel=2)
            self.rendering = False
            return None
        return picture[VIEW_CROP, VIEW_CROP]  # framed like the network input

    def _save(self, index: int, kind: str, picture: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")
        path = write_atomic(self.folder / f"{index:05d}_{kind}.png", buffer.getvalue())
        return f"{self.folder.name}/{path.name}"


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; vertical-align: middle; }
td.text { text-align: left; }
th { text-align: center; background: #f2f2f2; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[data-order=asc]::after { content: " ▲"; } th[data-order=desc]::after { content: " ▼"; }
td img { display: block; width: 128px; height: 128px; }
td.none { color: #999; text-align: center; width: 128px; }
tr:nth-child(even) td { background: #fafafa; }
tr.mean td { font-weight: bold; }
.note { color: #555; max-width: 70em; }
"""

# Click a header to sort by that column (numbers as numbers, empty cells last); click again to reverse.
_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(th => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], col = th.cellIndex, dir = th.dataset.order === "asc" ? -1 : 1;
  th.parentNode.querySelectorAll("th").forEach(h => delete h.dataset.order);
  th.dataset.order = dir > 0 ? "asc" : "desc";
  const key = row => { const v = row.cells[col].dataset.v ?? row.cells[col].textContent;
    return v === "" ? null : isNaN(Number(v)) ? v : Number(v); };
  const cmp = (a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    return dir * (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))); };
  body.append(...[...body.rows].sort(cmp));
}));
"""


def _cell(text: str, *, sort_value: str | None = None, css: str = "") -> str:
    attributes = f' class="{css}"' if css else ""
    if sort_value is not None:
        attributes += f' data-v="{html.escape(sort_value)}"'
    return f"<td{attributes}>{html.escape(text)}</td>"


def _metric_cell(value: float | None, scale: float) -> str:
    finite = value is not None and math.isfinite(value)
    return _cell(_format(value, scale), sort_value=repr(value * scale) if finite else "")


def _image_cell(path: str | None, alt: str) -> str:
    if path is None:
        return '<td class="none">—</td>'
    return f'<td><img src="{html.escape(path)}" alt="{html.escape(alt)}" loading="lazy"></td>'


def _html_table(headers: list[str], body: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body) + "\n</tbody></table>"


def html_report(rows: list[dict], summary: dict) -> str:
    """report.html: conventions, the summary table, and one sortable row per shape with its pictures."""
    run = summary["run"]
    has_retrieval = "retrieval" in summary["methods"]
    title = f"Evaluation of {run['checkpoint'] or run['meshes']} on {run['data']}"

    summary_rows = [
        ('<tr class="mean">' if row[0] in MEAN_ROWS else "<tr>")
        + "".join(
            _cell(v, css="text") if i < 2 else _cell(v, sort_value=v if v != "n/a" else "") for i, v in enumerate(row)
        )
        + "</tr>"
        for row in _table_rows(summary)
    ]
    summary_table = _html_table(_headers(), summary_rows)

    pictures = ["input", "ground truth", "prediction"] + (["retrieved"] if has_retrieval else [])
    headers = ["#", "name", "category", *pictures]
    headers += [f"{_COLUMNS[key][0]}" for key in SHAPE_COLUMNS]
    if has_retrieval:
        headers += [f"retrieval {_COLUMNS[key][0]}" for key in SHAPE_COLUMNS] + ["retrieved shape"]
    headers += ["gt", "prediction status", "seconds"]
    body = []
    for i, row in enumerate(rows):
        images = row.get("images", {})
        cells = [
            _cell(str(i), sort_value=str(i)),
            _cell(row["name"], css="text"),
            _cell(category_label(row["category"]), css="text"),
        ]
        cells += [_image_cell(images.get("input"), f"input {row['name']}"),
                  _image_cell(images.get("gt"), f"ground truth {row['name']}"),
                  _image_cell(images.get("prediction"), f"prediction {row['name']}")]
        if has_retrieval:
            cells.append(_image_cell(images.get("retrieved"), f"retrieved {row['retrieved_name']}"))
        cells += [_metric_cell(row[key], _COLUMNS[key][1]) for key in SHAPE_COLUMNS]
        if has_retrieval:
            cells += [_metric_cell(row[RETRIEVAL_PREFIX + key], _COLUMNS[key][1]) for key in SHAPE_COLUMNS]
            cells.append(_cell(row["retrieved_name"], css="text"))
        seconds = row.get("seconds")
        cells += [_cell(row["gt_kind"], css="text"), _cell(row["prediction"], css="text"),
                  _cell("" if seconds is None else f"{seconds:.2f}", sort_value="" if seconds is None else repr(seconds))]
        body.append("<tr>" + "".join(cells) + "</tr>")
    shape_table = _html_table(headers, body)

    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<details open><summary>Conventions</summary><ul class=\"note\">"
        + "".join(f"<li>{html.escape(line)}</li>" for line in summary["conventions"]) + "</ul></details>",
        "<h2>Means</h2>", summary_table,
        "<h2>Shapes</h2>",
        '<p class="note">Pictures: the network input, then renders from the input view\'s camera. '
        "Click a column header to sort.</p>",
        shape_table,
        f"<script>{_SORT_JS}</script>", "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_html(out_dir: Path, rows: list[dict], summary: dict) -> Path:
    """Write report.html (its pictures were written by :class:`ImageWriter` into images/)."""
    return write_atomic(Path(out_dir) / "report.html", html_report(rows, summary))
