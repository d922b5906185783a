"""Semantic segmentation: a pretrained backbone, an FPN neck and a semantic-FPN head.

    python -m jtransfer.main --workdir=/tmp/pets-seg \
      --config=configs/segmentation.py:data=../shared/data/oxford_pets3

Arguments (`:key=value,...`):
  model     a jtransfer.models name (default efficientnet_lite0); its ImageNet weights are loaded
  data      a folder (read with `layout`) or a TFDS name (oxford_iiit_pet)
  layout    how the folder is laid out, one of LAYOUTS (default oxford_pet); another layout is
            --config.data.* fields (format, images, masks, split_files, classes, mask_values)
  strategy  scratch, full, frozen_backbone, frozen_stages, gradual, lp_ft, llrd, l2sp, bitfit,
            ema, wise_ft, lora, adapter, vpt (see configs/transfer.py; "the head" is the neck
            and the head here)
  res       square input size, a multiple of 32
  epochs, batch, lr   training length, global batch size, peak learning rate (AdamW)
  and each strategy's knob (jtransfer.presets.STRATEGY_KNOBS)

BatchNorm: at the small batches of dense tasks every backbone BatchNorm layer is held in
inference mode (MMDetection's and MMSegmentation's `norm_eval=True`) unless `batch` >= 16;
`strategy=scratch` has no statistics worth holding and trains them.

Result on ../shared/data/oxford_pets3 (pet vs background, trimap boundary ignored; trainval ->
test), the command above on 2 CPU cores: pet IoU 0.898 (mean IoU 0.924) in 3.9 minutes; with
`strategy=scratch` pet IoU 0.442 in 4.4 minutes (README, "Segmentation and detection").
"""

from jtransfer import base_config, config_args, presets, pretrained

LAYOUTS = {
    # The Oxford-IIIT Pet archive (what TFDS's oxford_iiit_pet extracts): trimaps 1 pet,
    # 2 background, 3 boundary; split lists annotations/{trainval,test}.txt.
    "oxford_pet": {
        "format": "mask_folder",
        "images": "images",
        "masks": "annotations/trimaps",
        "split_files": "annotations/{split}.txt",
        "classes": ("background", "pet"),
        "mask_values": {1: 1, 2: 0, 3: 255},
        "train_split": "trainval",
        "eval_split": "test",
    },
    # mask_folder's own layout: images/<split>/NAME.jpg, masks/<split>/NAME.png of class ids.
    "masks": {"format": "mask_folder", "train_split": "train", "eval_split": "val"},
}
TFDS = {
    # segmentation_mask is the trimap minus one: 0 pet, 1 background, 2 boundary
    "oxford_iiit_pet": {
        "format": "tfds",
        "tfds_keys": {"segmentation": "segmentation_mask"},
        "classes": ("background", "pet"),
        "mask_values": {0: 1, 1: 0, 2: 255},
        "train_split": "train",
        "eval_split": "test",
    },
}
DEFAULTS = {
    "model": "efficientnet_lite0",
    "data": "oxford_iiit_pet",
    "layout": "oxford_pet",
    "strategy": "full",
    "res": 256,
    "epochs": 8,
    "batch": 8,
    "lr": 1e-3,
    **presets.STRATEGY_KNOBS,
}


def get_config(arg=None):
    a = config_args.parse(arg, DEFAULTS)
    c = base_config.dense("segmentation", a, LAYOUTS, TFDS)  # every field, commented
    res = a["res"]
    norm = pretrained.normalization_pp(c.pretrained.source)  # the inputs the weights saw
    c.pp_train = f"decode|random_scale_crop({res}, 0.5, 2.0)|flip_lr|{norm}"
    c.pp_eval = f"decode|resize_pad({res})|{norm}"
    c.eval_batch_size = 16
    c.lock()
    return c
