"""Classical non-local means denoising, built on the non-local operation."""

from nonlocalnet.denoise.nl_means import default_h, estimate_sigma, nl_means, nl_means_video, psnr

__all__ = ["default_h", "estimate_sigma", "nl_means", "nl_means_video", "psnr"]
