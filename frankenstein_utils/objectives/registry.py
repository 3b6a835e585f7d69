"""The one registry: each trainer mode's objective class, and the named settings (presets) a run can start from."""

from __future__ import annotations

from .flagship import FlagshipObjective
from .peers import BicycleGANObjective, Pix2PixObjective
from .study import (CrossEncoderObjective, CVAEGANObjective, CVAEObjective, GANObjective, GANReconObjective,
                    L1GANObjective, L1Objective)

# the 2017 study's modes (objectives/study.py), built by the trainer's shared networks
STUDY_OBJECTIVES = {"l1": L1Objective, "cvae": CVAEObjective, "gan": GANObjective, "gan+recon": GANReconObjective,
                    "l1+gan": L1GANObjective, "cvae-gan": CVAEGANObjective, "cross-encoder": CrossEncoderObjective}
# the flagship and its peers: each class owns its networks, losses and step
PEER_OBJECTIVES = {"flagship": FlagshipObjective, "pix2pix": Pix2PixObjective, "bicyclegan": BicycleGANObjective}
OBJECTIVES = {**STUDY_OBJECTIVES, **PEER_OBJECTIVES}

# The papers' settings for the peers and the flagship's defaults (TrainConfig keyword arguments).
PEER_PRESETS = {
    "pix2pix": dict(mode="pix2pix", lr=2e-4, beta1=0.5, l1_weight=100.0, masked_l1=False),
    "bicyclegan": dict(mode="bicyclegan", lr=2e-4, beta1=0.5, l1_weight=10.0, kl_weight=0.01, latent_weight=0.5,
                       z_dim=8),
    "flagship": dict(mode="flagship", lr=2e-4, beta1=0.0, beta2=0.99, gan_loss="hinge", spectral_norm=True,
                     l1_weight=10.0, kl_weight=0.01, latent_weight=0.5, feature_matching=10.0, z_dim=8),
}
# Named settings: ``preset_config("original", ...)`` or ``train --preset original``.
PRESETS: dict[str, dict] = {
    # the original study's setting (dvg13/image-model): greyscale 128 px, RMSProp, D lr 1e-4, G lr 1e-3, batch 8
    "original": dict(out_channels=1, image_size=128, optimizer="rmsprop", lr=1e-3, d_lr=1e-4, batch_size=8),
    **PEER_PRESETS,
}
