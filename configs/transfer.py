"""Generic transfer: any registered model, any TFDS dataset or image folder, any freezing.

    python -m jtransfer.main --workdir=/tmp/bees \
      --config=configs/transfer.py:data=../shared/data/hymenoptera,freeze=head,res=224

Arguments (`:key=value,...`):
  model   a jtransfer.models name (default efficientnet_lite0); its ImageNet weights are loaded
  data    a TFDS name (splits train/test) or an image-folder root (splits train/val)
  freeze  'full' (fine-tune everything), 'head' (linear probe), or k (freeze stem + stages 1..k)
  res     input resolution
  epochs, batch, lr   training length, global batch size, peak learning rate

Results on ../shared/data/hymenoptera at res=224, 10 epochs (76 steps of 32), EfficientNet-Lite0
ImageNet weights, 2 shared CPU cores (other jobs running, so times are upper bounds):
  freeze=head  val accuracy 0.948 (145/153), 67 s of training, 1 min 45 s wall
  freeze=full  val accuracy 0.954 (146/153), 544 s of training, about 10 min wall
"""

import os

import ml_collections

from jtransfer import config_args, presets

DEFAULTS = {
    "model": "efficientnet_lite0",
    "data": "digits",
    "freeze": "full",
    "res": 224,
    "epochs": 10,
    "batch": 32,
    "lr": None,  # None: 0.1 for a linear probe, 0.01 otherwise
}


def get_config(arg=None):
    a = config_args.parse(arg, DEFAULTS)
    folder = os.path.isdir(os.path.expanduser(str(a["data"])))
    res = int(a["res"])
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives init, data order and augmentation

    c.model = ml_collections.ConfigDict({"name": a["model"]})  # a jtransfer.models name
    c.pretrained = ml_collections.ConfigDict()
    c.pretrained.source = f"{a['model']}/imagenet"  # registry name or a file path
    c.pretrained.dont_load = ("head/.*",)  # the new head is initialised, not loaded

    c.data = ml_collections.ConfigDict()
    c.data.name = os.path.expanduser(a["data"]) if folder else a["data"]
    c.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS dir; None: default
    c.data.train_split = "train"
    c.data.eval_split = "val" if folder else "test"
    c.data.on_bad_image = "fail"  # image folders: 'fail' or 'skip' unreadable files
    resize = int(round(res * 256 / 224))
    probe = a["freeze"] == "head"
    # A linear probe does best on the eval view (plus flips); fine-tuning wants random crops.
    crop = f"central_crop({res})" if probe else f"random_crop({res})"
    c.pp_train = f"decode|resize_small({resize})|{crop}|flip_lr|value_range(-1, 1)"
    c.pp_eval = f"decode|resize_small({resize})|central_crop({res})|value_range(-1, 1)"

    # (regex, rule) pairs, and the BatchNorm layers held in inference mode
    c.policy, c.norm_eval = presets.freeze(a["freeze"], a["model"])

    c.batch_size = int(a["batch"])  # global, over all devices and processes
    c.eval_batch_size = 64
    c.num_epochs = float(a["epochs"])  # training length in epochs of the train split
    c.total_steps = 0  # if > 0, the training length in steps instead
    c.optimizer = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9})
    c.lr = float(a["lr"] if a["lr"] is not None else (0.1 if a["freeze"] == "head" else 0.01))
    c.weight_decay = 1e-5
    c.schedule = ml_collections.ConfigDict({"warmup_steps": 10, "decay": "cosine"})
    c.grad_clip_norm = 1.0
    c.label_smoothing = 0.0 if probe else 0.1

    c.log_every = 10  # steps between progress lines / metrics.jsonl rows
    c.eval_every = 0  # 0: evaluate only at the end
    c.checkpoint_every = 50
    c.keep_checkpoints = 2
    c.lock()
    return c
