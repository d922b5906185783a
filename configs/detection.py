"""Object detection: a pretrained backbone, an FPN neck and an FCOS head (anchor-free).

    python -m jtransfer.main --workdir=/tmp/bccd \
      --config=configs/detection.py:data=../shared/data/bccd

Arguments (`:key=value,...`):
  model     a jtransfer.models name (default efficientnet_lite0); its ImageNet weights are loaded
  data      a folder (read with `layout`) or a TFDS name (voc/2012, coco/2017)
  layout    how the folder is laid out, one of LAYOUTS (default voc); another layout is
            --config.data.* fields (format, images, annotations, split_files, class_map)
  strategy  scratch, full, frozen_backbone, frozen_stages, gradual, lp_ft, llrd, l2sp, bitfit,
            ema, wise_ft, lora, adapter, vpt (see configs/transfer.py; "the head" is the neck
            and the head here)
  res       the longer side of the input, a multiple of 32 (images keep their aspect ratio and
            are padded to res x res)
  epochs, batch, lr   training length, global batch size, peak learning rate (AdamW)
  boxes     boxes kept per image (more are cut; fewer padded)
  and each strategy's knob (jtransfer.presets.STRATEGY_KNOBS)

BatchNorm at small batches: as configs/segmentation.py.

The Oxford pets have head boxes for the trainval images only (296 of 300; images without an
xml are left out), so `layout=oxford_pet_heads` slices the breed-ordered list of those 296 with
TFDS split arithmetic: `[:80]`, `[100:180]` and `[200:280]` train, the other 56 evaluate.

Results, the commands on 2 CPU cores (README, "Segmentation and detection"): ../shared/data/bccd
mAP@0.5 0.903 (WBC AP@0.5 0.977) in 8.6 minutes, from scratch (`strategy=scratch`) 0.059; the
pet heads (`data=../shared/data/oxford_pets3,layout=oxford_pet_heads,res=384`) AP@0.5 0.992 in
5.5 minutes.
"""

from jtransfer import base_config, config_args, presets, pretrained

LAYOUTS = {
    # PASCAL VOC: JPEGImages/, Annotations/*.xml, ImageSets/Main/{split}.txt (e.g. BCCD)
    "voc": {"format": "voc", "train_split": "train", "eval_split": "test"},
    # The Oxford-IIIT Pet archive's head boxes (annotations/xmls, VOC xml), one class 'head'.
    "oxford_pet_heads": {
        "format": "voc",
        "images": "images",
        "annotations": "annotations/xmls",
        "split_files": "annotations/{split}.txt",
        "class_map": {"cat": "head", "dog": "head"},
        "train_split": "trainval[:80]+trainval[100:180]+trainval[200:280]",
        "eval_split": "trainval[80:100]+trainval[180:200]+trainval[280:]",
    },
    # COCO: {split}/*.jpg and annotations/instances_{split}.json
    "coco": {"format": "coco", "train_split": "train2017", "eval_split": "val2017"},
}
TFDS = {
    "voc/2012": {"format": "tfds", "train_split": "train", "eval_split": "validation"},
    "coco/2017": {"format": "tfds", "train_split": "train", "eval_split": "validation"},
}
DEFAULTS = {
    "model": "efficientnet_lite0",
    "data": "voc/2012",
    "layout": "voc",
    "strategy": "full",
    "res": 512,
    "epochs": 8,
    "batch": 4,
    "lr": 1e-3,
    "boxes": 64,
    **presets.STRATEGY_KNOBS,
}


def get_config(arg=None):
    a = config_args.parse(arg, DEFAULTS)
    config_args.positive(a, ints=("boxes",))
    c = base_config.dense("detection", a, LAYOUTS, TFDS)  # every field, commented
    res, boxes = a["res"], a["boxes"]
    norm = pretrained.normalization_pp(c.pretrained.source)  # the inputs the weights saw
    augment = f"random_scale_crop({res}, 0.8, 1.25)|flip_lr"
    c.pp_train = f"decode|{augment}|{norm}|pad_boxes({boxes})"
    c.pp_eval = f"decode|resize_pad({res})|{norm}|pad_boxes({boxes})"
    c.eval_batch_size = 8
    c.lock()
    return c
