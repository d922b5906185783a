"""Generic transfer: any registered model, any TFDS dataset or image folder, any strategy.

    python -m jtransfer.main --workdir=/tmp/bees \
      --config=configs/transfer.py:data=../shared/data/hymenoptera,strategy=linear_probe

Arguments (`:key=value,...`):
  model     a jtransfer.models name (default efficientnet_lite0); its registered MODEL/imagenet
            weights are loaded (downloaded once; `python -m jtransfer.pretrained list`), and the
            inputs are normalised the way those weights were trained (ImageNet mean/std for
            torchvision's ResNet-50, [-1, 1] for BiT, AugReg ViTs and EfficientNet-Lite)
  data      a TFDS name (splits train/test) or an image-folder root (splits train/val)
  strategy  one of STRATEGIES below (default full)
  res       input resolution (default: the weights' native one, e.g. 224; 240 for lite1)
  epochs, batch, lr   training length, global batch size, peak learning rate
  fewshot   shots of the few-shot ridge evaluator run beside accuracy, e.g. [1,5,10]; []: off
  bn        the pretrained backbone's BatchNorm layers while it fine-tunes: `frozen` (default:
            inference mode, running statistics kept, as Keras advises; scales and biases train
            with their subtree) or `train` (batch statistics, running averages updated); a run
            from scratch always trains them
  and each strategy's knob: stages, unfreeze (epochs), lp_epochs, llrd, l2sp, ema, alphas,
  rank, bottleneck, prompts

Strategies (each keeps every frozen parameter and BatchNorm statistic bit-identical):
  scratch        train everything from a random initialisation (the baseline transfer must beat)
  full           fine-tune everything
  linear_probe   train only the head, backbone BatchNorm in inference mode
  cached_probe   the same, on backbone features computed once (deterministic preprocessing)
  frozen_stages  freeze the stem and the first `stages` stages (MMDetection's frozen_stages)
  gradual        ULMFiT: head first, then one more subtree from the top at each `unfreeze` epoch
  lp_ft          linear probe for `lp_epochs`, then full fine-tuning, in one run
  llrd           full fine-tuning, lr times `llrd ** depth` counted in blocks below the head
  l2sp           full fine-tuning, weight decay `l2sp` pulling toward the pretrained weights
  bitfit         biases and the head (`bitfit_scales=True`: normalisation scales too)
  ema            full fine-tuning, weights' moving average (`ema` decay) evaluated alongside
  wise_ft        full fine-tuning, then the interpolations with the start at `alphas`
  lora           LoRA factors of rank `rank` on the backbone's kernels (ViT attention and MLP,
                 CNN 1x1 convolutions; --config.model.lora_targets / lora_scale) and the head;
                 rank 8 by default, 2 on EfficientNet-Lite (about 1.4 % of the backbone each);
                 `python -m jtransfer.export` merges them into plain weights
  adapter        a bottleneck adapter (`bottleneck` wide) after each block, and the head
  vpt            `prompts` visual prompt tokens in every block (ViT only) and the head

Results on ../shared/data/hymenoptera at res=224, EfficientNet-Lite0 ImageNet weights, 2 shared
CPU cores (other jobs running, so times are upper bounds):
  linear_probe  10 epochs: val accuracy 0.948 (145/153), 56 s of training
  cached_probe  0.948 at 100 epochs in 5.1 s of training, features included (0.7 s the head)
                (the same probe step by step, cache_features=False: 0.948, 47 / 126 / 420 s;
                `python scripts/benchmark.py probe`)
  full          10 epochs: val accuracy 0.954 (146/153), 544 s of training (with bn=train)

The defaults (SGD with momentum 0.9, peak lr 0.1 for the probes and 0.01 otherwise, global-norm
clipping at 1, the backbone's BatchNorm frozen) are the ones configs/ablations/lr.py chose
(docs/RESULTS.md; 5 epochs at 112 px, the digits at 64, one seed per setting; within noise: a
gap under two standard errors of the difference of two accuracies on the eval set):
  linear probe  the best on bees; 0.8 points (3 of 360 images) below lr 1 on the digits and 1.0
                (3 of 298) on pets3: within noise
  full          the best on bees (0.922); 0.7 points (2 of 298) below lr 0.003 on pets3 and 1.1
                (4 of 360) below lr 0.003 unclipped on the digits (0.975 against 0.986): within
                noise (2.1 points there; one standard error would be 1.0)
Frozen BatchNorm is what makes one setting do on every dataset. With bn=train (the default
before this measurement) the digits, far from ImageNet, reach 0.525 at lr 0.01 against 0.958
at lr 0.1, while on the photos lr 0.1 costs 4 to 8 points: the best lr grows with the distance
from the pretraining data (as Li et al., ICLR 2020, report). The likely reason: batch statistics
of digits re-normalise every feature the head reads, which small steps cannot follow (a trial
with the head at 10x the lr reached 0.575, so the head's speed is not it). Frozen BatchNorm
needs the clipping: without it lr 0.01 diverges on every dataset.
"""

import os

from jtransfer import base_config, config_args, presets, pretrained

DEFAULTS = {
    "model": "efficientnet_lite0",
    "data": "digits",
    "strategy": "full",
    "res": None,  # None: the pretrained source's native resolution
    "epochs": 10,
    "batch": 32,
    "lr": None,  # None: 0.1 for the probes, 0.01 otherwise
    "fewshot": [],  # shots of the few-shot evaluator, e.g. [1, 5, 10]; []: none
    "bn": "frozen",  # the backbone's BatchNorm while it fine-tunes: presets.BN_MODES
    **presets.STRATEGY_KNOBS,
}
STRATEGIES = tuple(s for s in presets.STRATEGIES if s != "frozen_backbone")
PROBES = ("linear_probe", "cached_probe")


def get_config(arg=None):
    a = config_args.parse(arg, DEFAULTS)
    strategy, model = a["strategy"], a["model"]
    config_args.choice("strategy", strategy, STRATEGIES)
    config_args.choice("bn", a["bn"], presets.BN_MODES)
    source = pretrained.SOURCES.get(f"{model}/imagenet")  # None: an error when it is loaded
    if a["res"] is None:
        a["res"] = source.resolution if source is not None else 224
    config_args.positive(a, ints=("res", "batch"), numbers=("epochs",))
    folder = os.path.isdir(os.path.expanduser(str(a["data"])))
    res = int(a["res"])
    # The inputs the weights were trained on; --config.pp_* overrides that contradict it are
    # warned about at startup (pretrained.preprocessing_warnings).
    norm = pretrained.normalization_pp(f"{model}/imagenet")
    c = base_config.get_config()  # every field, commented
    c.model.name = model  # a jtransfer.models name
    c.pretrained.source = f"{model}/imagenet"
    c.data.name = os.path.expanduser(a["data"]) if folder else a["data"]
    c.data.eval_split = "val" if folder else "test"
    resize = int(round(res * 256 / 224))
    probe = strategy in PROBES
    # A linear probe does best on the eval view (plus flips, unless features are cached, which
    # needs a deterministic view); fine-tuning wants random crops.
    crop = f"central_crop({res})" if probe else f"random_crop({res})|flip_lr"
    flip = "|flip_lr" if strategy == "linear_probe" else ""
    c.pp_train = f"decode|resize_small({resize})|{crop}{flip}|{norm}"
    c.pp_eval = f"decode|resize_small({resize})|central_crop({res})|{norm}"

    presets.apply_strategy(c, strategy, a)
    if a["bn"] == "frozen":
        presets.hold_backbone_batch_norm(c, strategy)

    c.batch_size = int(a["batch"])
    c.num_epochs = float(a["epochs"])
    c.lr = float(a["lr"] if a["lr"] is not None else (0.1 if probe else 0.01))
    c.schedule.warmup_steps = 10
    c.grad_clip_norm = 1.0
    c.task.label_smoothing = 0.0 if probe else 0.1
    c.evals.eval = {"type": "classification"}
    if a["fewshot"]:
        c.evals.fewshot = {"type": "fewshot", "shots": tuple(a["fewshot"])}
    c.log_every = 10
    c.lock()
    return c
