"""Reference training code for the generators in `sr_deploy.models`.

SRResNet (MSE), SRGAN (VGG54 + adversarial) and ESRGAN (PSNR-oriented L1 pre-training, then
perceptual + relativistic GAN + L1) as ONE configured training loop (`train.trainer`), driven by a
YAML recipe per method in `train/configs/`. This package imports `sr_deploy`; `sr_deploy` never
imports it. Entry point: ``python -m train RECIPE --data DIR --val DIR --out RUN_DIR``.
"""
