"""The repository stands alone: no tracked file names a path outside it, and it ships a LICENSE."""

import os
import re
import subprocess
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Built from pieces so that this file does not match its own patterns.
_OUTSIDE_PATHS = ["..", "/", "shared"], ["shared", "/", "spec"], ["/", "work", "/"]
_DOC_NAMES = [
    "SEMASK",
    "MASK2FORMER",
    "DATASETS",
    "DETECTRON2",
    "ENVIRONMENT",
    "SEMASK_FPN_MMSEG",
    "PANOPTIC",
    "SEMASK_FAMILIES",
]
FORBIDDEN = re.compile(
    "|".join(re.escape("".join(parts)) for parts in _OUTSIDE_PATHS)
    + r"|\b(?:"
    + "|".join(_DOC_NAMES)
    + r")"
    + re.escape(".")
    + "md"
    + r"\b"
)


def tracked_files():
    """Paths (relative to ROOT) of the files git tracks, or None outside a git checkout."""
    try:
        subprocess.run(
            ["git", "rev-parse", "--is-inside-work-tree"],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, check=True, stdout=subprocess.PIPE
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in out.decode("utf-8").split("\0") if p]


class TestSelfContained(unittest.TestCase):
    def test_no_tracked_file_names_an_outside_path(self):
        files = tracked_files()
        if files is None:
            self.skipTest("not a git checkout (or git is missing): no list of tracked files")
        self.assertTrue(files)
        hits = []
        for rel in files:
            path = os.path.join(ROOT, rel)
            if os.path.islink(path) or not os.path.isfile(path):
                continue  # deleted in the working tree, or a link
            with open(path, "rb") as f:
                data = f.read()
            if b"\0" in data[:8192]:
                continue  # binary
            for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                match = FORBIDDEN.search(line)
                if match:
                    hits.append(f"{rel}:{number}: {match.group(0)!r} in {line.strip()[:120]!r}")
        self.assertEqual(
            hits, [], "tracked files name paths outside the repository:\n" + "\n".join(hits)
        )

    def test_patterns(self):
        outside = "..", "shared"
        self.assertTrue(FORBIDDEN.search("see " + "/".join(outside) + "/x"))
        self.assertTrue(FORBIDDEN.search("(" + "MASK2FORMER" + ".md §2)"))
        self.assertIsNone(FORBIDDEN.search("the shared semantic-prior module; README.md"))
        self.assertIsNone(FORBIDDEN.search("datasets/README.md, tests/data/official_keys"))

    def test_license_is_apache_2(self):
        path = os.path.join(ROOT, "LICENSE")
        self.assertTrue(os.path.isfile(path), "LICENSE missing at the repository root")
        with open(path, encoding="utf-8") as f:
            head = [line.strip() for line in f.read(400).splitlines() if line.strip()]
        self.assertEqual(
            head[:3],
            ["Apache License", "Version 2.0, January 2004", "http://www.apache.org/licenses/"],
        )


if __name__ == "__main__":
    unittest.main()
