"""Transformer networks from MONAI (ViT, UNETR, SwinUNETR) in the registries: registered on import."""
