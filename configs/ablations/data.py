"""Labelled data: accuracy against the share of labels kept, from scratch and pretrained.

    python -m jtransfer.sweep --config=configs/ablations/data.py --workdir=ABL/data

The ants-vs-bees training split cut per class to 5, 10, 25, 50 and 100 % and to 1, 5 and 10
examples a class (`data.percent_per_class`, `data.shots_per_class`; each seed draws its own
subset), trained from scratch, as a linear probe and fully fine-tuned from EfficientNet-Lite0's
ImageNet weights, 3 seeds, and evaluated on the whole validation split. Every run makes the
same number of updates (40 steps at 112 px), in batches of up to 32 (fewer when the subset is
smaller). This is the curve that shows transfer needing fewer labels: the gap between
pretrained and scratch should be widest where labels are fewest.
"""

from jtransfer import config_files

common = config_files.beside(__file__, "common.py")

STRATEGIES = ("scratch", "linear_probe", "full")
PERCENTS = (5, 10, 25, 50, 100)
SHOTS = (1, 5, 10)
OWN = {"steps": 40, "res": 112, "seeds": 3}


def get_config(arg=None):
    return common.config(common.parse(arg, OWN))


def get_sweep(arg=None):
    a = common.parse(arg, OWN)
    if a["quick"]:
        return [
            {"strategy": "full", "percent": 25, "seed": 0},
            {"strategy": "scratch", "shots": 5, "seed": 0},
        ]
    amounts = [{"percent": p} for p in PERCENTS] + [{"shots": k} for k in SHOTS]
    return [
        {"strategy": s, **amount, "seed": seed}
        for s in STRATEGIES
        for amount in amounts
        for seed in common.seeds(a)
    ]


def get_plots(arg=None):
    return [
        {
            "file": "accuracy_vs_percent.png",
            "x": "percent",
            "y": "eval/accuracy",
            "series": "strategy",
            "where": {"shots": None},
            "xlog": True,
            "xlabel": "% of each class's training examples (log scale)",
            "ylabel": "val accuracy",
            "title": "Accuracy against labels kept",
        },
        {
            "file": "accuracy_vs_shots.png",
            "x": "shots",
            "y": "eval/accuracy",
            "series": "strategy",
            "where": {"percent": None},
            "xlog": True,
            "xlabel": "training examples per class (log scale)",
            "ylabel": "val accuracy",
            "title": "Few-shot accuracy",
        },
    ]


def get_findings(arg, table):
    def acc(strategy, **amount):
        return table.mean("eval/accuracy", strategy=strategy, **amount)

    out = []
    small = [p for p in PERCENTS if p <= 25]
    gaps = {
        p: acc("full", percent=p, shots=None) - acc("scratch", percent=p, shots=None) for p in small
    }
    shown = ", ".join(f"{p}%: {100 * g:+.1f}" for p, g in gaps.items())
    verdict = common.verdict(all(g >= 0.20 for g in gaps.values()), *gaps.values())
    out.append(
        f"fine-tuning minus scratch at <= 25 % of the labels, in points: {shown}; the target "
        f"of >= 20 points at every such fraction: {verdict}"
    )
    probe10, scratch100 = (
        acc("linear_probe", percent=10, shots=None),
        acc("scratch", percent=100, shots=None),
    )
    verdict = common.verdict(probe10 > scratch100, probe10, scratch100)
    out.append(
        f"a linear probe on 10 % of the labels: {probe10:.3f}; scratch on 100 %: "
        f"{scratch100:.3f}; the target of the probe beating it: {verdict}"
    )
    shots = ", ".join(
        f"{k}-shot {acc('full', shots=k, percent=None):.3f} against "
        f"{acc('scratch', shots=k, percent=None):.3f}"
        for k in SHOTS
    )
    out.append(f"fine-tuning vs scratch with k examples per class: {shots}")
    return out
