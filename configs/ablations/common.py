"""What the ablation configs share: the offline datasets and the run every ablation varies.

A run of an ablation is configs/transfer.py (loaded from beside this directory, so its defaults
are the ones the ablations measure) on one of `DATASETS`, with these arguments beside
transfer.py's own (model, strategy, res, epochs, batch, lr, fewshot and the strategy knobs):

  data         bees, pets3 or digits (`DATASETS`)
  seed         the run's seed: initialisation, data order, augmentation
  percent      % of each class of the training split kept (data.percent_per_class); 100: all
  shots        examples of each class kept (data.shots_per_class); 0: all
  subset_seed  the draw of `percent` / `shots`; None: the run's seed, so each seed of a setting
               trains on its own draw and the spread over seeds includes the draw's
  clip         global-norm gradient clipping of the trainable gradients; 0: off
  steps        > 0: the training length in steps instead of `epochs`, the same number of updates
               whatever the size of the subset
  quick        the ablation's small variant, which checks the runner, the collection and the
               plots end to end in a few minutes (CI), not the figures
  seeds        (read by `get_sweep` only) how many seeds each setting runs

The batch is cut to the number of training examples a subset leaves (a 1-shot run of two classes
trains on batches of 2), the warm-up to half the run, an LP-FT run given in `steps` switches at
half of them, and the digits run at no more than 64 px (`max_res`).
"""

import math
import os

from jtransfer import config_args, config_files
from jtransfer.epochs import Epochs
from jtransfer.errors import JTransferError

TRANSFER = config_files.beside(__file__, "../transfer.py")
SHARED = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
)

# name -> the `data` argument of transfer.py, the config.data fields it sets on top, the number
# of training examples per class (tests/test_ablations.py checks them against the data), and
# what the data is, for the tables.
DATASETS = {
    "bees": {
        "data": os.path.join(SHARED, "hymenoptera"),
        "fields": {},  # an image folder, splits train / val
        "train_per_class": (124, 121),
        "about": "ants vs bees, photos drawn from ImageNet",
    },
    "pets3": {
        "data": os.path.join(SHARED, "oxford_pets3"),
        "fields": {  # the archive's list files: `name class_id species breed_id`
            "format": "image_list",
            "images": "images",
            "split_files": "annotations/{split}.txt",
            "class_map": {"1": "Abyssinian", "2": "american_bulldog", "6": "Bengal"},
            "train_split": "trainval",
            "eval_split": "test",
        },
        "train_per_class": (100, 100, 100),
        "about": "3 Oxford-IIIT pet breeds, fine-grained photos",
    },
    "digits": {
        "data": "digits",  # the offline TFDS builder, splits train / test
        "fields": {},
        "train_per_class": (142, 146, 142, 146, 145, 145, 145, 143, 139, 144),
        "about": "8x8 handwritten digits, far from ImageNet",
        # 8x8 images gain nothing from more pixels than the quickstart's 64, which cost a third
        # of 112's: the digits' 6x more examples per epoch then take about as long as a photo set.
        "max_res": 64,
    },
}

DEFAULTS = {
    **{k: v for k, v in TRANSFER.DEFAULTS.items() if k != "data"},
    "data": "bees",
    "res": 224,
    "seed": 0,
    "percent": 100,
    "shots": 0,
    "subset_seed": None,
    "clip": 1.0,
    "steps": 0,
    "quick": False,
    "seeds": 1,
}
QUICK = {"res": 32, "steps": 4, "batch": 8}  # what `quick` changes, unless the argument says
_UNSET = object()


def parse(arg, defaults=None) -> dict:
    """The arguments of an ablation's `get_config` / `get_sweep`: `DEFAULTS` updated by the
    ablation's own `defaults` (which may add keys), then by `arg`; `QUICK` on top when quick."""
    defaults = {**DEFAULTS, **(defaults or {})}
    a = config_args.parse(arg, defaults)
    config_args.choice("data", a["data"], list(DATASETS))
    if a["quick"]:
        given = config_args.parse(arg, dict.fromkeys(defaults, _UNSET))
        a.update({k: v for k, v in QUICK.items() if given[k] is _UNSET})
    return a


def train_size(a: dict) -> int:
    """Training examples of the run: the split's, or those its `shots` / `percent` keep."""
    counts = DATASETS[a["data"]]["train_per_class"]
    if a["shots"]:
        return sum(min(a["shots"], n) for n in counts)
    return sum(max(1, round(n * a["percent"] / 100)) for n in counts)


def config(a: dict):
    """configs/transfer.py's config for the arguments `a` (see the module docstring)."""
    dataset = DATASETS[a["data"]]
    if not 0 < a["percent"] <= 100:
        raise JTransferError(f"config argument percent must be in (0, 100], got {a['percent']!r}")
    n = train_size(a)
    batch = min(int(a["batch"]), n)
    transfer_args = {k: a[k] for k in TRANSFER.DEFAULTS if k != "data"}
    res = min(int(a["res"]), dataset.get("max_res", int(a["res"])))
    transfer_args.update(data=dataset["data"], batch=batch, res=res)
    steps = int(a["steps"]) or Epochs(n, batch).total_steps(float(a["epochs"]))
    if a["steps"] and a["strategy"] == "lp_ft" and transfer_args["lp_epochs"] is None:
        transfer_args["lp_epochs"] = steps * batch / n / 2
    c = TRANSFER.get_config(config_files.format_arg(transfer_args))
    for key, value in dataset["fields"].items():
        c.data[key] = value
    c.seed = int(a["seed"])
    c.data.shots_per_class = int(a["shots"])
    c.data.percent_per_class = float(a["percent"])
    c.data.subset_seed = int(a["seed"] if a["subset_seed"] is None else a["subset_seed"])
    c.grad_clip_norm = float(a["clip"])
    c.total_steps = int(a["steps"])
    c.schedule.warmup_steps = min(c.schedule.warmup_steps, steps // 2)
    if a["quick"]:
        c.log_every = 2
    return c


def seeds(a: dict) -> range:
    return range(int(a["seeds"]))


def verdict(passed: bool, *values: float) -> str:
    """'met' / 'NOT met' for a claim on `values`, or 'not measured' when one of them is missing
    from the sweep's table (NaN: a quick sweep, or runs not finished)."""
    if any(math.isnan(v) for v in values):
        return "not measured (settings missing from this sweep)"
    return "met" if passed else "NOT met"
