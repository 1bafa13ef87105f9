"""
Training a tiny SeMask-Mask2Former through the panoptic and instance mappers: small synthetic
datasets in COCO panoptic and COCO instance format, registered with detectron2's own
``register_coco_panoptic`` / ``register_coco_instances`` (no semantic label files, so the prior
loss's labels are derived), 20 iterations of ``train_net.Trainer`` in process.
"""

import json
import os
import sys
import tempfile
import unittest

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from detectron2.data.datasets import register_coco_instances, register_coco_panoptic
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from semask_d2.data.datasets import unregister

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_net  # noqa: E402

from model_fixtures import tiny_cfg  # noqa: E402

SIZE = 64
NUM_IMAGES = 8
# COCO-style category ids: things 1 "red", 2 "green"; stuff 3 "sky", 4 "ground".
CATEGORIES = [
    {"id": 1, "name": "red", "isthing": 1, "color": [220, 60, 60]},
    {"id": 2, "name": "green", "isthing": 1, "color": [60, 200, 90]},
    {"id": 3, "name": "sky", "isthing": 0, "color": [90, 140, 230]},
    {"id": 4, "name": "ground", "isthing": 0, "color": [120, 100, 60]},
]
COLORS = {c["id"]: np.array(c["color"]) for c in CATEGORIES}


def draw_scene(rng):
    """
    A 64x64 scene: sky above a random horizon, ground below, then 2-3 shapes of the thing
    classes pasted in turn (a later shape covers an earlier one where they overlap).

    Returns:
        (np.ndarray, list[tuple[int, np.ndarray]], np.ndarray): the (H, W, 3) uint8 image, the
        things as (category id, full (H, W) bool mask before overlaps), and the (H, W) category
        ids of the stuff.
    """
    rows = np.arange(SIZE)[:, None]
    cols = np.arange(SIZE)[None, :]
    stuff = np.where(rows < rng.integers(20, 44), 3, 4) * np.ones((1, SIZE), dtype=np.int64)
    things = []
    for k in range(rng.integers(2, 4)):
        h, w = rng.integers(14, 28, size=2)
        y, x = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
        if k % 2:  # an ellipse
            mask = ((rows - y - h / 2) / (h / 2)) ** 2 + ((cols - x - w / 2) / (w / 2)) ** 2 < 1
        else:
            mask = (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w)
        things.append((int(rng.integers(1, 3)), mask))
    category = stuff.copy()
    for category_id, mask in things:
        category[mask] = category_id
    colors = np.stack([COLORS[c] for c in range(1, 5)])[category - 1]
    image = np.clip(colors + rng.normal(0, 12, colors.shape), 0, 255).astype(np.uint8)
    return image, things, stuff


def write_image(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def write_panoptic_dataset(root, rng):
    """COCO panoptic: images/*.jpg, panoptic/*.png (segment id k = colour (k, 0, 0)), JSON."""
    images, annotations = [], []
    for i in range(NUM_IMAGES):
        image, things, stuff = draw_scene(rng)
        write_image(os.path.join(root, "images", f"{i:03d}.jpg"), image)
        segment_ids = np.zeros((SIZE, SIZE), dtype=np.uint8)
        segments = [(3, stuff == 3), (4, stuff == 4)] + things
        for k, (_, mask) in enumerate(segments, start=1):
            segment_ids[mask] = k
        segments_info = [
            {"id": k, "category_id": c, "iscrowd": 0, "area": int((segment_ids == k).sum())}
            for k, (c, _) in enumerate(segments, start=1)
        ]
        colors = np.stack([segment_ids, 0 * segment_ids, 0 * segment_ids], axis=-1)
        write_image(os.path.join(root, "panoptic", f"{i:03d}.png"), colors)
        images.append({"id": i, "file_name": f"{i:03d}.jpg", "height": SIZE, "width": SIZE})
        annotations.append(
            {"image_id": i, "file_name": f"{i:03d}.png", "segments_info": segments_info}
        )
    path = os.path.join(root, "panoptic.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


def write_instance_dataset(root, rng):
    """COCO instances: images/*.jpg and a JSON with rectangles as polygons, ellipses as RLE."""
    images, annotations = [], []
    for i in range(NUM_IMAGES):
        image, things, _ = draw_scene(rng)
        write_image(os.path.join(root, "images", f"{i:03d}.jpg"), image)
        images.append({"id": i, "file_name": f"{i:03d}.jpg", "height": SIZE, "width": SIZE})
        for k, (category_id, mask) in enumerate(things):
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            if k % 2:
                segmentation = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation["counts"] = segmentation["counts"].decode("ascii")
            else:
                segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": category_id,
                    "segmentation": segmentation,
                    "area": int(mask.sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c["id"], "name": c["name"]} for c in CATEGORIES if c["isthing"]]
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


class LossRecorder(HookBase):
    """The total loss and the prior loss of each step, and the names of all losses."""

    def __init__(self):
        self.losses = []
        self.prior_losses = []
        self.names = set()

    def after_step(self):
        storage = self.trainer.storage
        self.losses.append(storage.history("total_loss").latest())
        self.prior_losses.append(storage.history("loss_cate").latest())
        self.names.update(k for k in storage.histories() if k.startswith("loss_"))


class TrainingTestCase(unittest.TestCase):
    NAME = ""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.root = tmp.name
        self.addCleanup(unregister, self.NAME)
        threads = torch.get_num_threads()
        # One thread: on a busy 2-core machine, two intra-op threads mostly wait on each other.
        torch.set_num_threads(1)
        self.addCleanup(torch.set_num_threads, threads)

    def cfg(self, num_classes, mapper_name):
        cfg = tiny_cfg("mask2former", num_classes=num_classes)
        cfg.MODEL.WEIGHTS = ""
        cfg.DATASETS.TRAIN = (self.NAME,)
        cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
        cfg.INPUT.MIN_SIZE_TRAIN = (SIZE,)
        cfg.INPUT.MAX_SIZE_TRAIN = 2 * SIZE
        cfg.INPUT.CROP.SIZE = [SIZE, SIZE]
        cfg.INPUT.SIZE_DIVISIBILITY = SIZE
        cfg.INPUT.COLOR_AUG_SSD = False
        cfg.INPUT.IMAGE_SIZE = SIZE
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.SOLVER.IMS_PER_BATCH = 4
        cfg.SOLVER.BASE_LR = 5e-3
        cfg.SOLVER.MAX_ITER = 20
        cfg.SOLVER.CHECKPOINT_PERIOD = 1000
        cfg.SOLVER.AMP.ENABLED = False
        cfg.TEST.EVAL_PERIOD = 0
        cfg.SEED = 0
        cfg.OUTPUT_DIR = os.path.join(self.root, "output")
        return cfg

    def train(self, cfg):
        cfg.freeze()
        seed_all_rng(0)
        trainer = train_net.Trainer(cfg)
        trainer.resume_or_load(resume=False)
        recorder = LossRecorder()
        trainer.register_hooks([recorder])
        trainer.train()
        self.trainer = trainer
        return recorder

    def evaluate(self, cfg, **mask_former_test):
        """train_net's evaluation of the trained model on the training set."""
        cfg = cfg.clone()
        cfg.defrost()
        cfg.DATASETS.TEST = (self.NAME,)
        for key, value in mask_former_test.items():
            cfg.MODEL.MASK_FORMER.TEST[key] = value
        model = train_net.Trainer.build_model(cfg)
        model.load_state_dict(self.trainer.model.state_dict())
        return train_net.Trainer.test(cfg, model)

    def assert_learns(self, recorder):
        self.assertTrue({"loss_ce", "loss_mask", "loss_dice", "loss_cate"} <= recorder.names)
        for losses in (recorder.losses, recorder.prior_losses):
            self.assertEqual(len(losses), 20)
            self.assertTrue(np.isfinite(losses).all(), losses)
            self.assertLess(np.mean(losses[-5:]), 0.8 * np.mean(losses[:5]), losses)


class TestPanopticTraining(TrainingTestCase):
    NAME = "_semask_tiny_panoptic_train"

    def test_loss_goes_down(self):
        json_file = write_panoptic_dataset(self.root, np.random.default_rng(0))
        things = {c["id"]: i for i, c in enumerate(CATEGORIES) if c["isthing"]}
        stuff = {c["id"]: i for i, c in enumerate(CATEGORIES) if not c["isthing"]}
        metadata = {
            "thing_classes": [c["name"] for c in CATEGORIES if c["isthing"]],
            "stuff_classes": [c["name"] for c in CATEGORIES],
            "thing_dataset_id_to_contiguous_id": things,
            "stuff_dataset_id_to_contiguous_id": stuff,
        }
        register_coco_panoptic(
            self.NAME,
            metadata,
            os.path.join(self.root, "images"),
            os.path.join(self.root, "panoptic"),
            json_file,
        )
        cfg = self.cfg(4, "mask_former_panoptic")
        self.assert_learns(self.train(cfg))
        # train_net's evaluation wiring for a user's register_coco_panoptic data: PQ through
        # COCOPanopticEvaluator (no semantic files here, so no mIoU).
        results = self.evaluate(cfg, PANOPTIC_ON=True)
        pq = results["panoptic_seg"]
        self.assertEqual(
            set(pq), {f"{m}{s}" for m in ("PQ", "SQ", "RQ") for s in ("", "_th", "_st")}
        )
        self.assertTrue(all(0.0 <= v <= 100.0 for v in pq.values()), pq)


class TestInstanceTraining(TrainingTestCase):
    NAME = "_semask_tiny_instance_train"

    def test_loss_goes_down(self):
        json_file = write_instance_dataset(self.root, np.random.default_rng(1))
        register_coco_instances(self.NAME, {}, json_file, os.path.join(self.root, "images"))
        cfg = self.cfg(2, "coco_instance_lsj")
        cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE = 0.75, 1.25
        self.assert_learns(self.train(cfg))
        # COCO mask AP through train_net's evaluator for the "coco" type.
        segm = self.evaluate(cfg, INSTANCE_ON=True, SEMANTIC_ON=False)["segm"]
        self.assertTrue(0.0 <= segm["AP"] <= 100.0, segm)
        self.assertIn("AP-red", segm)


if __name__ == "__main__":
    unittest.main()
