"""Learning rate x strategy, with and without the defaults' gradient clipping and BatchNorm.

    python -m jtransfer.sweep --config=configs/ablations/lr.py --workdir=ABL/lr

The linear probe and full fine-tuning of configs/transfer.py on every dataset, at learning rates
around each one's default (0.1 for the probe, 0.01 for fine-tuning; SGD with momentum 0.9, a
warm-up of 10 steps, cosine decay), each with the defaults' global-norm clipping at 1 and
without it, 5 epochs at 112 px (the digits at 64). Fine-tuning also runs with the backbone's
BatchNorm training its statistics (`bn=train`, the default before this measurement), with the
defaults' clipping only, which keeps the sweep within the hour; a probe's BatchNorm is frozen
with the rest of its backbone.

The findings say, per dataset and strategy, where the default sits on its curve: the best
setting, and the default's distance from it, which is within noise when it is under twice the
best's standard deviation over seeds, or under two standard errors of the difference between
two accuracies on the same n eval images, 2 sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n) (a
two-proportion z-test at about 95 %): with one seed, the eval set's sampling is the noise that
can be measured, and a smaller gap is a few images that this eval set cannot tell apart.
"""

import math

from jtransfer import config_files

common = config_files.beside(__file__, "common.py")

DATA = ("bees", "pets3", "digits")
LRS = {  # around each default, about 3x apart
    "linear_probe": (0.03, 0.1, 0.3, 1.0),
    "full": (0.003, 0.01, 0.03, 0.1),
}
DEFAULT_LR = {"linear_probe": 0.1, "full": 0.01}  # configs/transfer.py's
CLIPS = (1.0, 0.0)  # the defaults' clipping, and none
BNS = {"linear_probe": ("frozen",), "full": ("frozen", "train")}  # the default first
CLIPS_OF_BN = {"frozen": CLIPS, "train": (1.0,)}
OWN = {"epochs": 5, "res": 112}


def get_config(arg=None):
    return common.config(common.parse(arg, OWN))


def get_sweep(arg=None):
    a = common.parse(arg, OWN)
    if a["quick"]:
        return [  # the defaults' step, which the other quick variants compile too: two seeds
            {
                "data": "bees",
                "strategy": "full",
                "bn": "frozen",
                "lr": 0.01,
                "clip": 1.0,
                "seed": s,
            }
            for s in (0, 1)
        ]
    return [
        {"data": d, "strategy": s, "bn": bn, "lr": lr, "clip": clip, "seed": seed}
        for d in DATA
        for s, lrs in LRS.items()
        for bn in BNS[s]
        for lr in lrs
        for clip in CLIPS_OF_BN[bn]
        for seed in common.seeds(a)
    ]


def get_plots(arg=None):
    return [
        {
            "file": f"accuracy_vs_lr_{s}" + ("" if len(BNS[s]) == 1 else f"_bn_{bn}") + ".png",
            "x": "lr",
            "y": "eval/accuracy",
            "series": "clip",
            "panels": "data",
            "where": {"strategy": s, "bn": bn},
            "xlog": True,
            "xlabel": f"peak learning rate (default {DEFAULT_LR[s]:g})",
            "ylabel": "accuracy",
            "title": f"{s}, BatchNorm {bn}: accuracy against learning rate (series: clip; 0 = off)",
        }
        for s in LRS
        for bn in BNS[s]
    ]


def noise(best, default) -> float:
    """Twice the best's spread over seeds, or two standard errors of the two accuracies'
    difference on the eval set."""
    (p1, std), (p2, _) = best["eval/accuracy"], default["eval/accuracy"]
    n = best["eval/count"][0]
    return max(2 * (std or 0.0), 2 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n))


def get_findings(arg, table):
    out = []
    for data in dict.fromkeys(r["data"] for r in table.rows):
        for strategy in LRS:
            rows = table.select(data=data, strategy=strategy)
            where = {"lr": DEFAULT_LR[strategy], "clip": 1.0, "bn": BNS[strategy][0]}
            default = table.select(data=data, strategy=strategy, **where)
            if not rows or len(default) != 1:
                continue
            best = max(rows, key=lambda r: r["eval/accuracy"][0])
            gap = best["eval/accuracy"][0] - default[0]["eval/accuracy"][0]
            margin = noise(best, default[0])
            out.append(
                f"{data}, {strategy}: best lr {best['lr']:g}, clip {best['clip']:g}, "
                f"BatchNorm {best.get('bn')} ({best['eval/accuracy'][0]:.3f}); the default "
                f"(lr {where['lr']:g}, clip 1, BatchNorm {where['bn']}) "
                f"{default[0]['eval/accuracy'][0]:.3f}, {100 * gap:.1f} points below "
                f"({gap * best['eval/count'][0]:.0f} of {best['eval/count'][0]:.0f} images), "
                f"noise {100 * margin:.1f}: "
                + ("within noise" if gap <= margin else "NOT within noise")
            )
    return out
