"""The parameter policy: the one declaration of what trains, and how fast.

A policy is an ordered list of `(regex, rule)` pairs over '/'-joined parameter paths
(`backbone/stage3/block1/depthwise/conv/kernel`). The first pattern that *fully* matches a path
decides its rule; every parameter must match some rule and every rule must match some parameter,
so a typo never silently trains (or freezes) the wrong thing. Everything downstream derives from
this one object: optimizer labels (`labels`), the trainable mask that the train step
differentiates (`trainable_mask`, `split`/`merge`), weight-decay and learning-rate multipliers,
and the startup table (`report`).

Full matching (as big_vision's `make_mask_trees`) is deliberate: `stage1` must not also
match `stage10`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

FROZEN_LABEL = "frozen"


class PolicyError(ValueError):
    """A policy that does not cover the parameters exactly once."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What happens to the parameters a pattern matches."""

    trainable: bool = True
    lr_mult: float = 1.0
    wd_mult: float = 1.0

    def __post_init__(self):
        for name in ("lr_mult", "wd_mult"):
            if getattr(self, name) < 0:
                raise PolicyError(f"{name} must be >= 0, got {getattr(self, name)}")

    def describe(self) -> str:
        if not self.trainable:
            return "frozen"
        mults = [f"{k}={v:g}" for k, v in (("lr", self.lr_mult), ("wd", self.wd_mult)) if v != 1]
        return "train" + (f" ({', '.join(mults)})" if mults else "")


def to_rule(spec: Any) -> Rule:
    """`'frozen'`, `'train'`, a dict of `Rule` fields (`{'lr_mult': 0.1}`), or a `Rule`."""
    if isinstance(spec, Rule):
        return spec
    if spec == "frozen":
        return Rule(trainable=False, lr_mult=0.0, wd_mult=0.0)
    if spec == "train":
        return Rule()
    if isinstance(spec, Mapping):
        fields = {f.name for f in dataclasses.fields(Rule)}
        unknown = set(spec) - fields
        if unknown:
            raise PolicyError(f"unknown rule fields {sorted(unknown)}; valid: {sorted(fields)}")
        return Rule(**dict(spec))
    raise PolicyError(
        f"a rule is 'frozen', 'train' or a dict of {Rule.__name__} fields, got {spec!r}"
    )


def flatten(tree: Mapping) -> dict[str, Any]:
    """A nested dict as {'a/b/c': leaf}."""
    return traverse_util.flatten_dict(tree, sep="/")


@dataclasses.dataclass(frozen=True)
class Policy:
    rules: tuple[tuple[str, Rule], ...]

    @classmethod
    def from_pairs(cls, pairs: Sequence[Sequence[Any]]) -> Policy:
        rules = []
        for pair in pairs:
            if len(pair) != 2:
                raise PolicyError(f"a policy entry is a (regex, rule) pair, got {pair!r}")
            pattern, spec = pair
            try:
                re.compile(pattern)
            except re.error as e:
                raise PolicyError(f"bad policy regex {pattern!r}: {e}") from None
            rules.append((pattern, to_rule(spec)))
        if not rules:
            raise PolicyError("the policy is empty; use [('.*', 'train')] to train everything")
        return cls(tuple(rules))

    def assign(self, params: Mapping) -> dict[str, int]:
        """Index of the deciding rule for each parameter path; raises on gaps and dead rules."""
        compiled = [re.compile(p) for p, _ in self.rules]
        assigned, unmatched = {}, []
        for path in flatten(params):
            index = next((i for i, c in enumerate(compiled) if c.fullmatch(path)), None)
            if index is None:
                unmatched.append(path)
            else:
                assigned[path] = index
        problems = []
        if unmatched:
            problems.append("parameters matched by no rule:\n  " + "\n  ".join(unmatched))
        dead = [p for i, (p, _) in enumerate(self.rules) if i not in set(assigned.values())]
        if dead:
            problems.append(
                "rules that match no parameter (or only ones an earlier rule took):"
                "\n  " + "\n  ".join(dead)
            )
        if problems:
            raise PolicyError("\n".join(problems))
        return assigned

    def _map(self, params: Mapping, fn) -> Any:
        assigned = self.assign(params)
        flat = {path: fn(self.rules[i][1], i) for path, i in assigned.items()}
        return traverse_util.unflatten_dict(flat, sep="/")

    def labels(self, params: Mapping) -> Any:
        """Optimizer labels: `'frozen'`, or `'rule<i>'` for the trainable rule that owns a leaf."""
        return self._map(params, lambda r, i: f"rule{i}" if r.trainable else FROZEN_LABEL)

    def trainable_mask(self, params: Mapping) -> Any:
        return self._map(params, lambda r, i: r.trainable)

    def trainable_rules(self) -> dict[str, Rule]:
        """Label → rule for every trainable rule (the groups the optimizer builds)."""
        return {f"rule{i}": r for i, (_, r) in enumerate(self.rules) if r.trainable}

    def report(self, params: Mapping) -> str:
        """The startup table: each rule, how many leaves and parameters it decides."""
        assigned = self.assign(params)
        flat = flatten(params)
        rows = [("#", "pattern", "rule", "leaves", "params")]
        totals = {True: 0, False: 0}
        for i, (pattern, rule) in enumerate(self.rules):
            paths = [p for p, j in assigned.items() if j == i]
            count = sum(int(np.prod(np.shape(flat[p]))) for p in paths)
            totals[rule.trainable] += count
            rows.append((str(i), pattern, rule.describe(), str(len(paths)), f"{count:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        total = totals[True] + totals[False]
        lines.append(
            f"trainable {totals[True]:,} of {total:,} parameters "
            f"({100 * totals[True] / max(total, 1):.1f}%)"
        )
        return "\n".join(lines)

    def warn_if_misleading(self) -> None:
        for pattern, rule in self.rules:
            if rule.trainable and rule.lr_mult == 0:
                logging.warning(
                    "rule %r has lr_mult=0, which is not a freeze: its leaves still get "
                    "gradients, optimizer state and backward compute. Use 'frozen'.",
                    pattern,
                )


def split(tree: Any, mask: Any) -> tuple[Any, Any]:
    """(trainable, frozen): the same tree with `None` where the other partition holds a leaf."""
    trainable = jax.tree.map(lambda x, m: x if m else None, tree, mask)
    frozen = jax.tree.map(lambda x, m: None if m else x, tree, mask)
    return trainable, frozen


def merge(first: Any, second: Any) -> Any:
    """Inverse of `split`: take each leaf from whichever tree holds it."""
    return jax.tree.map(
        lambda a, b: b if a is None else a, first, second, is_leaf=lambda x: x is None
    )
