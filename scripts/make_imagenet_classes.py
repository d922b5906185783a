"""Write jtransfer/pretrained/imagenet_classes.json: the ImageNet-1k class names, by class index.

    pip install --no-deps timm && python scripts/make_imagenet_classes.py

The names come from timm (https://github.com/huggingface/pytorch-image-models), which ships
them as data files in `timm/data/_info/`: `imagenet_synsets.txt`, the 1,000 WordNet ids of
ILSVRC-2012 in class-index order (sorted ids, the order every ImageNet-1k classifier uses), and
`imagenet_synset_to_lemma.txt`, each id's WordNet lemmas ("tench, Tinca tinca"). A name is the
whole lemma string, as timm's `ImageNetInfo.index_to_description()` gives it: the first lemma
alone would make two more classes look alike ('maillot' twice), and even whole lemmas leave
'crane' (the bird, 134, and the machine, 517) ambiguous, so the ids are kept beside the names.

Only the data files are read: importing timm needs torch and torchvision, which this needs
neither of (`--no-deps` above). Written from timm 1.0.31.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "jtransfer" / "pretrained" / "imagenet_classes.json"


def _timm_info_dir() -> Path:
    spec = importlib.util.find_spec("timm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("timm is not installed: pip install --no-deps timm")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


def imagenet_classes(info: Path) -> dict:
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(
        line.split("\t", 1)
        for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    )
    assert len(synsets) == len(set(synsets)) == 1000 and synsets == sorted(synsets)
    return {
        "about": (
            "ImageNet-1k (ILSVRC-2012) classes in class-index order: WordNet ids and their "
            f"lemmas, from timm {importlib.metadata.version('timm')}'s timm/data/_info "
            "(scripts/make_imagenet_classes.py)"
        ),
        "synsets": synsets,
        "names": [lemmas[s] for s in synsets],
    }


def main() -> None:
    classes = imagenet_classes(_timm_info_dir())
    OUT.write_text(json.dumps(classes, indent=0, ensure_ascii=False) + "\n")
    print(f"wrote {len(classes['names'])} classes to {OUT}; 967: {classes['names'][967]!r}")


if __name__ == "__main__":
    main()
