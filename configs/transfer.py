"""Generic transfer: any registered model, any TFDS dataset or image folder, any strategy.

    python -m jtransfer.main --workdir=/tmp/bees \
      --config=configs/transfer.py:data=../shared/data/hymenoptera,strategy=linear_probe

Arguments (`:key=value,...`):
  model     a jtransfer.models name (default efficientnet_lite0); its ImageNet weights are loaded
  data      a TFDS name (splits train/test) or an image-folder root (splits train/val)
  strategy  one of STRATEGIES below (default full)
  res       input resolution
  epochs, batch, lr   training length, global batch size, peak learning rate
  and each strategy's knob: stages, unfreeze (epochs), lp_epochs, llrd, l2sp, ema, alphas

Strategies (each keeps every frozen parameter and BatchNorm statistic bit-identical):
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

Results on ../shared/data/hymenoptera at res=224, EfficientNet-Lite0 ImageNet weights, 2 shared
CPU cores (other jobs running, so times are upper bounds):
  linear_probe  10 epochs: val accuracy 0.948 (145/153), 56 s of training
  cached_probe  0.948 at 10 / 30 / 100 epochs in 10 / 13 / 21 s of training, features included
                (the same probe step by step, cache_features=False: 0.948, 47 / 126 / 420 s;
                `python scripts/benchmark.py probe`)
  full          10 epochs: val accuracy 0.954 (146/153), 544 s of training
"""

import os

import ml_collections

from jtransfer import config_args, presets

DEFAULTS = {
    "model": "efficientnet_lite0",
    "data": "digits",
    "strategy": "full",
    "res": 224,
    "epochs": 10,
    "batch": 32,
    "lr": None,  # None: 0.1 for the probes, 0.01 otherwise
    "stages": 3,  # frozen_stages
    "unfreeze": None,  # gradual: the epochs at which subtrees unfreeze; None: 1, 2, 3, ...
    "lp_epochs": None,  # lp_ft: length of the probe phase; None: half the run
    "llrd": 0.75,  # llrd: per-block decay of the learning rate
    "l2sp": 1e-3,  # l2sp: strength of the pull toward the pretrained weights
    "bitfit_scales": False,  # bitfit: normalisation scales train too
    "ema": 0.99,  # ema: decay per step
    "alphas": (0.0, 0.25, 0.5, 0.75, 1.0),  # wise_ft: interpolation weights of the fine-tune
}
STRATEGIES = (
    "full",
    "linear_probe",
    "cached_probe",
    "frozen_stages",
    "gradual",
    "lp_ft",
    "llrd",
    "l2sp",
    "bitfit",
    "ema",
    "wise_ft",
)
PROBES = ("linear_probe", "cached_probe")


def get_config(arg=None):
    a = config_args.parse(arg, DEFAULTS)
    strategy, model = a["strategy"], a["model"]
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {list(STRATEGIES)}")
    folder = os.path.isdir(os.path.expanduser(str(a["data"])))
    res = int(a["res"])
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives init, data order and augmentation

    c.model = ml_collections.ConfigDict({"name": model})  # a jtransfer.models name
    c.pretrained = ml_collections.ConfigDict()
    c.pretrained.source = f"{model}/imagenet"  # registry name or a file path
    c.pretrained.dont_load = ("head/.*",)  # the new head is initialised, not loaded

    c.data = ml_collections.ConfigDict()
    c.data.name = os.path.expanduser(a["data"]) if folder else a["data"]
    c.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS dir; None: default
    c.data.train_split = "train"
    c.data.eval_split = "val" if folder else "test"
    c.data.on_bad_image = "fail"  # image folders: 'fail' or 'skip' unreadable files
    resize = int(round(res * 256 / 224))
    probe = strategy in PROBES
    # A linear probe does best on the eval view (plus flips, unless features are cached, which
    # needs a deterministic view); fine-tuning wants random crops.
    crop = f"central_crop({res})" if probe else f"random_crop({res})|flip_lr"
    flip = "|flip_lr" if strategy == "linear_probe" else ""
    c.pp_train = f"decode|resize_small({resize})|{crop}{flip}|value_range(-1, 1)"
    c.pp_eval = f"decode|resize_small({resize})|central_crop({res})|value_range(-1, 1)"

    # (regex, rule) pairs, first full match wins; and the BatchNorm layers held in inference
    # mode (regexes, or (regex, {'until_epoch': e}) pairs)
    policy, norm_eval = presets.freeze("full", model)
    if probe:
        policy, norm_eval = presets.freeze("head", model)
    elif strategy == "frozen_stages":
        policy, norm_eval = presets.freeze(int(a["stages"]), model)
    elif strategy == "gradual":
        epochs = a["unfreeze"] or list(range(1, len(presets.models.stage_names(model)) + 1))
        policy, norm_eval = presets.gradual_unfreezing(model, epochs)
    elif strategy == "lp_ft":
        policy, norm_eval = presets.lp_ft(model, a["lp_epochs"] or a["epochs"] / 2)
    elif strategy == "llrd":
        policy = presets.layerwise_lr_decay(model, float(a["llrd"]))
    elif strategy == "bitfit":
        policy = presets.bitfit(model, norm_scales=bool(a["bitfit_scales"]))
    c.policy, c.norm_eval = policy, norm_eval
    c.cache_features = strategy == "cached_probe"  # train the head on features computed once

    c.batch_size = int(a["batch"])  # global, over all devices and processes
    c.eval_batch_size = 64
    c.num_epochs = float(a["epochs"])  # training length in epochs of the train split
    c.total_steps = 0  # if > 0, the training length in steps instead
    c.optimizer = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9})
    c.lr = float(a["lr"] if a["lr"] is not None else (0.1 if probe else 0.01))
    c.weight_decay = float(a["l2sp"]) if strategy == "l2sp" else 1e-5
    c.decay_toward = "start" if strategy == "l2sp" else "zero"  # 'start': L2-SP
    c.schedule = ml_collections.ConfigDict({"warmup_steps": 10, "decay": "cosine"})
    c.grad_clip_norm = 1.0
    c.label_smoothing = 0.0 if probe else 0.1
    c.ema_decay = float(a["ema"]) if strategy == "ema" else 0.0  # 0: no moving average
    c.wise_ft_alphas = tuple(a["alphas"]) if strategy == "wise_ft" else ()  # evaluated at the end
    c.fewshot_shots = ()  # e.g. (1, 5, 10): ridge few-shot accuracy at each evaluation; (): off
    c.fewshot_seeds = (0, 1, 2)  # support sets drawn per seed

    # Scale: the device mesh, where parameters live, and the throughput switches.
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})  # -1: the rest
    c.sharding_rules = ((".*", "fsdp"),)  # (regex, 'replicate'|'fsdp'|{'dim','axis'}), 1st wins
    c.grad_accum_steps = 1  # micro-batches per step, gradients averaged (batch_size: the sum)
    c.compute_dtype = "float32"  # or "bfloat16" (parameters and optimizer state stay float32)
    c.prefetch = 2  # global batches put on the devices ahead of the step; 0: none

    c.log_every = 10  # steps between progress lines / metrics.jsonl rows
    c.eval_every = 0  # 0: evaluate only at the end
    c.checkpoint_every = 50
    c.keep_checkpoints = 2
    c.lock()
    return c
