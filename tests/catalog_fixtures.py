"""Shared test helper: a temporary datasets root and catalog entries restored after each test."""

import tempfile
import unittest

from detectron2.data import DatasetCatalog, MetadataCatalog


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
