"""A denoising image's current latent as a small RGB picture, with no weights: a fixed linear map
from the 4 Stable Diffusion 1.x/2.x latent channels to RGB (the well-known "cheap approximation"
coefficients, as in AUTOMATIC1111's sd_vae_approx), one pixel per latent cell (1/8 of the image's
side). Costs one tiny matrix product and a copy of 3*(h/8)*(w/8) bytes to the CPU.
"""

from __future__ import annotations

from typing import Any

# rows: latent channels 0..3; columns: R, G, B. The result is in about [-1, 1].
LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latent_rgb(latents: Any) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of the first latent of a (B, 4, h, w) or (4, h, w) tensor."""
    import torch

    with torch.inference_mode():
        latent = latents[0] if latents.dim() == 4 else latents
        coefs = torch.tensor(LATENT_RGB, dtype=torch.float32, device=latent.device)
        rgb = torch.einsum("chw,cr->hwr", latent.float(), coefs)
        pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu()
    height, width = pixels.shape[0], pixels.shape[1]
    return width, height, pixels.numpy().tobytes()
