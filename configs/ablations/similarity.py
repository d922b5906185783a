"""Data similarity (Kornblith et al. 2019): what pretraining gains over scratch, per dataset.

    python -m jtransfer.sweep --config=configs/ablations/similarity.py --workdir=ABL/similarity

The same EfficientNet-Lite0 trained from scratch and fine-tuned from its ImageNet weights (and
probed linearly) on photos close to ImageNet (ants vs bees), fine-grained photos (3 pet breeds)
and 8x8 handwritten digits, 10 epochs each at 112 px (the digits at 64), 3 seeds.
The gain of pretraining is fine-tuned minus scratch accuracy. Kornblith, Shlens and Le (2019)
found fine-tuning gains smallest on datasets far from ImageNet (and on some, none); a linear
probe, which keeps the ImageNet features as they are, should suffer most on the digits.
"""

from jtransfer import config_files

common = config_files.beside(__file__, "common.py")

DATA = ("bees", "pets3", "digits")
STRATEGIES = ("scratch", "linear_probe", "full")
OWN = {"epochs": 10, "res": 112, "seeds": 3}


def get_config(arg=None):
    return common.config(common.parse(arg, OWN))


def get_sweep(arg=None):
    a = common.parse(arg, OWN)
    if a["quick"]:  # the steps of strategy's and data's quick variants: one compilation cache
        return [{"data": "bees", "strategy": s, "seed": 0} for s in ("scratch", "full")]
    return [
        {"data": d, "strategy": s, "seed": seed}
        for d in DATA
        for s in STRATEGIES
        for seed in common.seeds(a)
    ]


def get_plots(arg=None):
    return [
        {
            "file": "accuracy_by_dataset.png",
            "x": "data",
            "y": "eval/accuracy",
            "series": "strategy",
            "xlabel": "dataset (closest to ImageNet first)",
            "ylabel": "accuracy",
            "title": "Pretrained against scratch, per dataset",
        }
    ]


def get_findings(arg, table):
    gains = {}
    for data in dict.fromkeys(r["data"] for r in table.rows):
        gains[data] = table.mean("eval/accuracy", data=data, strategy="full") - table.mean(
            "eval/accuracy", data=data, strategy="scratch"
        )
    order = sorted(gains, key=gains.get, reverse=True)
    return [
        "gain of fine-tuning from ImageNet over scratch, in points: "
        + ", ".join(f"{d} ({common.DATASETS[d]['about']}) {100 * gains[d]:+.1f}" for d in gains),
        "ordered by gain: "
        + " > ".join(order)
        + (
            f"; the digits, the dataset farthest from ImageNet, gain "
            f"{'least' if order[-1] == 'digits' else 'NOT least'}"
            if "digits" in gains and len(gains) > 1
            else ""
        ),
    ]
