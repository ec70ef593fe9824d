"""Evaluation metrics: the Kinetics-400 I3D detector, FVD/KVD, and the frame metrics PSNR/SSIM/LPIPS.

Every number `vpt eval-fvd` prints comes with the protocol that produced it (see `vpt.metrics.fvd`).
"""
