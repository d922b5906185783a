"""The parameter policy: the one declaration of what trains, and how fast.

A policy is an ordered list of `(regex, rule)` pairs over '/'-joined parameter paths
(`backbone/stage3/block1/depthwise/conv/kernel`). The first pattern that *fully* matches a path
decides its rule; every parameter must match some rule and every rule must match some parameter,
so a typo never silently trains (or freezes) the wrong thing. Everything downstream derives from
this one object: optimizer labels (`labels`), the trainable mask that the train step
differentiates (`trainable_mask`, `split`/`merge`), weight-decay and learning-rate multipliers,
and the startup table (`report`).

A trainable rule may start at a later step (`start_step`): before it, its parameters are frozen.
That one field expresses gradual unfreezing and LP-FT; the run is cut into *phases* at the
distinct start steps, each with its own static mask (`trainable_mask(params, step)`). A rule
never stops training once started, so the optimizer groups of one phase are a subset of the
next phase's, which is what lets their state carry over unchanged (see `optim.carry_over`).

`NormEval` is the BatchNorm policy, kept apart from the parameter policy (DESIGN.md invariant 3):
regexes over BatchNorm module paths whose layers normalise with, and keep, their running
statistics, each optionally only until a step.

Full matching (as big_vision's `make_mask_trees`) is deliberate: `stage1` must not also
match `stage10`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from jtransfer.epochs import Epochs
from jtransfer.errors import JTransferError

FROZEN_LABEL = "frozen"


class PolicyError(JTransferError):
    """A policy that does not cover the parameters exactly once."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What happens to the parameters a pattern matches."""

    trainable: bool = True
    lr_mult: float = 1.0
    wd_mult: float = 1.0
    start_step: int = 0  # frozen before this step, trained from it on

    def __post_init__(self):
        for name in ("lr_mult", "wd_mult", "start_step"):
            if getattr(self, name) < 0:
                raise PolicyError(f"{name} must be >= 0, got {getattr(self, name)}")
        if int(self.start_step) != self.start_step:
            raise PolicyError(f"start_step must be a whole step, got {self.start_step}")
        if not self.trainable and self.start_step:
            raise PolicyError("a frozen rule has no start_step; give it to a trainable rule")

    def active(self, step: int) -> bool:
        """Whether the rule's parameters train at `step`."""
        return self.trainable and self.start_step <= step

    def describe(self) -> str:
        if not self.trainable:
            return "frozen"
        mults = [f"{k}={v:g}" for k, v in (("lr", self.lr_mult), ("wd", self.wd_mult)) if v != 1]
        start = f" from step {self.start_step}" if self.start_step else ""
        return "train" + start + (f" ({', '.join(mults)})" if mults else "")


def to_rule(spec: Any, epochs: Epochs | None = None) -> Rule:
    """`'frozen'`, `'train'`, a dict of `Rule` fields (`{'lr_mult': 0.1}`), or a `Rule`.

    A dict may give `start_epoch` instead of `start_step`; `epochs` converts it.
    """
    if isinstance(spec, Rule):
        return spec
    if spec == "frozen":
        return Rule(trainable=False, lr_mult=0.0, wd_mult=0.0)
    if spec == "train":
        return Rule()
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "start_epoch" in spec:
            spec["start_step"] = _epochs_to_steps(spec.pop("start_epoch"), epochs)
        fields = {f.name for f in dataclasses.fields(Rule)}
        unknown = set(spec) - fields
        if unknown:
            raise PolicyError(
                f"unknown rule fields {sorted(unknown)}; valid: {sorted(fields | {'start_epoch'})}"
            )
        return Rule(**spec)
    raise PolicyError(
        f"a rule is 'frozen', 'train' or a dict of {Rule.__name__} fields, got {spec!r}"
    )


def _epochs_to_steps(value: float, epochs: Epochs | None) -> int:
    if epochs is None:
        raise PolicyError(f"an epoch ({value}) needs the split and batch size to become a step")
    if value < 0:
        raise PolicyError(f"epochs must be >= 0, got {value}")
    return epochs.to_steps(value)


def flatten(tree: Mapping) -> dict[str, Any]:
    """A nested dict as {'a/b/c': leaf}."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Inverse of `flatten`."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def first_full_match(
    patterns: Sequence[str], paths: Iterable[str], error: type[Exception] = PolicyError
) -> dict[str, int]:
    """Index of the first pattern that fully matches each path.

    Raises `error` naming every path that no pattern matches and every pattern that decides no
    path (a typo, or a rule shadowed by an earlier one); the policy and the sharding rules
    (`sharding.param_specs`) share this contract.
    """
    compiled = [re.compile(p) for p in patterns]
    assigned, unmatched = {}, []
    for path in paths:
        index = next((i for i, c in enumerate(compiled) if c.fullmatch(path)), None)
        if index is None:
            unmatched.append(path)
        else:
            assigned[path] = index
    problems = []
    if unmatched:
        problems.append("parameters matched by no rule:\n  " + "\n  ".join(unmatched))
    used = set(assigned.values())
    dead = [p for i, p in enumerate(patterns) if i not in used]
    if dead:
        problems.append(
            "rules that match no parameter (or only ones an earlier rule took):"
            "\n  " + "\n  ".join(dead)
        )
    if problems:
        raise error("\n".join(problems))
    return assigned


@dataclasses.dataclass(frozen=True)
class Policy:
    rules: tuple[tuple[str, Rule], ...]

    @classmethod
    def from_pairs(cls, pairs: Sequence[Sequence[Any]], epochs: Epochs | None = None) -> Policy:
        rules = []
        for pair in pairs:
            if len(pair) != 2:
                raise PolicyError(f"a policy entry is a (regex, rule) pair, got {pair!r}")
            pattern, spec = pair
            try:
                re.compile(pattern)
            except re.error as e:
                raise PolicyError(f"bad policy regex {pattern!r}: {e}") from None
            rules.append((pattern, to_rule(spec, epochs)))
        if not rules:
            raise PolicyError("the policy is empty; use [('.*', 'train')] to train everything")
        return cls(tuple(rules))

    def assign(self, params: Mapping) -> dict[str, int]:
        """Index of the deciding rule for each parameter path; raises on gaps and dead rules."""
        return first_full_match([p for p, _ in self.rules], flatten(params), PolicyError)

    def _map(self, params: Mapping, fn) -> Any:
        assigned = self.assign(params)
        flat = {path: fn(self.rules[i][1], i) for path, i in assigned.items()}
        return unflatten(flat)

    def phase_starts(self) -> list[int]:
        """The steps at which the trainable set changes, from 0."""
        return sorted({0} | {r.start_step for _, r in self.rules if r.trainable})

    def labels(self, params: Mapping, step: int = 0) -> Any:
        """Optimizer labels at `step`: `'rule<i>'` for a leaf of trainable rule i, else
        `'frozen'`."""
        return self._map(params, lambda r, i: f"rule{i}" if r.active(step) else FROZEN_LABEL)

    def trainable_mask(self, params: Mapping, step: int = 0) -> Any:
        return self._map(params, lambda r, i: r.active(step))

    def trainable_rules(self, step: int = 0) -> dict[str, Rule]:
        """Label → rule for every rule that trains at `step` (the optimizer's groups)."""
        return {f"rule{i}": r for i, (_, r) in enumerate(self.rules) if r.active(step)}

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
            + (" by the last phase" if len(self.phase_starts()) > 1 else "")
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


@dataclasses.dataclass(frozen=True)
class NormEval:
    """BatchNorm layers held in inference mode: `(regex, until_step or None)` entries.

    A layer whose '/'-joined module path (`backbone/stage2/block1/expand/bn`) contains a match
    (`re.search`) of an active entry normalises with its running statistics and keeps them; an
    entry with `until_step` stops holding its layers from that step on.
    """

    entries: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def from_config(cls, spec: Any, epochs: Epochs | None = None) -> NormEval:
        """`''`/`None` (none held), a regex (held for the whole run), or a list of regexes and
        `(regex, until)` pairs, `until` a step or `{'until_step': n}` / `{'until_epoch': e}`."""
        if not spec:
            return cls()
        if isinstance(spec, str):
            spec = [spec]
        entries = []
        for entry in spec:
            pattern, until = (entry, None) if isinstance(entry, str) else tuple(entry)
            try:
                re.compile(pattern)
            except re.error as e:
                raise PolicyError(f"bad norm_eval regex {pattern!r}: {e}") from None
            if isinstance(until, Mapping):
                if set(until) == {"until_epoch"}:
                    until = _epochs_to_steps(until["until_epoch"], epochs)
                elif set(until) == {"until_step"}:
                    until = until["until_step"]
                else:
                    raise PolicyError(
                        f"norm_eval {pattern!r}: give until_step or until_epoch, got {until}"
                    )
            if until is not None and (int(until) != until or until <= 0):
                raise PolicyError(f"norm_eval {pattern!r}: until_step must be > 0, got {until}")
            entries.append((pattern, None if until is None else int(until)))
        return cls(tuple(entries))

    def phase_starts(self) -> list[int]:
        return sorted({0} | {u for _, u in self.entries if u is not None})

    def regex(self, step: int = 0) -> str:
        """One regex for the model's `norm_eval` field: the entries active at `step`."""
        active = [p for p, u in self.entries if u is None or step < u]
        return "|".join(f"(?:{p})" for p in active)

    def always_held(self, batch_stats: Mapping, steps: Iterable[int]) -> set[str]:
        """Paths of the statistics in `batch_stats` held at every one of `steps` (the phase
        starts of a run): those that never change."""
        regexes = [self.regex(step) for step in steps]

        def held(path: str) -> bool:
            layer = path.rsplit("/", 1)[0]
            return all(r and re.search(r, layer) for r in regexes)

        return {path for path in flatten(batch_stats) if held(path)}

    def check(self, batch_stats: Mapping) -> None:
        """Every entry must name at least one BatchNorm layer (a module holding statistics)."""
        layers = sorted({path.rsplit("/", 1)[0] for path in flatten(batch_stats)})
        dead = [p for p, _ in self.entries if not any(re.search(p, layer) for layer in layers)]
        if dead:
            where = f"; its BatchNorm layers look like {layers[0]!r}" if layers else ""
            raise PolicyError(
                "norm_eval entries that name no BatchNorm layer: "
                f"{dead}{where}" + ("" if layers else " (this model has no BatchNorm)")
            )


def select(tree: Mapping, mask: Any) -> dict:
    """The leaves of `tree` where `mask` is True, as a nested dict without the others."""
    flat_mask = flatten(mask)
    return unflatten({p: x for p, x in flatten(tree).items() if flat_mask[p]})


def overlay(tree: Mapping, part: Mapping) -> dict:
    """`tree` with each leaf that `part` holds (same path) replaced by `part`'s."""
    flat = flatten(tree)
    flat.update(flatten(part))
    return unflatten(flat)
