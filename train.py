"""Train IM-NET in the paper's two stages.

    python train.py ae    --data chair_train.hdf5 --val-data chair_test.hdf5 --out-dir runs/chair_ae
    python train.py codes --checkpoint runs/chair_ae/last.pt --data chair_train.hdf5 \\
                          --val-data chair_test.hdf5 --out runs/chair_ae/codes.npz
    python train.py svr   --data chair_train.hdf5 --val-data chair_test.hdf5 \\
                          --ae-checkpoint runs/chair_ae/last.pt --codes runs/chair_ae/codes.npz --out-dir runs/chair_svr

1. `ae`: a 3D CNN encodes the 64^3 voxels of each shape into a 128-d code; the decoder learns the
   occupancy of sampled points from [point, code]. Trained progressively on the 16^3, 32^3, then
   64^3 point samples (`--epochs 16:E1,32:E2,64:E3`), each level starting from the previous weights.
2. `codes`: the trained encoder's code of every training (and validation) shape.
3. `svr`: a ResNet-18 learns to predict a shape's code from one of its rendered views; the decoder
   is frozen, so the SVR checkpoint reconstructs meshes from images on its own.

`python train.py speed [model options]` times both stages' training steps on this machine (random
inputs, ~10 s) and prints one line: the steps per second, the device and the precision.

Add --resume to continue a run in --out-dir exactly where it stopped (level, epoch, optimiser,
random streams); options given with --resume override the saved ones. Several GPUs or CPU
processes: `torchrun --nproc_per_node N train.py ae ...` (batch per process, lr not scaled).
Exit status: 0 done, 1 training diverged (NaN/inf loss), 2 a usage mistake (message on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from imnet.checkpoint import CheckpointError, load_checkpoint
from imnet.config import AEConfig, ModelConfig, SVRConfig, config_from_dict
from imnet.speed import training_speed
from imnet.training import SetupError, TrainingDiverged, extract_codes, train_ae, train_svr


def parse_levels(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """'16:100,32:100,64:200' -> levels (16, 32, 64), epochs (100, 100, 200)."""
    try:
        pairs = [item.split(":") for item in text.split(",")]
        levels, epochs = zip(*((int(level), int(count)) for level, count in pairs))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LEVEL:EPOCHS pairs such as 16:100,32:100,64:200, got {text!r}") from None
    return tuple(levels), tuple(epochs)


def int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_run_options(p: argparse.ArgumentParser, defaults: AEConfig | SVRConfig) -> None:
    """Options both training stages share. Defaults are the config's (`imnet.config`)."""
    p.add_argument("--data", metavar="HDF5", help="HDF5 data file of the training shapes (from `python -m data_prep` or IM-NET's "
                   "published data); one category for a per-category model, or several in one file")
    p.add_argument("--val-data", metavar="HDF5", help="HDF5 data file of held-out shapes for validation (IoU, loss, best.pt)")
    p.add_argument("--out-dir", metavar="DIR", help=f"where checkpoints and logs go (default {defaults.out_dir})")
    p.add_argument("--batch-shapes", type=int, help=f"shapes per step and process (default {defaults.batch_shapes})")
    p.add_argument("--lr", type=float, help=f"peak Adam learning rate (default {defaults.lr})")
    p.add_argument("--beta1", type=float, help=f"Adam beta1 (default {defaults.beta1})")
    p.add_argument("--warmup", type=float, help=f"share of the steps with a linearly rising learning rate (default {defaults.warmup})")
    p.add_argument("--schedule", choices=["cosine", "constant"], help=f"learning rate after the warm-up (default {defaults.schedule})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="auto: cuda, else mps, else cpu (default auto)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="bf16 autocast or fp32; auto: bf16 only where it "
                   "measures fast (recent GPUs, CPUs with AVX-512-BF16/AMX), recorded in the checkpoint (default auto)")
    p.add_argument("--preset", choices=["paper"], help="start from the paper's settings (Chen & Zhang 2019) instead of "
                   "the measured defaults; other options given override it")
    p.add_argument("--seed", type=int, help=f"random seed (default {defaults.seed})")
    p.add_argument("--val-every", type=int, help=f"epochs between validations (default {defaults.val_every})")
    p.add_argument("--val-resolution", type=int, help="validation IoU on this sub-lattice of the exact 64^3 "
                   f"validation lattice; divides 64 (default {defaults.val_resolution})")
    p.add_argument("--val-shapes", type=int, help=f"validate on at most this many shapes (0: all; default {defaults.val_shapes})")
    p.add_argument("--checkpoint-every", type=int, help=f"epochs between checkpoints (default {defaults.checkpoint_every})")
    p.add_argument("--workers", type=int, help=f"DataLoader worker processes (default {defaults.workers})")
    p.add_argument("--minutes", type=float, help="train for this many minutes of wall time instead of a number of epochs "
                   "(validations count, setup and the final validation do not); the learning rate follows the time and "
                   "IM-AE's levels get the shares of it that --epochs gives them (default 0: train the epochs)")
    p.add_argument("--resume", action="store_true", default=False, help="continue the run in --out-dir from its last.pt")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs of this call (resumable), e.g. to fit a time slot")


def add_model_options(p: argparse.ArgumentParser, model: ModelConfig) -> None:
    """Options that name the architecture (`ModelConfig`)."""
    p.add_argument("--code-dim", type=int, help=f"shape code size (default {model.code_dim})")
    p.add_argument("--decoder-widths", type=int_tuple, metavar="W,...", help=f"decoder hidden widths (default {','.join(map(str, model.decoder_widths))})")
    p.add_argument("--no-decoder-skips", dest="decoder_skips", action="store_false",
                   help="do not feed [point, code] to every decoder layer (the paper does)")
    p.add_argument("--voxel-channels", type=int_tuple, metavar="C,...", help="voxel encoder channels "
                   f"(default {','.join(map(str, model.voxel_channels))})")
    p.add_argument("--voxel-norm", choices=["batch", "instance", "none"], help=f"voxel encoder normalisation (default {model.voxel_norm})")
    p.add_argument("--point-octaves", type=int, help=f"Fourier feature octaves of the query point; 0: raw coordinates (paper) "
                   f"(default {model.point_octaves})")
    p.add_argument("--point-scale", type=float, help="with --point-octaves 0 only: the decoder sees this times the point "
                   f"(default {model.point_scale}; the paper: 1)")
    p.add_argument("--code-activation", choices=["none", "sigmoid"], help=f"shape code activation; sigmoid is the paper's "
                   f"(default {model.code_activation})")
    p.add_argument("--decoder-init", choices=["blocks", "imnet"], help=f"decoder weight initialisation (default {model.decoder_init})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    # SUPPRESS: only the options actually given appear, so that --resume can tell what to override.
    ae_defaults, svr_defaults, model = AEConfig(), SVRConfig(), ModelConfig()

    p = sub.add_parser("ae", argument_default=argparse.SUPPRESS, help="train the IM-AE (voxel encoder + decoder)",
                       description="Train the IM-AE progressively over the 16^3, 32^3 and 64^3 point samples.")
    add_run_options(p, ae_defaults)
    default_epochs = ",".join(f"{level}:{n}" for level, n in zip(ae_defaults.levels, ae_defaults.epochs))
    p.add_argument("--epochs", type=parse_levels, metavar="L:E,...", help=f"LEVEL:EPOCHS per sampling level, coarse to fine (default {default_epochs})")
    p.add_argument("--points-per-shape", type=int, help="random subset of each shape's points per step; 0: all "
                   f"(default {ae_defaults.points_per_shape})")
    p.add_argument("--uniform-fraction", type=float, help="share of those points taken from the coarse level-16 set at "
                   f"levels 32 and 64 (default {ae_defaults.uniform_fraction})")
    p.add_argument("--stretch", type=float, help="augmentation: stretch each training shape along x, y and z by random "
                   "factors in [1/(1+S), 1+S], keeping its bounding-box diagonal; 0: none "
                   f"(default {ae_defaults.stretch})")
    p.add_argument("--loss", choices=["bce", "mse"], help=f"occupancy loss: bce on logits or mse (paper) (default {ae_defaults.loss})")
    p.add_argument("--final-val-resolution", type=int, help="one last validation at this lattice resolution, written to "
                   f"diagnostics.json; 0: none (default {ae_defaults.final_val_resolution})")
    p.add_argument("--final-val-shapes", type=int, help=f"shapes of each split in it (default {ae_defaults.final_val_shapes})")
    p.add_argument("--calibration-shapes", type=int, help="training shapes on which the iso-level of the meshes is "
                   "measured at the end (stored in the checkpoint; reconstruct.py, eval and the app use it); 0: keep 0.5 "
                   f"(default {ae_defaults.calibration_shapes})")
    add_model_options(p, model)

    p = sub.add_parser("codes", help="encode every shape with a trained IM-AE",
                       description="Write the IM-AE codes of the training (and validation) shapes to a .npz "
                       "(train_codes, train_names, val_codes, val_names), the IM-SVR targets.")
    p.add_argument("--checkpoint", required=True, help="IM-AE checkpoint (last.pt or best.pt)")
    p.add_argument("--data", required=True, help="HDF5 data file of the training shapes")
    p.add_argument("--val-data", default="", help="HDF5 data file of the validation shapes")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--batch-shapes", type=int, default=32, help="shapes per forward pass (default 32)")

    p = sub.add_parser("svr", argument_default=argparse.SUPPRESS, help="train the IM-SVR image encoder",
                       description="Train a ResNet-18 to regress the IM-AE codes from rendered views; the decoder is frozen.")
    add_run_options(p, svr_defaults)
    p.add_argument("--ae-checkpoint", metavar="PT", help="the trained IM-AE (its decoder is reused, frozen)")
    p.add_argument("--codes", metavar="NPZ", help="the .npz written by `train.py codes`")
    p.add_argument("--epochs", type=int, help=f"epochs (default {svr_defaults.epochs})")
    p.add_argument("--pretrained-image-encoder", metavar="PTH", help="local torchvision ResNet-18 ImageNet weights (.pth) to start from")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, help="random shift/scale/tone of the views "
                   f"(default {'on' if svr_defaults.augment else 'off'}: it lowered held-out IoU in our ablation)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, help="mirror training views left-right at random: "
                   "right for shapes symmetric about their x = 0 plane (most chairs, tables, cars, airplanes), where "
                   f"the mirrored view is the view from the mirrored camera (default {'on' if svr_defaults.flip else 'off'})")
    p.add_argument("--image-size", type=int, help="side the ResNet works at: the 128x128 views are area-averaged to it "
                   f"(the paper: 128; default {svr_defaults.image_size}, which trains twice the steps per minute and measured better)")
    p.add_argument("--occupancy-weight", type=float, help="weight of an occupancy loss through the frozen decoder beside the "
                   f"code loss (default {svr_defaults.occupancy_weight})")
    p.add_argument("--occupancy-points", type=int, help=f"points per shape of that loss (default {svr_defaults.occupancy_points})")
    p.add_argument("--match-weight", type=float, help="weight of an identification loss beside the code loss: each "
                   "predicted code should lie nearer its own shape's code than any other training shape's "
                   f"(default {svr_defaults.match_weight}; 0: off)")
    p.add_argument("--match-temperature", type=float, help="its softmax temperature, in mean squared standardised "
                   f"code distance (default {svr_defaults.match_temperature})")
    p.add_argument("--train-views", type=int, help="train on views 0..K-1 only, keeping the others held out "
                   "for testing (default: all 24)")
    p.add_argument("--val-view", type=int, help=f"the view (0-23) used for validation (default {svr_defaults.val_view})")

    p = sub.add_parser("speed", argument_default=argparse.SUPPRESS, help="measure this machine's training steps per second",
                       description="Time IM-AE and IM-SVR training steps of the given architecture on random inputs "
                       "(imnet.speed) and print one line: ae_steps_per_second=... svr_steps_per_second=... device=... "
                       "precision=... `make demo` sizes its data with it.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="auto: cuda, else mps, else cpu (default auto)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="as in training (default auto)")
    p.add_argument("--seconds", type=float, help="time each stage's steps for this long (default 2)")
    p.add_argument("--image-size", type=int, help=f"the IM-SVR ResNet's input side (default {svr_defaults.image_size})")
    add_model_options(p, model)
    return parser


def make_config(cls: type, args: argparse.Namespace):
    """The run's config: the defaults (or the paper preset, or with --resume the saved run's config)
    updated with the options given."""
    options = {k: v for k, v in vars(args).items() if k not in ("command", "resume", "stop_after", "preset")}
    if "epochs" in options and isinstance(options["epochs"], tuple) and cls is AEConfig:
        options["levels"], options["epochs"] = options["epochs"]
    config = cls.paper() if getattr(args, "preset", None) == "paper" else cls()
    if args.resume:
        out_dir = Path(options.get("out_dir", config.out_dir))
        saved = load_checkpoint(out_dir / "last.pt") if (out_dir / "last.pt").is_file() else None
        if saved is not None:
            saved_config = {k: v for k, v in saved["config"].items() if k != "precision_used"}
            config = config_from_dict(cls, saved_config)
    # Options that name the architecture go to the config's ModelConfig, where it has one (IM-AE's);
    # IM-SVR has none: its image_size is its own option.
    has_model = any(f.name == "model" for f in dataclasses.fields(cls))
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} if has_model else set()
    model_options = {k: options.pop(k) for k in list(options) if k in model_fields}
    if model_options:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, **model_options))
    return dataclasses.replace(config, **options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "speed":
            options = vars(args)
            model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
            model_config = ModelConfig(**{k: v for k, v in options.items() if k in model_fields})
            svr_config = SVRConfig(image_size=options.get("image_size", SVRConfig().image_size))
            try:
                speed = training_speed(model_config, svr=svr_config, device=options.get("device", "auto"),
                                       precision=options.get("precision", "auto"), seconds=options.get("seconds", 2.0))
            except ValueError as e:  # a setting the networks reject, or a device that is not here
                raise SetupError(str(e)) from None
            print(speed)
            return 0
        if args.command == "codes":
            out = extract_codes(args.checkpoint, args.data, args.out, args.val_data, args.device, args.batch_shapes)
            print(f"codes: wrote {out}")
            return 0
        config = make_config(AEConfig if args.command == "ae" else SVRConfig, args)
        if not config.data:
            raise SetupError("give the training data file with --data")
        train = train_ae if args.command == "ae" else train_svr
        summary = train(config, resume=args.resume, stop_after_epochs=args.stop_after)
    except (SetupError, CheckpointError, FileNotFoundError) as e:
        print(f"train.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"train.py {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"train.py {args.command}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", 0)) == 0:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
