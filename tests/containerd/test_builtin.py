"""The harness proved on containerd's own snapshotters: the image, the cycle and
its fixed answers hold for overlayfs and native, and a containerd restart in the
middle loses nothing. The graphdrivers tests compare against these same runs."""
from __future__ import annotations

import pytest

from containerd import cycle
from containerd.engine import IN_VM


@pytest.mark.skipif(IN_VM, reason="driver-independent: the host half runs it")
def test_builtin_snapshotters_give_the_fixed_answers(builtin_stack, e2e_image):
    seen = {}
    for snapshotter in ("overlayfs", "native"):
        seen[snapshotter] = cycle.run_cycle(builtin_stack.containerd, snapshotter, e2e_image,
                                            restart=builtin_stack.restart)
        builtin_stack.containerd.ctr("image", "rm", e2e_image.ref)
        assert cycle.fixed_answer_problems(seen[snapshotter]) == [], snapshotter
    refusals = dict(cycle.REFUSALS)
    assert seen["overlayfs"].errors == refusals
    # native fails to commit a view on a missing directory (Unknown), not as a precondition
    del refusals["commit a view"]
    assert {k: v for k, v in seen["native"].errors.items() if k != "commit a view"} == refusals
    assert seen["native"].errors["commit a view"] != "accepted"
    # the two storage models differ in one thing only: under overlayfs a lower
    # file keeps the link count it had in its layer (hl/b's partner was replaced above it)
    problems = cycle.compare(seen["native"], seen["overlayfs"])
    assert len(problems) == 1 and problems[0].startswith("image_tree: hl/b:"), problems
