"""WiSE-FT: accuracy against alpha; head initialisation: zero against random at 1, 5, 10 shots.

    python -m jtransfer.sweep --config=configs/ablations/wise_ft.py --workdir=ABL/wise_ft

WiSE-FT (Wortsman et al. 2022): full fine-tuning on each dataset (10 epochs at 112 px, the
digits at 64), then the weight-space interpolations (1 - alpha) * pretrained + alpha *
fine-tuned evaluated for alpha in 0, 0.25, ..., 1 (alpha 0 is the pretrained backbone with the
fine-tuned head), 3 seeds. Wortsman et al. found intermediate alphas at least as accurate as the
end of fine-tuning on the target data, and more robust under distribution shift (not measured
here).

Head initialisation: jtransfer's new head starts at zero (kernel and bias), so the first steps
see the pretrained features unchanged and a uniform prediction; against it a random head
(`model.head_init`), fully fine-tuned on 1, 5 and 10 examples per class of the ants-vs-bees
photos (60 steps each), 3 seeds, where a random head's early gradients would disturb the
features most.
"""

from jtransfer import config_files
from jtransfer.errors import JTransferError

common = config_files.beside(__file__, "common.py")

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
DATA = ("bees", "pets3", "digits")
HEADS = {"zero": "zeros", "random": "lecun_normal"}  # the run's name -> model.head_init
SHOTS = (1, 5, 10)
HEAD_STEPS = 60  # the head runs' length, whatever the number of shots
OWN = {"epochs": 10, "res": 112, "seeds": 3, "head": "zero"}


def get_config(arg=None):
    a = common.parse(arg, OWN)
    if a["shots"] and not a["steps"]:  # 10 epochs of 2 images would be 10 steps
        a["steps"] = HEAD_STEPS
    if a["head"] not in HEADS:
        raise JTransferError(f"config argument head={a['head']!r} is not one of {list(HEADS)}")
    c = common.config(a)
    if a["head"] != "zero":
        with c.unlocked():
            c.model.head_init = HEADS[a["head"]]
    return c


def get_sweep(arg=None):
    a = common.parse(arg, OWN)
    wise = [{"strategy": "wise_ft", "data": d} for d in DATA]
    heads = [
        {"strategy": "full", "data": "bees", "head": h, "shots": k} for h in HEADS for k in SHOTS
    ]
    seeds = common.seeds(a)
    if a["quick"]:
        wise, heads, seeds = wise[:1], [h for h in heads if h["shots"] == 5], [0]
    return [{**o, "seed": s} for o in wise + heads for s in seeds]


def get_plots(arg=None):
    return [
        {
            "file": "accuracy_vs_alpha.png",
            "x": "alpha",
            "x_values": ALPHAS,
            "y": "wise_ft_{x}/accuracy",
            "series": "data",
            "where": {"strategy": "wise_ft"},
            "xlabel": "alpha (0: pretrained backbone + fine-tuned head, 1: fine-tuned)",
            "ylabel": "accuracy",
            "title": "WiSE-FT",
        },
        {
            "file": "head_init_vs_shots.png",
            "x": "shots",
            "y": "eval/accuracy",
            "series": "head",
            "where": {"strategy": "full"},
            "xlog": True,
            "xlabel": "training examples per class (log scale)",
            "ylabel": "val accuracy",
            "title": "Zero against random head, fully fine-tuned",
        },
    ]


def get_findings(arg, table):
    out = []
    for row in table.select(strategy="wise_ft"):
        curve = {
            a: row[f"wise_ft_{a:g}/accuracy"][0] for a in ALPHAS if f"wise_ft_{a:g}/accuracy" in row
        }
        best = max(curve, key=curve.get)
        out.append(
            f"WiSE-FT on {row['data']}: best alpha {best:g} ({curve[best]:.3f}) against the "
            f"fine-tuned end (alpha 1) {curve.get(1.0, float('nan')):.3f}; "
            + ", ".join(f"{a:g}: {v:.3f}" for a, v in curve.items())
        )
    heads = table.select(strategy="full")
    for k in dict.fromkeys(r["shots"] for r in heads):
        zero, rand = (table.mean("eval/accuracy", strategy="full", head=h, shots=k) for h in HEADS)
        out.append(f"{k}-shot: zero head {zero:.3f}, random head {rand:.3f}")
    return out
