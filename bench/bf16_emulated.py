"""Does bfloat16 training learn as well as float32, step for step? Measurable on any CPU.

`--precision auto` trains in bf16 autocast on CPUs with AMX and on recent GPUs. Where bf16 is slow
(AVX2-only CPUs run it ~150x slower than fp32) a bf16 run of the demo cannot be timed, but its
numerics can be emulated in fp32: every linear, convolution and `baddbmm` (the ops CPU autocast runs
in bf16) gets its inputs, weights and output rounded to bf16 around an fp32 accumulation, as oneDNN's
bf16 kernels compute; their gradients are rounded to bf16 too, as autocast's backward makes them. The
rest of a step runs in fp32 on those rounded values (Adam updates the fp32 weights, as under
autocast). For the decoder and the voxel encoder this reproduces autocast's forward bit for bit
(tests/test_bf16_emulation.py); for the ResNet only approximately, as autocast also runs its batch
norms and residual sums in bf16.

    python bench/bf16_emulated.py              # the demo recipe, fp32 vs emulated bf16 (~25 min on 2 cores)
    python bench/bf16_emulated.py train ae ... # one train.py run (any of its arguments) under the emulation

The comparison trains the IM-AE twice (fp32, emulated) and the IM-SVR twice on the fp32 IM-AE's codes,
on bench_quality.py's 400 generated chairs (prepared if missing), for the epochs the learning curve's
x1 row reached in its minutes; scores both IM-SVRs with `eval run` on the 80 held-out chairs; and
writes bench/results/bf16_emulated.json (train.py's diagnostics and eval's means). Finished runs in
the work folder are reused. Wall times are the emulation's, not bf16's.
"""

from __future__ import annotations

import argparse
import json
import platform
import runpy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bf16_emulated.json"
sys.path.insert(0, str(ROOT / "bench"))
from bench_quality import DEMO_MODEL, HELD_OUT, diagnostics, evaluate, prepare_data, run  # noqa: E402  (the learning curve's data and runner)


class _RoundToBF16(torch.autograd.Function):
    """x -> x rounded to bf16 (kept in fp32); its gradient is rounded the same way."""

    @staticmethod
    def forward(ctx, x):
        return x.to(torch.bfloat16).float()

    @staticmethod
    def backward(ctx, grad):
        return grad.to(torch.bfloat16).float()


def _bf16(x):
    return x if x is None or x.dtype != torch.float32 else _RoundToBF16.apply(x)


def _emulated(op):
    """op(a, b, c, ...) with a, b, c and the result rounded to bf16: F.linear(x, w, bias),
    F.conv*(x, w, bias, ...), torch.baddbmm(c, a, b)."""
    def run(a, b, c=None, *args, **kwargs):
        return _bf16(op(_bf16(a), _bf16(b), _bf16(c), *args, **kwargs))
    return run


def install(set_attribute=setattr) -> None:
    """Replace the ops CPU autocast runs in bf16 by their emulations (`set_attribute`: e.g. a test's
    monkeypatch.setattr, which undoes it)."""
    for module, name in ((F, "linear"), (F, "conv2d"), (F, "conv3d"), (torch, "baddbmm")):
        set_attribute(module, name, _emulated(getattr(module, name)))


def train_emulated(args: list[str]) -> None:
    """Run train.py with `args` in fp32 under the emulation (in this process)."""
    if "--precision" in args and args[args.index("--precision") + 1:][:1] != ["fp32"]:
        sys.exit("bf16_emulated.py: the emulation runs in float32; leave --precision out")
    install()
    sys.argv = [str(ROOT / "train.py"), *args, "--precision", "fp32"]
    sys.path.insert(0, str(ROOT))
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")


def compare(work: Path, ae_epochs: str, svr_epochs: int) -> dict:
    previous = json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else {}

    def once(cmd: list[str], run_dir: Path, name: str, stage: str) -> float | None:
        """Run `cmd` (returns its seconds) unless `run_dir` holds a finished run: a stopped bench continues."""
        if (run_dir / "diagnostics.json").is_file():
            return previous.get(name, {}).get(stage, {}).get("wall_seconds")
        return round(run(cmd, run_dir.with_suffix(".log")))

    train, test, _ = prepare_data(work, 320 + HELD_OUT, "")
    out = work / "bf16_emulated"
    out.mkdir(parents=True, exist_ok=True)
    common = ["--data", str(train), "--val-data", str(test), "--val-every", "1000", "--checkpoint-every", "1000",
              "--device", "cpu"]
    ae = ["ae", *common, "--epochs", ae_epochs, "--final-val-shapes", "48", *DEMO_MODEL]
    fp32 = [sys.executable, str(ROOT / "train.py")]
    emulated = [sys.executable, __file__, "train"]
    runs = (("fp32", fp32, ["--precision", "fp32"]), ("bf16_emulated", emulated, []))
    results = {}
    for name, prefix, precision in runs:
        print(f"IM-AE, {name} ...", flush=True)
        seconds = once([*prefix, *ae, *precision, "--out-dir", str(out / f"ae_{name}")], out / f"ae_{name}", name, "ae")
        results[name] = {"ae": {**_scores(out / f"ae_{name}", "ae"), "wall_seconds": seconds}}
    if not (out / "codes.npz").is_file():
        run([*fp32, "codes", "--checkpoint", str(out / "ae_fp32" / "last.pt"), "--data", str(train), "--val-data", str(test),
             "--out", str(out / "codes.npz"), "--device", "cpu"], out / "codes.log")
    svr = ["svr", *common, "--epochs", str(svr_epochs), "--ae-checkpoint", str(out / "ae_fp32" / "last.pt"),
           "--codes", str(out / "codes.npz")]
    for name, prefix, precision in runs:
        print(f"IM-SVR (on the fp32 IM-AE's codes), {name} ...", flush=True)
        seconds = once([*prefix, *svr, *precision, "--out-dir", str(out / f"svr_{name}")], out / f"svr_{name}", name, "svr")
        results[name]["svr"] = {**_scores(out / f"svr_{name}", "svr"), "wall_seconds": seconds}
        # Meshes as a user gets them: reconstruct's bf16 recomputes points near the level in fp32,
        # so `eval run` in fp32 is what inference in either precision gives.
        summary_file, trained = out / f"eval_{name}" / "summary.json", out / f"svr_{name}" / "diagnostics.json"
        reuse = summary_file.is_file() and summary_file.stat().st_mtime > trained.stat().st_mtime  # evaluated since
        summary = json.loads(summary_file.read_text()) if reuse else evaluate(out / f"svr_{name}", train, test, out / f"eval_{name}", "cpu")[0]
        network = summary["methods"]["network"]["category_mean"]
        results[name]["eval"] = {"iou": round(network["iou"], 4), "chamfer_l1_x10": round(10 * network["chamfer_l1"], 4),
                                 "fscore@1%": round(network["fscore@1%"], 4), **_identification(summary)}
    return {"machine": {"platform": platform.platform(), "processor": platform.processor()},
            "data": f"{train.parent} (320 generated chairs, {HELD_OUT} held out)",
            "ae_epochs": ae_epochs, "svr_epochs": svr_epochs, "model": "demo widths", "runs": results}


def _scores(run_dir: Path, stage: str) -> dict:
    d = diagnostics(run_dir)
    if stage == "ae":
        keys = ("val_iou", "train_iou", "iso_level", "code_spread")
    else:
        keys = ("val_iou", "code_error_ratio", "self_match", "pred_pred", "gt_gt")
    return {"resolution": d["resolution"], **{k: round(float(d[k]), 4) for k in keys}}


def _identification(summary: dict) -> dict:
    ident = summary["run"]["identification"]["network"]
    return {k: round(float(ident[k]), 4) for k in ("self_match", "pred_pred", "gt_gt")}


def main() -> None:
    if sys.argv[1:2] == ["train"]:
        return train_emulated(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / "bench_out" / "quality",
                   help="bench_quality.py's work folder (its 400-chair data is reused or prepared there)")
    p.add_argument("--ae-epochs", default="16:4,32:8,64:29",
                   help="IM-AE epochs per level (default: what the learning curve's x1 row reached in its minutes)")
    p.add_argument("--svr-epochs", type=int, default=68, help="IM-SVR epochs (default: the x1 row's)")
    args = p.parse_args()
    results = compare(args.work, args.ae_epochs, args.svr_epochs)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    ae, svr = ({k: results["runs"][k][s] for k in ("fp32", "bf16_emulated")} for s in ("ae", "svr"))
    ev = {k: results["runs"][k]["eval"] for k in ("fp32", "bf16_emulated")}
    print(f"fp32 / bf16: IM-AE held-out IoU 64^3 {ae['fp32']['val_iou']:.3f} / {ae['bf16_emulated']['val_iou']:.3f}; "
          f"IM-SVR code error {svr['fp32']['code_error_ratio']:.3f} / {svr['bf16_emulated']['code_error_ratio']:.3f}; "
          f"eval IoU {ev['fp32']['iou']:.3f} / {ev['bf16_emulated']['iou']:.3f}, self-match "
          f"{ev['fp32']['self_match']:.2f} / {ev['bf16_emulated']['self_match']:.2f}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
