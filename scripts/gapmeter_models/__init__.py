"""Model definitions and TorchScript export shared by gapmeter's scripts.

The architectures here are written for gapmeter; parameter names follow pytorch-fid's FID Inception
state dict so that its published weights load into the same module (scripts/export_models.py).
"""
