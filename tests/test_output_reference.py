"""
Speed and memory work must not change what the models compute: the outputs and training losses
frozen in ``tests/data/output_reference.pt`` (written by ``tools/output_reference.py write``
before any such change) are reproduced within 1e-5.
"""

import os
import unittest

import torch

from script_loader import load_script

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "output_reference.pt")


class TestOutputReference(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tool = load_script("tools/output_reference.py")
        cls.reference = torch.load(REFERENCE, weights_only=True)

    def test_reference_covers_both_families_and_the_prior_loss(self):
        self.assertEqual(set(self.reference), {"semask_t_fpn", "semask_t_mask2former"})
        self.assertEqual(
            set(self.reference["semask_t_fpn"]["losses"]), {"loss_sem_seg", "loss_cate"}
        )
        losses = self.reference["semask_t_mask2former"]["losses"]
        self.assertIn("loss_cate", losses)
        self.assertIn("loss_mask_0", losses)  # deep supervision
        self.assertEqual(tuple(self.reference["semask_t_fpn"]["sem_seg"]["1"].shape), (5, 45, 71))

    def test_outputs_and_losses_are_reproduced(self):
        for name, diff in self.tool.max_differences(self.reference).items():
            with self.subTest(name):
                self.assertLessEqual(diff, self.tool.TOLERANCE)

    def test_a_changed_weight_is_detected(self):
        entry = dict(self.reference["semask_t_fpn"])
        weights = dict(entry["weights"])
        # Every logit moves by 1e-4, ten times the tolerance.
        key = "sem_seg_head.predictor.bias"
        weights[key] = weights[key] + 1e-4
        entry["weights"] = weights
        diff = self.tool.max_differences({"semask_t_fpn": entry})["semask_t_fpn"]
        self.assertGreater(diff, self.tool.TOLERANCE)


if __name__ == "__main__":
    unittest.main()
