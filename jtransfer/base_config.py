"""The base config: every field a run reads, with its default and what it means.

Config files (`configs/*.py`) start from `get_config()`, change what their experiment needs and
lock the result, so a field is documented once, here, and the trainer reads `config.x` without
defaults of its own. It lives in the package rather than beside the config files so that config
files, `jtransfer.cost`, the benchmarks and the tests all import the same one from any working
directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The defaults, unlocked: a config file changes them, then calls `lock()`."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives initialisation, data order, augmentation and dropout

    # What is learned. `task.name`: 'classification', 'segmentation' or 'detection' (see
    # jtransfer/tasks); the other fields belong to one task each and are ignored by the rest.
    c.task = ml_collections.ConfigDict()
    c.task.name = "classification"
    c.task.label_smoothing = 0.0  # classification: cross-entropy toward smoothed one-hot targets
    c.task.score_threshold = 0.05  # detection: detections scoring lower are dropped before NMS
    c.task.max_detections = 100  # detection: kept per image after NMS

    # The network: a jtransfer.models name plus its options (e.g. `dropout_rate`, `head_init`:
    # 'zeros' or 'lecun_normal'; `norm_eval` is set from `norm_eval` below); config files add the
    # option fields they set. Parameter-efficient fine-tuning is model options too, since it
    # adds parameters to the network (the lora / adapter / vpt presets set them;
    # jtransfer/models/peft.py): `lora_rank` (0: none), `lora_scale` (s in W + s·A·B),
    # `lora_targets` (regex over kernel paths), `adapter_dim` (0: none), and ViT's `prompts`
    # (0: none) and `deep_prompts` (every block, or the first).
    c.model = ml_collections.ConfigDict({"name": "efficientnet_lite0"})
    # Where the weights come from: a registered source name (`efficientnet_lite0/imagenet`), a
    # weights file, a run's workdir, or '' (train from scratch); `:subtree` loads a part.
    c.pretrained = ml_collections.ConfigDict()
    c.pretrained.source = ""
    c.pretrained.dont_load = ("head/.*",)  # regexes over parameter paths initialised afresh

    # The dataset (jtransfer/data/sources.py). A split may be sliced and summed as in TFDS
    # ('train[:80%]', 'train+val'). Fields a format does not read must stay None.
    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # a TFDS name, or the root directory of a folder format
    # 'auto' (a directory: image_folder, else tfds), 'image_folder' (root/<split>/<class>/),
    # 'tfds', 'voc' (xml per image), 'coco' (one json per split), 'mask_folder' (PNG mask per
    # image), 'image_list' (list files of image and class id)
    c.data.format = "auto"
    c.data.data_dir = config_dict.placeholder(str)  # TFDS data directory; None: TFDS's default
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.on_bad_image = "fail"  # image folders: 'fail' on an unreadable file, or 'skip' it
    # Folder layouts, relative to `name` ('{split}' is replaced); None: the format's default.
    c.data.images = config_dict.placeholder(str)  # voc: JPEGImages, coco: {split}, ...
    c.data.annotations = config_dict.placeholder(str)  # voc: xml dir; coco: the json file
    c.data.masks = config_dict.placeholder(str)  # mask_folder: masks named like their images
    # One list file per split, first field of a line = image name (voc default:
    # ImageSets/Main/{split}.txt); '' means a split is everything in its directory.
    c.data.split_files = config_dict.placeholder(str)
    # Labels: class names in id order (None: from the data; required for mask_folder),
    # {dataset class: run class or None (drop)}, {mask value: class id or ignore_label}.
    c.data.classes = config_dict.placeholder(tuple)
    c.data.class_map = config_dict.placeholder(dict)
    c.data.mask_values = config_dict.placeholder(dict)
    c.data.ignore_label = 255  # segmentation: pixels with this label count in no loss or metric
    c.data.tfds_keys = config_dict.placeholder(dict)  # tfds: {jtransfer feature: TFDS feature}
    # Fewer labels (classification, any format): the training split cut to `shots_per_class`
    # examples of each class, or to `percent_per_class` % of each (rounded, at least one),
    # drawn with `subset_seed` alike on every host; a smaller subset is nested in a larger one
    # of the same seed (jtransfer/data/sampling.py). One of the two at a time.
    c.data.shots_per_class = 0  # 0: off
    c.data.percent_per_class = 100.0  # 100: the whole split
    c.data.subset_seed = 0  # the draw's own seed, independent of `seed`

    # Preprocessing, big_vision-style op strings (jtransfer/data/preprocess.py).
    c.pp_train = "decode|resize(224)|value_range(-1, 1)"
    c.pp_eval = "decode|resize(224)|value_range(-1, 1)"

    # The parameter policy: (regex, rule) pairs over '/'-joined parameter paths, first full match
    # wins; a rule is 'train', 'frozen' or a dict of lr_mult / wd_mult / start_step /
    # start_epoch (jtransfer/policy.py). Presets in jtransfer/presets.py.
    c.policy = ((".*", "train"),)
    # BatchNorm layers held in inference mode (running statistics used and kept): regexes, and
    # (regex, {'until_epoch': e} or {'until_step': s}) pairs for layers held only until then.
    c.norm_eval = ()
    # Train the head on backbone features computed once (only when nothing below the head
    # trains, every backbone BatchNorm is held and pp_train is deterministic).
    c.cache_features = False

    # Length and batches.
    c.batch_size = 32  # global, over all devices and processes
    c.eval_batch_size = 64  # global; the last batch of a split is padded and masked
    c.num_epochs = 10.0  # training length in epochs of the train split
    c.total_steps = 0  # if > 0, the training length in steps instead of num_epochs

    # Optimisation.
    c.optimizer = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9})  # or 'adamw'
    c.lr = 0.01  # peak learning rate
    c.schedule = ml_collections.ConfigDict({"warmup_steps": 0, "decay": "cosine"})
    c.weight_decay = 1e-5  # decoupled; times each rule's wd_mult
    c.decay_toward = "zero"  # 'start': L2-SP, weight decay pulls toward the pretrained weights
    c.grad_clip_norm = 0.0  # global-norm clipping of the trainable gradients; 0: off
    c.ema_decay = 0.0  # > 0: a moving average of the trainable weights, evaluated alongside
    c.wise_ft_alphas = ()  # WiSE-FT: (1-a) * start + a * final evaluated for each a at the end

    # Evaluation: name -> evaluator config (`type` plus its options, jtransfer/evaluators).
    # 'eval' runs at every evaluation, with EMA and WiSE-FT weights too; empty: the task's default.
    c.evals = ml_collections.ConfigDict()

    # Devices: the mesh (data, fsdp, model; -1 takes the devices the others leave), where each
    # parameter lives ((regex, 'replicate' | 'fsdp' | {'dim': d, 'axis': a}), first match wins).
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
    c.sharding_rules = ((".*", "fsdp"),)  # with fsdp=1 (the default mesh): replicated
    c.grad_accum_steps = 1  # micro-batches per step, gradients averaged (batch_size: their sum)
    c.compute_dtype = "float32"  # or 'bfloat16' (parameters and optimizer state stay float32)
    c.prefetch = 2  # global batches put on the devices ahead of the step; 0: none

    # Output.
    c.log_every = 50  # steps between progress lines and metrics.jsonl rows
    c.eval_every = 0  # steps between evaluations; 0: only at the end
    c.checkpoint_every = 50  # steps between checkpoints (and at the end, and on SIGTERM)
    c.keep_checkpoints = 2  # how many of the latest checkpoints are kept
    return c


def dense(task: str, args: Mapping[str, Any], layouts, tfds_recipes) -> ml_collections.ConfigDict:
    """What configs/segmentation.py and configs/detection.py share, from their parsed
    arguments (`model`, `data`, `layout`, `strategy`, `batch`, `epochs`, `lr` and the strategy
    knobs): the task on the model's ImageNet backbone with a new neck and head, the dataset read
    with its layout or TFDS recipe, the strategy, BatchNorm held at small batches, and AdamW
    with a short warm-up and global-norm clipping. Unlocked: the caller adds preprocessing."""
    from jtransfer import config_args, presets  # they import this module's neighbours

    config_args.choice("strategy", args["strategy"], presets.DENSE_STRATEGIES)
    config_args.positive(args, ints=("res", "batch"), numbers=("epochs", "lr"))
    c = get_config()
    c.task.name = task
    c.model.name = args["model"]
    c.pretrained.source = f"{args['model']}/imagenet"
    c.pretrained.dont_load = ("head/.*", "neck/.*")  # the new layers; ImageNet's head ignored
    c.data.name, layout = config_args.dataset(args["data"], args["layout"], layouts, tfds_recipes)
    for key, value in layout.items():
        c.data[key] = value
    presets.apply_strategy(c, args["strategy"], args, neck=True)
    presets.hold_batch_norm_at_small_batches(c, args["batch"], args["strategy"])
    c.batch_size = args["batch"]
    c.num_epochs = float(args["epochs"])
    c.optimizer = {"name": "adamw"}
    c.lr = float(args["lr"])
    if args["strategy"] != "l2sp":
        c.weight_decay = 1e-4
    c.schedule.warmup_steps = 20
    c.grad_clip_norm = 1.0
    c.log_every = 10
    c.checkpoint_every = 100
    return c
