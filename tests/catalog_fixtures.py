"""
Shared test helper: a temporary datasets root, catalog entries restored after each test, and the
check of a loader's one-line error.
"""

import tempfile
import unittest

from detectron2.data import DatasetCatalog, MetadataCatalog

from semask_d2.data import DatasetError


class CatalogTestCase(unittest.TestCase):
    """
    `self.root` is a temporary folder; the DatasetCatalog and MetadataCatalog entries of `NAMES`
    (detectron2's or ours) are put back as they were after each test.
    """

    NAMES = []

    def setUp(self):
        saved = {n: (DatasetCatalog.data.get(n), MetadataCatalog.data.get(n)) for n in self.NAMES}
        self.addCleanup(self._restore, saved)
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.root = tmp.name

    @staticmethod
    def _restore(saved):
        for name, (func, meta) in saved.items():
            DatasetCatalog.pop(name, None)
            MetadataCatalog.pop(name, None)
            if func is not None:
                DatasetCatalog[name] = func
            if meta is not None:
                MetadataCatalog[name] = meta

    def assertDatasetError(self, name, *parts):
        """Loading `name` raises a one-line DatasetError containing every string of `parts`."""
        with self.assertRaises(DatasetError) as ctx:
            DatasetCatalog.get(name)
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        self.assertIn("Fix:", message)
        for part in parts:
            self.assertIn(part, message)
        return message
