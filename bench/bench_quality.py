"""Quality against CPU time: a learning curve of the demo recipe and the ablations behind it.

    python bench/bench_quality.py                       # everything (hours on 2 CPU cores)
    python bench/bench_quality.py --only curve          # the learning curve only
    python bench/bench_quality.py --only curve --scales 3 --count 720   # x3 minutes on 640 training chairs
    python bench/bench_quality.py --only ablations --ablations ae_mse,svr_augment
    python bench/bench_quality.py --device cuda --paper-widths   # the same on a GPU, paper widths

Data: the demo's generated chairs (`python -m data_prep synthetic --categories chair --count 400`),
prepared once in `--work` (default bench_out/quality). Every run is the real programs: train.py
ae / codes / svr and `python -m eval run`, as a user would type them.

- **Learning curve**: the demo's training minutes (what demo.sh gives the two stages on 2 AVX2 cores:
  IM-AE 3.5, IM-SVR 4.3) scaled by `--scales` (default 1, 3, 6), then `eval run` on the held-out
  chairs beside the retrieval baseline:
  IoU, CD-L1, F@1%, self-match, pred-pred vs gt-gt IoU, plus the AE's IoU at 64^3 on training and
  held-out shapes and the CPU minutes spent.
- **Ablations**: one change at a time from the default recipe at scale 1 (equal minutes). IM-AE changes are scored
  by the AE's held-out IoU at 64^3 (diagnostics.json) and by its meshes (Chamfer-L1 and the number
  of mesh components against the exact-lattice truth, `ae_surfaces`); IM-SVR changes (trained on the default AE)
  by the SVR's held-out lattice IoU and self-match; changes to both stages (`pipeline_*`, e.g. the
  code size) by the whole pipeline and `eval run`, like the curve's x1 row.

Writes bench/results/quality.json (updated after every run, so a stopped bench keeps what it did).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "quality.json"
SYNSET = "03001627"

DEMO_MODEL = ["--decoder-widths", "256,256,128,64,32", "--voxel-channels", "8,16,32,64"]
PAPER_MODEL = ["--decoder-widths", "2048,1024,512,256,128", "--voxel-channels", "32,64,128,256"]
HELD_OUT = 80  # chairs held out of every data set, as in demo.sh
AE_LEVELS = "16:3,32:5,64:20"  # demo.sh: the shares of the IM-AE minutes that its levels get
AE_MINUTES, SVR_MINUTES = 3.5, 4.3  # what demo.sh's 850 s budget left the stages on 2 AVX2 cores (before the faster voxeliser: now ~0.5 min more)
DEMO_SVR: list[str] = []

# name -> (stage, extra options): one change from the default recipe each.
ABLATIONS = {
    "ae_default": ("ae", []),
    "ae_mse_loss": ("ae", ["--loss", "mse"]),
    "ae_sigmoid_codes": ("ae", ["--code-activation", "sigmoid"]),
    "ae_imnet_init": ("ae", ["--decoder-init", "imnet"]),
    "ae_raw_coordinates": ("ae", ["--point-octaves", "0"]),
    "ae_point_scale_8": ("ae", ["--point-octaves", "0", "--point-scale", "8"]),
    "ae_constant_lr": ("ae", ["--schedule", "constant", "--warmup", "0"]),
    "ae_no_uniform_points": ("ae", ["--uniform-fraction", "0"]),
    "ae_stretch": ("ae", ["--stretch", "0.2"]),  # docs/training.md A9
    "ae_batch_norm": ("ae", ["--voxel-norm", "batch"]),
    "ae_16_shapes_x_2048_points": ("ae", ["--batch-shapes", "16", "--points-per-shape", "2048"]),
    "ae_paper_recipe": ("ae", ["--preset", "paper"]),
    "svr_default": ("svr", []),
    "svr_augment": ("svr", ["--augment"]),
    "svr_occupancy_loss": ("svr", ["--occupancy-weight", "1"]),
    "svr_image_size_128": ("svr", ["--image-size", "128"]),
    "svr_32_images_per_step": ("svr", ["--batch-shapes", "32"]),
    "svr_identification_loss": ("svr", ["--match-weight", "0.1"]),  # docs/training.md S3
    "svr_flip": ("svr", ["--flip"]),
    # Both stages (the IM-AE with the change, the IM-SVR on its codes, eval): compare with the curve's x1 row.
    "pipeline_code_dim_64": ("pipeline", ["--code-dim", "64"]),
    "pipeline_code_dim_32": ("pipeline", ["--code-dim", "32"]),
}


def run(cmd: list[str], log: Path) -> float:
    """Run a command (output to `log`); returns its wall time. Fails loudly with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as f:
        result = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"bench_quality: {' '.join(cmd[:3])} ... failed (exit {result.returncode}); see {log}\n{tail}")
    return time.perf_counter() - start


def prepare_data(work: Path, count: int, suffix: str) -> tuple[Path, Path, float]:
    """`count` generated chairs, the last HELD_OUT of them held out (as demo.sh does)."""
    data = work / f"data{suffix}"
    train, test = data / f"{SYNSET}_train.hdf5", data / f"{SYNSET}_test.hdf5"
    seconds = 0.0
    if not (train.is_file() and test.is_file()):
        data.mkdir(parents=True, exist_ok=True)
        seconds = run([sys.executable, "-m", "data_prep", "synthetic", "--categories", "chair", "--count", str(count),
                       "--train-fraction", f"{(count - HELD_OUT) / count:.6f}", "--out", str(data),
                       "--workers", str(os.cpu_count() or 1)], work / f"data{suffix}.log")
    return train, test, seconds


def train_ae(out: Path, train: Path, test: Path, scale: float, model: list[str], extra: list[str], device: str) -> float:
    cmd = [sys.executable, "train.py", "ae", "--data", str(train), "--val-data", str(test), "--out-dir", str(out),
           "--epochs", AE_LEVELS, "--minutes", f"{AE_MINUTES * scale:g}", "--val-every", "1000", "--checkpoint-every", "1000",
           "--final-val-shapes", "48", "--device", device, *model, *extra]
    if "--preset" in extra:  # the paper's schedule would be hours: the same minutes, its other settings
        cmd += ["--batch-shapes", "32"]
    return run(cmd, out.with_suffix(".log"))


def train_codes(ae: Path, train: Path, test: Path, out: Path, device: str) -> float:
    return run([sys.executable, "train.py", "codes", "--checkpoint", str(ae / "last.pt"), "--data", str(train),
                "--val-data", str(test), "--out", str(out), "--device", device], out.with_suffix(".log"))


def train_svr(out: Path, ae: Path, codes: Path, train: Path, test: Path, scale: float, extra: list[str], device: str) -> float:
    cmd = [sys.executable, "train.py", "svr", "--data", str(train), "--val-data", str(test), "--ae-checkpoint",
           str(ae / "last.pt"), "--codes", str(codes), "--out-dir", str(out), "--minutes", f"{SVR_MINUTES * scale:g}",
           "--val-every", "1000", "--checkpoint-every", "1000", "--device", device, *DEMO_SVR, *extra]
    return run(cmd, out.with_suffix(".log"))


def evaluate(svr: Path, train: Path, test: Path, out: Path, device: str) -> tuple[dict, float]:
    seconds = run([sys.executable, "-m", "eval", "run", "--checkpoint", str(svr / "last.pt"), "--data", str(test),
                   "--train-data", str(train), "--out", str(out), "--resolution", "128", "--points", "30000",
                   "--surface-points", "30000", "--no-html", "--device", device], out.with_suffix(".log"))
    summary = json.loads((out / "summary.json").read_text())
    return summary, seconds


def diagnostics(run_dir: Path) -> dict:
    path = run_dir / "diagnostics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def ae_surfaces(run_dir: Path, test: Path, shapes: int = 24) -> dict:
    """The IM-AE's meshes of held-out shapes against the truth: what IoU misses (detached legs,
    floating blobs). Each shape: its AE code -> mesh at 64^3 (coarse to fine) vs the marching-cubes
    mesh of its exact 64^3 lattice (`occupancy_64`); Chamfer-L1 x10 on 20k points, mesh components."""
    import numpy as np
    import torch

    from imnet.checkpoint import load_model
    from imnet.datafile import open_datafile
    from imnet.extract import grid_to_mesh
    from imnet.inference import reconstruct_code
    from imnet.metrics import mesh_metrics
    from imnet.sampling import lattice_points

    model, _ = load_model(run_dir / "last.pt")
    model.eval()
    data = open_datafile(test)
    points = lattice_points(64)
    bounds = np.stack([points[0, 0, 0], points[-1, -1, -1]])  # lattice points as cell centres
    step = (bounds[1] - bounds[0]) / 63
    bounds = np.stack([bounds[0] - step / 2, bounds[1] + step / 2])
    chamfer, components = [], []
    for row in range(min(shapes, len(data))):
        truth = grid_to_mesh(data.occupancy_64[row].astype(np.float32), bounds=bounds)
        with torch.no_grad():
            code = model.voxel_encoder(torch.from_numpy(data.voxels[row:row + 1]).float()[:, None])[0]
        mesh = reconstruct_code(model, code, resolution=64, method="coarse_to_fine").mesh
        chamfer.append(mesh_metrics(mesh, truth, n_points=20_000, normalize=False)["chamfer_l1"])
        components.append(len(mesh.split(only_watertight=False)))
    return {"surface_shapes": len(chamfer), "cd_l1_x10": round(10 * float(np.mean(chamfer)), 4),
            "mesh_components": round(float(np.mean(components)), 2)}


def save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(RESULTS)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="bench_out/quality", help="working folder (data and runs; default %(default)s)")
    p.add_argument("--count", type=int, default=400, help="generated chairs, 80 of them held out (default %(default)s, "
                   "the demo's on 2 CPU cores); another count gets its own data, runs and results keys (suffix _<count>chairs)")
    p.add_argument("--scales", default="1,3,6", help="learning-curve budgets as multiples of the demo's training minutes")
    p.add_argument("--only", choices=["curve", "ablations"], help="run only one part")
    p.add_argument("--ablations", default="", help="comma-separated subset of: " + ", ".join(ABLATIONS))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--paper-widths", action="store_true", help="the paper's decoder and voxel encoder widths (GPU)")
    args = p.parse_args()

    if args.count != 400 and args.only != "curve":
        raise SystemExit("bench_quality: the ablations use the demo's 400 chairs; with --count give --only curve")
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = PAPER_MODEL if args.paper_widths else DEMO_MODEL
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update({"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                                "device": args.device}, "model": "paper widths" if args.paper_widths else "demo widths"})
    suffix = "" if args.count == 400 else f"_{args.count}chairs"
    train, test, data_seconds = prepare_data(work, args.count, suffix)
    results[f"data{suffix}"] = {"chairs": args.count, "held_out": HELD_OUT,
                                "seconds": round(data_seconds, 1) or results.get(f"data{suffix}", {}).get("seconds")}
    save(results)

    if args.only != "ablations":
        curve = results.setdefault(f"learning_curve{suffix}", {})
        for scale in [float(s) for s in args.scales.split(",")]:
            name = f"x{scale:g}"
            run_dir = work / f"curve_{name}{suffix}"
            run_dir.mkdir(exist_ok=True)
            ae_s = train_ae(run_dir / "ae", train, test, scale, model, [], args.device)
            codes_s = train_codes(run_dir / "ae", train, test, run_dir / "codes.npz", args.device)
            svr_s = train_svr(run_dir / "svr", run_dir / "ae", run_dir / "codes.npz", train, test, scale, [], args.device)
            summary, eval_s = evaluate(run_dir / "svr", train, test, run_dir / "eval", args.device)
            curve[name] = {
                "budget_minutes": {"ae": AE_MINUTES * scale, "svr": SVR_MINUTES * scale},
                "train_cpu_minutes": round((ae_s + codes_s + svr_s) / 60, 2),
                "ae_minutes": round(ae_s / 60, 2), "svr_minutes": round(svr_s / 60, 2), "eval_minutes": round(eval_s / 60, 2),
                "ae": {**diagnostics(run_dir / "ae"), **ae_surfaces(run_dir / "ae", test)}, "svr": diagnostics(run_dir / "svr"),
                "eval": summary.get("methods", summary),
            }
            save(results)
            print(f"curve {name}: {curve[name]['train_cpu_minutes']} min of training", flush=True)

    if args.only != "curve":
        ablations = results.setdefault("ablations", {})
        chosen = [a for a in args.ablations.split(",") if a] or list(ABLATIONS)
        unknown = [a for a in chosen if a not in ABLATIONS]
        if unknown:
            raise SystemExit(f"bench_quality: unknown ablations {unknown}; choose from {', '.join(ABLATIONS)}")
        base_ae = work / "abl_ae_default"
        for name in chosen:
            stage, extra = ABLATIONS[name]
            run_dir = work / f"abl_{name}"
            if stage == "ae":
                seconds = train_ae(run_dir, train, test, 1.0, model, extra, args.device)
                ablations[name] = {"change": " ".join(extra) or "(none)", "minutes": round(seconds / 60, 2),
                                   **diagnostics(run_dir), **ae_surfaces(run_dir, test)}
            elif stage == "pipeline":
                run_dir.mkdir(exist_ok=True)
                ae_s = train_ae(run_dir / "ae", train, test, 1.0, model, extra, args.device)
                train_codes(run_dir / "ae", train, test, run_dir / "codes.npz", args.device)
                svr_s = train_svr(run_dir / "svr", run_dir / "ae", run_dir / "codes.npz", train, test, 1.0, [], args.device)
                summary, _ = evaluate(run_dir / "svr", train, test, run_dir / "eval", args.device)
                ablations[name] = {"change": " ".join(extra), "minutes": round((ae_s + svr_s) / 60, 2),
                                   "ae": diagnostics(run_dir / "ae"), "svr": diagnostics(run_dir / "svr"),
                                   "eval": summary["methods"]}
            else:
                if not (base_ae / "last.pt").is_file():
                    train_ae(base_ae, train, test, 1.0, model, [], args.device)
                codes = work / "abl_codes.npz"
                if not codes.is_file():
                    train_codes(base_ae, train, test, codes, args.device)
                seconds = train_svr(run_dir, base_ae, codes, train, test, 1.0, extra, args.device)
                ablations[name] = {"change": " ".join(extra) or "(none)", "minutes": round(seconds / 60, 2), **diagnostics(run_dir)}
            save(results)
            result = ablations[name]
            score = result["eval"]["network"]["category_mean"]["iou"] if stage == "pipeline" else result.get("val_iou")
            print(f"ablation {name}: {score}", flush=True)
    print(f"bench_quality: wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
