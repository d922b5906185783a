"""Strategy: every way configs/transfer.py fine-tunes, on the same budget, over seeds.

    python -m jtransfer.sweep --config=configs/ablations/strategy.py --workdir=ABL/strategy

The ants-vs-bees photos with EfficientNet-Lite0's ImageNet weights, each strategy with
configs/transfer.py's defaults for it (learning rate, schedule, clipping, augmentation), the same
number of epochs (3, at 224 px), 3 seeds: training from scratch (the baseline transfer must
beat), a linear probe, full fine-tuning, LP-FT (Kumar et al. 2022: the probe for half the run,
then everything), gradual unfreezing (ULMFiT: the head, then a subtree more from the top every
half epoch), layer-wise learning-rate decay, L2-SP (weight decay toward the pretrained
weights), BitFit (biases and the head) and an exponential moving average of the weights (the
EMA's accuracy is reported). The EMA's decay is shortened to the run's length (`ema`, 0.9 here
against transfer.py's 0.99).
"""

from jtransfer import config_files

common = config_files.beside(__file__, "common.py")

STRATEGIES = (
    "scratch",
    "linear_probe",
    "full",
    "lp_ft",
    "gradual",
    "llrd",
    "l2sp",
    "bitfit",
    "ema",
)
# 3 epochs at 224 px: full fine-tuning and the probe are both past 0.95 by then (measured),
# gradual unfreezing opens a subtree every half epoch from the top (4 of 9 by epoch 2).
OWN = {"epochs": 3, "res": 224, "ema": 0.9, "unfreeze": [0.5, 1.0, 1.5, 2.0], "seeds": 3}


def get_config(arg=None):
    return common.config(common.parse(arg, OWN))


def get_sweep(arg=None):
    a = common.parse(arg, OWN)
    if a["quick"]:  # two seeds and one more setting
        return [{"strategy": "full", "seed": s} for s in (0, 1)] + [
            {"strategy": "scratch", "seed": 0}
        ]
    return [{"strategy": s, "seed": seed} for s in STRATEGIES for seed in common.seeds(a)]


def accuracy(row) -> float:
    """The strategy's accuracy: its EMA's for `ema` (what that strategy is for)."""
    metric = (
        "eval_ema/accuracy"
        if row["strategy"] == "ema" and "eval_ema/accuracy" in row
        else ("eval/accuracy")
    )
    return row[metric][0]


def get_plots(arg=None):
    return [
        {
            "file": "accuracy_by_strategy.png",
            "x": "strategy",
            "y": "eval/accuracy",
            "xlabel": "strategy",
            "ylabel": "accuracy (mean ± std over seeds)",
            "title": "Fine-tuning strategies, same budget",
        },
        {
            "file": "step_cost_by_strategy.png",
            "x": "strategy",
            "y": "img_per_sec",
            "xlabel": "strategy",
            "ylabel": "training images / s",
            "title": "Step cost of each strategy",
        },
    ]


def get_findings(arg, table):
    ranked = sorted(table.rows, key=accuracy, reverse=True)
    best = ranked[0]
    std = best["eval/accuracy"][1]
    out = [
        "ranking (mean accuracy; EMA's weights for ema): "
        + ", ".join(f"{r['strategy']} {accuracy(r):.3f}" for r in ranked),
        f"best: {best['strategy']} with {accuracy(best):.3f}"
        + (f" ± {std:.3f}" if std is not None else "")
        + f" over {best['n']} seeds; the target of a mean >= 0.95 over 3 seeds: "
        + common.verdict(accuracy(best) >= 0.95 and best["n"] >= 3, accuracy(best)),
    ]
    if "ema" in {r["strategy"] for r in table.rows}:
        ema = table.select(strategy="ema")[0]
        if "eval_ema/accuracy" in ema:
            out.append(
                f"ema: the averaged weights {ema['eval_ema/accuracy'][0]:.3f} against the "
                f"last ones {ema['eval/accuracy'][0]:.3f}"
            )
    return out
