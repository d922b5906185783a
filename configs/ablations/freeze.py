"""Which layers to freeze (Yosinski et al. 2014): accuracy and step cost against frozen stages.

    python -m jtransfer.sweep --config=configs/ablations/freeze.py --workdir=ABL/freeze

EfficientNet-Lite0's backbone is 9 subtrees from input to output (stem, stage1..stage7, top).
`frozen=k` freezes the first k of them, their BatchNorm held in inference mode, and trains the
rest with the new head: 0 is full fine-tuning, 1..8 configs/transfer.py's `frozen_stages` with
`stages=k-1`, 9 its linear probe (the head alone, with the probe's own crop, learning rate and
no label smoothing). Every run is 10 epochs at 112 px (digits at 64). Step cost is the median
training throughput (img/s), which rises as fewer layers need a backward pass.

Yosinski et al. (2014) transferred ImageNet-half features layer by layer: frozen lower layers
cost little, frozen upper layers cost more the more distant the target task, and fine-tuning
everything was best. Here: photos close to ImageNet (bees) against handwritten digits.
"""

import math

from jtransfer import config_files

common = config_files.beside(__file__, "common.py")

SUBTREES = 9  # stem, stage1..stage7, top
OWN = {"frozen": 0, "epochs": 10, "res": 112}


def get_config(arg=None):
    a = common.parse(arg, OWN)
    k = int(a["frozen"])
    if not 0 <= k <= SUBTREES:
        raise common.JTransferError(f"config argument frozen must be in 0..{SUBTREES}, got {k}")
    if k == 0:
        a["strategy"] = "full"
    elif k == SUBTREES:
        a["strategy"] = "linear_probe"
    else:
        a["strategy"], a["stages"] = "frozen_stages", k - 1
    return common.config(a)


def get_sweep(arg=None):
    a = common.parse(arg, OWN)
    if a["quick"]:
        return [{"data": "bees", "frozen": k, "seed": 0} for k in (0, SUBTREES)]
    return [
        {"data": data, "frozen": k, "seed": s}
        for data in ("bees", "digits")
        for k in range(SUBTREES + 1)
        for s in common.seeds(a)
    ]


def get_plots(arg=None):
    return [
        {
            "file": "accuracy_vs_frozen.png",
            "x": "frozen",
            "y": "eval/accuracy",
            "series": "data",
            "xlabel": "backbone subtrees frozen (0: full fine-tuning, 9: linear probe)",
            "ylabel": "accuracy",
            "title": "Accuracy against frozen depth",
        },
        {
            "file": "step_cost_vs_frozen.png",
            "x": "frozen",
            "y": "img_per_sec",
            "series": "data",
            "xlabel": "backbone subtrees frozen",
            "ylabel": "training images / s",
            "title": "Step cost against frozen depth",
        },
    ]


def get_findings(arg, table):
    out = []
    for data in dict.fromkeys(r["data"] for r in table.rows):
        rows = table.select(data=data)
        best = max(rows, key=lambda r: r["eval/accuracy"][0])
        full, probe = (table.mean("eval/accuracy", data=data, frozen=k) for k in (0, SUBTREES))
        speed = table.mean("img_per_sec", data=data, frozen=SUBTREES) / table.mean(
            "img_per_sec", data=data, frozen=0
        )
        out.append(
            f"{data}: best with {best['frozen']} subtrees frozen "
            f"({best['eval/accuracy'][0]:.3f}); full fine-tuning {full:.3f}, linear probe "
            f"{probe:.3f}; the probe trains {speed:.1f}x as many images per second"
            if not math.isnan(speed)
            else f"{data}: best with {best['frozen']} subtrees frozen"
        )
    return out
