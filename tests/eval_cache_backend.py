"""The tiny copy-last test backend, slowed down and counting its predict calls, for the kill-and-resume
test of `vpt eval-fvd`: importable in a subprocess, where `register()` puts it in the backend registry
under the name the test runs are written with."""

from __future__ import annotations

import os
import time

from test_metrics_eval_fvd import CopyLastBackend

PREDICT_LOG = "VPT_TEST_PREDICT_LOG"  # a file that gets one line per predict call
PREDICT_SLEEP = "VPT_TEST_PREDICT_SLEEP"  # seconds each predict call waits, so a kill lands mid-way


class CountingCopyLast(CopyLastBackend):
    def predict(self, context, num_frames, **options):
        if os.environ.get(PREDICT_LOG):
            with open(os.environ[PREDICT_LOG], "a") as log:
                log.write(f"{len(context)}\n")
        time.sleep(float(os.environ.get(PREDICT_SLEEP, "0")))
        return super().predict(context, num_frames, **options)


def register() -> None:
    from vpt.models.registry import BACKENDS

    BACKENDS[CopyLastBackend.name] = f"{__name__}:CountingCopyLast"
