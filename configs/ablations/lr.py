"""Learning rate x strategy, with and without the gradient clipping of the defaults.

    python -m jtransfer.sweep --config=configs/ablations/lr.py --workdir=ABL/lr

The linear probe and full fine-tuning of configs/transfer.py on every dataset, at learning rates
around each one's default (0.1 for the probe, 0.01 for fine-tuning; SGD with momentum 0.9, a
warm-up of 10 steps, cosine decay), each with the defaults' global-norm clipping at 1 and
without it, 5 epochs at 112 px (the digits at 64). The findings say, per dataset and strategy,
where the default sits on its curve: the best learning rate, and the default's distance from
it, which is within noise when it is under max(2 std over seeds, 1 point).
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
OWN = {"epochs": 5, "res": 112}


def get_config(arg=None):
    return common.config(common.parse(arg, OWN))


def get_sweep(arg=None):
    a = common.parse(arg, OWN)
    if a["quick"]:
        return [  # one learning rate, two seeds: a learning rate is compiled into the step
            {"data": "pets3", "strategy": "full", "lr": 0.01, "clip": 1.0, "seed": s}
            for s in (0, 1)
        ]
    return [
        {"data": d, "strategy": s, "lr": lr, "clip": clip, "seed": seed}
        for d in DATA
        for s, lrs in LRS.items()
        for lr in lrs
        for clip in CLIPS
        for seed in common.seeds(a)
    ]


def get_plots(arg=None):
    return [
        {
            "file": f"accuracy_vs_lr_{s}.png",
            "x": "lr",
            "y": "eval/accuracy",
            "series": "clip",
            "panels": "data",
            "where": {"strategy": s},
            "xlog": True,
            "xlabel": f"peak learning rate (default {DEFAULT_LR[s]:g})",
            "ylabel": "accuracy",
            "title": f"{s}: accuracy against learning rate (series: clip norm; 0 = off)",
        }
        for s in LRS
    ]


def get_findings(arg, table):
    out = []
    for data in dict.fromkeys(r["data"] for r in table.rows):
        for strategy in LRS:
            rows = table.select(data=data, strategy=strategy)
            if not rows:
                continue
            best = max(rows, key=lambda r: r["eval/accuracy"][0])
            default = table.mean(
                "eval/accuracy", data=data, strategy=strategy, lr=DEFAULT_LR[strategy], clip=1.0
            )
            if math.isnan(default):
                continue
            gap = best["eval/accuracy"][0] - default
            noise = max(2 * (best["eval/accuracy"][1] or 0.0), 0.01)
            out.append(
                f"{data}, {strategy}: best lr {best['lr']:g} with clip {best['clip']:g} "
                f"({best['eval/accuracy'][0]:.3f}); the default (lr {DEFAULT_LR[strategy]:g}, "
                f"clip 1) {default:.3f}, {100 * gap:.1f} points below: "
                + ("within noise" if gap <= noise else "NOT within noise")
            )
    return out
