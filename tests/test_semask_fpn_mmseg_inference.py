"""
SeMask-FPN inference as mmseg runs the released models: no input padding, stride-4 logits
resized to the network input and then to the image, and mmseg's keep-ratio cv2 test resize.
The float64 reference follows the mmseg SeMask-FPN forward (``BranchFPNHead`` and
``EncoderDecoder``, mmsegmentation v0.11) written out with functional ops.
"""

import glob
import os
import tempfile
import unittest

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.utils.events import EventStorage

from semask_d2 import add_semask_config
from semask_d2.data.dataset_mappers.mmseg_tta_dataset_mapper import MMSegMultiScaleFlipMapper
from semask_d2.data.dataset_mappers.semantic_test_dataset_mapper import SemanticTestDatasetMapper
from semask_d2.data.transforms import CV2ResizeTransform, MMSegKeepRatioResize, build_test_resize

from semask_d2.modeling.backbone import FeatureDict
from semask_d2.modeling.test_time_augmentation import SemanticSegmentorWithTTA

from model_fixtures import CONFIG_DIR, tiny_cfg, tiny_model

K = 5
F64 = torch.float64


def mmseg_cfg():
    cfg = tiny_cfg("fpn", num_classes=K)
    # The shipped recipe; stated so that the test reads what it relies on.
    cfg.MODEL.SWIN.SIZE_DIVISIBILITY = 0
    cfg.MODEL.SEM_SEG_HEAD.LOGITS_RESIZE = "input"
    return cfg


def with_random_batch_norm_statistics(model, seed=5):
    """Non-trivial BN running statistics, so that the reference checks them."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
    return model.eval()


def reference_logits(model, image, out_size):
    """
    mmseg's SeMask-FPN forward in float64 on one (3, H, W) image: the backbone on the unpadded
    normalized input, the FPN levels (conv, BN, ReLU, x2 bilinear chains), each level resized
    to level 0, the 1x1 classifier, a resize to the input, then to `out_size`.
    """
    x = ((image.to(F64) - model.pixel_mean.to(F64)) / model.pixel_std.to(F64))[None]
    backbone = model.backbone.to(F64)
    with torch.no_grad():
        features = backbone(x)
    head = model.sem_seg_head
    level_0 = None
    for name, blocks in zip(head.in_features, head.scale_heads):
        y = features[name]
        for block in blocks:
            if isinstance(block, torch.nn.Upsample):
                y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
                continue
            bn = block.norm
            y = F.conv2d(y, block.weight.to(F64), padding=1)
            scale = bn.weight.to(F64) / torch.sqrt(bn.running_var.to(F64) + bn.eps)
            shift = bn.bias.to(F64) - bn.running_mean.to(F64) * scale
            y = F.relu(y * scale[:, None, None] + shift[:, None, None])
        if level_0 is None:
            level_0 = y
        else:
            size = level_0.shape[-2:]
            level_0 = level_0 + F.interpolate(y, size, mode="bilinear", align_corners=False)
    logits = F.conv2d(level_0, head.predictor.weight.to(F64), head.predictor.bias.to(F64))
    logits = F.interpolate(logits, image.shape[-2:], mode="bilinear", align_corners=False)
    return F.interpolate(logits, out_size, mode="bilinear", align_corners=False)[0]


def fixed_image(h, w, seed=2):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed)).float()


class TestUnpaddedInference(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = with_random_batch_norm_statistics(tiny_model(mmseg_cfg()))
        cls.image = fixed_image(50, 75)
        # float64 first: reference_logits casts the backbone, so compute it on a copy.
        cls.reference = reference_logits(
            with_random_batch_norm_statistics(tiny_model(mmseg_cfg())), cls.image, (100, 150)
        )

    def predict(self, model, image, height, width):
        with torch.no_grad():
            return model([{"image": image, "height": height, "width": width}])[0]["sem_seg"]

    def test_logits_match_the_reference_at_50x75(self):
        got = self.predict(self.model, self.image, 100, 150)
        self.assertEqual(tuple(got.shape), (K, 100, 150))
        self.assertLess((got.double() - self.reference).abs().max().item(), 1e-4)

    def test_the_backbone_sees_the_unpadded_input(self):
        sizes = []
        hook = self.model.backbone.register_forward_hook(
            lambda m, i, o: sizes.append((tuple(i[0].shape[-2:]), o.input_size))
        )
        try:
            self.predict(self.model, self.image, 50, 75)
        finally:
            hook.remove()
        self.assertEqual(sizes, [((50, 75), (50, 75))])

    def test_backbone_reports_its_input_size(self):
        with torch.no_grad():
            features = self.model.backbone(torch.zeros(1, 3, 37, 53))
        self.assertIsInstance(features, FeatureDict)
        self.assertEqual(features.input_size, (37, 53))

    def test_detectron2_padding_differs_on_odd_sizes(self):
        cfg = mmseg_cfg()
        cfg.MODEL.SWIN.SIZE_DIVISIBILITY = 32
        cfg.MODEL.SEM_SEG_HEAD.LOGITS_RESIZE = "stride"
        padded = with_random_batch_norm_statistics(tiny_model(cfg))
        got = self.predict(padded, self.image, 100, 150)
        # Padding to 64x96 changes the features near the border; x4-then-crop is not a resize.
        self.assertGreater((got.double() - self.reference).abs().max().item(), 1e-2)

    def test_sizes_multiple_of_32_are_unchanged(self):
        cfg = mmseg_cfg()
        cfg.MODEL.SWIN.SIZE_DIVISIBILITY = 32
        cfg.MODEL.SEM_SEG_HEAD.LOGITS_RESIZE = "stride"
        padded = with_random_batch_norm_statistics(tiny_model(cfg))
        image = fixed_image(64, 96)
        torch.testing.assert_close(
            self.predict(padded, image, 80, 120),
            self.predict(self.model, image, 80, 120),
            atol=1e-5,
            rtol=0,
        )

    def test_training_losses_unchanged_for_crops_multiple_of_32(self):
        gen = torch.Generator().manual_seed(4)
        labels = torch.randint(0, K, (64, 64), generator=gen)
        inputs = [{"image": fixed_image(64, 64, seed=s), "sem_seg": labels} for s in (1, 2)]
        losses = []
        for divisibility, resize in ((32, "stride"), (0, "input")):
            cfg = mmseg_cfg()
            cfg.MODEL.SWIN.SIZE_DIVISIBILITY = divisibility
            cfg.MODEL.SEM_SEG_HEAD.LOGITS_RESIZE = resize
            cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.0
            model = tiny_model(cfg).train()
            with EventStorage():
                losses.append({k: v.item() for k, v in model(inputs).items()})
        self.assertEqual(losses[0], losses[1])

    def test_input_resize_needs_the_input_size(self):
        head = self.model.sem_seg_head
        # A backbone returning a plain dict.
        features = {n: torch.zeros(1, 16 * 2**i, 4, 4) for i, n in enumerate(head.in_features)}
        with self.assertRaisesRegex(ValueError, "LOGITS_RESIZE 'input' needs a backbone"):
            head(features)

    def test_negative_size_divisibility_is_rejected(self):
        cfg = mmseg_cfg()
        cfg.MODEL.SWIN.SIZE_DIVISIBILITY = -1
        with self.assertRaisesRegex(ValueError, "MODEL.SWIN.SIZE_DIVISIBILITY must be 0"):
            tiny_model(cfg)

    def test_unknown_logits_resize_is_rejected(self):
        cfg = mmseg_cfg()
        cfg.MODEL.SEM_SEG_HEAD.LOGITS_RESIZE = "nearest"
        with self.assertRaisesRegex(ValueError, "Unknown MODEL.SEM_SEG_HEAD.LOGITS_RESIZE"):
            tiny_model(cfg)


class TestMMSegTestResize(unittest.TestCase):
    def test_keep_ratio_sizes(self):
        # s = min(long / max(h, w), short / min(h, w)); (int(h s + .5), int(w s + .5)).
        cases = {
            (200, 300, 512, 2048): (512, 768),  # short side binds
            (100, 1000, 512, 2048): (205, 2048),  # s = 2.048: long side binds
            (1024, 2048, 1024, 2048): (1024, 2048),  # Cityscapes: unchanged
            (375, 500, 640, 2560): (640, 853),  # 500 * 640 / 375 = 853.33
            (683, 512, 512, 2048): (683, 512),  # s = 1
        }
        for (h, w, short, long), expected in cases.items():
            self.assertEqual(MMSegKeepRatioResize.get_output_shape(h, w, short, long), expected)

    def test_cv2_bilinear_pixels_by_hand(self):
        # x2 with half-pixel centres: source (d + 0.5) / 2 - 0.5, clamped at the borders, so a
        # row [0, 100] becomes [0, 25, 75, 100] and the columns likewise.
        image = np.array([[0, 100], [100, 200]], dtype=np.uint8)[:, :, None].repeat(3, axis=2)
        out = CV2ResizeTransform(2, 2, 4, 4).apply_image(image)
        expected = np.array(
            [[0, 25, 75, 100], [25, 50, 100, 125], [75, 100, 150, 175], [100, 125, 175, 200]]
        )
        np.testing.assert_array_equal(out[:, :, 0], expected)
        np.testing.assert_array_equal(out[:, :, 2], expected)

    def test_transform_inverse_and_labels(self):
        tfm = CV2ResizeTransform(2, 3, 4, 6)
        labels = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
        np.testing.assert_array_equal(
            tfm.apply_segmentation(labels), labels.repeat(2, axis=0).repeat(2, axis=1)
        )
        np.testing.assert_allclose(tfm.apply_coords(np.array([[3.0, 2.0]])), [[6.0, 4.0]])
        self.assertEqual(
            (tfm.inverse().h, tfm.inverse().w, tfm.inverse().new_h, tfm.inverse().new_w),
            (4, 6, 2, 3),
        )
        with self.assertRaisesRegex(ValueError, "for 2x3 images got 4x4"):
            tfm.apply_image(np.zeros((4, 4, 3), np.uint8))

    def test_mapper_resizes_as_mmseg(self):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 512, 2048
        cfg.INPUT.FORMAT = "RGB"
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
        with self.subTest("mmseg"):
            cfg.INPUT.TEST_RESIZE = "mmseg"
            resized = self._map(cfg, image)
            want = cv2.resize(image, (768, 512), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(resized, want)
        with self.subTest("detectron2"):
            cfg.INPUT.TEST_RESIZE = "detectron2"
            resized = self._map(cfg, image)
            want = T.ResizeShortestEdge(512, 2048).get_transform(image).apply_image(image)
            np.testing.assert_array_equal(resized, want)
            # Same size, other filter (PIL vs cv2).
            self.assertEqual(resized.shape, (512, 768, 3))

    def _map(self, cfg, image):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "x.png")
            Image.fromarray(image).save(path)
            mapper = SemanticTestDatasetMapper(cfg)
            record = mapper({"file_name": path, "height": 200, "width": 300})
        self.assertEqual((record["height"], record["width"]), (200, 300))
        return record["image"].permute(1, 2, 0).numpy()

    def test_unknown_resize_is_rejected(self):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.INPUT.TEST_RESIZE = "pil"
        with self.assertRaisesRegex(ValueError, "Unknown INPUT.TEST_RESIZE 'pil'"):
            build_test_resize(cfg)


class TestMMSegMultiScaleFlip(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        rng = np.random.default_rng(3)
        self.image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
        self.path = os.path.join(self.tmp.name, "x.png")
        Image.fromarray(self.image).save(self.path)
        cfg = mmseg_cfg()
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 32, 128
        cfg.INPUT.TEST_RESIZE = "mmseg"
        cfg.TEST.AUG.MIN_SIZES = [16, 48]
        cfg.TEST.AUG.FLIP = True
        self.cfg = cfg

    def test_views_are_resized_from_the_original_file(self):
        mapper = MMSegMultiScaleFlipMapper(self.cfg)
        # A test-resized image in the record must not be what the views start from.
        record = {"file_name": self.path, "height": 40, "width": 60, "image": torch.zeros(3, 8, 8)}
        views = mapper(record)
        # Ratios 0.5 and 1.5 of img_scale (128, 32): (64, 16) -> 16x24, (192, 48) -> 48x72.
        self.assertEqual(
            [tuple(v["image"].shape[-2:]) for v in views], [(16, 24)] * 2 + [(48, 72)] * 2
        )
        for i, (w, h) in enumerate(((24, 16), (72, 48))):
            want = cv2.resize(self.image, (w, h), interpolation=cv2.INTER_LINEAR)
            plain, flipped = views[2 * i]["image"], views[2 * i + 1]["image"]
            np.testing.assert_array_equal(plain.permute(1, 2, 0).numpy(), want)
            torch.testing.assert_close(flipped, plain.flip(-1))
        self.assertTrue(all((v["height"], v["width"]) == (40, 60) for v in views))

    def test_tta_averages_the_probabilities_of_the_views(self):
        model = with_random_batch_norm_statistics(tiny_model(self.cfg))
        tta = SemanticSegmentorWithTTA(self.cfg, model)
        self.assertIsInstance(tta.tta_mapper, MMSegMultiScaleFlipMapper)
        record = {"file_name": self.path, "height": 40, "width": 60, "image": torch.zeros(3, 8, 8)}
        with torch.no_grad():
            got = tta([record])[0]["sem_seg"]
            views = MMSegMultiScaleFlipMapper(self.cfg)(record)
            probs = []
            for i, view in enumerate(views):
                view.pop("transforms")
                p = model([view])[0]["sem_seg"].softmax(dim=0)
                probs.append(p.flip(-1) if i % 2 else p)
        self.assertEqual(tuple(got.shape), (K, 40, 60))
        torch.testing.assert_close(got, sum(probs) / 4)


class TestShippedFPNConfigsInferAsMMSeg(unittest.TestCase):
    def test_every_fpn_config(self):
        paths = sorted(
            glob.glob(
                os.path.join(
                    CONFIG_DIR, "*", "semantic-segmentation", "semask_fpn", "semask_fpn_*.yaml"
                )
            )
        )
        self.assertEqual(len(paths), 12)
        for path in paths:
            cfg = get_cfg()
            add_semask_config(cfg)
            cfg.merge_from_file(path)
            with self.subTest(os.path.relpath(path, CONFIG_DIR)):
                self.assertEqual(cfg.MODEL.SWIN.SIZE_DIVISIBILITY, 0)
                self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.LOGITS_RESIZE, "input")
                self.assertEqual(cfg.INPUT.TEST_RESIZE, "mmseg")
                # Training crops stay padded to the crop size by the mapper.
                self.assertEqual(cfg.INPUT.SIZE_DIVISIBILITY, cfg.INPUT.CROP.SIZE[0])


if __name__ == "__main__":
    unittest.main()
