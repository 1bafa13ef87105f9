"""
demo/demo.py on generated images and a generated video, with a tiny SeMask-FPN (semantic
drawings, prior maps, errors) and a tiny SeMask-Mask2Former (semantic, panoptic and instance
drawings).
"""

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import unittest

import cv2
import numpy as np
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from semask_d2 import add_semask_config

from model_fixtures import shrink, write_tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(REPO, "demo")
sys.path.insert(0, DEMO_DIR)
import demo  # noqa: E402
from predictor import (  # noqa: E402
    COLOR_SEED,
    PRIOR_ALPHA,
    SeMaskPredictor,
    build_metadata,
    draw_prior_maps,
)

FPN_T = os.path.join(
    REPO, "configs/ade20k/semantic-segmentation/semask_fpn/semask_fpn_swin_tiny_bs16_80k.yaml"
)
M2F_T = os.path.join(
    REPO,
    "configs/ade20k/semantic-segmentation/semask_mask2former",
    "maskformer2_semask_swin_tiny_bs16_160k.yaml",
)
NUM_CLASSES = 5
# The tiny model of the tests, NUM_CLASSES classes, small test images, no test set.
TINY_DEMO = {
    "MODEL": {"WEIGHTS": "", "SEM_SEG_HEAD": {"NUM_CLASSES": NUM_CLASSES}},
    "INPUT": {"MIN_SIZE_TEST": 64, "MAX_SIZE_TEST": 128},
    "DATASETS": {"TEST": []},
}
STAGES = ["res2", "res3", "res4", "res5"]
# (H, W): an odd size, a grayscale image, and one whose test resize is capped by MAX_SIZE_TEST.
IMAGE_SIZES = {"odd.jpg": (37, 53), "gray.png": (48, 64), "wide.png": (40, 96)}
# Their sizes after the test resize (short side 64, long side at most 128).
RESIZED = {"odd.jpg": (64, 92), "wide.png": (53, 128)}
VIDEO_FRAMES, VIDEO_SIZE = 6, (64, 80)


def write_inputs(folder):
    """A folder of images (one of them grayscale) and a short mp4v video, all random."""
    rng = np.random.RandomState(0)
    images = os.path.join(folder, "images")
    os.makedirs(images)
    for name, (h, w) in IMAGE_SIZES.items():
        shape = (h, w) if name.startswith("gray") else (h, w, 3)
        Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8)).save(os.path.join(images, name))
    video = os.path.join(folder, "clip.mp4")
    h, w = VIDEO_SIZE
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    for _ in range(VIDEO_FRAMES):
        writer.write(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))
    writer.release()
    return images, video


def write_weights(cfg, path, seed=0):
    """Seeded random weights, so that the demo and the test's own predictor agree."""
    torch.manual_seed(seed)
    torch.save({"model": build_model(cfg).state_dict()}, path)


def run_main(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = demo.main(argv)
    return code, err.getvalue()


def read_png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def read_video(path):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


class TestDemo(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        root = cls.tmp.name
        cls.images, cls.video = write_inputs(root)
        cls.config = write_tiny_config(os.path.join(root, "tiny.yaml"), FPN_T, TINY_DEMO)
        cls.weights = os.path.join(root, "weights.pth")
        cls.opts = ["--opts", "MODEL.WEIGHTS", cls.weights, "MODEL.DEVICE", "cpu"]
        argv = ["--config-file", cls.config, "--input", cls.images, "--output", root]
        # The tiny config has no weights: build the model from it, then point MODEL.WEIGHTS at them.
        write_weights(demo.setup_cfg(demo.get_parser().parse_args(argv))[0], cls.weights)
        cls.cfg, _ = demo.setup_cfg(demo.get_parser().parse_args(argv + cls.opts))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def base_args(self, output):
        return ["--config-file", self.config, "--output", output]

    def output_dir(self, name):
        return os.path.join(self.tmp.name, name)

    def test_folder_writes_overlays_and_prior_maps(self):
        out = self.output_dir("folder")
        code, err = run_main(
            self.base_args(out) + ["--input", self.images, "--prior-maps"] + self.opts
        )
        self.assertEqual(code, 0, err)
        expected = set()
        for name, (h, w) in IMAGE_SIZES.items():
            stem = os.path.splitext(name)[0]
            names = [f"{stem}.png"] + [f"{stem}_prior_{s}.png" for s in STAGES]
            for file_name in names:
                self.assertEqual(read_png(os.path.join(out, file_name)).shape, (h, w, 3), file_name)
            self.assertEqual(read_png(os.path.join(out, f"{stem}_priors.png")).shape, (h, 5 * w, 3))
            expected |= set(names) | {f"{stem}_priors.png"}
        self.assertEqual(set(os.listdir(out)), expected)
        image = read_png(os.path.join(self.images, "odd.jpg"))
        self.assertFalse((read_png(os.path.join(out, "odd.png")) == image).all())
        predictor = SeMaskPredictor(self.cfg)
        for name, resized in RESIZED.items():
            self.check_prior_pixels(predictor, name, resized, out)

    def check_prior_pixels(self, predictor, name, resized, out):
        """
        Every pixel is a palette colour blended at PRIOR_ALPHA; some are recomputed by hand with
        the formula of demo/README.md, ``round(0.5 * image + 0.5 * colour)``.
        """
        image_path = os.path.join(self.images, name)
        result = predictor(read_image(image_path, format="BGR"))
        self.assertEqual(result["resized_size"], resized)
        image = read_image(image_path, format="RGB").astype(np.float64)
        colors = np.asarray(build_metadata(self.cfg).stuff_colors, dtype=np.float64)
        blends = np.round((1 - PRIOR_ALPHA) * image[None] + PRIOR_ALPHA * colors[:, None, None])
        (h, w), (rh, rw) = image.shape[:2], resized
        stem = os.path.splitext(name)[0]
        for stage in STAGES:
            drawn = read_png(os.path.join(out, f"{stem}_prior_{stage}.png"))
            self.assertTrue((drawn[None] == blends).all(-1).any(0).all(), stage)
            stride = predictor.prior_strides[f"{stage}_prior"]
            labels = result["priors"][f"{stage}_prior"]
            for y, x in [(0, 0), (h // 2, w // 3), (h - 1, w - 1)]:
                # Nearest resized pixel (by centres), then its cell at the stage's stride.
                ry, rx = int((y + 0.5) * rh / h), int((x + 0.5) * rw / w)
                label = labels[ry // stride, rx // stride]
                expected = np.round(0.5 * image[y, x] + 0.5 * colors[label])
                np.testing.assert_array_equal(drawn[y, x], expected, f"{stage} at {(y, x)}")

    def test_video_writes_overlay_video_and_sampled_prior_maps(self):
        out = self.output_dir("video")
        args = ["--video-input", self.video, "--prior-maps", "--prior-every", "2"]
        code, err = run_main(self.base_args(out) + args + self.opts)
        self.assertEqual(code, 0, err)
        frames = read_video(os.path.join(out, "clip.mp4"))
        self.assertEqual(len(frames), VIDEO_FRAMES)
        self.assertEqual(frames[0].shape, VIDEO_SIZE + (3,))
        for index in range(VIDEO_FRAMES):
            path = os.path.join(out, f"clip_{index:06d}_prior_res5.png")
            self.assertEqual(os.path.exists(path), index % 2 == 0, path)
        first = read_png(os.path.join(out, "clip_000000_prior_res2.png"))
        self.assertEqual(first.shape, VIDEO_SIZE + (3,))

    def test_command_line(self):
        """The script runs as a program: `python demo/demo.py ...`."""
        out = self.output_dir("cli")
        image = os.path.join(self.images, "gray.png")
        args = [sys.executable, os.path.join(DEMO_DIR, "demo.py")] + self.base_args(out)
        proc = subprocess.run(
            args + ["--input", image] + self.opts, capture_output=True, text=True, timeout=120
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(os.listdir(out), ["gray.png"])
        self.assertEqual(
            read_png(os.path.join(out, "gray.png")).shape, IMAGE_SIZES["gray.png"] + (3,)
        )

    def test_bad_inputs_exit_2_with_one_line(self):
        garbage = os.path.join(self.tmp.name, "garbage")
        os.makedirs(garbage)
        for name in ("broken.png", "broken.mp4", "odd.png"):
            with open(os.path.join(garbage, name), "w") as f:
                f.write("not an image or a video\n")
        random_weights = os.path.join(garbage, "random.pth")
        with open(random_weights, "wb") as f:
            f.write(np.random.RandomState(0).bytes(4096))
        out = self.output_dir("bad")
        config_out = self.base_args(out)
        cases = {
            "input not found": ["--input", os.path.join(garbage, "*.jpg")],
            "config file not found": ["--config-file", "missing.yaml", "--input", self.images],
            "cannot read image": ["--input", os.path.join(garbage, "broken.png")],
            "OpenCV cannot open the video": ["--video-input", os.path.join(garbage, "broken.mp4")],
            "video not found": ["--video-input", os.path.join(garbage, "none.mp4")],
            "is the folder of input": ["--input", self.images, "--output", self.images],
            "cannot create the output folder": ["--input", self.images, "--output", self.config],
            "this backbone has no prior maps": ["--input", self.images, "--prior-maps"]
            + self.opts
            + ["MODEL.SWIN.NUM_SEM_BLOCKS", "0", "MODEL.WEIGHTS", ""],
            "MODEL.WEIGHTS nope.pth not found": ["--input", self.images]
            + self.opts[:2]
            + ["nope.pth"],
            f"MODEL.WEIGHTS {random_weights} is not a readable checkpoint": [
                "--input",
                self.images,
            ]
            + self.opts[:2]
            + [random_weights],
            "does not fit the model: .* missing key": ["--input", self.images]
            + self.opts
            + ["MODEL.SWIN.DEPTHS", "[1, 1, 3, 1]"],
            "would write the same files": [
                "--input",
                self.images,
                os.path.join(garbage, "odd.png"),
            ],
            "Non-existent key: MODEL.NOPE": ["--input", self.images]
            + self.opts
            + ["MODEL.NOPE", "1"],
            "--task panoptic: MODEL.META_ARCHITECTURE SemanticSegmentor predicts semantic "
            "segmentation only": ["--input", self.images, "--task", "panoptic"],
        }
        for message, argv in cases.items():
            with self.subTest(message):
                # argparse keeps the last --config-file and --output; --opts extends to the end.
                opts = [] if "--opts" in argv else self.opts
                code, err = run_main(config_out + argv + opts)
                self.assertEqual(code, 2)
                self.assertRegex(err, f"^demo.py: error: .*{message}.*\n$")
        self.assertFalse(os.path.exists(os.path.join(out, "broken.png")))

    def metadata_with_test_set(self, name, **fields):
        """build_metadata for the tiny config with a test set `name` holding `fields`."""
        MetadataCatalog.get(name).set(**fields)
        try:
            cfg = self.cfg.clone()
            cfg.defrost()
            cfg.DATASETS.TEST = (name,)
            return build_metadata(cfg)
        finally:
            MetadataCatalog.pop(name)

    def test_metadata_colors_come_from_the_test_dataset(self):
        name = "_semask_demo_test"
        colors = [(i, 2 * i, 3 * i) for i in range(NUM_CLASSES)]
        metadata = self.metadata_with_test_set(
            name, stuff_classes=list("abcde"), stuff_colors=colors
        )
        self.assertEqual(metadata.stuff_colors, colors)
        self.assertEqual(metadata.stuff_classes, list("abcde"))
        # Panoptic and instance drawings index the same lists by contiguous id.
        self.assertEqual(metadata.thing_colors, colors)
        self.assertEqual(metadata.thing_classes, list("abcde"))
        # Without a test dataset: K distinct fixed colours.
        fallback = build_metadata(self.cfg)
        self.assertEqual(len(set(fallback.stuff_colors)), NUM_CLASSES)
        self.assertEqual(fallback.stuff_colors, build_metadata(self.cfg).stuff_colors)
        self.assertEqual(fallback.thing_classes, [f"class {i}" for i in range(NUM_CLASSES)])

    def test_metadata_of_an_instance_dataset_are_its_thing_classes(self):
        """As Cityscapes instance: the semantic classes (more) are not the model's classes."""
        name = "_semask_demo_instance_test"
        colors = [(i, 0, 255 - i) for i in range(NUM_CLASSES)]
        metadata = self.metadata_with_test_set(
            name,
            stuff_classes=[f"stuff {i}" for i in range(NUM_CLASSES + 3)],
            thing_classes=list("vwxyz"),
            thing_colors=colors,
        )
        self.assertEqual(metadata.thing_classes, list("vwxyz"))
        self.assertEqual(metadata.stuff_classes, list("vwxyz"))
        self.assertEqual(metadata.thing_colors, colors)


# The training set whose metadata gives SeMaskMaskFormer its thing classes (contiguous 1 and 3).
THINGS_DATASET = "_semask_demo_things"
THING_IDS = [1, 3]
# With these random weights the queries predict things and stuff on the test image and frame.
M2F_SEED = 4
# The tiny Mask2Former: instance output on, panoptic off (the demo turns it on for --task);
# random queries score far below the recipe's panoptic thresholds (0.8), hence 0.
TINY_M2F_DEMO = {
    "MODEL": {
        "WEIGHTS": "",
        "SEM_SEG_HEAD": {"NUM_CLASSES": NUM_CLASSES},
        "MASK_FORMER": {
            "TEST": {
                "INSTANCE_ON": True,
                "PANOPTIC_ON": False,
                "OBJECT_MASK_THRESHOLD": 0.0,
                "OVERLAP_THRESHOLD": 0.0,
            }
        },
    },
    "INPUT": {"MIN_SIZE_TEST": 64, "MAX_SIZE_TEST": 128},
    "DATASETS": {"TRAIN": [THINGS_DATASET], "TEST": []},
}


class TestMaskFormerTasks(unittest.TestCase):
    """--task on a tiny SeMask-Mask2Former: each drawing is Visualizer's for the predictions."""

    @classmethod
    def setUpClass(cls):
        MetadataCatalog.get(THINGS_DATASET).set(
            thing_dataset_id_to_contiguous_id={11: THING_IDS[0], 13: THING_IDS[1]}
        )
        cls.tmp = tempfile.TemporaryDirectory()
        root = cls.tmp.name
        cls.images, cls.video = write_inputs(root)
        cls.config = write_tiny_config(os.path.join(root, "tiny.yaml"), M2F_T, TINY_M2F_DEMO)
        cls.weights = os.path.join(root, "weights.pth")
        cfg, _ = cls.setup(["--task", "panoptic"], weights="")
        write_weights(cfg, cls.weights, seed=M2F_SEED)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        MetadataCatalog.pop(THINGS_DATASET)

    @classmethod
    def argv(cls, extra, output="out", weights=None):
        weights = cls.weights if weights is None else weights
        base = ["--config-file", cls.config, "--output", os.path.join(cls.tmp.name, output)]
        return base + extra + ["--opts", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]

    @classmethod
    def setup(cls, extra, **kwargs):
        args = ["--input", cls.images] + extra
        return demo.setup_cfg(demo.get_parser().parse_args(cls.argv(args, **kwargs)))

    def test_default_task_follows_the_config_flags(self):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.MODEL.META_ARCHITECTURE = "SeMaskMaskFormer"
        flags = cfg.MODEL.MASK_FORMER.TEST
        flags.SEMANTIC_ON, flags.INSTANCE_ON, flags.PANOPTIC_ON = False, False, False
        self.assertEqual(demo.default_task(cfg), "semantic")
        flags.INSTANCE_ON = True
        self.assertEqual(demo.default_task(cfg), "instance")
        flags.PANOPTIC_ON = True
        self.assertEqual(demo.default_task(cfg), "panoptic")
        # An FPN model predicts semantic segmentation whatever the Mask2Former flags say.
        cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
        self.assertEqual(demo.default_task(cfg), "semantic")

    def predict(self, extra, task, image_bgr):
        """The config the demo builds for `extra`, and its predictor's result for the image."""
        cfg, chosen = self.setup(extra)
        self.assertEqual(chosen, task)
        self.assertTrue(cfg.MODEL.MASK_FORMER.TEST[demo.TASK_FLAGS[task]])
        return cfg, SeMaskPredictor(cfg)(image_bgr)

    def test_each_task_draws_the_predictions_with_visualizer(self):
        path = os.path.join(self.images, "odd.jpg")
        image_bgr = read_image(path, format="BGR")
        image_rgb = image_bgr[:, :, ::-1]
        # semantic and panoptic chosen (panoptic off in the config); instance is the default.
        for task, extra in [
            ("semantic", ["--task", "semantic"]),
            ("panoptic", ["--task", "panoptic"]),
            ("instance", []),
        ]:
            with self.subTest(task):
                cfg, result = self.predict(extra, task, image_bgr)
                threshold = 0.0
                if task == "instance":
                    # Between two scores: the demo draws some instances and drops others.
                    scores = result["instances"].scores.sort(descending=True).values
                    threshold = float(scores[2] + scores[3]) / 2
                    kept = result["instances"].scores >= threshold
                    self.assertEqual(int(kept.sum()), 3)
                    result["instances"] = result["instances"][kept]
                if task == "panoptic":
                    segment_ids, segments_info = result["panoptic_seg"]
                    self.assertEqual(segment_ids.shape, IMAGE_SIZES["odd.jpg"])
                    # Things (classes 1 and 3) and stuff, each covering pixels.
                    self.assertEqual({s["isthing"] for s in segments_info}, {True, False})
                    for segment in segments_info:
                        self.assertEqual(segment["isthing"], segment["category_id"] in THING_IDS)
                        self.assertTrue((segment_ids == segment["id"]).any())
                metadata = build_metadata(cfg)
                visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
                np.random.seed(COLOR_SEED)
                if task == "semantic":
                    expected = visualizer.draw_sem_seg(result["sem_seg"])
                elif task == "panoptic":
                    expected = visualizer.draw_panoptic_seg(*result["panoptic_seg"])
                else:
                    expected = visualizer.draw_instance_predictions(result["instances"])
                expected = expected.get_image()
                self.assertFalse((expected == image_rgb).all())

                argv = ["--input", path, "--confidence-threshold", str(threshold)] + extra
                code, err = run_main(self.argv(argv, output=task))
                self.assertEqual(code, 0, err)
                out = os.path.join(self.tmp.name, task)
                self.assertEqual(os.listdir(out), ["odd.png"])
                drawn = read_png(os.path.join(out, "odd.png"))
                self.assertEqual(drawn.shape, IMAGE_SIZES["odd.jpg"] + (3,))
                np.testing.assert_array_equal(drawn, expected)

    def test_video_draws_the_panoptic_task_per_frame(self):
        code, err = run_main(self.argv(["--video-input", self.video, "--task", "panoptic"]))
        self.assertEqual(code, 0, err)
        frames = read_video(os.path.join(self.tmp.name, "out", "clip.mp4"))
        self.assertEqual(len(frames), VIDEO_FRAMES)
        self.assertEqual(frames[0].shape, VIDEO_SIZE + (3,))
        # The mp4v codec is lossy: the first frame is near VideoVisualizer's drawing of the
        # predictions, farther from the plain frame.
        first_bgr = read_video(self.video)[0]
        cfg, result = self.predict(["--task", "panoptic"], "panoptic", first_bgr)
        visualizer = VideoVisualizer(build_metadata(cfg), ColorMode.IMAGE)
        np.random.seed(COLOR_SEED)
        first_rgb = first_bgr[:, :, ::-1]
        expected = visualizer.draw_panoptic_seg_predictions(first_rgb, *result["panoptic_seg"])
        written = frames[0][:, :, ::-1].astype(np.float64)
        to_drawing = np.abs(written - expected.get_image()).mean()
        to_frame = np.abs(written - first_rgb).mean()
        self.assertLess(to_drawing, to_frame / 2, (to_drawing, to_frame))


class TestMaskFormerPriorMaps(unittest.TestCase):
    def test_prior_maps_of_semask_mask2former(self):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.merge_from_file(M2F_T)
        shrink(cfg)
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
        cfg.DATASETS.TEST = ()
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 32, 64
        predictor = SeMaskPredictor(cfg)
        image = np.random.RandomState(1).randint(0, 256, (27, 41, 3), dtype=np.uint8)
        result = predictor(image)
        self.assertEqual(result["sem_seg"].shape, (27, 41))
        self.assertEqual(sorted(result["priors"]), [f"{s}_prior" for s in STAGES])
        drawn = draw_prior_maps(
            image[:, :, ::-1], result, predictor.prior_strides, build_metadata(cfg)
        )
        self.assertEqual({k: v.shape for k, v in drawn.items()}, {s: (27, 41, 3) for s in STAGES})
